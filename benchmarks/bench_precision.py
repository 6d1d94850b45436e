"""Half against single precision (``[optimize] precision``) on a texture scene: the
texture's error against the truth, the process's peak memory and the time per step.

Each run is its own process, so that the peak resident memory belongs to it alone.
``--resolution R`` estimates the texture at R x R (its coarse-to-fine stages replaced
by one stage at R), to see what the precision does to memory when textures are large.

Usage::

    python benchmarks/bench_precision.py scenes/textured_object [--iterations N]
        [--resolution R] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def child(folder: Path, precision: str, iterations: int | None, resolution: int | None) -> dict:
    import invpbr
    from invpbr.optimization import optimize
    from invpbr.problem import load_problem
    from invpbr.results import steady_seconds_per_iteration

    problem = load_problem(folder)
    problem.config.optimize.precision = precision
    if resolution:
        for est in problem.config.estimate:
            est.resolution = [resolution]
    if precision == "half":  # the scene's bitmaps are loaded in float16
        problem = _reload_half(folder, problem)
    problem.refresh_parameters()
    result = optimize(problem, iterations=iterations, progress=False)
    texture = next(p for p in problem.parameters if p.kind == "texture")
    return {"scene": folder.name, "precision": precision,
            "scene_dtype": type(problem.params[texture.key]).__name__,
            "resolution": list(result.estimates[texture.key].shape[:2]),
            "iterations": result.iterations,
            "error": result.errors.get(texture.key),
            "peak_memory_mb": result.peak_memory_mb,
            "seconds_per_iteration": steady_seconds_per_iteration(result.step_seconds)}


def _reload_half(folder: Path, problem):
    """The problem with its scene loaded with float16 bitmaps (load_problem does that
    when invpbr.toml says precision = "half"; here the toml is the shipped one)."""
    from invpbr.problem import load_scene
    import mitsuba as mi

    problem.scene = load_scene(folder / "scene.xml", bitmap_format="float16")
    problem.params = mi.traverse(problem.scene)
    return problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", type=Path)
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", choices=["single", "half"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.scene, args.child, args.iterations, args.resolution)))
        return
    rows = []
    for precision in ("single", "half"):
        cmd = [sys.executable, __file__, str(args.scene), "--child", precision]
        if args.iterations:
            cmd += ["--iterations", str(args.iterations)]
        if args.resolution:
            cmd += ["--resolution", str(args.resolution)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['scene']} {r['precision']:6s} ({r['scene_dtype']}, {r['resolution'][0]}x"
              f"{r['resolution'][1]}, {r['iterations']} it.): error {r['error']:.4f}, "
              f"peak {r['peak_memory_mb']:.0f} MiB, {1000 * r['seconds_per_iteration']:.0f} ms/it",
              flush=True)
    single, half = rows
    print(f"half / single: error {half['error'] / single['error']:.3f}, peak memory "
          f"{half['peak_memory_mb'] / single['peak_memory_mb']:.3f}, time "
          f"{half['seconds_per_iteration'] / single['seconds_per_iteration']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
