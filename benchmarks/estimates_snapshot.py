"""Snapshot the estimates of every shipped scene after a few iterations, or
compare against an earlier snapshot: the check that a refactoring changed no
behaviour ("estimates at the same seed are equal to before").

    python benchmarks/estimates_snapshot.py --iterations 8 --out before.npz
    python benchmarks/estimates_snapshot.py --iterations 8 --out before2.npz   # same code
    ... change the code ...
    python benchmarks/estimates_snapshot.py --iterations 8 --compare before.npz --noise before2.npz

Two runs of the same code already differ (texture and envmap gradients are
accumulated with atomics from several threads, and Adam's normalised steps
amplify the rounding on texels that get little gradient): ``--noise`` gives
a second snapshot of the old code, and a key counts as equal when it differs
from the first by at most twice what the two old runs differ by (or 1e-6).

Uses only the public API (``invpbr.load_problem``, ``invpbr.optimize``), so one
script serves both sides of a change.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

import invpbr

ROOT = Path(__file__).resolve().parent.parent


def snapshot(scenes: list[Path], iterations: int) -> dict[str, np.ndarray]:
    out = {}
    for folder in scenes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            problem = invpbr.load_problem(folder)
            result = invpbr.optimize(problem, iterations=iterations, progress=False)
        for key, value in result.estimates.items():
            out[f"{folder.name}/{key}"] = np.asarray(value, dtype=np.float64)
        out[f"{folder.name}/loss"] = np.asarray(result.loss, dtype=np.float64)
        print(f"{folder.name}: {result.status}, {len(result.loss)} steps, "
              f"loss {result.loss[-1] if result.loss else float('nan'):.6g}", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenes", nargs="*", help="scene folders (default: every shipped scene)")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--out", help="write the snapshot here (.npz)")
    parser.add_argument("--compare", help="compare with this snapshot (.npz)")
    parser.add_argument("--noise", help="a second snapshot of the same code as --compare: "
                        "the run-to-run difference that counts as equal")
    args = parser.parse_args(argv)
    scenes = [Path(s) for s in args.scenes] or sorted(
        p for p in (ROOT / "scenes").iterdir() if (p / "invpbr.toml").is_file())
    now = snapshot(scenes, args.iterations)
    if args.out:
        np.savez(args.out, **now)
    if not args.compare:
        return 0
    before = dict(np.load(args.compare))
    noise = dict(np.load(args.noise)) if args.noise else {}
    worst = 0.0
    unequal = []
    for key in sorted(set(before) | set(now)):
        if key not in before or key not in now:
            print(f"{key}: only in {'now' if key in now else 'before'}")
            worst = float("inf")
            continue
        a, b = before[key], now[key]
        if a.shape != b.shape:
            print(f"{key}: shape {a.shape} before, {b.shape} now")
            worst = float("inf")
            continue
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        worst = max(worst, diff / max(scale, 1e-12))
        floor = None
        if key in noise and noise[key].shape == a.shape and a.size:
            floor = float(np.max(np.abs(noise[key] - a)))
            if diff > max(2 * floor, 1e-6):
                unequal.append(key)
        print(f"{key}: max |difference| {diff:.3g} (largest value {scale:.3g})"
              + ("" if floor is None else f", two runs of the old code: {floor:.3g}"))
    print(f"largest relative difference: {worst:.3g}")
    if noise:
        print("beyond twice the run-to-run difference: " + (", ".join(unequal) or "none"))
    return 1 if unequal else 0


if __name__ == "__main__":
    sys.exit(main())
