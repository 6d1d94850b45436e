"""The optimization loop: a :class:`~invpbr.problem.folder.Problem` in, a Result out.

Each step renders the chosen views with gradients, accumulates the image loss
(and texture regularizers), takes one ``mi.ad.Adam`` step, clips every
parameter into its bounds and writes the parameters back into the scene.
"""

from __future__ import annotations

import gc
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..config import spp_at
from ..estimates.base import Parameter, parameter_error
from ..estimates.meshes import dr_width
from ..problem.folder import Problem
from ..render.integrators import choose_integrator_type, make_integrator
from ..render.views import ViewSlots, make_batch_sensor, render_batch, render_view
from ..results import evaluate
from ..results.result import Result
from ..estimates.gains import Gains, gain_errors
from . import records
from .gradient_images import run_gradient_images
from .losses import image_loss, total_variation


@dataclass
class StepInfo:
    """What a callback sees after each step.

    Attributes:
        iteration: index of the step just taken (0-based).
        loss: the step's total loss (image losses averaged over views, plus
            regularizers).
        views: ids of the views rendered in this step.
        estimates: key -> current value (numpy; textures (H, W, C)).
        render: renders a view of the current estimate (see below).
        errors: the current errors against the truth (see below).
    """

    iteration: int
    loss: float
    views: list[str]
    estimates: dict[str, np.ndarray]
    render: Callable[[str], np.ndarray] | None = None
    """``render(view_id)``: that view of the current estimate, linear RGB
    (H, W, 3), as its photo saw it (one render at ``spp_final // 4``, at least
    4 samples, without gradients; costs a render per call, nothing if unused)."""
    errors: Callable[[], dict[str, float]] | None = None
    """``errors()``: key -> current error against the truth (empty without one)."""


def _scalar(x) -> float:
    import drjit as dr

    return float(np.asarray(dr.detach(x)).ravel()[0])


#: Seeds of the finite-difference renders start here, away from the AD renders'.
FD_SEED_OFFSET = 1 << 30


def _image_gradient(loss_fn, image, photo, weight, n_views: int) -> np.ndarray:
    """dLoss/dImage at ``image`` (detached), (H, W, 3)."""
    import drjit as dr

    x = dr.detach(image)
    dr.enable_grad(x)
    dr.backward(loss_fn(x, photo, weight) / n_views)
    return np.array(dr.grad(x), dtype=np.float64)


def peak_memory_mb() -> float | None:
    """Peak resident memory of this process so far, in MiB (None where unknown)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _errors(problem: Problem, estimates: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """key -> error against the truth (mean absolute difference; geometry: mean
    vertex distance), and geometry key -> its other errors (see
    :func:`invpbr.estimates.meshes.geometry_errors`)."""
    from ..estimates import meshes as geometry

    truth = problem.truth
    errors, extra = {}, {}
    for p in problem.parameters:
        if p.key not in estimates or p.kind == "camera":
            continue
        if p.is_geometry:
            if all(k in truth for k in p.scene_keys):
                faces = truth_faces = None
                if p.kind == "shape":
                    faces = p.model.faces_of(estimates[p.key])
                    truth_faces = truth.get(p.truth_keys[-1])
                    if truth_faces is not None:
                        truth_faces = truth_faces.astype(np.int64).reshape(-1, 3)
                found = geometry.geometry_errors(
                    p.kind, estimates[p.key], p.model.points({k: truth[k] for k in p.scene_keys}),
                    faces=faces, truth_faces=truth_faces)
                errors[p.key] = found.pop("vertex")
                extra[p.key] = found
        elif p.key in truth:
            errors[p.key] = parameter_error(estimates[p.key], truth[p.key])
    return errors, extra


class _Latents:
    """The optimizer's variables, one per parameter (textures and envmaps per
    coarse-to-fine stage), and their mapping into the scene."""

    def __init__(self, problem: Problem, iterations: int):
        import drjit as dr
        import mitsuba as mi

        cfg = problem.config.optimize
        self.problem = problem
        self.iterations = iterations
        self.lr = cfg.lr
        self.own_lr: dict[str, tuple] = {}  # key -> (optimizer, its own learning rate)
        self.opt = mi.ad.Adam(lr=cfg.lr)
        # Large-steps shapes step with one step size for all coordinates (Nicolet et al.).
        self.shape_opt = mi.ad.Adam(lr=cfg.lr, uniform=True)
        self.half = cfg.precision == "half"
        # Scales the loss against float16 gradients underflowing (and backs off on overflow).
        self.scaler = dr.opt.GradScaler() if self.half else None
        self.stages: dict[str, int] = {}
        self.types = {p.key: type(problem.params[p.key]) for p in problem.parameters
                      if not p.is_geometry and p.kind != "camera"}
        self.camera = next((p for p in problem.parameters if p.kind == "camera"), None)
        for p in problem.parameters:
            self._set_latent(p, 0, p.initial)
        self.gains = Gains(problem, self.opt) if problem.config.photos.gain != "none" else None
        if self.gains is not None:
            self.own_lr[Gains.KEY] = (self.opt, problem.config.photos.gain_lr)
        self.write_scene()

    def _opt(self, p: Parameter):
        return self.shape_opt if p.kind == "shape" else self.opt

    def _set_latent(self, p: Parameter, stage: int, scene_value: np.ndarray | None,
                    latent: np.ndarray | None = None) -> None:
        import mitsuba as mi

        opt = self._opt(p)
        if latent is None:
            latent = p.model.initial_latent() if p.is_geometry or p.kind == "camera" \
                else p.latent_from_scene(scene_value, stage)
        if p.model is not None:
            opt[p.key] = mi.Float(np.ravel(latent))
        elif p.kind == "texture" and self.half:
            opt[p.key] = mi.TensorXf16(np.asarray(latent, dtype=np.float16))
        elif p.kind in ("texture", "envmap"):
            opt[p.key] = mi.TensorXf(latent)
        else:
            opt[p.key] = self.types[p.key](latent)
        if p.config.lr is not None:
            self.own_lr[p.key] = (opt, p.config.lr)
        elif p.kind == "camera":
            from ..estimates.cameras import CAMERA_LR

            self.own_lr[p.key] = (opt, CAMERA_LR)
        if p.key in self.own_lr:
            opt.set_learning_rate({p.key: self.own_lr[p.key][1]})
        self.stages[p.key] = stage

    def write_scene(self, view_index: int | None = None) -> None:
        """Put every parameter's scene value (a function of its latent) into the
        scene; with camera refinement, moved for the camera of sensor
        ``view_index`` (None: not moved)."""
        params = self.problem.params
        values = {}
        for p in self.problem.parameters:
            if p.kind == "camera":
                continue
            if p.is_geometry:
                values.update(p.model.scene_values(self.shape_opt[p.key] if p.kind == "shape"
                                                   else self.opt[p.key]))
            else:
                values[p.key] = p.to_scene(self.opt[p.key], params[p.key])
        if self.camera is not None:
            values.update(self.camera.model.scene_values(self.opt[self.camera.key], view_index,
                                                         values))
        for key, value in values.items():
            params[key] = value
        params.update()

    def advance(self, iteration: int) -> bool:
        """Move textures and envmaps to their next coarse-to-fine stage where due;
        whether any did."""
        from ..estimates.base import resample_texture

        changed = False
        for p in self.problem.parameters:
            if p.kind == "shape" and p.config.remesh:
                stage = min(p.config.remesh, iteration * (p.config.remesh + 1) // self.iterations)
                if stage != self.stages[p.key]:
                    self._remesh(p, stage)
                    changed = True
            if not p.resolutions:
                continue
            stage = p.stage(iteration, self.iterations)
            if stage != self.stages[p.key]:
                # Resample the latent itself (log radiance for envmaps).
                latent = resample_texture(np.array(self.opt[p.key], dtype=np.float32), p.resolutions[stage])
                self._set_latent(p, stage, None, latent=latent)
                changed = True
        if changed:
            self.write_scene()
        return changed

    def stage_key(self) -> tuple:
        """Every parameter's coarse-to-fine (or remesh) stage: what a frozen
        step's recording depends on beyond its arguments."""
        return tuple(sorted(self.stages.items()))

    def _remesh(self, p: Parameter, stage: int) -> None:
        """Remesh a shape isotropically (0.75x its mean edge length) and restart
        its large-steps latent from the new mesh."""
        from ..estimates import meshes as geometry

        params = self.problem.params
        vertices = np.array(params[p.key], dtype=np.float32).reshape(-1, 3)
        faces = p.model.faces
        h = 0.75 * geometry.mean_edge_length(vertices, faces)
        vertices, faces = geometry.remesh(vertices, faces, h)
        name = geometry.shape_name(p.key)
        if dr_width(params.get(f"{name}.vertex_texcoords", None)) > 0:
            raise ValueError(f"{self.problem.name}: {p.key}: remesh needs a mesh without texture "
                             "coordinates (they cannot follow a new triangulation)")
        params[p.key] = type(params[p.key])(vertices.ravel())
        params[f"{name}.faces"] = type(params[f"{name}.faces"])(faces.astype(np.uint32).ravel())
        params.update()
        p.model = geometry.ShapeModel(p.key, vertices, faces, p.model.lambda_,
                                      first_faces=p.model.first_faces)
        p.shape = vertices.shape
        self._set_latent(p, stage, None, latent=p.model.initial_latent())

    def set_fd_gradients(self, render_views: Callable[[], list[np.ndarray]],
                         image_grads: list[np.ndarray], *, step: float = 0.01) -> None:
        """Replace the gradient of each ``gradient = "fd"`` parameter, component
        by component, by ``sum(dLoss/dImage * dImage/dx)`` with ``dImage/dx`` a
        central finite difference of renders.

        ``dLoss/dImage`` comes from the step's AD renders and the differences
        from renders with other seeds, so the gradient is that of the loss of
        the *expected* image: differentiating the loss of one noisy render
        would also follow how the parameter changes the noise (a bias toward
        smoother, less noisy materials).

        Args:
            render_views: renders the step's views without gradients (fixed
                seeds, so both sides of a difference share their samples).
            image_grads: dLoss/dImage of each view, (H, W, 3) each.
            step: the difference step, relative to ``max(1, |value|)``; kept
                inside the parameter's bounds (one-sided at a bound).
        """
        import drjit as dr

        params = self.problem.params
        for p in self.problem.parameters:
            if p.gradient != "fd":
                continue
            current = self.opt[p.key]
            kind = type(current)
            x = np.array(current, dtype=np.float64)
            flat = x.reshape(-1)
            lo, hi = p.config.bounds or (-np.inf, np.inf)
            grad = np.zeros_like(flat)
            for c in range(flat.size):
                eps = step * max(1.0, abs(flat[c]))
                below, above = max(flat[c] - eps, lo), min(flat[c] + eps, hi)
                if not above > below:
                    continue
                sides = []
                for v in (above, below):
                    y = flat.copy()
                    y[c] = v
                    params[p.key] = kind(y.reshape(x.shape).astype(np.float32))
                    params.update()
                    sides.append(render_views())
                grad[c] = sum(float(np.sum(g * (hi_img - lo_img)))
                              for g, hi_img, lo_img in zip(image_grads, *sides)) / (above - below)
            params[p.key] = current
            params.update()
            if self.scaler is not None:  # like the AD gradients, which come scaled
                grad = grad * float(np.asarray(self.scaler.scale_factor).ravel()[0])
            dr.set_grad(current, kind(grad.reshape(x.shape).astype(np.float32)))

    @property
    def has_fd(self) -> bool:
        return any(p.gradient == "fd" for p in self.problem.parameters)

    def decay(self, factor: float) -> None:
        """Set every learning rate to ``factor`` times its start (``lr_decay``)."""
        self.opt.set_learning_rate(self.lr * factor)
        self.shape_opt.set_learning_rate(self.lr * factor)
        for key, (opt, lr) in self.own_lr.items():
            opt.set_learning_rate({key: lr * factor})

    def backward(self, loss) -> None:
        """``dr.backward`` of ``loss``, scaled by the GradScaler in half precision."""
        import drjit as dr

        dr.backward(loss if self.scaler is None else self.scaler.scale(loss))

    def apply_gain(self, image, view: int):
        """``image`` (of view number ``view``) times its photo's gain, if gains are estimated."""
        return image if self.gains is None else self.gains.apply(image, view)

    def regularizer(self):
        """Total variation of textures and envmap latents, and the envmaps'
        white-balance prior; None when there is none."""
        from ..estimates.lighting import texel_solid_angles

        import drjit as dr
        import mitsuba as mi

        total = None
        for p in self.problem.parameters:
            terms = []
            if p.tv > 0 and p.kind in ("texture", "envmap") and p.model is None:
                # (in float32: a float16 mean over a large texture loses its small terms)
                terms.append(p.tv * total_variation(mi.TensorXf(self.opt[p.key])))
            if p.kind == "envmap" and p.config.white_balance > 0:
                texels = p.to_scene(self.opt[p.key], None)[:, 1:-1, :]
                h, w = texels.shape[0], texels.shape[1]
                weight = mi.TensorXf(texel_solid_angles(h, w)[..., None].astype(np.float32))
                means = dr.sum(dr.sum(texels * weight, axis=0), axis=0)  # (3,)
                logs = dr.log(dr.maximum(means, 1e-8))
                centred = logs - dr.mean(logs)
                terms.append(p.config.white_balance * dr.sum(dr.square(centred), axis=None))
            for term in terms:
                total = term if total is None else total + term
        return total

    def step(self) -> None:
        import drjit as dr

        if self.scaler is not None:
            unscale = dr.rcp(self.scaler.scale_factor)
            self.scaler.step(self.opt)
            if len(self.shape_opt):
                self.shape_opt.step(grad_scale=unscale)
        else:
            self.opt.step()
            if len(self.shape_opt):
                self.shape_opt.step()
        for p in self.problem.parameters:
            if p.is_geometry or p.kind == "camera":
                continue
            bounds = p.latent_bounds()
            if bounds is not None:
                self.opt[p.key] = dr.clip(self.opt[p.key], *bounds)
        self.write_scene()

    def values(self) -> dict[str, np.ndarray]:
        """Scene-space estimates as numpy (envmaps: real texels (H, W, 3);
        geometry: points (N, 3), see ``model.points``)."""
        from ..estimates import meshes as geometry

        params = self.problem.params
        out = {}
        for p in self.problem.parameters:
            if p.kind == "camera":
                out[p.key] = np.array(self.opt[p.key], dtype=np.float64).reshape(-1, 6)
            elif p.is_geometry:
                out[p.key] = p.model.points({k: geometry.scene_numpy(params, k)
                                             for k in p.scene_keys})
            else:
                out[p.key] = p.from_scene(params[p.key])
        return out

    def finish(self) -> None:
        """Bring textures and envmaps to their final resolution, also when the
        run stopped before the last coarse-to-fine stage."""
        from ..estimates.base import resample_texture

        changed = False
        for p in self.problem.parameters:
            last = len(p.resolutions) - 1
            if last >= 0 and self.stages[p.key] != last:
                latent = resample_texture(np.array(self.opt[p.key], dtype=np.float32), p.resolutions[last])
                self._set_latent(p, last, None, latent=latent)
                changed = True
        if changed:
            self.write_scene()

    def clear_gradients(self) -> None:
        import drjit as dr

        for p in self.problem.parameters:
            dr.clear_grad(self._opt(p)[p.key])

    def snapshot(self) -> dict:
        """References to the current latents (Dr.Jit arrays are not changed in
        place by the optimizer, so this costs no copy)."""
        import drjit as dr

        return {p.key: (dr.detach(self._opt(p)[p.key]), self.stages[p.key])
                for p in self.problem.parameters}

    def release(self) -> None:
        """Leave the scene holding the estimates without gradient tracking, and
        drop the optimizer, so no AD graph outlives the optimization."""
        import drjit as dr

        params = self.problem.params
        written = set()
        for p in self.problem.parameters:
            if p.kind == "camera":
                continue
            if p.is_geometry:
                for key, value in p.model.scene_values(dr.detach(self._opt(p)[p.key])).items():
                    params[key] = dr.detach(value)
                    written.add(key)
            else:
                params[p.key] = dr.detach(p.to_scene(dr.detach(self.opt[p.key]), params[p.key]))
        if self.camera is not None:  # the scene as it is, not moved for a camera
            for key, value in self.camera.model.rest.items():
                if key not in written:
                    params[key] = value
        params.update()
        self.opt = self.shape_opt = None

    def restore(self, snapshot: dict) -> None:
        by_key = {p.key: p for p in self.problem.parameters}
        for key, (value, stage) in snapshot.items():
            opt = self._opt(by_key[key])
            if dr_width(value) != dr_width(opt[key]):
                continue  # remeshed since the snapshot: keep the current mesh
            opt[key] = value
            self.stages[key] = stage
        self.write_scene()


def optimize(problem: Problem, *, iterations: int | None = None,
             callback: Callable[[StepInfo], bool | None] | None = None,
             progress: bool = True) -> Result:
    """Estimate ``problem.parameters`` from its photos.

    Args:
        problem: the loaded problem (its scene is modified in place: at the
            end it holds the estimates).
        iterations: steps to take (default: ``problem.config.optimize.iterations``).
        callback: called after every step with a :class:`StepInfo`; return
            True to stop early.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`~invpbr.results.result.Result`. Ctrl-C stops the loop and still
        returns what was estimated so far (status ``"interrupted"``); a
        non-finite loss stops it at the last finite estimate (``"diverged"``).
    """
    with records.record_warnings() as caught:
        result = _optimize(problem, iterations=iterations, callback=callback, progress=progress)
    result.warnings = caught + result.warnings
    return result


def _optimize(problem: Problem, *, iterations: int | None, callback, progress: bool) -> Result:
    """:func:`optimize` without collecting its warnings."""
    import drjit as dr
    import mitsuba as mi

    if not problem.parameters:
        raise ValueError(f"optimize(): {problem.name}: nothing to estimate (no [[estimate]] table)")
    if not problem.views:
        raise ValueError(f"optimize(): {problem.name}: no photos")
    cfg = problem.config
    iterations = cfg.optimize.iterations if iterations is None else int(iterations)
    integrator_type = choose_integrator_type(cfg.render, problem.parameters)
    integrator = make_integrator(cfg.render, problem.parameters, problem.scene)
    loss_fn = image_loss(cfg.optimize.loss, scale=cfg.optimize.loss_scale)
    n_views = len(problem.views)
    fit = [i for i, v in enumerate(problem.views) if not v.held_out]
    if not fit:
        raise ValueError(f"optimize(): {problem.name}: every view is held out; none is left to fit")
    per_step = min(cfg.optimize.views_per_step or len(fit), len(fit))
    rng = np.random.default_rng(cfg.optimize.seed)
    camera = _setup_cameras(problem)

    batch_sensor = slots = None
    if cfg.optimize.batch and "projective" not in integrator_type and camera is None \
            and not any(p.gradient == "fd" for p in problem.parameters):
        fit_sensors = [problem.views[v].index for v in fit]
        if per_step == len(fit):
            batch_sensor = make_batch_sensor(problem.scene, fit_sensors)
        elif cfg.photos.gain == "none":
            slots = ViewSlots.make(problem.scene, fit_sensors, per_step)
    frozen = can_freeze(problem, integrator_type, per_step == len(fit) or slots is not None)
    if slots is None:
        photos = [mi.TensorXf(v.photo) for v in problem.views]
        weights = [None if v.mask is None else mi.TensorXf(v.mask[..., None].astype(np.float32))
                   for v in problem.views]
    else:
        # all fitted photos (and masks) in one array each (and nowhere else: large
        # captures), for the step to gather its views' from by Dr.Jit index
        fit_position = {v: i for i, v in enumerate(fit)}
        image_shape = problem.views[fit[0]].photo.shape
        slot_photos = mi.Float(np.concatenate([problem.views[v].photo.ravel() for v in fit]))
        masks = [problem.views[v].mask for v in fit]
        slot_weights = None if all(m is None for m in masks) else mi.Float(np.concatenate(
            [np.ones(image_shape[:2], np.float32).ravel() if m is None
             else m.astype(np.float32).ravel() for m in masks]))

    def render_and_backward(seed, chosen, spp):
        """Render the chosen views, add their losses' gradients; the loss (mi.Float)."""
        # One backward pass for all views: a backward pass per view would clear the
        # AD graph between the latents and the scene (exp of a log-space latent, an
        # envmap's halo columns) after the first view, and later views would add no
        # gradient to those parameters.
        total = mi.Float(0.0)
        if batch_sensor is not None and chosen == fit:
            images = render_batch(problem.scene, problem.params, integrator, batch_sensor,
                                  len(fit), spp=spp, seed=seed, spp_grad=cfg.render.spp_grad)
        else:
            images = [render_view(problem.scene, problem.params, integrator,
                                  problem.views[v].index, spp=spp, seed=seed + v,
                                  spp_grad=cfg.render.spp_grad) for v in chosen]
        for v, image in zip(chosen, images):
            total = total + loss_fn(latents.apply_gain(image, v), photos[v],
                                    weights[v]) / len(chosen)
        latents.backward(total)
        return dr.detach(total)

    def render_and_backward_slots(seed, slot_views, spp):
        """View subsets: render the views the slots are aimed at (``slot_views``:
        their positions in ``fit``, an ``mi.UInt32``), and add their losses'
        gradients; the loss."""
        images = slots.render(problem.scene, problem.params, integrator, spp=spp, seed=seed,
                              spp_grad=cfg.render.spp_grad)
        h, w, c = image_shape
        total = mi.Float(0.0)
        for k, image in enumerate(images):
            v = dr.gather(mi.UInt32, slot_views, k)
            photo = mi.TensorXf(dr.gather(mi.Float, slot_photos, v * (h * w * c)
                                          + dr.arange(mi.UInt32, h * w * c)), (h, w, c))
            weight = None if slot_weights is None else mi.TensorXf(dr.gather(
                mi.Float, slot_weights, v * (h * w) + dr.arange(mi.UInt32, h * w)), (h, w, 1))
            total = total + loss_fn(image, photo, weight) / slots.k
        latents.backward(total)
        return dr.detach(total)

    def render_and_backward_per_view(seed, chosen, spp):
        """Camera refinement: the scene is moved for each view's camera, and
        each view's backward pass runs while the scene is so moved (Mitsuba's
        adjoint pass renders the scene as it is at backward time)."""
        total = mi.Float(0.0)
        for v in chosen:
            latents.write_scene(problem.views[v].index)
            image = render_view(problem.scene, problem.params, integrator, problem.views[v].index,
                                spp=spp, seed=seed + v, spp_grad=cfg.render.spp_grad)
            loss = loss_fn(latents.apply_gain(image, v), photos[v], weights[v]) / len(chosen)
            latents.backward(loss)
            total = total + dr.detach(loss)
        return total  # (the step's latents.step() writes the unmoved scene)

    initial = {p.key: p.initial for p in problem.parameters}
    # "Doing nothing": the starting guess's held-out views and relit renders.
    before = _evaluation_renders(problem, integrator)
    before_start = time.perf_counter()
    start_renders = records.start_renders(problem, integrator)
    pictures_of_gradients = run_gradient_images(problem, integrator, "start")
    latents = _Latents(problem, iterations)
    trajectory = records.Trajectory(problem)
    before_seconds = time.perf_counter() - before_start
    # (dr.freeze reads the step's closure, latents included, so only now)
    # A coarse-to-fine stage changes the size of a texture: each stage (and each spp of a
    # schedule, an argument) gets its own recording, never a replay of another's kernels.
    step = render_and_backward if slots is None else render_and_backward_slots
    step_fn = dr.freeze(step, state_fn=lambda *_: latents.stage_key(),
                        warn_after=100) if frozen else None
    if frozen:
        # The recording checks Mitsuba's registry of scene objects on every replay:
        # collect other scenes' garbage now, not in the middle of the run.
        gc.collect()
    last_good = latents.snapshot()
    history: list[float] = []
    step_seconds: list[float] = []
    status = "completed"
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=iterations, desc=problem.name, unit="it", leave=True)
    start = time.perf_counter()
    try:
        for it in range(iterations):
            latents.advance(it)
            chosen = (fit if per_step == len(fit)
                      else sorted(int(i) for i in rng.choice(fit, size=per_step, replace=False)))
            step_start = time.perf_counter()
            spp = spp_at(cfg.render, it, iterations)
            base_seed = (cfg.optimize.seed * 1_000_003 + it * n_views) % (2**32 - n_views)
            image_grads: list[np.ndarray] = []
            if latents.has_fd:
                total = mi.Float(0.0)
                for v in chosen:
                    image = render_view(problem.scene, problem.params, integrator,
                                        problem.views[v].index, spp=spp,
                                        seed=base_seed + v, spp_grad=cfg.render.spp_grad)
                    image = latents.apply_gain(image, v)
                    total = total + loss_fn(image, photos[v], weights[v]) / len(chosen)
                    image_grads.append(_image_gradient(loss_fn, image, photos[v], weights[v],
                                                       len(chosen)))
                latents.backward(total)  # one pass for all views (see render_and_backward)
                total = dr.detach(total)
            elif camera is not None:
                total = render_and_backward_per_view(mi.UInt32(base_seed), chosen, spp)
            else:
                which = chosen
                if slots is not None:
                    positions = [fit_position[v] for v in chosen]
                    slots.aim(positions)
                    which = mi.UInt32(positions)
                if frozen:
                    try:
                        total = step_fn(mi.UInt32(base_seed), which, spp)
                    except RuntimeError as e:
                        # dr.freeze refuses to replay when, e.g., scene objects were created
                        # or freed since the recording; trace this and later steps instead.
                        warnings.warn(f"optimize(): {problem.name}: frozen step could not be "
                                      f"replayed ({str(e).splitlines()[0]}); continuing "
                                      "without dr.freeze", stacklevel=2)
                        frozen = False
                        latents.clear_gradients()
                        total = step(mi.UInt32(base_seed), which, spp)
                else:
                    total = step(mi.UInt32(base_seed), which, spp)
            reg = latents.regularizer()
            if reg is not None:
                latents.backward(reg)
                total = total + dr.detach(reg)
            total = _scalar(total)  # the step's one read-back
            if latents.has_fd:
                def render_views(chosen=chosen, it=it) -> list[np.ndarray]:
                    with dr.suspend_grad():
                        return [np.array(render_view(
                            problem.scene, problem.params, integrator, problem.views[v].index,
                            spp=spp, seed=(FD_SEED_OFFSET + base_seed + v) % 2**32))
                            for v in chosen]

                latents.set_fd_gradients(render_views, image_grads)
            if not np.isfinite(total):
                status = "diverged"
                latents.restore(last_good)
                break
            if cfg.optimize.lr_decay != 1.0:
                latents.decay(decay_factor(cfg.optimize.lr_decay, it, iterations))
            latents.step()
            last_good = latents.snapshot()
            history.append(total)
            trajectory.record()
            step_seconds.append(time.perf_counter() - step_start)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total:.4g}")
            if callback is not None:
                info = StepInfo(iteration=it, loss=total,
                                views=[problem.views[v].id for v in chosen],
                                estimates=latents.values(),
                                render=lambda view_id: _render_current(
                                    problem, latents, integrator, view_id),
                                errors=lambda: _errors(problem, latents.values())[0])
                if callback(info):
                    status = "stopped"
                    break
    except KeyboardInterrupt:
        status = "interrupted"
        latents.restore(last_good)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    after_start = time.perf_counter()
    latents.finish()
    estimates = latents.values()
    poses = {p.key: p.model.describe(np.array(latents.opt[p.key]))
             for p in problem.parameters if p.kind == "pose"}
    gains = latents.gains.values() if latents.gains is not None else {}
    camera_latent = None if camera is None else dr.detach(latents.opt[camera.key])
    latents.release()
    errors, geometry_errors = _errors(problem, estimates)
    initial_errors, geometry_errors_initial = _errors(problem, initial)
    cameras, camera_errors, camera_errors_initial, refined_cameras = {}, {}, {}, []
    if camera is not None:
        from ..estimates.cameras import camera_errors as _camera_errors

        cameras = camera.model.camera_to_world(estimates[camera.key])
        refined_cameras = _refined_cameras(problem, cameras)
        camera_errors = _camera_errors(cameras, problem.true_cameras)
        camera_errors_initial = _camera_errors(camera.model.start_camera_to_world(),
                                               problem.true_cameras)

    renders = {}
    with dr.suspend_grad():
        for v, view in enumerate(problem.views):
            if camera is not None:  # seen from the refined camera
                camera.model.move_scene(problem.params, camera_latent, view.index)
            image = render_view(problem.scene, problem.params, integrator, view.index,
                                spp=cfg.render.spp_final, seed=2**31 - 1)
            if view.id in gains:  # as the photo saw it
                image = image * mi.TensorXf(mi.Float(gains[view.id]), shape=(1, 1, 3))
            renders[view.id] = np.array(image, dtype=np.float32)
        if camera is not None:
            camera.model.move_scene(problem.params, camera_latent, None)
    after = _evaluation_renders(problem, integrator, renders=renders)
    held_out = [v for v in problem.views if v.held_out]
    pictures_of_gradients += run_gradient_images(
        problem, integrator, "end", gains=gains,
        move=None if camera is None else (  # seen from the refined cameras
            lambda index: camera.model.move_scene(problem.params, camera_latent, index)))
    poses_of_cameras = {} if camera is None else records.camera_poses(
        camera.model.start_camera_to_world(), cameras, problem.true_cameras)

    return Result(
        name=problem.name,
        status=status,
        estimates=estimates,
        initial=initial,
        kinds={p.key: p.kind for p in problem.parameters},
        loss=history,
        iterations=len(history),
        seconds_per_iteration=elapsed / max(len(history), 1),
        step_seconds=step_seconds,
        errors=errors,
        initial_errors=initial_errors,
        geometry_errors=geometry_errors,
        geometry_errors_initial=geometry_errors_initial,
        meshes=_meshes(problem),
        poses=poses,
        cameras=cameras,
        refined_cameras=refined_cameras,
        camera_errors=camera_errors,
        camera_errors_initial=camera_errors_initial,
        gains=gains,
        gain_errors=gain_errors(gains, problem.true_gains),
        gain_errors_initial=gain_errors({i: np.ones(3) for i in gains}, problem.true_gains),
        peak_memory_mb=peak_memory_mb(),
        renders=renders,
        photos={v.id: v.photo for v in problem.views},
        integrator=integrator_type,
        variant=mi.variant(),
        settings=cfg.to_dict() | {"iterations_run": len(history), "frozen": frozen,
                                  "recordings": step_fn.n_recordings if frozen else 0,
                                  "batched": batch_sensor is not None or slots is not None},
        held_out=[v.id for v in held_out],
        novel_view_psnr={v.id: evaluate.psnr(renders[v.id], v.photo) for v in held_out},
        novel_view_psnr_initial={v.id: evaluate.psnr(before["held_out"][v.id], v.photo)
                                 for v in held_out},
        relight_psnr=_relight_scores(problem, after),
        relight_psnr_initial=_relight_scores(problem, before),
        errors_scale_invariant=evaluate.albedo_scale_invariant_errors(estimates, problem.truth),
        notes=evaluate.ambiguity_notes(problem.parameters, problem.params),
        start_renders=start_renders,
        masks={v.id: v.mask for v in problem.views if v.mask is not None},
        trajectory=trajectory.steps,
        truth=trajectory.truth(),
        previews=records.point_previews(problem, initial, estimates),
        camera_poses=poses_of_cameras,
        gradient_images=pictures_of_gradients,
        timings={"before_loop": before_seconds, "after_loop": time.perf_counter() - after_start},
    )


def _render_current(problem: Problem, latents: _Latents, integrator, view_id: str) -> np.ndarray:
    """View ``view_id`` of the current estimate without gradients, as its photo
    saw it (camera moved, gain applied); for callbacks (live views)."""
    import drjit as dr

    index = next((i for i, v in enumerate(problem.views) if v.id == view_id), None)
    if index is None:
        raise ValueError(f"StepInfo.render(): unknown view {view_id!r}; views: "
                         f"{', '.join(v.id for v in problem.views)}")
    spp = max(4, problem.config.render.spp_final // 4)
    if latents.camera is not None:  # (outside suspend_grad: the scene keeps its AD graph)
        latents.write_scene(problem.views[index].index)
    with dr.suspend_grad():
        image = render_view(problem.scene, problem.params, integrator, problem.views[index].index,
                            spp=spp, seed=2**31 - 2)
        out = np.array(latents.apply_gain(image, index), dtype=np.float32)[..., :3]
    if latents.camera is not None:
        latents.write_scene()
    return out


def decay_factor(lr_decay: float, iteration: int, iterations: int) -> float:
    """Learning-rate factor of step ``iteration``: 1 for the first half of the
    run, then geometric down to ``lr_decay`` at the last step (an estimate gets
    there at full speed, then settles)."""
    half = iterations // 2
    if iteration < half or iterations - 1 <= half:
        return 1.0
    return lr_decay ** ((iteration - half) / (iterations - 1 - half))


def _setup_cameras(problem: Problem):
    """The camera estimate, with its :class:`~invpbr.estimates.cameras.CameraModel` built
    for the fitted views its glob matches (the scene's current state is the
    rest state); None without one."""
    from ..estimates.cameras import CameraModel

    camera = next((p for p in problem.parameters if p.kind == "camera"), None)
    if camera is None:
        return None
    import fnmatch

    views = [v for v in problem.views if not v.held_out
             and fnmatch.fnmatchcase(v.id, camera.config.key)]
    if not views:
        raise ValueError(f"optimize(): {problem.name}: the camera estimate's key "
                         f"{camera.config.key!r} matches no fitted view")
    if any(p.gradient == "fd" for p in problem.parameters):
        raise ValueError(f"optimize(): {problem.name}: finite-difference gradients "
                         "(gradient = \"fd\") cannot be combined with camera refinement")
    camera.targets = [v.id for v in views]
    camera.shape = (len(views), 6)
    camera.initial = np.zeros(camera.shape)
    camera.model = CameraModel(problem.params, problem.scene, camera.targets,
                               [v.index for v in views])
    return camera


def _refined_cameras(problem: Problem, c2w: dict[str, np.ndarray]) -> list:
    """Every view's :class:`~invpbr.capture.cameras.Camera` with its refined pose (the
    others as they were), for writing as a transforms.json."""
    from dataclasses import replace

    from ..capture.cameras import camera_from_sensor

    out = []
    for view in problem.views:
        cam = view.camera
        if cam is None:
            try:
                cam = camera_from_sensor(problem.scene.sensors()[view.index], view.id,
                                         file_path=view.photo_path)
            except ValueError:
                continue  # not a perspective sensor
        out.append(replace(cam, c2w=c2w[view.id]) if view.id in c2w else cam)
    return out


def _meshes(problem: Problem) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Shape id -> (vertices, faces) of every mesh an estimate moved."""
    from ..estimates import meshes as geometry

    out = {}
    for p in problem.parameters:
        if p.is_geometry:
            for key in p.scene_keys:
                if key.endswith("." + geometry.VERTICES):
                    out[geometry.shape_name(key)] = geometry.mesh_arrays(problem.params, key)
    return out


def can_freeze(problem: Problem, integrator_type: str, fixed_views: bool) -> bool:
    """Whether a step of ``problem`` may be recorded once with ``dr.freeze``.

    Only where ``[optimize] freeze = true``, and not with projective
    integrators (their guiding and edge sampling do not replay),
    finite-difference gradients (Python work in the step), per-step view
    subsets that are not rendered through :class:`~invpbr.render.ViewSlots`
    (``fixed_views`` False: a new recording per subset), per-photo gains,
    camera refinement or half precision. Coarse-to-fine textures are
    recorded once per stage.
    """
    return (problem.config.optimize.freeze and fixed_views
            and problem.config.photos.gain == "none"
            and problem.config.optimize.precision == "single"
            and not any(p.kind == "camera" for p in problem.parameters)
            and "projective" not in integrator_type
            and not any(p.gradient == "fd" for p in problem.parameters))


def _evaluation_renders(problem: Problem, integrator, *, renders: dict | None = None) -> dict:
    """Renders of the held-out views and relit renders of the scene as it is now."""
    spp = problem.config.render.spp_final
    out: dict = {"held_out": {}, "relight": {}}
    for view in problem.views:
        if view.held_out:
            if renders is not None:
                out["held_out"][view.id] = renders[view.id]
                continue
            import drjit as dr

            with dr.suspend_grad():
                image = render_view(problem.scene, problem.params, integrator, view.index,
                                    spp=spp, seed=2**31 - 1)
            out["held_out"][view.id] = np.array(image, dtype=np.float32)
    if problem.relight_maps and problem.truth_scene is not None:
        for name, texels in problem.relight_maps.items():
            out["relight"][name] = evaluate.relit_renders(problem.scene, integrator, texels, spp=spp)
    return out


def _relight_scores(problem: Problem, renders: dict) -> dict:
    if not renders["relight"]:
        return {}
    ids = [v.id for v in problem.views]
    return {name: evaluate.relight_psnr(images, evaluate.relit_truth(problem, name), ids)
            for name, images in renders["relight"].items()}
