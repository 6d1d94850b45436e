"""Step strategies: how one optimization step renders its views, compares
them with the photos and back-propagates, chosen once per run by
:func:`choose_strategy` (with the freeze decision in :func:`can_freeze`).

- :class:`AllViews`: the step's views rendered together (one Mitsuba
  ``batch`` sensor call where the views allow it, else one render each),
  one backward pass.
- :class:`Slots`: a random subset of the views per step
  (``views_per_step``), rendered by sensors of one batch aimed anew each
  step (:class:`~invpbr.render.views.ViewSlots`): one recording of a frozen
  step for every subset.
- :class:`PerView`: the scene differs per view (camera refinement): each
  view is rendered and back-propagated while the scene is moved for it.
- :class:`FiniteDifferences`: some estimates take their gradient from
  finite differences of the loss (``gradient = "fd"``).

An estimate may bring a strategy of its own (a radiance field draws random
rays, not whole images) through a ``make_strategy(context)`` method; the
first estimate that has one decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..render.views import ViewSlots, make_batch_sensor, render_batch, render_view

#: Seeds of the finite-difference renders start here, away from the AD renders'.
FD_SEED_OFFSET = 1 << 30


@dataclass
class StepContext:
    """What every strategy works with.

    Attributes:
        problem: the problem.
        latents: the optimizer's store (:class:`~invpbr.optimization.latents.Latents`).
        integrator: the Mitsuba integrator.
        integrator_type: its type name.
        loss_fn: the image loss ``(image, photo, weight) -> Dr.Jit scalar``.
        fit: indices of the fitted views.
        per_step: views per step.
        view_integrators: view number -> the integrator it renders with where it is
            not ``integrator`` (:func:`invpbr.render.integrators.view_integrators`).
    """

    problem: Any
    latents: Any
    integrator: Any
    integrator_type: str
    loss_fn: Callable
    fit: list[int]
    per_step: int
    photos: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    ceilings: list = field(default_factory=list)
    view_integrators: dict = field(default_factory=dict)

    @property
    def render(self):
        return self.problem.config.render

    def load_photos(self) -> None:
        """Every view's photo, mask and ceiling (:meth:`View.loss_pixels
        <invpbr.problem.folder.View.loss_pixels>`) as Dr.Jit tensors (views indexed as
        in the problem)."""
        import mitsuba as mi

        bound = self.problem.clipped_bounds()
        pixels = [v.loss_pixels(bound) for v in self.problem.views]
        self.photos = [mi.TensorXf(v.photo) for v in self.problem.views]
        self.weights = [None if mask is None else mi.TensorXf(mask[..., None].astype(np.float32))
                        for mask, _ in pixels]
        self.ceilings = [None if ceiling is None else mi.TensorXf(ceiling)
                         for _, ceiling in pixels]

    def seen(self, image, v: int):
        """``image`` of view number ``v`` as its photo saw it: gains, and no brighter than
        the photo's clipped channels (where the ceiling counts them)."""
        import drjit as dr

        image = self.latents.apply_to_image(image, v)
        ceiling = self.ceilings[v] if self.ceilings else None
        return image if ceiling is None else dr.minimum(image, ceiling)

    def render_view(self, v: int, spp: int, seed):
        return render_view(self.problem.scene, self.problem.params,
                           self.view_integrators.get(v, self.integrator),
                           self.problem.views[v].index, spp=spp, seed=seed,
                           spp_grad=self.render.spp_grad)

    def view_loss(self, image, v: int, n: int):
        """The loss of view number ``v``'s ``image`` (as its photo saw it), over ``n`` views."""
        return self.loss_fn(self.seen(image, v), self.photos[v], self.weights[v]) / n


class Strategy:
    """How a step renders and back-propagates (see the module)."""

    #: A step can be recorded once with dr.freeze and replayed.
    freezable = True

    def __init__(self, context: StepContext):
        self.context = context

    def inputs(self, chosen: list[int]):
        """The step function's view argument for the views ``chosen``."""
        return chosen

    def __call__(self, seed, which, spp: int):
        """Render the views, add their losses' gradients; the loss (detached)."""
        raise NotImplementedError

    def after_backward(self, chosen: list[int], base_seed: int, spp: int) -> None:
        """Work after the step's backward pass and before the optimizer step."""

    def frozen_inputs(self) -> dict[str, Any]:
        """Everything a step reads that exists before it (Dr.Jit arrays,
        Mitsuba objects, in PyTrees), for ``dr.freeze`` to traverse."""
        c = self.context
        return {"problem": c.problem, "integrator": c.integrator, "photos": c.photos,
                "weights": c.weights, "ceilings": c.ceilings}


class AllViews(Strategy):
    """The step's views together, one backward pass (batched where possible)."""

    def __init__(self, context: StepContext, batch_sensor=None):
        super().__init__(context)
        self.batch_sensor = batch_sensor
        self.batched = batch_sensor is not None
        context.load_photos()

    def frozen_inputs(self):
        return super().frozen_inputs() | {"batch_sensor": self.batch_sensor}

    def __call__(self, seed, chosen, spp):
        import drjit as dr
        import mitsuba as mi

        c = self.context
        # One backward pass for all views: a backward pass per view would clear the
        # AD graph between the latents and the scene (exp of a log-space latent, an
        # envmap's halo columns) after the first view, and later views would add no
        # gradient to those parameters.
        total = mi.Float(0.0)
        if self.batch_sensor is not None and chosen == c.fit:
            images = render_batch(c.problem.scene, c.problem.params, c.integrator,
                                  self.batch_sensor, len(c.fit), spp=spp, seed=seed,
                                  spp_grad=c.render.spp_grad)
        else:
            images = [c.render_view(v, spp, seed + v) for v in chosen]
        for v, image in zip(chosen, images):
            total = total + c.view_loss(image, v, len(chosen))
        c.latents.backward(total)
        return dr.detach(total)


class Slots(Strategy):
    """View subsets through :class:`~invpbr.render.views.ViewSlots`: the photos
    and masks of all fitted views live in one array each (and nowhere else:
    large captures), gathered by Dr.Jit index for the step's views."""

    def __init__(self, context: StepContext, slots: ViewSlots):
        import mitsuba as mi

        super().__init__(context)
        self.slots = slots
        self.batched = True
        views = context.problem.views
        self.position = {v: i for i, v in enumerate(context.fit)}
        self.image_shape = views[context.fit[0]].photo.shape
        self.photos = mi.Float(np.concatenate([views[v].photo.ravel() for v in context.fit]))
        bound = context.problem.clipped_bounds()
        pixels = [views[v].loss_pixels(bound) for v in context.fit]
        self.weights = None if all(m is None for m, _ in pixels) else mi.Float(np.concatenate(
            [np.ones(self.image_shape[:2], np.float32).ravel() if m is None
             else m.astype(np.float32).ravel() for m, _ in pixels]))
        self.ceilings = None if all(c is None for _, c in pixels) else mi.Float(np.concatenate(
            [np.full(self.image_shape, np.inf, np.float32).ravel() if c is None
             else c.ravel() for _, c in pixels]))

    def frozen_inputs(self):
        return super().frozen_inputs() | {"sensor": self.slots.sensor, "photos": self.photos,
                                          "weights": self.weights, "ceilings": self.ceilings}

    def inputs(self, chosen):
        import mitsuba as mi

        positions = [self.position[v] for v in chosen]
        self.slots.aim(positions)
        return mi.UInt32(positions)

    def __call__(self, seed, slot_views, spp):
        """``slot_views``: the aimed views' positions in ``fit`` (an ``mi.UInt32``)."""
        import drjit as dr
        import mitsuba as mi

        c = self.context
        images = self.slots.render(c.problem.scene, c.problem.params, c.integrator, spp=spp,
                                   seed=seed, spp_grad=c.render.spp_grad)
        h, w, ch = self.image_shape
        total = mi.Float(0.0)
        for k, image in enumerate(images):
            v = dr.gather(mi.UInt32, slot_views, k)
            photo = mi.TensorXf(dr.gather(mi.Float, self.photos, v * (h * w * ch)
                                          + dr.arange(mi.UInt32, h * w * ch)), (h, w, ch))
            weight = None if self.weights is None else mi.TensorXf(dr.gather(
                mi.Float, self.weights, v * (h * w) + dr.arange(mi.UInt32, h * w)), (h, w, 1))
            if self.ceilings is not None:  # (see View.loss_pixels)
                image = dr.minimum(image, mi.TensorXf(dr.gather(
                    mi.Float, self.ceilings, v * (h * w * ch) + dr.arange(mi.UInt32, h * w * ch)),
                    (h, w, ch)))
            total = total + c.loss_fn(image, photo, weight) / self.slots.k
        c.latents.backward(total)
        return dr.detach(total)


class PerView(Strategy):
    """The scene moved for each view (camera refinement): each view's backward
    pass runs while the scene is so moved (Mitsuba's adjoint pass renders the
    scene as it is at backward time)."""

    freezable = False

    def __init__(self, context: StepContext):
        super().__init__(context)
        context.load_photos()
        self.view_losses: dict[int, Any] = {}  # view number -> its last loss (detached)

    def __call__(self, seed, chosen, spp):
        import drjit as dr
        import mitsuba as mi

        c = self.context
        total = mi.Float(0.0)
        self.view_losses = {}
        for v in chosen:
            c.latents.write_scene(c.problem.views[v].index)
            loss = c.view_loss(c.render_view(v, spp, seed + v), v, len(chosen))
            c.latents.backward(loss)
            self.view_losses[v] = dr.detach(loss)
            total = total + dr.detach(loss)
        return total  # (the step's latents.step() writes the unmoved scene)


class FiniteDifferences(Strategy):
    """AD gradients for most estimates, and for those with ``gradient = "fd"``
    ``sum(dLoss/dImage x dImage/dx)``, ``dImage/dx`` a central finite
    difference of renders (see :meth:`after_backward`)."""

    freezable = False

    def __init__(self, context: StepContext, *, step: float = 0.01):
        super().__init__(context)
        self.step = step
        self.image_grads: list[np.ndarray] = []
        context.load_photos()

    def __call__(self, seed, chosen, spp):
        import drjit as dr
        import mitsuba as mi

        c = self.context
        total = mi.Float(0.0)
        self.image_grads = []
        for v in chosen:
            image = c.seen(c.render_view(v, spp, seed + v), v)
            total = total + c.loss_fn(image, c.photos[v], c.weights[v]) / len(chosen)
            self.image_grads.append(image_gradient(c.loss_fn, image, c.photos[v],
                                                   c.weights[v], len(chosen)))
        c.latents.backward(total)  # one pass for all views (see AllViews)
        return dr.detach(total)

    def after_backward(self, chosen, base_seed, spp):
        import drjit as dr

        c = self.context

        def render_views() -> list[np.ndarray]:
            with dr.suspend_grad():
                return [np.array(c.render_view(v, spp, (FD_SEED_OFFSET + base_seed + v) % 2**32))
                        for v in chosen]

        for e in c.latents.estimates:
            if e.finite_differences:
                set_fd_gradient(e, c.latents, c.problem.params, render_views, self.image_grads,
                                step=self.step)


def image_gradient(loss_fn, image, photo, weight, n_views: int) -> np.ndarray:
    """dLoss/dImage at ``image`` (detached), (H, W, 3)."""
    import drjit as dr

    x = dr.detach(image)
    dr.enable_grad(x)
    dr.backward(loss_fn(x, photo, weight) / n_views)
    return np.array(dr.grad(x), dtype=np.float64)


def set_fd_gradient(estimate, latents, params, render_views: Callable[[], list[np.ndarray]],
                    image_grads: list[np.ndarray], *, step: float = 0.01) -> None:
    """Replace the gradient of a ``gradient = "fd"`` estimate, component by
    component, by ``sum(dLoss/dImage * dImage/dx)`` with ``dImage/dx`` a
    central finite difference of renders.

    ``dLoss/dImage`` comes from the step's AD renders and the differences
    from renders with other seeds, so the gradient is that of the loss of
    the *expected* image: differentiating the loss of one noisy render
    would also follow how the parameter changes the noise (a bias toward
    smoother, less noisy materials).

    Args:
        estimate: the estimate (its latent is its scene value, linear).
        latents: the store.
        params: the scene's parameters.
        render_views: renders the step's views without gradients (fixed
            seeds, so both sides of a difference share their samples).
        image_grads: dLoss/dImage of each view, (H, W, 3) each.
        step: the difference step, relative to ``max(1, |value|)``; kept
            inside the parameter's bounds (one-sided at a bound).
    """
    import drjit as dr

    key = estimate.key
    current = latents[key]
    kind = type(current)
    x = np.array(current, dtype=np.float64)
    flat = x.reshape(-1)
    lo, hi = estimate.config.bounds or (-np.inf, np.inf)
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
            params[key] = kind(y.reshape(x.shape).astype(np.float32))
            params.update()
            sides.append(render_views())
        grad[c] = sum(float(np.sum(g * (hi_img - lo_img)))
                      for g, hi_img, lo_img in zip(image_grads, *sides)) / (above - below)
    params[key] = current
    params.update()
    if latents.scaler is not None:  # like the AD gradients, which come scaled
        grad = grad * float(np.asarray(latents.scaler.scale_factor).ravel()[0])
    dr.set_grad(current, kind(grad.reshape(x.shape).astype(np.float32)))


def can_freeze(problem, integrator_type: str, fixed_views: bool, estimates=None,
               strategy: Strategy | None = None) -> bool:
    """Whether a step of ``problem`` may be recorded once with ``dr.freeze``.

    Only where ``[optimize] freeze = true``, and not with projective
    integrators (their guiding and edge sampling do not replay), per-step
    view subsets not rendered through view slots (``fixed_views`` False: a
    new recording per subset), half precision, a strategy that cannot
    replay (per view, finite differences) or an estimate that cannot
    (finite-difference gradients, gains, cameras: Python work or
    view-dependent scene changes in the step). Coarse-to-fine stages are
    recorded once per stage.
    """
    estimates = problem.estimates if estimates is None else estimates
    return (problem.config.optimize.freeze and fixed_views
            and problem.config.optimize.precision == "single"
            and "projective" not in integrator_type
            and (strategy is None or strategy.freezable)
            and all(e.freezable and not e.finite_differences for e in estimates))


def choose_strategy(context: StepContext, estimates) -> tuple[Strategy, bool]:
    """The step strategy of a run, and whether its views are the same set of
    sensors at every step (for :func:`can_freeze`)."""
    for e in estimates:
        make = getattr(e, "make_strategy", None)
        if make is not None:
            strategy = make(context)
            return strategy, getattr(strategy, "fixed_views", True)
    problem = context.problem
    if any(e.finite_differences for e in estimates):
        return FiniteDifferences(context), context.per_step == len(context.fit)
    if any(e.per_view for e in estimates):
        return PerView(context), context.per_step == len(context.fit)
    batched = problem.config.optimize.batch and "projective" not in context.integrator_type
    sensors = [problem.views[v].index for v in context.fit]
    if context.per_step == len(context.fit):
        batch = make_batch_sensor(problem.scene, sensors) if batched else None
        return AllViews(context, batch), True
    if batched and not any(e.transforms_images for e in estimates):
        slots = ViewSlots.make(problem.scene, sensors, context.per_step)
        if slots is not None:
            return Slots(context, slots), True
    return AllViews(context), False
