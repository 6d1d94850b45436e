"""Radiance fields: the hash-grid model (``[field] model = "hash"``) against
the dense grid (``model = "grid"``), on the same field folder, settings and
iterations, one after the other in one process.

Usage::

    python benchmarks/field_models.py scenes/field_object [--iterations N] [--json out.json]

Prints per model: CPU seconds of the run (user + sys of this process, which
a shared machine's load does not inflate as it does wall time), wall
seconds, steady seconds per step, held-out PSNR and SSIM (sRGB), and the
ratio of CPU seconds hash / grid.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

import invpbr
from invpbr.results import steady_seconds_per_iteration

from common import run


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def fit(folder: Path, iterations: int | None, model: str) -> dict:
    problem = invpbr.load_problem(folder)
    problem.config.field.model = model
    problem.config.report.gradients = False
    if iterations:
        problem.config.optimize.iterations = iterations
    cpu, wall = cpu_seconds(), time.perf_counter()
    result = invpbr.optimize(problem, progress=False)
    scores = result.novel_view_srgb.get("mean", {})
    return {"model": model, "iterations": result.iterations,
            "cpu_seconds": cpu_seconds() - cpu, "wall_seconds": time.perf_counter() - wall,
            "seconds_per_step": steady_seconds_per_iteration(result.step_seconds),
            "held_out_psnr": scores.get("psnr"), "held_out_ssim": scores.get("ssim")}


def bench_scene(folder: Path, iterations: int | None, spp: int | None) -> dict:
    rows = [fit(folder, iterations, model) for model in ("grid", "hash")]
    grid, hashed = rows
    return {"scene": str(folder), "runs": rows,
            "cpu_ratio_hash_vs_grid": hashed["cpu_seconds"] / grid["cpu_seconds"],
            "psnr_hash_minus_grid": float(np.subtract(hashed["held_out_psnr"],
                                                      grid["held_out_psnr"]))}


def report(row: dict) -> None:
    print(row["scene"])
    for r in row["runs"]:
        print(f"  {r['model']:4s}: {r['cpu_seconds']:.0f} s CPU, {r['wall_seconds']:.0f} s wall, "
              f"{r['seconds_per_step']:.3f} s/step ({r['iterations']} steps), held-out PSNR "
              f"{r['held_out_psnr']:.2f} dB, SSIM {r['held_out_ssim']:.3f}")
    print(f"  CPU time hash / grid {row['cpu_ratio_hash_vs_grid']:.2f}x, PSNR hash - grid "
          f"{row['psnr_hash_minus_grid']:+.2f} dB")


if __name__ == "__main__":
    run(__doc__.splitlines()[0], bench_scene, report)
