"""Gradient checks: forward-mode derivatives against central finite differences.

For a parameter ``x`` and a direction ``d`` (one component of a colour, or one
texel of a texture), the forward-mode derivative of a rendered view,
``dI/dt`` at ``x + t d``, is compared pixel by pixel with the central
difference ``(I(x + eps d) - I(x - eps d)) / (2 eps)`` rendered with the same
seed at higher spp. The finite difference is itself noisy: it is computed
twice with different seeds, and their disagreement is reported as ``fd_noise``
so that a user can tell a wrong gradient from a noisy reference.

Errors follow Mitsuba's own AD-integrator tests: per pixel,
``|ad - fd| / max(|fd|, floor)`` with ``floor`` a tenth of the largest
``|fd|``; ``error_mean`` and ``error_max`` summarize them, and ``sum_error``
compares the derivative of the whole image's sum.

The optimizer uses reverse mode, so the reverse-mode derivative of the image
sum is checked too (``reverse_error``). The two modes can differ: in
Mitsuba 3.9.1 forward mode loses derivatives of quantities a plugin derives
from a parameter when the parameter changes (the principled BSDF's
``specular``, from which it computes ``eta``): forward mode gives exactly zero
there while reverse mode is right. Such a case is reported as
``forward_lost``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..render.integrators import choose_integrator_type, make_integrator, view_integrators


@dataclass
class GradientCheck:
    """One parameter direction checked on one view.

    Attributes:
        key: the parameter.
        component: which direction (``"[1]"`` for a colour's green,
            ``"texel (y, x)"`` for a texture).
        view: the sensor id rendered.
        error_mean: mean per-pixel relative error of AD against FD.
        error_max: largest per-pixel relative error.
        sum_error: relative error of the derivative of the image sum.
        fd_noise: ``error_mean`` between two finite differences with different
            seeds (how precise the reference itself is).
        ad_sum: derivative of the image sum by AD.
        fd_sum: the same by finite differences.
        reverse_error: relative error of the reverse-mode derivative of the
            image sum (what the optimizer uses).
        forward_lost: forward mode gave exactly zero where finite differences
            and reverse mode do not (a Mitsuba limitation; see module docs).
    """

    key: str
    component: str
    view: str
    error_mean: float
    error_max: float
    sum_error: float
    fd_noise: float
    ad_sum: float
    fd_sum: float
    reverse_error: float
    forward_lost: bool

    def as_dict(self) -> dict:
        return asdict(self)


def relative_errors(ad: np.ndarray, fd: np.ndarray) -> tuple[float, float]:
    """Mean and max of ``|ad - fd| / max(|fd|, 0.1 max|fd|)`` over pixels."""
    scale = float(np.abs(fd).max())
    if scale == 0.0:
        diff = float(np.abs(ad).max())
        return (0.0, 0.0) if diff == 0.0 else (float("inf"), float("inf"))
    err = np.abs(ad - fd) / np.maximum(np.abs(fd), 0.1 * scale)
    return float(err.mean()), float(err.max())


def check_gradients(problem, keys: list[str] | None = None, *,
                    views: list[str] | None = None, spp: int = 64, fd_spp: int = 256,
                    epsilon: float = 1e-2, seed: int = 0) -> list[GradientCheck]:
    """Compare AD and finite-difference derivatives of rendered views.

    Args:
        problem: the problem; its scene's current values are the point of the check.
        keys: parameter keys (default: all estimated parameters).
        views: sensor ids (default: the first view).
        spp: samples per pixel of the forward-mode render.
        fd_spp: samples per pixel of each finite-difference render.
        epsilon: finite-difference step, in the parameter's units.
        seed: sampler seed.

    Returns:
        One :class:`GradientCheck` per parameter direction and view.
    """
    by_key = {e.key: e for e in problem.estimates if e.reported}
    keys = list(by_key) if keys is None else keys
    for key in keys:
        if key not in by_key:
            raise ValueError(f"check_gradients(): {key!r} is not an estimated parameter of "
                             f"{problem.name}; estimated: {', '.join(by_key)}")
    numbered = list(enumerate(problem.views))
    chosen = numbered[:1] if views is None else [(i, v) for i, v in numbered if v.id in views]
    if views is not None and len(chosen) != len(views):
        known = [v.id for v in problem.views]
        raise ValueError(f"check_gradients(): unknown view(s) {sorted(set(views) - set(known))}; "
                         f"views: {', '.join(known)}")
    integrator = make_integrator(problem.config.render, problem.parameters, problem.scene)
    for key in keys:
        by_key[key].setup(problem)
    # each view renders with the integrator the optimizer gives it
    per_view = view_integrators(problem.config.render, problem.parameters, problem.scene,
                                problem.views,
                                choose_integrator_type(problem.config.render, problem.parameters))
    checks = []
    for key in keys:
        for number, view in chosen:
            if by_key[key].gradcheck_applies(view.index):
                checks += check_direction_set(problem, by_key[key], view,
                                              per_view.get(number, integrator),
                                              spp=spp,
                                              fd_spp=fd_spp, epsilon=epsilon, seed=seed)
    return checks


def check_direction_set(problem, estimate, view, integrator, *, spp: int, fd_spp: int,
                        epsilon: float, seed: int) -> list[GradientCheck]:
    """The checks of one estimate's directions (its ``gradcheck_directions``)
    on one view."""
    import drjit as dr
    import mitsuba as mi

    params = problem.params
    base, to_dr, write, restore = estimate.gradcheck_writer(params, view.index)

    def render(value, n_spp, s):
        write(to_dr(value))
        with dr.suspend_grad():
            img = mi.render(problem.scene, params, sensor=view.index, integrator=integrator,
                            spp=n_spp, seed=s)
        return np.array(img, dtype=np.float64)[..., :3]

    x = to_dr(base)
    dr.enable_grad(x)
    write(x)
    img = mi.render(problem.scene, params, sensor=view.index, integrator=integrator,
                    spp=spp, seed=seed)
    dr.backward(dr.sum(img, axis=None))
    reverse_grad = np.array(dr.grad(x), dtype=np.float64).reshape(base.shape)
    checks = []
    for label, direction in estimate.gradcheck_directions(base, reverse_grad, view.index):
        theta = mi.Float(0.0)
        dr.enable_grad(theta)
        write(to_dr(base) + to_dr(direction) * theta)
        img = mi.render(problem.scene, params, sensor=view.index, integrator=integrator,
                        spp=spp, seed=seed)
        dr.forward(theta)
        ad = np.array(dr.grad(img), dtype=np.float64)[..., :3]

        def fd(s):
            plus = render(base + epsilon * direction, fd_spp, s)
            minus = render(base - epsilon * direction, fd_spp, s)
            return (plus - minus) / (2 * epsilon)

        fd_a, fd_b = fd(seed + 1), fd(seed + 2)
        fd_ref = 0.5 * (fd_a + fd_b)
        mean, worst = relative_errors(ad, fd_ref)
        noise, _ = relative_errors(fd_a, fd_b)
        ad_sum, fd_sum = float(ad.sum()), float(fd_ref.sum())
        denominator = max(abs(fd_sum), 1e-12)
        reverse_sum = float((reverse_grad.reshape(-1) * direction.reshape(-1)).sum())
        reverse_error = abs(reverse_sum - fd_sum) / denominator
        forward_lost = (not np.any(ad)) and reverse_error < 0.5
        checks.append(GradientCheck(
            key=estimate.key, component=label, view=view.id, error_mean=mean, error_max=worst,
            sum_error=abs(ad_sum - fd_sum) / denominator, fd_noise=noise, ad_sum=ad_sum,
            fd_sum=fd_sum, reverse_error=reverse_error, forward_lost=forward_lost))
    restore()
    return checks


def format_checks(checks: list[GradientCheck]) -> str:
    """A table of gradient checks for printing."""
    lines = [f"{'parameter':40s} {'dir':14s} {'view':10s} {'err mean':>9s} {'err max':>9s} "
             f"{'sum err':>9s} {'rev err':>9s} {'fd noise':>9s}"]
    for c in checks:
        note = "  forward mode lost (Mitsuba); reverse ok" if c.forward_lost else ""
        lines.append(f"{c.key:40s} {c.component:14s} {c.view:10s} {c.error_mean:9.4f} "
                     f"{c.error_max:9.4f} {c.sum_error:9.4f} {c.reverse_error:9.4f} "
                     f"{c.fd_noise:9.4f}{note}")
    return "\n".join(lines)
