"""A multi-scale radiance field (issue 15, ``[field] multiscale = true``) in
Mip-NeRF's multi-scale protocol: every view of the synthetic object at full,
1/2, 1/4 and 1/8 resolution (box-filtered from the full render), fitted at
all four (invpbr.testing.field_multiscale), against the same field without
footprints.

Usage::

    python benchmarks/field_multiscale.py OUT [--size 64] [--views 40] [--iterations 400]
        [--model grid|hash] [--resolution "[24, 48]"] [--batch-rays 4096] [--bounds "[[..], [..]]"]

Prints per variant the held-out mean squared error (linear RGB clipped to
[0, 1]) at each scale, its mean over the scales and the PSNR of that mean,
wall and CPU seconds. Variants: ``plain`` (one ray per pixel centre at
evaluation, Mip-NeRF's protocol), ``plain_spp4`` (the plain field rendered
with 4 jittered rays per pixel, invpbr's default ``[field] spp``: a
supersampled baseline) and ``multiscale``; the ratio of the multi-scale
field's mean error to each baseline's.
"""

from __future__ import annotations

import math
import time

import numpy as np
from common import cpu_seconds, field_variants_parser

VARIANTS = {"plain": "spp = 1\n", "plain_spp4": "spp = 4\n", "multiscale": "multiscale = true\n"}


def main() -> None:
    parser = field_variants_parser(
        VARIANTS, size=64, views=40, held_out=5, iterations=400, resolution="[24, 48]")
    parser.add_argument("--distance", type=float, default=1.8)
    parser.add_argument("--model", default="grid", choices=("grid", "hash"))
    parser.add_argument("--batch-rays", type=int, default=4096)
    parser.add_argument("--bounds", default=None, help="the box, as field.bounds (default: auto)")
    args = parser.parse_args()

    import invpbr  # noqa: F401  (sets up LLVM for Dr.Jit before anything else)
    from invpbr.backend import init_backend
    from invpbr.testing.field_captures import fit_with_settings
    from invpbr.testing.field_multiscale import make_multiscale_folder, scale_errors

    init_backend()
    capture = args.out / "capture"
    if not (capture / "invpbr.toml").is_file():
        make_multiscale_folder(capture, size=args.size, views=args.views,
                               held_out=args.held_out, spp=64, distance=args.distance)
    means = {}
    for name in args.variants.split(","):
        settings = (f"model = \"{args.model}\"\nresolution = {args.resolution}\n"
                    f"batch_rays = {args.batch_rays}\nbackground = \"learned\"\n"
                    + (f"bounds = {args.bounds}\n" if args.bounds else "") + VARIANTS[name])
        wall, c0 = time.perf_counter(), cpu_seconds()
        problem, result = fit_with_settings(
            capture, settings, args.out / name,
            f"\n[optimize]\niterations = {args.iterations}\n\n[report]\ngradients = false\n")
        wall, used = time.perf_counter() - wall, cpu_seconds() - c0
        errors = scale_errors(result, problem)
        means[name] = float(np.mean(list(errors.values())))
        per = ", ".join(f"1/{f} {e * 1e3:.3f}" for f, e in errors.items())
        print(f"{name:10s} held-out MSE x1e3: {per}; mean {means[name] * 1e3:.3f} "
              f"({-10 * math.log10(means[name]):.2f} dB)  ({wall:.0f} s wall, {used:.0f} s CPU)",
              flush=True)
    if "multiscale" in means:
        for base in ("plain", "plain_spp4"):
            if base in means:
                print(f"multiscale / {base} mean MSE: {means['multiscale'] / means[base]:.3f}")


if __name__ == "__main__":
    main()
