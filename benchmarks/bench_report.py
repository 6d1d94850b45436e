"""What seeing a run costs: the per-step trajectory record, a live view, the
start renders and gradient images, and writing report.html.

For each scene folder, in one process and alternating (so that other jobs on
the machine weigh on every variant alike), the steady time per step
(after 3 warm-up steps) of:

- ``bare``: the loop with the trajectory record switched off (patched out);
- ``recorded``: the loop as shipped (trajectory recorded every step);
- ``live``: as shipped, with :class:`invpbr.results.live.LiveState` as the
  callback (renders of up to 4 views every 2 s; the page's server is not
  started: serving is a thread that answers requests);

and, once, the seconds before the loop (start renders, gradient images at the
start) and after it (final renders, evaluation, gradient images at the end),
and the seconds ``save_result`` takes with and without its report.

    python benchmarks/bench_report.py scenes/principled_sphere scenes/object_pose --iterations 40
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import invpbr  # noqa: E402
from common import run  # noqa: E402

ROUNDS = 2


def steady(result) -> float:
    from invpbr.results.result import steady_seconds_per_iteration

    return steady_seconds_per_iteration(result.step_seconds) or float("nan")


def bench_scene(folder: Path, iterations: int | None, spp: int | None) -> dict:
    from invpbr.optimization import records
    from invpbr.results import result as result_module
    from invpbr.results.live import LiveState

    record = records.Trajectory.record
    times: dict[str, list[float]] = {"bare": [], "recorded": [], "live": []}
    last = None
    for _ in range(ROUNDS):
        for variant in times:
            problem = invpbr.load_problem(folder)
            if spp is not None:
                problem.config.render.spp = spp
            records.Trajectory.record = (lambda self, store: None) if variant == "bare" else record
            callback = LiveState(problem) if variant == "live" else None
            try:
                last = invpbr.optimize(problem, iterations=iterations or 40, progress=False,
                                       callback=callback)
            finally:
                records.Trajectory.record = record
            times[variant].append(steady(last))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        invpbr.save_result(last, Path(tmp) / "with")
        with_report = time.perf_counter() - start
        import invpbr.results.report as report_module

        write = report_module.write_report
        report_module.write_report = lambda folder: None
        try:
            start = time.perf_counter()
            result_module.save_result(last, Path(tmp) / "without")
            without = time.perf_counter() - start
        finally:
            report_module.write_report = write
    best = {k: min(v) for k, v in times.items()}
    return {"scene": folder.name, "ms_per_step": {k: 1000 * v for k, v in best.items()},
            "recorded_over_bare": best["recorded"] / best["bare"],
            "live_over_bare": best["live"] / best["bare"],
            "before_loop_s": last.timings.get("before_loop"),
            "after_loop_s": last.timings.get("after_loop"),
            "save_s": with_report, "save_without_report_s": without,
            "gradient_images": len(last.gradient_images)}


def report(row: dict) -> None:
    ms = row["ms_per_step"]
    print(f"{row['scene']}: ms/step bare {ms['bare']:.1f}, recorded {ms['recorded']:.1f} "
          f"({row['recorded_over_bare']:.3f}x), live {ms['live']:.1f} ({row['live_over_bare']:.3f}x); "
          f"before loop {row['before_loop_s']:.2f} s, after loop {row['after_loop_s']:.2f} s "
          f"({row['gradient_images']} gradient images); save {row['save_s']:.2f} s "
          f"(without report {row['save_without_report_s']:.2f} s)", flush=True)


if __name__ == "__main__":
    run(__doc__.splitlines()[0], bench_scene, report)
