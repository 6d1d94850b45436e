"""Gradient images: what the optimizer sees, as pictures.

For a view and the scene as it is now:

- ``dloss_dpixel``: the image-space gradient of the problem's loss, dLoss/dI
  per pixel (summed over colour channels): where the loss wants the render
  darker (positive, red) or brighter (negative, blue);
- for each estimate and each of its gradient-check directions θ
  (``Estimate.gradcheck_directions``: a colour's channels, a pose's or a
  camera's translation and rotation components...):
  ``dimage`` = dI/dθ by forward-mode AD, and ``contribution`` =
  dLoss/dI · dI/dθ per pixel, whose sum is dLoss/dθ: the pixels that pull
  the estimate one way or the other (a drifting camera pulls at the
  silhouettes);
- for estimates whose value is an image (textures, environment maps):
  ``texture`` = dLoss/dtexel, the reverse-mode gradient as an image.

Estimates move through their own ``gradcheck_writer`` (no kind is named
here), so a new kind gets gradient images by defining its gradient-check
hooks. Renders use the problem's integrator and loss, ``spp`` samples and a
fixed seed; a direction whose forward mode Mitsuba loses (see
:mod:`invpbr.optimize.gradcheck`) shows as an all-zero image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..render.integrators import choose_integrator_type, make_integrator, view_integrators
from ..results.gradients import GradientImage, write_gradient_images
from .losses import image_loss


def estimates_of(problem) -> dict:
    """key -> the problem's reported estimates (those gradient images show)."""
    return {e.key: e for e in problem.estimates if e.reported}


def _render(problem, integrator, view, spp: int, seed: int):
    import mitsuba as mi

    return mi.render(problem.scene, problem.params, sensor=view.index, integrator=integrator,
                     spp=spp, seed=seed)


def _loss_pixels(problem, view):
    """The view's loss weight and ceiling as Dr.Jit tensors (or None), as the run's loss
    has them (:meth:`View.loss_pixels <invpbr.problem.folder.View.loss_pixels>`)."""
    import mitsuba as mi

    mask, ceiling = view.loss_pixels(problem.clipped_bounds())
    return (None if mask is None else mi.TensorXf(mask[..., None].astype(np.float32)),
            None if ceiling is None else mi.TensorXf(ceiling))


def _seen(image, view, transform, ceiling=None):
    import drjit as dr

    image = image if transform is None else transform(image, view)
    return image if ceiling is None else dr.minimum(image, ceiling)


def _pixel_gradient(problem, view, image, loss_fn) -> tuple[np.ndarray, float]:
    """dLoss/dI (H, W, 3) of one view's ``image`` (detached, as its photo saw it), and
    the loss."""
    import drjit as dr
    import mitsuba as mi

    x = dr.detach(image)
    dr.enable_grad(x)
    weight, _ = _loss_pixels(problem, view)
    loss = loss_fn(x, mi.TensorXf(view.photo), weight)
    dr.backward(loss)
    return np.array(dr.grad(x), dtype=np.float64)[..., :3], float(np.asarray(dr.detach(loss)).ravel()[0])


def estimate_images(problem, estimate, view, integrator, pixel_grad: np.ndarray, *, loss_fn,
                    stage: str, spp: int, seed: int, transform=None, store=None
                    ) -> list[GradientImage]:
    """The gradient images of one estimate on one view (see the module docs);
    with ``store`` (a run's latents) the estimate moves from their values."""
    import drjit as dr
    import mitsuba as mi

    if store is None:
        base, to_dr, write, restore = estimate.gradcheck_writer(problem.params, view.index)
    else:
        base, to_dr, write, restore = estimate.gradcheck_writer(problem.params, view.index,
                                                                store=store)
    out = []
    try:
        weight, ceiling = _loss_pixels(problem, view)
        x = to_dr(base)
        dr.enable_grad(x)
        write(x)
        loss = loss_fn(_seen(_render(problem, integrator, view, spp, seed), view, transform,
                             ceiling), mi.TensorXf(view.photo), weight)
        dr.backward(loss)
        grad = np.array(dr.grad(x), dtype=np.float64).reshape(np.shape(base))
        if grad.ndim == 3:  # an image (texture, environment map): its gradient as one
            out.append(GradientImage(stage, view.id, estimate.key, "", "texture", grad,
                                     total=float(grad.sum())))
            return out
        for label, direction in estimate.gradcheck_directions(base, grad, view.index):
            theta = mi.Float(0.0)
            dr.enable_grad(theta)
            write(to_dr(base) + to_dr(direction) * theta)
            image = _seen(_render(problem, integrator, view, spp, seed), view, transform)
            dr.forward(theta)
            d_image = np.array(dr.grad(image), dtype=np.float64)[..., :3]
            contribution = (pixel_grad * d_image).sum(axis=-1)
            out.append(GradientImage(stage, view.id, estimate.key, label, "dimage", d_image,
                                     total=float(d_image.sum())))
            out.append(GradientImage(stage, view.id, estimate.key, label, "contribution",
                                     contribution, total=float(contribution.sum())))
    finally:
        # (a writer's original value may alias the live scene field, which the writes
        # above changed: put the base value back first, then let the writer restore)
        write(to_dr(base))
        restore()
    return out


def gradient_images(problem, *, keys: list[str] | None = None, views: list[str] | None = None,
                    n_views: int = 1, spp: int = 16, seed: int = 0, stage: str = "start",
                    integrator=None, per_view: dict | None = None, transform=None, move=None,
                    store=None, setup: bool = True) -> list[GradientImage]:
    """Gradient images of ``problem`` as its scene is now.

    Args:
        problem: the problem (its estimates' gradient-check hooks move them).
        keys: estimates to show (default: all).
        views: sensor ids (default: the first ``n_views`` fitted views).
        n_views: how many views when ``views`` is not given.
        spp: samples per pixel of every render.
        seed: the renders' seed (the same for all, so images compare).
        stage: the label of these images (``start``, ``end``...).
        integrator: the integrator (default: the problem's choice).
        per_view: view number -> the integrator that view renders with where it is not
            ``integrator`` (default, where ``integrator`` is not given either: as the
            optimizer chooses them, :func:`invpbr.render.integrators.view_integrators`).
        transform: ``transform(image, view)``: a render as the view's photo saw it
            (e.g. times the photo's estimated gain); default: the render itself.
        move: ``move(sensor_index)`` puts the scene as that view's camera sees it
            (refined cameras), ``move(None)`` puts it back; default: nothing moves.
        store: a run's latents: estimates move from their values (see
            ``Estimate.gradcheck_writer``); default: from the scene as it is.
        setup: finish building the estimates for the problem's views first
            (``Estimate.setup``; a run has done so).

    Returns:
        ``dloss_dpixel`` of each view, then each estimate's images (see the module docs).

    Raises:
        ValueError: an unknown key or view (the message lists the known ones).
    """
    import drjit as dr

    estimates = estimates_of(problem)
    for key in keys or []:
        if key not in estimates:
            raise ValueError(f"gradient_images(): {key!r} is not an estimate of {problem.name}; "
                             f"estimates: {', '.join(estimates)}")
    fitted = [v for v in problem.views if not v.held_out] or list(problem.views)
    chosen = fitted[:max(1, n_views)] if views is None else [v for v in problem.views
                                                            if v.id in views]
    if views is not None and len(chosen) != len(set(views)):
        raise ValueError(f"gradient_images(): unknown view(s) "
                         f"{sorted(set(views) - {v.id for v in problem.views})}; views: "
                         f"{', '.join(v.id for v in problem.views)}")
    if setup:
        for key in keys or list(estimates):
            estimates[key].setup(problem)
    if integrator is None:
        integrator = make_integrator(problem.config.render, problem.estimates, problem.scene)
        if per_view is None:
            kinds = list(estimates.values())
            per_view = view_integrators(problem.config.render, kinds, problem.scene, problem.views,
                                        choose_integrator_type(problem.config.render, kinds))
    number = {id(v): i for i, v in enumerate(problem.views)}
    cfg = problem.config.optimize
    loss_fn = image_loss(cfg.loss, scale=cfg.loss_scale)
    out = []
    for view in chosen:
        used = (per_view or {}).get(number[id(view)], integrator)
        if move is not None:
            move(view.index)
        with dr.suspend_grad():
            image = _seen(_render(problem, used, view, spp, seed), view, transform,
                          _loss_pixels(problem, view)[1])
        pixel_grad, loss = _pixel_gradient(problem, view, image, loss_fn)
        out.append(GradientImage(stage, view.id, "", f"(loss {loss:.4g})", "dloss_dpixel",
                                 pixel_grad))
        for key in keys or list(estimates):
            estimate = estimates[key]
            if estimate.gradcheck_applies(view.index):
                out += estimate_images(problem, estimate, view, used, pixel_grad,
                                       loss_fn=loss_fn, stage=stage, spp=spp, seed=seed,
                                       transform=transform, store=store)
                if move is not None:  # (a writer may have put the scene at rest)
                    move(view.index)
        if move is not None:
            move(None)
    return out


def run_gradient_images(run, stage: str) -> list[GradientImage]:
    """The gradient images a run keeps (``[report] gradients``; none when it is
    off): at the ``start`` (before its latents exist) or at the ``end`` (after
    they are released: renders as the photos saw them, seen from per-view
    estimates such as refined cameras, estimates moved from their final latents)."""
    cfg = run.problem.config.report
    if not cfg.gradients:
        return []
    options = {}
    latents = run.latents if stage == "end" else None
    if latents is not None:
        number = {id(v): i for i, v in enumerate(run.problem.views)}
        options = {"store": latents, "move": latents.move_for_view,
                   "transform": lambda image, view: latents.apply_to_image(image, number[id(view)])}
    return gradient_images(run.problem, stage=stage, n_views=cfg.gradient_views,
                           spp=cfg.gradient_spp, integrator=run.integrator,
                           per_view=run.context.view_integrators, setup=False, **options)


def write_scene_gradients(problem, out: str | Path, **options) -> Path:
    """``invpbr gradients DIR``: the gradient images of a scene folder's
    starting guess, written to ``out`` (index.json, PNGs, index.html)."""
    images = gradient_images(problem, stage=options.pop("stage", "start"), **options)
    return write_gradient_images(images, out, title=problem.name)
