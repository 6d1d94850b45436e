"""invpbr against the plain-Mitsuba loop, on the same scene, photos, spp and iterations.

The plain loop is what a user writes from Mitsuba's inverse-rendering
tutorials: ``mi.traverse`` + ``params.keep``, ``mi.ad.Adam``, one
``mi.render(scene, params, sensor=i, spp=..., seed=...)`` per view (the scene's
fitted views; with ``views_per_step``, that many drawn at random per step), the
scene's L1 or L2 loss, ``dr.backward``, ``opt.step()``, clipping,
``params.update(opt)``. Texture
stages and regularizers are left out of it (a tutorial loop has none), so on
texture scenes the comparison favours neither in time but may differ in error.

Usage::

    python benchmarks/bench_material.py scenes/cornell scenes/principled_sphere \
        scenes/textured_object [--iterations 100] [--spp N] [--json out.json]

Prints, per scene: seconds per iteration (steady state: after 3 warm-up steps)
and final mean absolute error per parameter for the plain loop, ``invpbr run``
as configured (``dr.freeze`` on where it applies, the default), and invpbr
traced (``[optimize] freeze = false``); and the ratios invpbr / plain of the
time per iteration.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import invpbr
from invpbr.estimates import parameter_error
from invpbr.results import steady_seconds_per_iteration

from common import plain_scene_and_photos, run


def plain_mitsuba_loop(folder: Path, iterations: int, spp: int, lr: float, max_depth: int,
                       bounds: dict[str, tuple[float, float]], lrs: dict[str, float], loss: str,
                       views: list[int], per_step: int):
    """``views``: the sensors to fit (held-out ones left out); ``per_step`` of them,
    drawn at random, per step."""
    import drjit as dr
    import mitsuba as mi

    scene, refs = plain_scene_and_photos(folder)
    rng = np.random.default_rng(0)
    integrator = mi.load_dict({"type": "prb", "max_depth": max_depth})
    params = mi.traverse(scene)
    keys = list(bounds)
    params.keep(keys)
    opt = mi.ad.Adam(lr=lr)
    for k in keys:
        opt[k] = params[k]
        if k in lrs:
            opt.set_learning_rate({k: lrs[k]})
    params.update(opt)
    step_seconds = []
    for it in range(iterations):
        start = time.perf_counter()
        chosen = views if per_step == len(views) else rng.choice(views, per_step, replace=False)
        for i in chosen:
            img = mi.render(scene, params, sensor=int(i), integrator=integrator, spp=spp,
                            seed=it * len(refs) + int(i))
            diff = img - refs[i]
            err = dr.abs(diff) if loss == "l1" else dr.square(diff)  # the scene's l1 or l2
            dr.backward(dr.mean(err, axis=None) / len(chosen))
        opt.step()
        for k in keys:
            lo, hi = bounds[k]
            opt[k] = dr.clip(opt[k], lo, hi)
        params.update(opt)
        dr.eval(*[params[k] for k in keys])
        dr.sync_thread()
        step_seconds.append(time.perf_counter() - start)
    return step_seconds, {k: np.array(params[k], dtype=np.float32) for k in keys}


def bench_scene(folder: Path, iterations: int | None, spp: int | None) -> dict:
    problem = invpbr.load_problem(folder)
    cfg = problem.config
    iterations = iterations or cfg.optimize.iterations
    spp = spp or cfg.render.spp
    cfg.render.spp = spp
    bounds = {p.key: p.config.bounds or (-1e30, 1e30) for p in problem.parameters}
    lrs = {p.key: p.config.lr for p in problem.parameters if p.config.lr is not None}
    truth = problem.truth

    views = [v.index for v in problem.views if not v.held_out]
    per_step = min(cfg.optimize.views_per_step or len(views), len(views))
    plain_steps, plain_est = plain_mitsuba_loop(folder, iterations, spp, cfg.optimize.lr,
                                                cfg.render.max_depth, bounds, lrs,
                                                cfg.optimize.loss, views, per_step)
    result = invpbr.optimize(problem, iterations=iterations, progress=False)
    traced_problem = invpbr.load_problem(folder)
    traced_problem.config.render.spp = spp
    traced_problem.config.optimize.freeze = False
    traced = invpbr.optimize(traced_problem, iterations=iterations, progress=False)
    # Steady state: the first steps compile kernels (and the second loop in a
    # process reuses the first one's kernel cache), so both skip them.
    plain_s = steady_seconds_per_iteration(plain_steps)
    invpbr_s = steady_seconds_per_iteration(result.step_seconds)
    traced_s = steady_seconds_per_iteration(traced.step_seconds)

    def errors(estimates):
        return {k: parameter_error(v, truth[k]) for k, v in estimates.items() if k in truth}

    return {
        "scene": folder.name, "iterations": iterations, "spp": spp,
        "views": f"{per_step} of {len(views)}" if per_step < len(views) else len(views),
        "plain_seconds_per_iteration": plain_s,
        "invpbr_seconds_per_iteration": invpbr_s,
        "ratio": invpbr_s / plain_s,
        "frozen_applied": result.settings["frozen"],
        "invpbr_traced_seconds_per_iteration": traced_s,
        "traced_ratio": traced_s / plain_s,
        "invpbr_traced_errors": traced.errors,
        "plain_errors": errors(plain_est), "invpbr_errors": result.errors,
    }


def report(row: dict) -> None:
    print(f"\n{row['scene']}: {row['views']} views, {row['iterations']} iterations, spp {row['spp']}")
    print(f"  plain Mitsuba loop: {row['plain_seconds_per_iteration'] * 1000:8.1f} ms/iteration")
    applied = "frozen" if row["frozen_applied"] else "traced: freeze does not apply"
    print(f"  invpbr run        : {row['invpbr_seconds_per_iteration'] * 1000:8.1f} ms/iteration ({applied})")
    print(f"  ratio invpbr/plain: {row['ratio']:.2f}")
    print(f"  invpbr, freeze=false: {row['invpbr_traced_seconds_per_iteration'] * 1000:6.1f} ms/iteration,"
          f" ratio {row['traced_ratio']:.2f}")
    for k in row["invpbr_errors"]:
        print(f"  error {k:42s} plain {row['plain_errors'].get(k, float('nan')):.4f}"
              f"   invpbr {row['invpbr_errors'][k]:.4f}"
              f"   traced {row['invpbr_traced_errors'][k]:.4f}")


def main() -> None:
    run(__doc__.split("\n")[0], bench_scene, report)


if __name__ == "__main__":
    main()
