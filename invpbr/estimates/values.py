"""Scene values: scalars and colours of BSDFs, textures' constants and
emitters (radiance, intensity, irradiance), estimated as they are stored in
the scene (``kind = "auto"`` on a key such as ``red.reflectance.value``).

:class:`SceneValue` is what values, bitmap textures (:mod:`.textures`) and
environment maps (:mod:`.envmaps`) share: a latent that is the scene value
itself, or its logarithm (``space = "log"``: positive values, relative
steps; the default for emitters), clipped into ``bounds`` after each step.

When the gradient is valid: Mitsuba's ``prb`` gives unbiased gradients for
shading parameters; the few it gets wrong (:data:`BIASED_GRADIENTS`) are
estimated with finite differences of the loss instead (``gradient = "fd"``).
Values that move visibility edges (a point light's position, a sphere's
radius) need a projective integrator, which ``integrator = "auto"`` picks.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..config import EstimateConfig
from .base import Estimate, ResolveContext, node_class, register_kind
from .lighting import is_light_key

#: Parameters whose gradient Mitsuba 3.9.1 computes wrongly, by (plugin class,
#: parameter name), with the reason. ``gradient = "auto"`` estimates them with
#: finite differences of the loss instead.
BIASED_GRADIENTS = {
    ("RoughPlastic", "alpha"): (
        "Mitsuba 3.9.1 computes roughplastic's rough-transmittance tables from alpha in scalar "
        "code, so its alpha gradient misses how the diffuse layer changes (the image-sum "
        "derivative was 80 % too small in tests/test_gradients.py)"),
    ("RoughPlastic", "eta"): (
        "Mitsuba 3.9.1 computes roughplastic's rough-transmittance tables from eta in scalar "
        "code, so its eta gradient misses how the diffuse layer changes"),
}

#: Finite-difference gradients are for small parameters: at most this many components.
FD_MAX_COMPONENTS = 4

#: Key endings of values that move visibility edges when estimated.
EDGE_SUFFIXES = ("position", "radius", "center")

def known_gradient_bias(params, key: str) -> str | None:
    """Why Mitsuba's gradient of ``key`` is wrong, or None if it is not known to be."""
    plugin = node_class(params, key)
    return BIASED_GRADIENTS.get((plugin, key.removesuffix(".value").rsplit(".", 1)[-1]))


def _bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Texel centres at (i + 0.5) / n, clamped at the borders.
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(x).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (x - i0).astype(np.float32)


def resample_texture(texture: np.ndarray, resolution: int | tuple[int, int]) -> np.ndarray:
    """Resample a (H, W, C) texture to ``resolution`` (square int or (H, W)).

    Downsampling by whole factors averages texel blocks (exact means);
    anything else interpolates bilinearly, which never leaves the range of
    the input values (unlike Lanczos, whose ringing breaks bounds).
    """
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    texture = np.asarray(texture, dtype=np.float32)
    H, W, C = texture.shape
    if (H, W) == (h, w):
        return texture.copy()
    if H % h == 0 and W % w == 0:
        return texture.reshape(h, H // h, w, W // w, C).mean(axis=(1, 3))
    y0, y1, fy = _bilinear_axis(H, h)
    x0, x1, fx = _bilinear_axis(W, w)
    rows = texture[y0] * (1 - fy)[:, None, None] + texture[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def parameter_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute difference of an estimate's values from the truth's.

    Textures of different resolutions are compared at the truth's resolution.
    Scalars compared with colours are broadcast.
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if estimate.ndim == 3 and truth.ndim == 3 and estimate.shape != truth.shape:
        estimate = resample_texture(estimate.astype(np.float32), truth.shape[:2])
    if estimate.size != truth.size and 1 not in (estimate.size, truth.size):
        raise ValueError(f"parameter_error(): estimate of shape {estimate.shape} cannot be compared "
                         f"with truth of shape {truth.shape}")
    return float(np.mean(np.abs(estimate.reshape(-1) - truth.reshape(-1))
                         if estimate.size == truth.size else np.abs(estimate - truth)))


class SceneValue(Estimate):
    """A parameter of the scene estimated as stored there (or as its log).

    Attributes:
        key: the ``mi.traverse`` key.
        shape: shape of the parameter in the scene.
        initial: the starting value as numpy.
        gradient: ``"ad"`` or ``"fd"`` (finite differences of the loss).
        space: ``"linear"`` or ``"log"``: what the optimizer steps in.
        scene_type: the Dr.Jit type the scene holds.
    """

    model = None  # envmaps may have a low-order model (see :mod:`.envmaps`)
    targets = None

    def __init__(self, key: str, config: EstimateConfig, *, shape: tuple[int, ...],
                 initial: np.ndarray, space: str, gradient: str = "ad",
                 scene_type: type | None = None):
        self.key = key
        self.config = config
        self.shape = shape
        self.initial = initial
        self.space = space
        self.gradient = gradient
        self.scene_type = scene_type
        self._stage = 0

    @property
    def finite_differences(self) -> bool:
        return self.gradient == "fd"

    @property
    def moves_edges(self) -> bool:
        return self.key.endswith(EDGE_SUFFIXES)

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        """Textures and envmaps: the (height, width) of each coarse-to-fine stage."""
        return []

    @property
    def tv(self) -> float:
        """Weight of the total-variation regularizer (textures and envmaps only)."""
        return 0.0

    def latent_from_scene(self, value: np.ndarray, stage: int = 0) -> np.ndarray:
        """The latent (numpy) that represents the scene-space ``value`` at ``stage``."""
        value = np.asarray(value, dtype=np.float32)
        if self.config.bounds is not None:
            value = np.clip(value, *self.config.bounds)
        if self.space == "log":
            return np.log(np.maximum(value, 1e-6)).astype(np.float32)
        return value

    def latent_bounds(self) -> tuple[float, float] | None:
        """Bounds in latent space (None: unbounded)."""
        if self.config.bounds is None:
            return None
        lo, hi = self.config.bounds
        if self.space == "log":
            return (float(np.log(max(lo, 1e-6))), float(np.log(hi)))
        return (lo, hi)

    def to_scene(self, latent, like):
        """The scene value (Dr.Jit) for ``latent``, differentiably (``like``: the
        parameter's current scene value, for its type)."""
        import drjit as dr

        value = dr.exp(latent) if self.space == "log" else latent
        if type(value) is not type(like):
            value = type(like)(value)
        return value

    def from_scene(self, value) -> np.ndarray:
        """Numpy estimate from a scene value."""
        return np.array(value, dtype=np.float32)

    # -- protocol --------------------------------------------------------------------------

    def make_latent(self, latent: np.ndarray, store):
        """The Dr.Jit variable holding a numpy latent."""
        return self.scene_type(latent)

    def set_latent(self, store, latent: np.ndarray, stage: int = 0) -> None:
        """(Re)register the latent, e.g. at a new coarse-to-fine stage."""
        store.add(self.key, self.make_latent(latent, store), lr=self.config.lr)
        self._stage = stage

    def start(self, store) -> None:
        self.set_latent(store, self.latent_from_scene(self.initial, 0), 0)

    def current_stage(self) -> int:
        return self._stage

    def scene_values(self, store, params) -> dict[str, Any]:
        return {self.key: self.to_scene(store[self.key], params[self.key])}

    def project(self, store) -> None:
        import drjit as dr

        bounds = self.latent_bounds()
        if bounds is not None:
            store[self.key] = dr.clip(store[self.key], *bounds)

    def value(self, store, params) -> np.ndarray:
        return self.from_scene(params[self.key])

    def errors(self, value, problem):
        truth = problem.truth.get(self.key)
        return (None, {}) if truth is None else (parameter_error(value, truth), {})

    @classmethod
    def write_xml(cls, scene, key, value, result, files) -> bool:
        return scene.set_value(key, value)

    def state(self) -> dict[str, Any]:
        return {"stage": self._stage}

    def load_state(self, store, params, state: dict[str, Any]) -> None:
        # (the latent of that stage, with its size, comes back from the checkpoint)
        self._stage = int(state.get("stage", 0))


class Value(SceneValue):
    """A scalar, colour or small array of the scene (``kind = "auto"`` on a key
    that is not a bitmap or an environment map)."""

    kind = "value"
    auto_priority = 2

    @classmethod
    def claims(cls, params, key: str) -> bool:
        return True

    @classmethod
    def from_key(cls, table: EstimateConfig, index: int, key: str,
                 context: ResolveContext) -> "Value":
        params = context.params
        where = f"{context.source}: estimate[{index}].key {key!r}"
        if table.resolution is not None or table.tv:
            raise ValueError(f"{where}: 'resolution' and 'tv' apply to bitmap textures and "
                             "environment maps (keys ending in .data) only")
        if table.model != "texels" or table.white_balance:
            raise ValueError(f"{where}: 'model' and 'white_balance' apply to environment maps only")
        arr = np.array(params[key], dtype=np.float32)
        space = table.space
        if space == "auto":
            space = "log" if is_light_key(key, node_class(params, key)) else "linear"
        check_log_bounds(where, space, table)
        gradient = choose_gradient(params, key, table, index, context.source)
        if arr.size > FD_MAX_COMPONENTS:
            refuse_fd(where, gradient, arr.size)
        if gradient == "fd" and space == "log":
            space = "linear"  # finite differences step in the scene's own units
        return cls(key, table, shape=tuple(arr.shape), initial=arr, space=space,
                   gradient=gradient, scene_type=type(params[key]))


register_kind(Value, auto=True)


def check_log_bounds(where: str, space: str, table: EstimateConfig) -> None:
    if space == "log" and table.bounds is not None and table.bounds[1] <= 0:
        raise ValueError(f"{where}: space = \"log\" needs positive values, but bounds "
                         f"are {list(table.bounds)}")


def choose_gradient(params, key: str, table: EstimateConfig, index: int, source) -> str:
    """``table.gradient`` resolved: ``auto`` is ``fd`` where Mitsuba's gradient
    of ``key`` is known to be biased (with a warning), ``ad`` elsewhere."""
    gradient = table.gradient
    bias = known_gradient_bias(params, key)
    if gradient == "auto":
        gradient = "fd" if bias else "ad"
        if bias:
            warnings.warn(f"{source}: estimate[{index}] {key!r}: {bias}; invpbr estimates it "
                          "with finite differences of the loss (gradient = \"fd\")", stacklevel=4)
    elif gradient == "ad" and bias:
        warnings.warn(f"{source}: estimate[{index}] {key!r}: {bias}", stacklevel=4)
    return gradient


def refuse_fd(where: str, gradient: str, size: int) -> None:
    """Finite-difference gradients are for scalars and colours only."""
    if gradient == "fd":
        raise ValueError(f"{where}: gradient = \"fd\" is for scalars and colours (at most "
                         f"{FD_MAX_COMPONENTS} values), this parameter has {size}")
