"""Radiance fields, the plain way: Mitsuba's radiance-field tutorial method
(mitsuba-tutorials, inverse_rendering/radiance_field_reconstruction) on a
field folder, beside invpbr's ``[field]`` defaults on the same folder, as
held-out PSNR against the CPU seconds of the steps (both curves in one process).

The plain way, as the tutorial does it: a PRB-style volume integrator (a
``RBIntegrator`` marching the box in steps of one cell, density clamped by
a ReLU, colour = clip(SH, 0, 1), the adjoint pass walking the ray again and
back-propagating each step's share) over a dense ``Texture3f`` of density
and degree-2 SH colour, grid 16 -> 32 -> 64 -> 128 (``dr.resample``
between stages), Adam (lr 0.05) on an L1 loss, each step one image's worth
of random pixels of all fitted photos (``mi.ad.loaders.RayDataLoader``),
``--passes`` passes over the pixels per stage (the tutorial: 15). Added for
a scene with a background (as the issue's "given a learned background
colour"): one learned background colour behind the box; the box is the
one invpbr's field uses (``auto_bounds``), so both fit the same region.

Usage::

    python benchmarks/field_tutorial.py scenes/field_object [--passes N] [--json out.json]

Prints the plain way's held-out PSNR (sRGB, clipped, as result.json's
``novel_view_srgb``) every ``--plain-every`` steps and at each stage's end,
then invpbr's (``load_problem`` -> ``start_run`` -> ``run_steps`` ->
``finish_run``, what ``optimize`` and ``invpbr run`` do, the folder's
settings) every ``--every`` steps through the loop's callback
(``StepInfo.held_out``); then the plain way's final PSNR and CPU seconds, the
first CPU time at which invpbr's curve reaches it, and their ratio (the
issue's goal: >= 3). Seconds are process CPU seconds (user + sys, both
threads) and wall seconds of the steps alone: the evaluations are not on
the clock.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import invpbr  # (first: it picks the LLVM Dr.Jit loads)

import drjit as dr  # noqa: E402  (module-wide: @dr.syntax rewrites the integrator's loop)
import mitsuba as mi  # noqa: E402

SH_DEGREE = 2
LR = 0.05
GRID_START = 16
STAGES = 4


sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_seconds  # noqa: E402


class StepClock:
    """Wall and CPU seconds of the steps alone: :meth:`pause` before an
    evaluation, :meth:`resume` after it."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self._w = self._c = None

    def resume(self) -> None:
        self._w, self._c = time.perf_counter(), cpu_seconds()

    def pause(self) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += cpu_seconds() - self._c


def make_integrator(lo, hi):
    """The tutorial's PRB-style radiance-field integrator over the box [lo, hi],
    with a learned background colour (``bg``) behind it."""
    class TutorialField(mi.ad.integrators.common.RBIntegrator):
        def __init__(self, props=mi.Properties()):
            super().__init__(props)
            self.bbox = mi.ScalarBoundingBox3f(mi.ScalarPoint3f(*lo), mi.ScalarPoint3f(*hi))
            self.ext = mi.ScalarVector3f(*(np.asarray(hi) - np.asarray(lo)))
            res = GRID_START
            k3 = 3 * (SH_DEGREE + 1) ** 2
            self.sigmat = mi.Texture3f(dr.full(mi.TensorXf, 0.01, shape=(res, res, res, 1)))
            self.sh_coeffs = mi.Texture3f(dr.full(mi.TensorXf, 0.1, shape=(res, res, res, k3)))
            self.bg = mi.Color3f(0.5)
            self.res = res

        def emission(self, u, d):
            spec = mi.Spectrum(0)
            basis = dr.sh_eval(d, SH_DEGREE)
            coeffs = self.sh_coeffs.eval(u)
            for i, sh in enumerate(basis):
                spec += sh * mi.Spectrum(coeffs[3 * i:3 * (i + 1)])
            return dr.clip(spec, 0.0, 1.0)

        @dr.syntax
        def sample(self, mode, scene, sampler, ray, δL, state_in, active, **kwargs):
            primal = mode == dr.ADMode.Primal
            ray = mi.Ray3f(ray)
            hit, mint, maxt = self.bbox.ray_intersect(ray)
            active = mi.Bool(active) & hit
            if not primal:
                active &= dr.any(δL != 0)
            # one step per cell (of the box's longest side), in world units
            step = mi.Float(dr.max(self.ext) / self.res)
            t = dr.maximum(mint, 0.0) + sampler.next_1d(active) * step
            L = mi.Spectrum(0.0 if primal else state_in)
            δL = mi.Spectrum(δL if δL is not None else 0)
            β = mi.Spectrum(1.0)
            lo3 = mi.ScalarPoint3f(self.bbox.min)
            while active:
                u = (ray(t) - lo3) / self.ext
                with dr.resume_grad(when=not primal):
                    # (density per unit of the box's longest side, as the tutorial's unit box;
                    # no ReLU: the values are clamped after each step, the tutorial's
                    # use_relu = False)
                    sigma = self.sigmat.eval(u)[0] / dr.max(self.ext)
                    tr = dr.exp(-sigma * step)
                    Le = β * (1.0 - tr) * self.emission(u, ray.d)
                β *= tr
                L = L + Le if primal else L - Le
                with dr.resume_grad(when=not primal):
                    if not primal:
                        dr.backward_from(δL * (L * tr / dr.detach(tr) + Le))
                t += step
                active &= (t < maxt) & dr.any(β != 0.0)
            # the learned background behind what is left of the transmittance
            with dr.resume_grad(when=not primal):
                Lb = β * self.bg
                if not primal:
                    dr.backward_from(δL * Lb)
            L = L + Lb if primal else L - Lb
            return L if primal else δL, mi.Bool(True), [], L

        def traverse(self, cb):
            cb.put("sigmat", self.sigmat.tensor(), mi.ParamFlags.Differentiable)
            cb.put("sh_coeffs", self.sh_coeffs.tensor(), mi.ParamFlags.Differentiable)
            cb.put("bg", self.bg, mi.ParamFlags.Differentiable)

        def parameters_changed(self, keys):
            self.sigmat.update_inplace()
            self.sh_coeffs.update_inplace()
            self.res = self.sigmat.shape[0]

    return TutorialField()


def held_out_psnr(scene, integrator, sensors, views, spp: int = 16) -> float:
    from invpbr.results.evaluate import srgb_scores

    with dr.suspend_grad():
        scores = [srgb_scores(np.array(mi.render(scene, sensor=s, integrator=integrator,
                                                        spp=spp, seed=7))[..., :3],
                              v.photo)["psnr"] for s, v in zip(sensors, views)]
    return float(np.mean(scores))


def plain_way(folder: Path, passes: int, every: int) -> dict:
    """The tutorial method on ``folder``: held-out PSNR and the steps' time
    every ``every`` steps and after each stage."""
    from invpbr.capture.cameras import to_mitsuba_sensor
    from invpbr.estimates.fields import auto_bounds

    problem = invpbr.load_problem(folder)
    fitted = [v for v in problem.views if not v.held_out]
    held = [v for v in problem.views if v.held_out]

    def sensor(v):
        film = {"type": "hdrfilm", "width": v.camera.width, "height": v.camera.height,
                "filter": {"type": "box"}, "pixel_format": "rgb", "sample_border": False}
        return mi.load_dict(to_mitsuba_sensor(v.camera) | {"film": film})

    lo, hi = auto_bounds([v.camera for v in fitted])
    clock = StepClock()
    clock.resume()
    sensors = [sensor(v) for v in fitted]
    held_sensors = [sensor(v) for v in held]
    integrator = make_integrator(lo, hi)
    scene = mi.load_dict({"type": "scene"})
    params = mi.traverse(integrator)
    opt = mi.ad.Adam(lr=LR, params={k: params[k] for k in ("sigmat", "sh_coeffs", "bg")})
    params.update(opt)
    pixels = fitted[0].camera.width * fitted[0].camera.height
    loader = mi.ad.loaders.RayDataLoader(sensors=sensors,
                                         target_images=[mi.TensorXf(v.photo) for v in fitted],
                                         pixels_per_batch=pixels, seed=0)
    per_stage = passes * loader.iter_shuffle
    rows, it = [], 0
    for stage in range(STAGES):
        for k in range(per_stage):
            target, batch_sensor = loader.next()
            img = mi.render(scene, params=params, sensor=batch_sensor, spp=1, seed=it,
                            integrator=integrator)
            loss = len(sensors) * dr.mean(dr.abs(img - target), axis=None)
            dr.backward(loss)
            opt.step()
            opt["sigmat"] = dr.maximum(opt["sigmat"], 0.0)
            params.update(opt)
            it += 1
            if k + 1 == per_stage or it % every == 0:
                dr.eval(opt["sigmat"], opt["sh_coeffs"], opt["bg"])  # (on the clock)
                clock.pause()
                psnr = held_out_psnr(scene, integrator, held_sensors, held)
                rows.append({"stage": stage, "grid": int(opt["sigmat"].shape[0]), "steps": it,
                             "stage_end": k + 1 == per_stage, "wall_s": clock.wall,
                             "cpu_s": clock.cpu, "held_out_psnr": psnr})
                print(f"  plain way: stage {stage} (grid {rows[-1]['grid']}), {it} steps, "
                      f"{clock.wall:.1f} s wall, {clock.cpu:.1f} s CPU, held-out PSNR "
                      f"{psnr:.2f} dB", flush=True)
                clock.resume()
        if stage < STAGES - 1:
            res = 2 * opt["sigmat"].shape[0]
            for key in ("sigmat", "sh_coeffs"):
                opt[key] = dr.resample(opt[key], (res, res, res, opt[key].shape[-1]))
            params.update(opt)
    clock.pause()
    return {"method": "tutorial", "passes": passes, "steps": it, "curve": rows}


def evaluated_steps(total: int, every: int, dense_until: int) -> set[int]:
    """After which steps (1-based counts) invpbr's held-out views are scored:
    a geometric set (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, ...: 1.25x apart) for
    the start, every ``every``-th step up to ``dense_until``, every
    ``4 * every``-th after, and the last."""
    steps = {int(round(1.25 ** k)) for k in range(40)} | {total}
    steps |= set(range(every, dense_until + 1, every)) | set(range(0, total + 1, 4 * every))
    return {n for n in steps if 1 <= n <= total}


def invpbr_way(folder: Path, iterations: int | None, every: int, dense_until: int) -> dict:
    """invpbr's ``[field]`` on ``folder`` (its settings), through the loop
    :func:`invpbr.optimize` runs; held-out scores from the loop's callback
    (``StepInfo.held_out``) after the steps of :func:`evaluated_steps`, off the clock."""
    from invpbr.optimization.loop import finish_run, run_steps, start_run

    problem = invpbr.load_problem(folder)
    problem.config.report.gradients = False  # (gradient images: before and after the loop)
    run_ = start_run(problem, iterations)
    due = evaluated_steps(run_.iterations, every, dense_until)
    rows = []
    clock = StepClock()

    def callback(info) -> None:
        n = info.iteration + 1
        if n not in due:
            return
        dr.eval()  # (what the step scheduled and has not run yet, on the clock)
        clock.pause()
        scores = info.held_out()["mean"]
        rows.append({"steps": n, "wall_s": clock.wall, "cpu_s": clock.cpu,
                     "held_out_psnr": scores["psnr"], "held_out_ssim": scores["ssim"]})
        print(f"  invpbr: {n} steps, {clock.wall:.1f} s wall, {clock.cpu:.1f} s CPU, "
              f"held-out PSNR {scores['psnr']:.2f} dB", flush=True)
        clock.resume()

    clock.resume()
    run_steps(run_, callback, progress=False)
    result = finish_run(run_)  # (the final renders and held-out evaluation are not timed)
    return {"method": "invpbr", "iterations": result.iterations, "frozen": run_.frozen,
            "held_out_psnr": result.novel_view_srgb["mean"]["psnr"], "curve": rows}


def first_reaching(curve: list[dict], psnr: float) -> dict | None:
    """The first point of ``curve`` at or above ``psnr``."""
    return next((row for row in curve if row["held_out_psnr"] >= psnr), None)


def summary(plain: dict, ours: dict) -> dict:
    """The plain way's final PSNR and time, when each curve first reaches it,
    and the ratios (the plain way's time over invpbr's); the same for the
    plain way's best PSNR (its curve need not rise to the end)."""
    final = plain["curve"][-1]
    target = final["held_out_psnr"]
    reach = first_reaching(ours["curve"], target)
    plain_reach = first_reaching(plain["curve"], target)
    best = max(plain["curve"], key=lambda row: row["held_out_psnr"])
    best_reach = first_reaching(ours["curve"], best["held_out_psnr"])
    out = {"plain_final_psnr": target, "plain_final_cpu_s": final["cpu_s"],
           "plain_final_wall_s": final["wall_s"],
           "plain_first_reach_cpu_s": plain_reach["cpu_s"],
           "invpbr_reach": reach, "plain_best": best, "invpbr_reach_best": best_reach}
    if reach is not None:
        out["cpu_ratio"] = final["cpu_s"] / reach["cpu_s"]
        out["cpu_ratio_to_plain_first_reach"] = plain_reach["cpu_s"] / reach["cpu_s"]
    if best_reach is not None:
        out["cpu_ratio_best"] = best["cpu_s"] / best_reach["cpu_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--passes", type=int, default=15,
                        help="passes over the fitted pixels per stage (the tutorial: 15)")
    parser.add_argument("--plain-every", type=int, default=40,
                        help="the plain way's steps between held-out evaluations")
    parser.add_argument("--iterations", type=int, help="invpbr's steps (default: the folder's)")
    parser.add_argument("--every", type=int, default=10,
                        help="invpbr's steps between held-out evaluations (4x after "
                        "--dense-until; and 1.25x apart from the first step)")
    parser.add_argument("--dense-until", type=int, default=200)
    parser.add_argument("--skip-invpbr", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    invpbr.init_backend()
    print(f"variant {mi.variant()}, {dr.thread_count()} threads")
    out = {"folder": str(args.folder), "threads": dr.thread_count()}
    out["plain"] = plain = plain_way(args.folder, args.passes, args.plain_every)
    if not args.skip_invpbr:
        out["invpbr"] = ours = invpbr_way(args.folder, args.iterations, args.every,
                                          args.dense_until)
        out["summary"] = s = summary(plain, ours)
        reach = s["invpbr_reach"]
        print(f"plain way ({args.passes} passes): final held-out PSNR "
              f"{s['plain_final_psnr']:.2f} dB after {s['plain_final_cpu_s']:.1f} s CPU "
              f"(first reached at {s['plain_first_reach_cpu_s']:.1f} s CPU)")
        if reach is None:
            print("invpbr: never reached it")
        else:
            print(f"invpbr: reached it after {reach['steps']} steps, {reach['cpu_s']:.1f} s CPU "
                  f"({reach['held_out_psnr']:.2f} dB): {s['cpu_ratio']:.2f}x less CPU time "
                  f"(goal: >= 3); final {ours['held_out_psnr']:.2f} dB after "
                  f"{ours['curve'][-1]['cpu_s']:.1f} s CPU")
        best, got = s["plain_best"], s["invpbr_reach_best"]
        print(f"plain way's best: {best['held_out_psnr']:.2f} dB after {best['cpu_s']:.1f} s CPU; "
              + ("invpbr never reached it" if got is None else
                 f"invpbr reached it after {got['steps']} steps, {got['cpu_s']:.1f} s CPU "
                 f"({s['cpu_ratio_best']:.2f}x less)"))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
