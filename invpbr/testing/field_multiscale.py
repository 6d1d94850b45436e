"""Synthetic radiance-field folders in Mip-NeRF's multi-scale protocol (issue
15, ``[field] multiscale``): every view of the object of
:mod:`invpbr.testing.fields` photographed at full, 1/2, 1/4 and 1/8
resolution (the lower ones the box-filtered full render, as Mip-NeRF's
multiscale Blender), fitted at all four; held-out views at all four are
scored per scale (tests/test_field_multiscale.py, benchmarks/field_multiscale.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .fields import look_at_camera, object_scene, sphere_views

#: Downsampling factors of the protocol (full, 1/2, 1/4, 1/8).
SCALES = (1, 2, 4, 8)


def box_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` (H, W, C) averaged over ``factor`` x ``factor`` blocks."""
    h, w, c = image.shape
    return image.reshape(h // factor, factor, w // factor, factor, c).mean((1, 3))


def scale_id(view: str, factor: int) -> str:
    """The photo id of ``view`` at 1 / ``factor`` resolution."""
    return f"{view}_d{factor}"


def make_multiscale_folder(folder: str | Path, *, size: int = 48, views: int = 12,
                           held_out: int = 3, spp: int = 16, kind: str = "simple",
                           distance: float = 2.2, fov_deg: float = 40.0, seed: int = 0,
                           sky: float | None = 0.8, toml_extra: str = "") -> Path:
    """A field folder of the synthetic object: ``views + held_out`` views at
    ``size`` px (a multiple of 8) rendered by Mitsuba and box-downsampled to
    each of SCALES, as linear EXR photos ``photos/<view>_d<factor>.exr`` with
    their cameras in transforms.json; the last ``held_out`` views (at every
    scale) are held out; ``sky``: a constant sky (None: the gradient sky)."""
    import mitsuba as mi

    from invpbr.capture import images
    from invpbr.capture.cameras import to_mitsuba_sensor, write_transforms

    if size % SCALES[-1]:
        raise ValueError(f"make_multiscale_folder(): size {size} is not a multiple of {SCALES[-1]}")
    folder = Path(folder)
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    scene = mi.load_dict(object_scene(kind, sky))
    integrator = mi.load_dict({"type": "path", "max_depth": 6})
    n = views + held_out
    full = [look_at_camera(f"view_{i:02d}", p, [0.0, 0.0, 0.0], size=size, fov_deg=fov_deg)
            for i, p in enumerate(sphere_views(n, distance=distance, seed=seed))]
    cams = []
    for i, cam in enumerate(full):
        sensor = mi.load_dict(to_mitsuba_sensor(cam) | {
            "sampler": {"type": "independent", "sample_count": spp}})
        image = np.array(mi.render(scene, sensor=sensor, integrator=integrator, spp=spp,
                                   seed=i), np.float32)
        for f in SCALES:
            sid = scale_id(cam.id, f)
            path = folder / "photos" / f"{sid}.exr"
            images.save_image(path, box_downsample(image, f))
            cams.append(replace(cam.rescaled(size // f, size // f), id=sid, file_path=path))
    write_transforms(folder / "transforms.json", cams)
    ids = ", ".join(f'"{scale_id(c.id, f)}"' for c in full[views:] for f in SCALES)
    (folder / "invpbr.toml").write_text(
        '[cameras]\nfile = "transforms.json"\n\n[field]\n' + toml_extra
        + f"\n[evaluate]\nheld_out = [{ids}]\n")
    return folder


def scale_errors(result, problem) -> dict[int, float]:
    """Mean squared error (linear RGB clipped to [0, 1]) of the held-out
    renders of ``result`` against their photos, per downsampling factor."""
    out: dict[int, list[float]] = {f: [] for f in SCALES}
    for v in problem.views:
        if not v.held_out:
            continue
        f = int(v.id.rsplit("_d", 1)[1])
        render = np.clip(result.renders[v.id], 0, 1)
        out[f].append(float(np.mean((render - np.clip(v.photo, 0, 1)) ** 2)))
    return {f: float(np.mean(e)) for f, e in out.items() if e}
