"""Radiance fields in time (issue 15): a static field against ``[field] time
= true`` on the moving-object folder of invpbr.testing.field_captures (a
sphere moving along x, a box growing; one photo per moment from cameras
spread around it; held-out (view, time) pairs).

Usage::

    python benchmarks/field_time.py OUT [--size 24] [--views 30] [--iterations 250]
        [--resolution "[12, 16]"] [--variants static,time] [--extra "time_slices = 8"]

Prints per variant: held-out PSNR (linear, from the fit's result, mean over
the held-out views), the gain over the static field, wall and CPU seconds.
"""

from __future__ import annotations

import time

import numpy as np
from common import cpu_seconds, field_variants_parser

VARIANTS = {"static": "", "time": "time = true\n"}
SETTINGS = "batch_rays = 1024\nsh_degree = 1\noccupancy_warmup = 20\noccupancy_every = 8\n"


def main() -> None:
    parser = field_variants_parser(
        VARIANTS, size=24, views=30, held_out=4, iterations=250, resolution="[12, 16]")
    parser.add_argument("--seed", type=int, default=0, help="[optimize] seed")
    parser.add_argument("--extra", action="append", default=[],
                        help="NAME=SETTINGS: a further variant (settings joined by ';')")
    args = parser.parse_args()

    import invpbr  # noqa: F401  (sets up LLVM for Dr.Jit before anything else)
    from invpbr.backend import init_backend
    from invpbr.results.evaluate import psnr
    from invpbr.testing.field_captures import fit_with_settings, make_moving_folder

    init_backend()
    variants = dict(VARIANTS)
    for spec in args.extra:
        name, _, settings = spec.partition("=")
        variants[name] = settings.replace(";", "\n") + "\n"
    capture = args.out / f"capture_{args.size}_{args.views}"
    if not (capture / "invpbr.toml").is_file():
        make_moving_folder(capture, size=args.size, views=args.views, held_out=args.held_out,
                           spp=16, distance=1.8)
    static = None
    for name in args.variants.split(","):
        wall, c0 = time.perf_counter(), cpu_seconds()
        problem, result = fit_with_settings(
            capture, f"resolution = {args.resolution}\n" + SETTINGS + variants[name],
            args.out / name, f"\n[optimize]\niterations = {args.iterations}\nloss = \"l2\"\n"
            f"seed = {args.seed}\n\n[report]\ngradients = false\n")
        wall, used = time.perf_counter() - wall, cpu_seconds() - c0
        score = float(np.mean(list(result.novel_view_psnr.values())))
        fitted = float(np.mean([psnr(result.renders[v.id], v.photo) for v in problem.views
                                if not v.held_out and v.id in result.renders]))
        static = score if name == "static" else static
        gain = f", {score - static:+.2f} dB over static" if static is not None else ""
        print(f"{name:10s} held-out PSNR {score:6.2f} dB{gain} (fitted {fitted:.2f} dB)  ({wall:.0f} s wall, "
              f"{used:.0f} s CPU)", flush=True)


if __name__ == "__main__":
    main()
