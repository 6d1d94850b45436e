"""The optimization loop: a :class:`~invpbr.problem.Problem` in, a Result out.

Each step renders the chosen views with gradients, accumulates the image loss
(and texture regularizers), takes one ``mi.ad.Adam`` step, clips every
parameter into its bounds and writes the parameters back into the scene.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .losses import image_loss, total_variation
from .params import Parameter, parameter_error, resample_texture
from .problem import Problem
from .render import choose_integrator_type, make_integrator, render_view
from .result import Result


@dataclass
class StepInfo:
    """What a callback sees after each step.

    Attributes:
        iteration: index of the step just taken (0-based).
        loss: the step's total loss (image losses averaged over views, plus
            regularizers).
        views: ids of the views rendered in this step.
        estimates: key -> current value (numpy; textures (H, W, C)).
    """

    iteration: int
    loss: float
    views: list[str]
    estimates: dict[str, np.ndarray]


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


def _errors(estimates: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: parameter_error(v, truth[k]) for k, v in estimates.items() if k in truth}


class _Latents:
    """The optimizer's variables: one per parameter, textures per stage."""

    def __init__(self, problem: Problem, iterations: int):
        import mitsuba as mi

        cfg = problem.config.optimize
        self.problem = problem
        self.iterations = iterations
        self.opt = mi.ad.Adam(lr=cfg.lr)
        self.stages: dict[str, int] = {}
        for p in problem.parameters:
            if p.kind == "texture":
                self._set_texture_stage(p, 0, p.initial)
            else:
                self.opt[p.key] = problem.params[p.key]
                self._set_lr(p)
        problem.params.update(self.opt)

    def _set_lr(self, p: Parameter) -> None:
        if p.config.lr is not None:
            self.opt.set_learning_rate({p.key: p.config.lr})

    def _set_texture_stage(self, p: Parameter, stage: int, value: np.ndarray) -> None:
        import mitsuba as mi

        value = resample_texture(value, p.resolutions[stage])
        if p.config.bounds is not None:
            value = np.clip(value, *p.config.bounds)
        self.opt[p.key] = mi.TensorXf(value)
        self._set_lr(p)
        self.stages[p.key] = stage

    def advance(self, iteration: int) -> None:
        """Move textures to their next coarse-to-fine stage where it is due."""
        changed = False
        for p in self.problem.parameters:
            if p.kind != "texture":
                continue
            stage = p.stage(iteration, self.iterations)
            if stage != self.stages[p.key]:
                self._set_texture_stage(p, stage, np.array(self.opt[p.key]))
                changed = True
        if changed:
            self.problem.params.update(self.opt)

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
            dr.set_grad(current, kind(grad.reshape(x.shape).astype(np.float32)))

    @property
    def has_fd(self) -> bool:
        return any(p.gradient == "fd" for p in self.problem.parameters)

    def regularizer(self):
        total = None
        for p in self.problem.parameters:
            if p.kind == "texture" and p.config.tv > 0:
                term = p.config.tv * total_variation(self.opt[p.key])
                total = term if total is None else total + term
        return total

    def step(self) -> None:
        import drjit as dr

        self.opt.step()
        for p in self.problem.parameters:
            if p.config.bounds is not None:
                lo, hi = p.config.bounds
                self.opt[p.key] = dr.clip(self.opt[p.key], lo, hi)
        self.problem.params.update(self.opt)

    def values(self) -> dict[str, np.ndarray]:
        return {p.key: np.array(self.problem.params[p.key], dtype=np.float32)
                for p in self.problem.parameters}

    def snapshot(self) -> dict:
        """References to the current values (Dr.Jit arrays are not changed in
        place by the optimizer, so this costs no copy)."""
        import drjit as dr

        return {p.key: dr.detach(self.opt[p.key]) for p in self.problem.parameters}

    def release(self) -> None:
        """Leave the scene holding the estimates without gradient tracking, and
        drop the optimizer, so no AD graph outlives the optimization."""
        import drjit as dr

        for p in self.problem.parameters:
            self.problem.params[p.key] = dr.detach(self.opt[p.key])
        self.problem.params.update()
        self.opt = None

    def restore(self, snapshot: dict) -> None:
        for key, value in snapshot.items():
            self.opt[key] = value
        self.problem.params.update(self.opt)


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
        A :class:`~invpbr.result.Result`. Ctrl-C stops the loop and still
        returns what was estimated so far (status ``"interrupted"``); a
        non-finite loss stops it at the last finite estimate (``"diverged"``).
    """
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
    loss_fn = image_loss(cfg.optimize.loss)
    photos = [mi.TensorXf(v.photo) for v in problem.views]
    weights = [None if v.mask is None else mi.TensorXf(v.mask[..., None].astype(np.float32))
               for v in problem.views]
    n_views = len(problem.views)
    per_step = cfg.optimize.views_per_step or n_views
    per_step = min(per_step, n_views)
    rng = np.random.default_rng(cfg.optimize.seed)

    initial = {p.key: p.initial for p in problem.parameters}
    latents = _Latents(problem, iterations)
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
            chosen = (range(n_views) if per_step == n_views
                      else sorted(int(i) for i in rng.choice(n_views, size=per_step, replace=False)))
            step_start = time.perf_counter()
            total = 0.0
            image_grads: list[np.ndarray] = []
            for v in chosen:
                seed = cfg.optimize.seed * 1_000_003 + it * n_views + v
                image = render_view(problem.scene, problem.params, integrator, problem.views[v].index,
                                    spp=cfg.render.spp, seed=seed)
                loss = loss_fn(image, photos[v], weights[v]) / len(chosen)
                dr.backward(loss)
                total = total + dr.detach(loss)
                if latents.has_fd:
                    image_grads.append(_image_gradient(loss_fn, image, photos[v], weights[v],
                                                       len(chosen)))
            reg = latents.regularizer()
            if reg is not None:
                dr.backward(reg)
                total = total + dr.detach(reg)
            total = _scalar(total)  # the step's one read-back
            if latents.has_fd:
                def render_views(chosen=chosen, it=it) -> list[np.ndarray]:
                    with dr.suspend_grad():
                        return [np.array(render_view(
                            problem.scene, problem.params, integrator, problem.views[v].index,
                            spp=cfg.render.spp, seed=FD_SEED_OFFSET + it * n_views + v))
                            for v in chosen]

                latents.set_fd_gradients(render_views, image_grads)
            if not np.isfinite(total):
                status = "diverged"
                latents.restore(last_good)
                break
            latents.step()
            last_good = latents.snapshot()
            history.append(total)
            step_seconds.append(time.perf_counter() - step_start)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total:.4g}")
            if callback is not None:
                info = StepInfo(iteration=it, loss=total,
                                views=[problem.views[v].id for v in chosen],
                                estimates=latents.values())
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
    estimates = latents.values()
    latents.release()

    renders = {}
    with dr.suspend_grad():
        for view in problem.views:
            image = render_view(problem.scene, problem.params, integrator, view.index,
                                spp=cfg.render.spp_final, seed=2**31 - 1)
            renders[view.id] = np.array(image, dtype=np.float32)

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
        errors=_errors(estimates, problem.truth),
        initial_errors=_errors(initial, problem.truth),
        renders=renders,
        photos={v.id: v.photo for v in problem.views},
        integrator=integrator_type,
        variant=mi.variant(),
        settings=cfg.to_dict() | {"iterations_run": len(history)},
    )
