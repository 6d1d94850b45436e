"""Is the truth the minimum? The loss of a synthetic scene's photos against nearly
noise-free renders of its truth and of estimated scenes.

An estimate that ends away from the truth either stopped short of the loss's minimum
(the estimator's fault) or found it (the photos' fault: their own noise, clipping or
quantization put the minimum of the loss elsewhere). This renders ``truth.xml`` and the
``scene.xml`` of each result folder given, every view at ``--spp`` (the scene's own
integrator, as the photos were made), twice with independent samples, and prints the
mean L1 and L2 difference to the photos over the views' loss pixels (clipped pixels as
the folder's ``[photos] clipped`` setting counts them), and each scene's difference
from the truth's in each draw (paired: the same samples, so most of the renders' own
noise cancels). Where an estimate's loss is below the truth's in both draws, the
photos' loss has its minimum away from the truth: no estimator of that loss would end
at the truth from these photos.

    python benchmarks/truth_loss.py SCENE_FOLDER RESULT_FOLDER [RESULT_FOLDER ...] [--spp 4096] [--near-clip 3]

Where the photos' clipped pixels are left out, the pixels the clip leaves near it are
the low draws of the photos' noise, so that loss too has its minimum off the truth
(lamps and objects turned toward darkening them). ``--near-clip K`` also leaves out the
pixels that the truth's own render (not the photo) shows within ``K`` robust standard
deviations of the residuals below the clip (the polish's first rule, with ``K = 3``; the
polish now reads how far down off the photos' own clipping, BENCHMARKS.md).

(``robustness.py --keep DIR`` keeps the benchmark's scene folders and results.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import invpbr  # noqa: E402  (first: it chooses the LLVM Dr.Jit loads)


def renders(scene_file: Path, views, spp: int, seed: int) -> dict:
    """``scene_file``'s renders of ``views`` (view id -> (H, W, 3) linear RGB)."""
    import mitsuba as mi

    from invpbr.problem.scene import load_scene

    scene = load_scene(scene_file)
    integrator = scene.integrator() or mi.load_dict({"type": "path"})
    index = {s.id(): i for i, s in enumerate(scene.sensors())}
    out = {}
    for view in views:
        if view.id not in index:
            raise ValueError(f"{scene_file}: no sensor {view.id!r} (the photo's)")
        out[view.id] = np.array(mi.render(scene, sensor=index[view.id], integrator=integrator,
                                          spp=spp, seed=seed), np.float64)[..., :3]
    return out


def near_clip(problem, truth: dict, k: float) -> tuple[dict, float]:
    """The pixels to leave out near the clip, chosen by the truth's render (as the
    polish's first rule chose them by its own render): view id -> (H, W) bool of
    pixels whose truth renders within ``k`` robust
    standard deviations of the residuals below ``[photos] saturation`` (only views whose
    photo has clipped channels); and that threshold."""
    saturation = float(problem.config.photos.saturation)
    views = [v for v in problem.views if not v.held_out and v.clipped is not None]
    band = [(v.photo[..., :3] - truth[v.id])[v.mask][
        (truth[v.id][v.mask] >= 0.5 * saturation) & (truth[v.id][v.mask] < saturation)]
        for v in views]
    band = np.concatenate(band) if band else np.zeros(0)
    if band.size == 0:
        return {}, saturation
    threshold = saturation - k * 1.4826 * float(np.median(np.abs(band - np.median(band))))
    return {v.id: (truth[v.id] >= threshold).any(axis=-1) for v in views}, threshold


def losses(problem, scene_file: Path, spp: int, seed: int,
           left_out: dict | None = None) -> tuple[float, float]:
    """Mean L1 and L2 difference between ``scene_file``'s renders of the fitted views
    and their photos (``left_out``: view id -> pixels not counted, besides the mask)."""
    views = [v for v in problem.views if not v.held_out]
    images = renders(scene_file, views, spp, seed)
    bound = problem.clipped_bounds()
    l1, l2 = [], []
    for view in views:
        image = images[view.id]
        mask, ceiling = view.loss_pixels(bound)
        if left_out and view.id in left_out:
            mask = (np.ones(image.shape[:2], bool) if mask is None else mask) & ~left_out[view.id]
        image = image if ceiling is None else np.minimum(image, ceiling)
        diff = image - view.photo[..., :3]
        diff = diff[mask] if mask is not None else diff.reshape(-1, 3)
        l1.append(float(np.abs(diff).mean()))
        l2.append(float((diff * diff).mean()))
    return float(np.mean(l1)), float(np.mean(l2))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="scene folder with truth.xml and photos")
    parser.add_argument("results", type=Path, nargs="*", help="result folders (their scene.xml)")
    parser.add_argument("--spp", type=int, default=4096,
                        help="samples per pixel of each render (default 4096)")
    parser.add_argument("--near-clip", type=float, default=None, metavar="K",
                        help="also leave out the pixels whose truth renders within K robust "
                             "standard deviations of the residuals below the clip (the "
                             "polish's first rule, K = 3; it now reads how far down off "
                             "the photos' clipping instead)")
    args = parser.parse_args(argv)
    problem = invpbr.load_problem(args.folder)
    files = [("truth", args.folder / "truth.xml")]
    files += [(str(r), r / "scene.xml") for r in args.results]
    for name, path in files:
        if not path.is_file():
            parser.error(f"{path}: no such scene file")
    left_out, note = None, ""
    if args.near_clip is not None:
        fitted = [v for v in problem.views if not v.held_out]
        left_out, threshold = near_clip(problem, renders(files[0][1], fitted, args.spp, 3),
                                        args.near_clip)
        share = sum(m.sum() for m in left_out.values()) / sum(v.photo[..., 0].size for v in fitted)
        note = f"; pixels the truth renders above {threshold:.3f} left out ({share:.1%})"
    rows = {name: [losses(problem, path, args.spp, seed, left_out) for seed in (1, 2)]
            for name, path in files}
    truth = rows["truth"]
    print(f"{args.folder}: mean over {sum(not v.held_out for v in problem.views)} views, "
          f"{args.spp} spp, two sample draws{note}")
    print(f"{'scene':<40} {'L1 (draw 1, 2)':>24} {'L2 (draw 1, 2)':>26} "
          f"{'L1 - truth (draw 1, 2)':>24}")
    for name, (a, b) in rows.items():
        print(f"{name[-40:]:<40} {a[0]:>11.6f} {b[0]:>11.6f}  {a[1]:>12.7f} {b[1]:>12.7f} "
              f"{a[0] - truth[0][0]:>+11.2e} {b[0] - truth[1][0]:>+11.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
