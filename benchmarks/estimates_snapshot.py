"""Snapshot the estimates of every shipped scene after a few iterations, or
compare against an earlier snapshot: the check that a refactoring changed no
behaviour ("estimates at the same seed are equal to before").

    python benchmarks/estimates_snapshot.py --iterations 8 --out before.npz
    ... change the code ...
    python benchmarks/estimates_snapshot.py --iterations 8 --compare before.npz

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
    args = parser.parse_args(argv)
    scenes = [Path(s) for s in args.scenes] or sorted(
        p for p in (ROOT / "scenes").iterdir() if (p / "invpbr.toml").is_file())
    now = snapshot(scenes, args.iterations)
    if args.out:
        np.savez(args.out, **now)
    if not args.compare:
        return 0
    before = dict(np.load(args.compare))
    worst = 0.0
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
        print(f"{key}: max |difference| {diff:.3g} (largest value {scale:.3g})")
    print(f"largest relative difference: {worst:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
