"""One scene's run that survives (``invpbr run``): checkpoints, ``--resume``,
SIGINT / SIGTERM, Mitsuba errors mid-run.

- Checkpoints go to ``OUT/checkpoint/`` (see
  :mod:`invpbr.optimization.checkpoint`); ``resume=True`` continues from one.
- The first SIGINT or SIGTERM lets the current step finish, then writes a
  checkpoint and the partial result (status ``interrupted``); the process
  exits 130 (SIGINT) or 143 (SIGTERM). A second signal during the final
  renders drops them: the estimates are saved without renders, still a
  valid result folder.
- A Mitsuba or Dr.Jit error mid-run ends the steps (status ``failed``),
  keeps the last checkpoint and the partial result, and says how to resume.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Callable

from .batch import FINISHED
from .signals import Signals


def resume_command(scene_dir, out: Path) -> str:
    return f"invpbr run {scene_dir} --out {out} --resume"


def run_guarded(problem, out: Path, *, scene_dir: str, iterations: int | None = None,
                resume: bool = False, progress: bool = True,
                callback: Callable | None = None, say: Callable[[str], None] = print):
    """Optimize ``problem`` with checkpoints in ``out``, handling signals and
    errors (see the module); the result (already saved in ``out``) and the
    exit code's signal (None when no signal stopped it)."""
    from ..optimization import records
    from ..optimization.loop import bare_result, finish_run, resume_run, run_steps, start_run
    from ..results.result import save_result

    with Signals() as signals, records.record_warnings() as caught:
        run = start_run(problem, iterations)
        if resume_run(run, out, resume=resume):
            say(f"{problem.name}: resuming at step {run.next_step} of {run.iterations} "
                f"from {run.checkpoints.path}")
        elif resume:
            say(f"{problem.name}: no checkpoint in {out}; starting from the beginning")
        run_steps(run, callback, progress, stop=signals)
        if run.status == "failed":
            print(f"invpbr run: error: {problem.name}: {run.error}", file=sys.stderr, flush=True)
        signals.urgent = True  # a second signal now drops the final renders
        before = len(signals.received)
        try:
            result = finish_run(run)
        except (KeyboardInterrupt, RuntimeError) as e:
            signals.urgent = False
            # (a KeyboardInterrupt raised while Dr.Jit or Mitsuba runs Python code
            # reaches here as their RuntimeError: a signal during the renders decides)
            if isinstance(e, RuntimeError) and len(signals.received) == before:
                run.status = "failed"
                run.error = run.error or f"final renders: {str(e).strip().splitlines()[0]}"
            else:
                run.status = "interrupted"
            say(f"{problem.name}: final renders dropped; saving the estimates only")
            result = bare_result(run)
        signals.urgent = False
        result.warnings = caught + result.warnings
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:  # (the result folder is written whole, without a signal in the middle)
            save_result(result, out)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if result.status not in ("completed", "stopped"):
        checkpoint = out / "checkpoint"
        if (checkpoint / "state.npz").is_file():
            say(f"{problem.name}: {result.status} at step {run.next_step} of {run.iterations}; "
                f"checkpoint in {checkpoint}; continue with: {resume_command(scene_dir, out)}")
    return result, (signals.received[0] if signals.received else None)


def exit_code(result, signum: int | None) -> int:
    """0 for a completed (or callback-stopped) run, 128 + the signal for one
    stopped by a signal, else 1."""
    if signum is not None and result.status == "interrupted":
        return 128 + int(signum)
    return 0 if result.status in ("completed", "stopped") else 1


def main_run(args, say: Callable[[str], None] = print) -> int:
    """``invpbr run`` (see :func:`invpbr.run.cli.build_parser`)."""
    from ..problem.folder import load_problem

    problem = load_problem(args.scene_dir, variant=args.variant)
    out = Path(args.out) if args.out else Path("out") / Path(args.scene_dir).resolve().name
    if getattr(args, "resume", False) and not (out / "checkpoint" / "state.npz").is_file() \
            and (out / "result.json").is_file():
        import json

        try:
            status = json.loads((out / "result.json").read_text()).get("status")
        except ValueError:
            status = None
        if status in FINISHED:
            done = "completed" if status == "completed" else f"finished ({status})"
            say(f"{problem.name}: already {done} in {out} (nothing to resume)")
            return 0
    if problem.config.reconstruct is not None:
        from .reconstruct_run import run_reconstruct

        return run_reconstruct(problem, args, out, resume_command(args.scene_dir, out))
    if args.spp is not None:
        problem.config.render.spp = args.spp
    if args.iterations is not None:  # recorded in result.json's settings
        problem.config.optimize.iterations = args.iterations
    live = server = None
    if args.watch:
        from ..results.live import LiveServer, LiveState

        live = LiveState(problem)
        server = LiveServer(live, port=args.port).start()
        say(f"live view: {server.url}")
    try:
        result, signum = run_guarded(problem, out, scene_dir=args.scene_dir,
                                     iterations=args.iterations, resume=args.resume,
                                     progress=not args.no_progress, callback=live, say=say)
        if live is not None:
            live.finish(result.status, out, result=result)
        print_run(result, out)
        if server is not None and sys.stdin.isatty() and signum is None:
            import time

            say(f"live view: {server.url} (the run is over; Ctrl-C stops serving)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        if server is not None:
            server.stop()
    return exit_code(result, signum)


def print_run(result, out: Path) -> None:
    from ..estimates import kind_class

    print(f"{result.name}: {result.status} after {result.iterations} iterations, "
          f"{result.seconds_per_iteration:.3f} s/iteration ({result.integrator}, {result.variant})")
    for key, value in result.estimates.items():
        shown = kind_class(result.kinds[key]).summary(key, value, result)
        err = f"   error {result.errors[key]:.4f}" if key in result.errors else ""
        more = "".join(f", {name} {v:.4g}" for name, v in result.geometry_errors.get(key, {}).items())
        print(f"  {key} = {shown}{err}{more}")
    for name, errors in (("camera", result.camera_errors), ("start", result.camera_errors_initial)):
        if errors:
            pos = [e["position"] for e in errors.values()]
            rot = [e["rotation_deg"] for e in errors.values()]
            print(f"  {name} errors: rotation mean {sum(rot) / len(rot):.3f} deg (max {max(rot):.3f}), "
                  f"position mean {sum(pos) / len(pos):.4f} (max {max(pos):.4f})")
    if result.gains:
        worst = f", error max {max(result.gain_errors.values()):.3f}" if result.gain_errors else ""
        print(f"  gains of {len(result.gains)} photos: "
              f"{min(g.min() for g in result.gains.values()):.3f} .. "
              f"{max(g.max() for g in result.gains.values()):.3f}{worst}")
    for w in result.warnings:  # what best-state keeping put back (optimization/watch.py)
        if "diverged:" in w or "best state kept" in w:
            print(f"  warning: {w.split(': ', 1)[-1] if w.startswith('UserWarning') else w}")
    print(f"wrote {out / 'result.json'} and {out / 'report.html'}")
