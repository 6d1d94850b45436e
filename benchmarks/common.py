"""What the benchmark scripts share: the plain loop's scene and photos, and the
command line that runs a benchmark over scene folders."""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path
from typing import Callable

import invpbr


def plain_scene_and_photos(folder: Path):
    """A scene folder as a plain-Mitsuba user loads it: the scene, and the
    photos as linear float tensors, one per sensor in sensor order.

    ``invpbr.load_scene`` only adds ``<string name="format" value="variant"/>`` to
    bitmaps, which a plain user must write into the XML by hand for 8-bit
    textures to be differentiable.
    """
    import mitsuba as mi

    scene = invpbr.load_scene(folder / "scene.xml")
    photos = invpbr.problem.match_photos(invpbr.capture.cameras.sensor_ids(scene), folder / "photos")
    refs = [mi.TensorXf(mi.Bitmap(str(p)).convert(mi.Bitmap.PixelFormat.RGB, mi.Struct.Type.Float32,
                                                  srgb_gamma=False)) for p in photos]
    return scene, refs


def run(description: str, bench_scene: Callable[[Path, int | None, int | None], dict],
        report: Callable[[dict], None]) -> None:
    """Parse ``SCENES... [--iterations N] [--spp N] [--json F]``, run
    ``bench_scene`` on each folder, ``report`` each row, and write the rows to F."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("scenes", nargs="+", type=Path)
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--spp", type=int)
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    invpbr.init_backend()
    import drjit as dr
    import mitsuba as mi

    print(f"variant {mi.variant()}, {dr.thread_count()} threads")
    rows = []
    for folder in args.scenes:
        row = bench_scene(folder, args.iterations, args.spp)
        rows.append(row)
        report(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def cpu_seconds() -> float:
    """CPU seconds (user + system, all threads) this process has used."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def field_variants_parser(variants: dict, *, size: int, views: int, held_out: int,
                          iterations: int, resolution: str) -> argparse.ArgumentParser:
    """The command line of a benchmark of ``[field]`` options on a synthetic
    capture: ``OUT``, the capture's size, views and held-out views, the fits'
    iterations and grid resolutions, and the variants to run (default: all of
    ``variants``); a script adds its own arguments."""
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--views", type=int, default=views)
    parser.add_argument("--held-out", type=int, default=held_out)
    parser.add_argument("--iterations", type=int, default=iterations)
    parser.add_argument("--resolution", default=resolution)
    parser.add_argument("--variants", default=",".join(variants))
    return parser
