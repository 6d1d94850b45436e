"""Joint optimization of a reconstructed object's shape, per-vertex material and
environment lighting against masked photos.

Each step renders a few photos twice:

- the object as a white emitter on black with ``direct_projective``: its
  coverage, compared with the masks (the silhouette loss, whose gradient moves
  the outline: projective sampling of the visibility edges);
- the lit object with ``prb``: its colours in a tone-mapped space
  (``log(1 + x)``) compared with the photos by a robust Cauchy loss, inside the
  masks, and on the background too where it is the environment
  (``[reconstruct] background = "envmap"``). prb's gradient of vertex
  positions is that of the shading (normals) only; the outline is the
  silhouette pass's job.

The shape moves through ``mi.ad.LargeSteps`` (the latent is (I + lambda L) v,
Adam with uniform rates), material and lighting through their own Adam
optimizers; the mesh is remeshed isotropically a few times as it sharpens,
the material carried over to the new vertices by nearest neighbour.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..capture.cameras import Camera
from ..config import ReconstructConfig
from .scene import LIGHT, OBJECT, object_mesh, object_scene

#: Roughness kept inside these bounds (principled BSDF).
ROUGHNESS_BOUNDS = (0.05, 1.0)
#: Base colour kept inside these bounds.
COLOR_BOUNDS = (0.0, 1.0)
#: Large-steps smoothness of the per-vertex material's latent.
MATERIAL_LAMBDA = 10.0


@dataclass
class Photos:
    """The photos a reconstruction fits or evaluates.

    Attributes:
        cameras: their cameras.
        images: linear RGB (H, W, 3) float32 each.
        masks: object coverage (H, W) float32 in [0, 1] each.
        ids: the photos' ids (file stems).
    """

    cameras: list[Camera]
    images: list[np.ndarray]
    masks: list[np.ndarray]
    ids: list[str]


@dataclass
class ObjectState:
    """A reconstructed object: mesh, per-vertex material and lighting.

    Attributes:
        vertices: (N, 3) float32; faces: (F, 3) int64.
        colors: base colour per vertex, linear RGB (N, 3).
        roughness: (N,).
        envmap: environment texels, linear RGB (H, 2H, 3).
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    roughness: np.ndarray
    envmap: np.ndarray

    def transfer(self, vertices: np.ndarray, faces: np.ndarray) -> "ObjectState":
        """The same material on a new mesh (nearest old vertex)."""
        from scipy.spatial import cKDTree

        _, idx = cKDTree(self.vertices).query(vertices)
        return ObjectState(np.asarray(vertices, np.float32), np.asarray(faces, np.int64),
                           self.colors[idx], self.roughness[idx], self.envmap)


def tonemap(x):
    """``log(1 + max(x, 0))``: the space where photometric residuals are compared."""
    import drjit as dr

    return dr.log(1.0 + dr.maximum(x, 0.0))


def initial_envmap(photos: Photos, height: int) -> np.ndarray:
    """A constant environment of the photos' mean background colour (or grey)."""
    bg = [img[m < 0.5] for img, m in zip(photos.images, photos.masks)]
    bg = np.concatenate([b for b in bg if len(b)]) if any(len(b) for b in bg) else None
    colour = bg.mean(axis=0) if bg is not None else np.full(3, 0.5)
    colour = np.maximum(colour, 1e-3)
    return np.broadcast_to(colour, (height, 2 * height, 3)).astype(np.float32).copy()


@dataclass
class Renderers:
    """The two scenes of one mesh (lit, silhouette) and their parameters."""

    scene: object
    params: object
    sil_scene: object
    sil_params: object
    integrator: object
    sil_integrator: object


def make_renderers(state: ObjectState, photos: Photos, max_depth: int) -> Renderers:
    import mitsuba as mi

    mesh = object_mesh(state.vertices, state.faces, state.colors, state.roughness)
    scene = object_scene(mesh, photos.cameras, state.envmap, max_depth=max_depth)
    sil = object_mesh(state.vertices, state.faces, state.colors, state.roughness, emitter=True)
    sil_scene = object_scene(sil, photos.cameras, None)
    return Renderers(scene, mi.traverse(scene), sil_scene, mi.traverse(sil_scene),
                     mi.load_dict({"type": "prb", "max_depth": int(max_depth)}),
                     mi.load_dict({"type": "direct_projective", "sppi": 0}))


def cauchy(residual, scale: float):
    import drjit as dr

    return dr.log(1.0 + dr.square(residual / scale))


def photo_tensors(photos: Photos, i: int, background: str):
    """Tone-mapped photo (H, W, 3), mask (H, W, 1) and the photometric weight of each pixel."""
    import mitsuba as mi

    img, mask = photos.images[i], photos.masks[i][..., None]
    weight = np.ones_like(mask) if background == "envmap" else (mask > 0.5).astype(np.float32)
    return (mi.TensorXf(np.log1p(np.maximum(img, 0)).astype(np.float32)),
            mi.TensorXf(mask.astype(np.float32)), mi.TensorXf(weight))


@dataclass
class FitLog:
    """What a fit printed and measured, stage by stage."""

    stages: list[dict] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    #: steps skipped for a non-finite loss or gradient (their update not applied)
    skipped: int = 0
    #: a stop request (``stop()`` true) ended the fit early
    interrupted: bool = False


def _stage_plan(cfg: ReconstructConfig) -> list[tuple[str, int, bool]]:
    """(name, iterations, moves the shape) of each stage: material and light on
    the hull, then joint stages split by the remeshings, then material and light
    on the final mesh."""
    plan = [("material", cfg.material_iterations, False)] if cfg.material_iterations else []
    if cfg.iterations:
        parts = cfg.remesh + 1
        for k in range(parts):
            n = cfg.iterations * (k + 1) // parts - cfg.iterations * k // parts
            if n:
                plan.append((f"joint {k + 1}/{parts}", n, True))
        if cfg.polish_iterations:
            plan.append(("polish", cfg.polish_iterations, False))
    return plan


def fit_object(state: ObjectState, photos: Photos, cfg: ReconstructConfig, *,
               held_out: Photos | None = None, progress: bool = True, seed: int = 0,
               log: FitLog | None = None, evaluate=None, stop=None, start_stage: int = 0,
               rng_state: dict | None = None, diag: float | None = None,
               on_stage=None) -> ObjectState:
    """Optimize ``state`` against ``photos`` through the stages of ``cfg``.

    Args:
        state: the start (the visual hull with a first material and light).
        photos: the fitted photos.
        cfg: the ``[reconstruct]`` settings.
        held_out: photos scored after each stage (printed).
        evaluate: ``evaluate(state, photos) -> dict`` of held-out figures.
        log: collects stage figures and losses, skipped steps, interruption.
        stop: ``stop() -> bool``, asked after each step (e.g. a SIGINT handler):
            true ends the fit there (``log.interrupted``), with the state so far.
        start_stage: the first stage to run (a resumed fit: ``state`` is the
            state after the stages before it); ``rng_state``: the random
            generator's state then (``np.random.Generator.bit_generator.state``);
            ``diag``: the diagonal of the first stage's mesh (default: ``state``'s).
        on_stage: ``on_stage(next_stage, state, log, rng)``, called after each
            stage that ran to its end (e.g. to write a checkpoint).

    Returns:
        The optimized object.
    """
    from ..estimates.meshes import remesh

    log = log if log is not None else FitLog()
    start = time.time()
    rng = np.random.default_rng(seed)
    if rng_state is not None:
        rng.bit_generator.state = rng_state
    if diag is None:
        diag = float(np.linalg.norm(state.vertices.max(0) - state.vertices.min(0)))
    for s, (name, iterations, moves) in enumerate(_stage_plan(cfg)):
        if log.interrupted:
            break
        if s < start_stage:
            continue
        if moves and not name.startswith("joint 1/"):  # remesh as the surface sharpens
            area = _area(state.vertices, state.faces)
            edge = math.sqrt(4.0 * area / (math.sqrt(3.0) * cfg.faces))
            v, f = remesh(state.vertices, state.faces, edge, iterations=5)
            state = state.transfer(v, f)
        t0, c0 = time.time(), time.process_time()
        # the polish stage refits the material only: the light settled in the joint
        # stages, and moving it again let the background of unseen directions drift
        state, losses, skipped = _run_stage(state, photos, cfg, iterations, moves, rng, diag,
                                            seed + 1000 * s, stop, light=name != "polish")
        log.losses += losses
        log.skipped += skipped
        log.interrupted = len(losses) < iterations
        entry = {"stage": name, "iterations": len(losses), "seconds": round(time.time() - t0, 2),
                 "cpu_seconds": round(time.process_time() - c0, 2),
                 "loss": float(np.mean(losses[-max(1, len(losses) // 10):])) if losses else None}
        if skipped:
            entry["skipped_steps"] = skipped
            warnings.warn(f"reconstruct: {name}: {skipped} of {len(losses)} steps had a "
                          "non-finite loss or gradient and were skipped", stacklevel=2)
        if evaluate is not None and held_out is not None and held_out.ids and not log.interrupted:
            entry.update(evaluate(state, held_out))
        log.stages.append(entry)
        if progress:
            figures = ", ".join(f"{k} {v:.4g}" for k, v in entry.items()
                                if isinstance(v, float) and k not in ("seconds", "cpu_seconds"))
            print(f"  {name}: {len(losses)} steps in {entry['seconds']:.1f} s "
                  f"(CPU {entry['cpu_seconds']:.1f} s); {figures}", flush=True)
        if on_stage is not None and not log.interrupted:
            on_stage(s + 1, state, log, rng)
    log.seconds = time.time() - start
    return state


def _decay(iteration: int, iterations: int) -> float:
    """Learning-rate factor within a stage: 1 for its first half, then down
    linearly to 0.2 (each stage ends settled rather than in Monte Carlo noise)."""
    half = iterations / 2
    if iteration < half or iterations < 4:
        return 1.0
    return 1.0 - 0.8 * (iteration - half) / max(iterations - 1 - half, 1)


def _area(v, f) -> float:
    t = np.asarray(v, np.float64)[np.asarray(f)]
    return float(0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1).sum())


def _run_stage(state: ObjectState, photos: Photos, cfg: ReconstructConfig, iterations: int,
               moves: bool, rng, diag: float, seed: int,
               stop=None, light: bool = True) -> tuple[ObjectState, list[float], int]:
    # long: one stage's optimizers, parameter writes and loss terms read best together
    import drjit as dr
    import mitsuba as mi

    r = make_renderers(state, photos, cfg.max_depth)
    p, sp = r.params, r.sil_params
    kv, kc, kr, ke = (f"{OBJECT}.vertex_positions", f"{OBJECT}.vertex_color",
                      f"{OBJECT}.vertex_roughness", f"{LIGHT}.data")
    from ..estimates.lighting import envmap_with_halo

    # material latents: (I + lambda L) x per vertex, as for the shape, so that a step
    # moves a smooth patch of the material rather than single vertices' noise
    ls_m = mi.ad.LargeSteps(mi.Float(state.vertices.ravel()), mi.UInt32(state.faces.ravel()),
                            MATERIAL_LAMBDA)
    opt_m = mi.ad.Adam(lr=cfg.lr_material)
    opt_m["color"] = ls_m.to_differential(mi.Float(state.colors.ravel().astype(np.float32)))
    opt_m["rough"] = ls_m.to_differential(
        mi.Float(np.repeat(state.roughness, 3).astype(np.float32)))
    opt_l = mi.ad.Adam(lr=cfg.lr_light)
    opt_l["log_env"] = mi.TensorXf(np.log(np.maximum(state.envmap, 1e-4)).astype(np.float32))
    if moves:
        ls = mi.ad.LargeSteps(mi.Float(state.vertices.ravel()), mi.UInt32(state.faces.ravel()),
                              cfg.lambda_)
        opt_s = mi.ad.Adam(lr=cfg.lr_shape * diag, uniform=True)
        opt_s["u"] = ls.to_differential(mi.Float(state.vertices.ravel()))
    tensors = [photo_tensors(photos, i, cfg.background) for i in range(len(photos.ids))]
    n = len(photos.ids)
    # material and light alone render no silhouettes: twice the views for the same time
    per_step = min(cfg.views_per_step * (1 if moves else 2), n)
    losses, skipped = [], 0
    for it in range(iterations):
        chosen = rng.choice(n, size=per_step, replace=False)
        factor = _decay(it, iterations)
        opt_m.set_learning_rate(cfg.lr_material * factor)
        opt_l.set_learning_rate(cfg.lr_light * factor)
        if moves:
            opt_s.set_learning_rate(cfg.lr_shape * diag * factor)
        p[kc] = dr.clip(ls_m.from_differential(opt_m["color"]), *COLOR_BOUNDS)
        rough3 = ls_m.from_differential(opt_m["rough"])
        p[kr] = dr.clip(dr.gather(mi.Float, rough3, dr.arange(mi.UInt32, len(state.roughness)) * 3),
                        *ROUGHNESS_BOUNDS)
        log_env = opt_l["log_env"] if light else dr.detach(opt_l["log_env"])
        p[ke] = envmap_with_halo(dr.exp(log_env))
        if moves:
            v = ls.from_differential(opt_s["u"])
            p[kv] = v
            sp[kv] = v
            sp.update()
        p.update()
        total = 0.0
        for i in chosen:
            ref, mask, weight = tensors[i]
            # an opaque seed: a literal one is compiled into the kernels, a new set each step
            step_seed = dr.opaque(mi.UInt32, (seed + it * n + int(i)) & 0xFFFFFFFF)
            img = mi.render(r.scene, p, sensor=int(i), spp=cfg.spp, seed=step_seed,
                            integrator=r.integrator)
            photo_loss = dr.mean(weight * cauchy(tonemap(img[:, :, :3]) - ref, cfg.loss_scale))
            loss = photo_loss / per_step
            if moves and cfg.mask_weight > 0:
                cover = mi.render(r.sil_scene, sp, sensor=int(i), spp=cfg.spp,
                                  seed=step_seed, integrator=r.sil_integrator)
                loss += cfg.mask_weight * dr.mean(dr.square(cover[:, :, 0] - mask[:, :, 0])) \
                    / per_step * 10.0
            dr.backward(loss)
            total += float(loss.array[0])
        if cfg.white_light > 0 and light:
            log_env = opt_l["log_env"]
            chroma = dr.mean(dr.mean(log_env, axis=0), axis=0)  # mean log radiance per channel
            grey = dr.mean(chroma)
            prior = cfg.white_light * dr.sum(dr.square(chroma - grey))
            dr.backward(prior)
            total += float(prior.array[0])
        losses.append(total)
        opts = [opt_m] + ([opt_l] if light else []) + ([opt_s] if moves else [])
        if _finite(total, opts):
            for opt in opts:
                opt.step()
        else:  # a NaN / inf anywhere: drop this step's gradients, keep the state
            skipped += 1
            for opt in opts:
                for key in opt.keys():
                    dr.clear_grad(opt[key])
        if stop is not None and stop():
            break
    colors = np.clip(np.array(ls_m.from_differential(opt_m["color"])), *COLOR_BOUNDS).reshape(-1, 3)
    rough = np.clip(np.array(ls_m.from_differential(opt_m["rough"])).reshape(-1, 3)[:, 0],
                    *ROUGHNESS_BOUNDS)
    envmap = np.exp(np.array(opt_l["log_env"])) if light else state.envmap
    vertices = (np.array(ls.from_differential(opt_s["u"])).reshape(-1, 3) if moves
                else state.vertices)
    return ObjectState(vertices.astype(np.float32), state.faces, colors.astype(np.float32),
                       rough.astype(np.float32), envmap.astype(np.float32)), losses, skipped


def _finite(loss: float, optimizers) -> bool:
    """Whether a step's loss and every gradient in ``optimizers`` are finite
    (one reduction per parameter)."""
    import drjit as dr

    if not math.isfinite(loss):
        return False
    for opt in optimizers:
        for key in opt.keys():
            g = dr.grad(opt[key])
            g = g.array if dr.is_tensor_v(g) else g
            if not math.isfinite(float(dr.sum(dr.abs(g))[0])):
                return False
    return True
