"""``invpbr run`` on a folder with a ``[reconstruct]`` table (see :mod:`invpbr.reconstruct`)."""

from __future__ import annotations

from pathlib import Path


def run_reconstruct(problem, args) -> int:
    """Reconstruct the object of ``problem`` and write its result folder; the
    exit code: 0 completed, 1 when the result is no better than the hull."""
    from ..reconstruct import reconstruct, save_reconstruction

    if args.iterations is not None:
        problem.config.reconstruct.iterations = args.iterations
    if args.spp is not None:
        problem.config.reconstruct.spp = args.spp
    out = Path(args.out) if args.out else Path("out") / Path(args.scene_dir).resolve().name
    rec = reconstruct(problem, progress=not args.no_progress)
    cfg = problem.config.reconstruct
    save_reconstruction(rec, out, [v.camera for v in problem.views], max_depth=cfg.max_depth,
                        texture_resolution=cfg.texture_resolution)
    print(f"{rec.name}: {rec.status} in {rec.seconds['total']:.0f} s; wrote {out}")
    return 0 if rec.status == "completed" else 1
