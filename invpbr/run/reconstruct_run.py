"""``invpbr run`` on a folder with a ``[reconstruct]`` table (see :mod:`invpbr.reconstruct`)."""

from __future__ import annotations

from pathlib import Path


def run_reconstruct(problem, args, out: Path, continue_with: str) -> int:
    """Reconstruct the object of ``problem`` and write its result folder; the
    exit code: 0 completed, 1 when the result is no better than the hull,
    128 + the signal's number when SIGINT / SIGTERM stopped it (the first one
    lets the current step finish; the state reached is written, status
    ``interrupted``). Checkpoints go to ``OUT/checkpoint/`` after the hull and
    after every stage (see :mod:`invpbr.reconstruct.checkpoint`); ``--resume``
    goes on from one; a completed run drops it. ``out``: the result folder;
    ``continue_with``: the command that resumes it (printed when interrupted)."""
    import signal

    from ..reconstruct import reconstruct, save_reconstruction
    from ..reconstruct.checkpoint import ReconstructCheckpoints
    from .signals import Signals

    if args.iterations is not None:
        problem.config.reconstruct.iterations = args.iterations
    if args.spp is not None:
        problem.config.reconstruct.spp = args.spp
    checkpoints = ReconstructCheckpoints.for_out(out)
    resume = bool(getattr(args, "resume", False))
    if resume and not checkpoints.path.is_file():
        print(f"{problem.name}: no checkpoint in {out}; starting from the beginning")
    with Signals() as signals:
        rec = reconstruct(problem, progress=not args.no_progress, stop=signals,
                          checkpoints=checkpoints, resume=resume)
        cfg = problem.config.reconstruct
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:  # (the result folder is written whole, without a signal in the middle)
            save_reconstruction(rec, out, [v.camera for v in problem.views],
                                max_depth=cfg.max_depth, texture_resolution=cfg.texture_resolution)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    print(f"{rec.name}: {rec.status} in {rec.seconds['total']:.0f} s; wrote {out}")
    if rec.status == "interrupted":
        if checkpoints.path.is_file():
            print(f"{rec.name}: checkpoint in {checkpoints.path.parent}; continue with: "
                  f"{continue_with}")
    else:
        checkpoints.drop()
    if rec.status == "interrupted" and signals.received:
        return signals.exit_code
    return 0 if rec.status == "completed" else 1
