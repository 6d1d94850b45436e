"""Radiance fields: empty-space skipping (the occupancy grid, NerfAcc-style)
on against off, on the same field folder, settings and iterations.

Both runs use the folder's ``[field]`` settings through ``invpbr``'s API
(``load_problem`` -> ``optimize``); only ``[field] occupancy`` differs. The
runs alternate in one process (``--repeats``), so that a shared machine's
load falls on both alike.

Usage::

    python benchmarks/fields.py scenes/field_object [--iterations N] [--json out.json]

Prints per run: steady seconds per step (after the first 3), the mean
number of samples evaluated with gradients per step, the held-out PSNR
and SSIM (sRGB, as NeRF papers report), and the ratio of step times.

Not measured here: Mitsuba's radiance-field tutorial method on the same
folder (the issue's "plain way"); see BENCHMARKS.md.
"""

from __future__ import annotations

import time
from pathlib import Path

from invpbr.optimization.loop import finish_run, run_steps, start_run

import numpy as np

import invpbr
from invpbr.results import steady_seconds_per_iteration

from common import run


def fit(folder: Path, iterations: int | None, occupancy: bool) -> dict:
    problem = invpbr.load_problem(folder)
    problem.config.field.occupancy = occupancy
    problem.config.report.gradients = False
    if iterations:
        problem.config.optimize.iterations = iterations
    start = time.perf_counter()
    run_ = start_run(problem, iterations)
    field = next(e for e in run_.estimates if e.kind == "field")
    run_steps(run_, None, progress=False)
    result = finish_run(run_)
    wall = time.perf_counter() - start
    scores = result.novel_view_srgb.get("mean", {})
    return {"occupancy": occupancy, "iterations": result.iterations,
            "seconds_per_step": steady_seconds_per_iteration(result.step_seconds),
            "loop_seconds": float(np.sum(result.step_seconds)), "wall_seconds": wall,
            "samples_per_step": float(np.mean(field.samples)) if field.samples else None,
            "occupied_fraction": field.occupancy.fraction if field.occupancy else 1.0,
            "held_out_psnr": scores.get("psnr"), "held_out_ssim": scores.get("ssim")}


def bench_scene(folder: Path, iterations: int | None, spp: int | None, repeats: int = 1) -> dict:
    rows = []
    for _ in range(repeats):
        for occupancy in (True, False):
            rows.append(fit(folder, iterations, occupancy))
    on = [r for r in rows if r["occupancy"]]
    off = [r for r in rows if not r["occupancy"]]
    ratio = np.mean([r["seconds_per_step"] for r in off]) / np.mean(
        [r["seconds_per_step"] for r in on])
    return {"scene": str(folder), "runs": rows, "speedup_on_vs_off": float(ratio),
            "psnr_on_minus_off": float(np.mean([r["held_out_psnr"] for r in on])
                                       - np.mean([r["held_out_psnr"] for r in off]))}


def report(row: dict) -> None:
    print(row["scene"])
    for r in row["runs"]:
        print(f"  occupancy {'on ' if r['occupancy'] else 'off'}: {r['seconds_per_step']:.3f} s/step "
              f"(loop {r['loop_seconds']:.0f} s, {r['iterations']} steps), "
              f"{r['samples_per_step']:.0f} samples/step, {100 * r['occupied_fraction']:.0f}% "
              f"occupied, held-out PSNR {r['held_out_psnr']:.2f} dB, SSIM {r['held_out_ssim']:.3f}")
    print(f"  speed-up on/off {row['speedup_on_vs_off']:.2f}x, PSNR on - off "
          f"{row['psnr_on_minus_off']:+.2f} dB")


if __name__ == "__main__":
    run(__doc__.splitlines()[0], bench_scene, report)
