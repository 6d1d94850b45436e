"""Radiance fields on photo collections (issue 15): a plain field against
``[field] appearance = "affine"``, ``transient = true`` and both, on one
capture-simulator folder (exposure within +-1 stop, white balance, person-
sized blobs in a third of the photos; invpbr.testing.field_captures).

Usage::

    python benchmarks/field_options.py OUT [--size 48] [--views 40] [--iterations 400]

Prints per variant: held-out PSNR at the neutral appearance against the
clean truth (linear, clipped, mean over the held-out views), NeRF-W's
half-image score where the field has an appearance, wall and CPU seconds.
"""

from __future__ import annotations

import time

import numpy as np
from common import cpu_seconds, field_variants_parser

VARIANTS = {"plain": "", "affine": 'appearance = "affine"\n', "transient": "transient = true\n",
            "both": 'appearance = "affine"\ntransient = true\n'}


def main() -> None:
    parser = field_variants_parser(
        VARIANTS, size=48, views=40, held_out=5, iterations=400, resolution="[24, 32, 48]")
    args = parser.parse_args()

    import invpbr  # noqa: F401  (sets up LLVM for Dr.Jit before anything else)
    from invpbr.backend import init_backend
    from invpbr.capture import images
    from invpbr.results.evaluate import psnr
    from invpbr.testing.field_captures import fit_with_settings, make_capture_folder

    init_backend()
    capture = args.out / "capture"
    if not (capture / "invpbr.toml").is_file():
        make_capture_folder(capture, size=args.size, views=args.views, held_out=args.held_out,
                            spp=64, seed=0)
    for name in args.variants.split(","):
        wall, c0 = time.perf_counter(), cpu_seconds()
        problem, result = fit_with_settings(
            capture, f"resolution = {args.resolution}\n" + VARIANTS[name], args.out / name,
            f"\n[optimize]\niterations = {args.iterations}\n\n[report]\ngradients = false\n")
        wall, used = time.perf_counter() - wall, cpu_seconds() - c0
        held = [v.id for v in problem.views if v.held_out]
        score = np.mean([psnr(result.renders[v], images.load_image(capture / "truth" / f"{v}.exr"))
                         for v in held])
        half = result.novel_view_appearance.get("mean")
        print(f"{name:9s} held-out PSNR vs clean truth {score:6.2f} dB"
              + (f", NeRF-W half-image {half:6.2f} dB" if half is not None else "")
              + f"  ({wall:.0f} s wall, {used:.0f} s CPU)", flush=True)


if __name__ == "__main__":
    main()
