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

from ..estimates.base import Parameter
from ..problem.folder import Problem
from ..render.integrators import make_integrator


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


def _directions(parameter: Parameter, value: np.ndarray, grad: np.ndarray,
                slot: int = 0) -> list[tuple[str, np.ndarray]]:
    """The directions checked for a parameter: each component of a small value
    (a pose: its translation and rotation components; a camera: those of the
    camera in ``slot``); for a texture, the texel, and for a shape the vertex
    coordinate, whose (reverse-mode) gradient ``grad`` is largest."""
    flat = value.reshape(-1)
    if parameter.kind == "camera":
        out = []
        for i, name in enumerate(["tx", "ty", "tz", "rx", "ry", "rz"]):
            d = np.zeros_like(flat)
            d[6 * slot + i] = 1.0
            out.append((f"camera {name}", d))
        return out
    if parameter.kind == "pose":
        names = ["tx", "ty", "tz", "rx", "ry", "rz", "log scale"]
        out = []
        for i in range(flat.size):
            d = np.zeros_like(flat)
            d[i] = 1.0
            out.append((names[i], d))
        return out
    if parameter.kind == "value":
        out = []
        for i in range(min(flat.size, 3)):
            d = np.zeros_like(flat)
            d[i] = 1.0
            out.append((f"[{i}]" if flat.size > 1 else "", d.reshape(value.shape)))
        return out
    if parameter.kind == "shape":
        i = int(np.argmax(np.abs(grad).reshape(-1)))
        d = np.zeros_like(value)
        d.reshape(-1)[i] = 1.0
        return [(f"vertex {i // 3} {'xyz'[i % 3]}", d)]
    h, w, c = value.shape
    strength = np.abs(grad).sum(axis=-1)
    if parameter.kind == "envmap":
        strength[:, [0, -1]] = -1  # Mitsuba's halo columns copy the opposite edge
    y, x = np.unravel_index(int(np.argmax(strength)), (h, w))
    d = np.zeros_like(value)
    d[y, x, :] = 1.0
    return [(f"texel ({y}, {x})", d)]


def check_gradients(problem: Problem, keys: list[str] | None = None, *,
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
    import drjit as dr
    import mitsuba as mi

    params = problem.params
    by_key = {p.key: p for p in problem.parameters}
    keys = list(by_key) if keys is None else keys
    for key in keys:
        if key not in by_key:
            raise ValueError(f"check_gradients(): {key!r} is not an estimated parameter of "
                             f"{problem.name}; estimated: {', '.join(by_key)}")
    chosen = problem.views[:1] if views is None else [v for v in problem.views if v.id in views]
    if views is not None and len(chosen) != len(views):
        known = [v.id for v in problem.views]
        raise ValueError(f"check_gradients(): unknown view(s) {sorted(set(views) - set(known))}; "
                         f"views: {', '.join(known)}")
    integrator = make_integrator(problem.config.render, problem.parameters, problem.scene)
    if any(by_key[k].kind == "camera" for k in keys):
        from .loop import _setup_cameras

        _setup_cameras(problem)
    checks = []
    for key in keys:
        parameter = by_key[key]
        flat = parameter.is_geometry or parameter.kind == "camera"
        for view in chosen:
            base, kind, write, restore = _writer(parameter, params, view.index)
            if parameter.kind == "camera" and view.index not in parameter.model.slot:
                continue  # not a refined camera

            def put(value):
                write(kind(value) if parameter.kind in ("texture", "envmap")
                      else kind(np.ravel(value)) if flat
                      else kind(value.reshape(base.shape)))

            def render(value, n_spp, s):
                put(value)
                with dr.suspend_grad():
                    img = mi.render(problem.scene, params, sensor=view.index, integrator=integrator,
                                    spp=n_spp, seed=s)
                return np.array(img, dtype=np.float64)[..., :3]

            def reverse():
                x = kind(base) if not flat else kind(np.ravel(base))
                dr.enable_grad(x)
                write(x)
                img = mi.render(problem.scene, params, sensor=view.index, integrator=integrator,
                                spp=spp, seed=seed)
                dr.backward(dr.sum(img, axis=None))
                return np.array(dr.grad(x), dtype=np.float64).reshape(base.shape)

            reverse_grad = reverse()
            slot = parameter.model.slot[view.index] if parameter.kind == "camera" else 0
            for label, direction in _directions(parameter, base, reverse_grad, slot):
                theta = mi.Float(0.0)
                dr.enable_grad(theta)
                if parameter.kind in ("texture", "envmap"):
                    write(kind(base) + mi.TensorXf(direction) * theta)
                elif flat:
                    write(kind(np.ravel(base)) + kind(np.ravel(direction)) * theta)
                else:
                    write(kind(base) + kind(direction.reshape(base.shape)) * theta)
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
                    key=key, component=label, view=view.id, error_mean=mean, error_max=worst,
                    sum_error=abs(ad_sum - fd_sum) / denominator, fd_noise=noise, ad_sum=ad_sum,
                    fd_sum=fd_sum, reverse_error=reverse_error, forward_lost=forward_lost))
            restore()
    return checks


def _writer(parameter: Parameter, params, view_index: int = 0):
    """How a check moves ``parameter``: its base value (numpy), the Dr.Jit
    type of a value, a function writing a value into the scene, and one
    putting the original back. Geometry is moved through its latent: a pose's
    ``[t, w(, log s)]`` (see :mod:`invpbr.estimates.meshes`), a shape's vertices; a
    camera through the scene moved for the camera of sensor ``view_index``
    (see :mod:`invpbr.estimates.cameras`)."""
    import mitsuba as mi

    if parameter.kind == "camera":
        model = parameter.model

        def write(value):
            model.move_scene(params, value, view_index)

        def restore():
            model.move_scene(params, model.initial_latent(), None)

        return model.initial_latent().astype(np.float64), mi.Float, write, restore
    if parameter.kind == "pose":
        originals = {k: params[k] for k in parameter.scene_keys}

        def write(value):
            for k, v in parameter.model.scene_values(value).items():
                params[k] = v
            params.update()

        def restore():
            for k, v in originals.items():
                params[k] = v
            params.update()

        return parameter.model.initial_latent().astype(np.float64), mi.Float, write, restore
    key = parameter.key
    original = params[key]
    kind = type(original)

    def write(value):
        params[key] = value
        params.update()

    def restore():
        params[key] = original
        params.update()

    base = np.array(original, dtype=np.float32)
    if parameter.kind == "shape":
        base = base.reshape(-1, 3)
    return base, kind, write, restore


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
