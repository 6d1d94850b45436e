"""invpbr against the plain-Mitsuba object pose loop, on the same scene, photos,
spp and iterations.

The plain loop is Mitsuba's object pose estimation tutorial generalized to a
full rigid pose: the initial vertex positions are kept, ``opt['trans']`` and
``opt['angles']`` (Euler angles, degrees) are optimized with ``mi.ad.Adam``,
and each step applies ``mi.Transform4f().translate(trans).rotate(...)`` to the
initial vertices, renders every view with the projective integrator Mitsuba
recommends for geometry (``direct_projective`` for ``max_depth`` <= 2, else
``prb_projective``) with its default settings (octree guiding rebuilt for
every render), takes an L2 (or the scene's) loss and steps.

invpbr runs the same scene as configured (``invpbr run``), whose defaults for
geometry differ in two ways: the projective integrator's ``guiding = "none"``
(no guiding structure per render) and the pose latent (translation in units
of the object's size, axis-angle rotation about its centre).

Usage::

    python benchmarks/bench_geometry.py scenes/object_pose [--iterations N] [--spp N] [--json out.json]

Prints seconds per iteration (steady state: after 3 warm-up steps) of both,
their ratio, and the final pose errors (vertex distance, position, rotation).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import invpbr
from invpbr.estimates import meshes as geometry
from invpbr.results import steady_seconds_per_iteration

from common import plain_scene_and_photos, run


def plain_pose_loop(folder: Path, key: str, iterations: int, spp: int, lr: float,
                    max_depth: int, loss: str):
    import drjit as dr
    import mitsuba as mi

    scene, refs = plain_scene_and_photos(folder)
    kind = "direct_projective" if 0 <= max_depth <= 2 else "prb_projective"
    integrator = mi.load_dict({"type": kind, "max_depth": max_depth})
    params = mi.traverse(scene)
    initial = dr.unravel(mi.Point3f, params[key])
    centre = [float(c) for c in np.array(initial, dtype=np.float64).T.mean(axis=0)]  # about the object
    opt = mi.ad.Adam(lr=lr)
    opt["trans"] = mi.Vector3f(0.0, 0.0, 0.0)
    opt["angles"] = mi.Vector3f(0.0, 0.0, 0.0)

    def apply():
        t = opt["trans"]
        a = opt["angles"] * 100.0  # degrees, scaled so one learning rate fits both
        transform = (mi.Transform4f().translate(mi.Vector3f(*centre) + t)
                     .rotate([1, 0, 0], a.x).rotate([0, 1, 0], a.y).rotate([0, 0, 1], a.z)
                     .translate(-mi.Vector3f(*centre)))
        params[key] = dr.ravel(transform @ initial)
        params.update()

    apply()
    step_seconds = []
    for it in range(iterations):
        start = time.perf_counter()
        total = mi.Float(0.0)
        for i, ref in enumerate(refs):
            img = mi.render(scene, params, sensor=i, integrator=integrator, spp=spp,
                            seed=it * len(refs) + i)
            diff = img - ref
            err = dr.abs(diff) if loss == "l1" else dr.square(diff)
            total = total + dr.mean(err, axis=None) / len(refs)
        dr.backward(total)
        opt.step()
        apply()
        dr.eval(params[key])
        dr.sync_thread()
        step_seconds.append(time.perf_counter() - start)
    return step_seconds, np.array(params[key], dtype=np.float32).reshape(-1, 3)


def bench_scene(folder: Path, iterations: int | None, spp: int | None) -> dict:
    problem = invpbr.load_problem(folder)
    cfg = problem.config
    (pose,) = [p for p in problem.parameters if p.kind == "pose"]
    if len(pose.scene_keys) != 1 or pose.scene_keys[0].endswith("to_world"):
        raise SystemExit(f"{folder}: the benchmark needs one mesh pose estimate")
    key = pose.scene_keys[0]
    iterations = iterations or cfg.optimize.iterations
    spp = spp or cfg.render.spp
    cfg.render.spp = spp
    truth = problem.truth[key].reshape(-1, 3)
    plain_steps, plain_vertices = plain_pose_loop(folder, key, iterations, spp,
                                                  pose.config.lr or cfg.optimize.lr,
                                                  cfg.render.max_depth, cfg.optimize.loss)
    result = invpbr.optimize(problem, iterations=iterations, progress=False)
    plain_s = steady_seconds_per_iteration(plain_steps)
    invpbr_s = steady_seconds_per_iteration(result.step_seconds)
    plain_err = geometry.geometry_errors("pose", plain_vertices, truth)
    return {
        "scene": folder.name, "iterations": iterations, "spp": spp, "views": len(problem.views),
        "integrator": result.integrator,
        "plain_seconds_per_iteration": plain_s, "invpbr_seconds_per_iteration": invpbr_s,
        "ratio": invpbr_s / plain_s,
        "plain_errors": plain_err,
        "invpbr_errors": {"vertex": result.errors[key]} | result.geometry_errors[key],
        "initial_errors": {"vertex": result.initial_errors[key]}
        | result.geometry_errors_initial[key],
    }


def report(row: dict) -> None:
    print(f"\n{row['scene']}: {row['views']} views, {row['iterations']} iterations, "
          f"spp {row['spp']}, {row['integrator']}")
    print(f"  plain Mitsuba loop: {row['plain_seconds_per_iteration'] * 1000:8.1f} ms/iteration")
    print(f"  invpbr run        : {row['invpbr_seconds_per_iteration'] * 1000:8.1f} ms/iteration")
    print(f"  ratio invpbr/plain: {row['ratio']:.3f}")
    for name in ("vertex", "position", "rotation_deg"):
        print(f"  {name:13s} start {row['initial_errors'][name]:.4f}   "
              f"plain {row['plain_errors'][name]:.4f}   invpbr {row['invpbr_errors'][name]:.4f}")


def main() -> None:
    run(__doc__.split("\n")[0], bench_scene, report)


if __name__ == "__main__":
    main()
