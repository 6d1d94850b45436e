"""What is estimated: keys of ``mi.traverse`` resolved into parameters.

A :class:`Parameter` is one scene parameter under optimization: its key, its
settings (bounds, learning rate, texture stages, regularizer weight) and its
kind (a value such as a colour or a scalar, or a bitmap texture).
"""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import EstimateConfig
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


@dataclass
class Parameter:
    """One estimated scene parameter and how it is optimized.

    The optimizer works on a *latent* value; :meth:`to_scene` maps it to what
    the scene holds (identity, ``exp`` in log space, an envmap model).

    Attributes:
        key: the ``mi.traverse`` key.
        config: its ``[[estimate]]`` settings.
        kind: ``"texture"`` (bitmap data, (H, W, C)), ``"envmap"`` (an
            environment map's data), ``"value"`` (scalars, colours, arrays),
            ``"pose"`` or ``"shape"`` (geometry, see :mod:`invpbr.estimates.meshes`),
            ``"camera"`` (photos' camera poses, see :mod:`invpbr.estimates.cameras`; key
            ``"cameras"``, ``targets`` the sensor ids).
        shape: shape of the parameter in the scene.
        initial: the starting value as numpy (textures (H, W, C); envmaps
            their real texels (H, W, 3), without Mitsuba's halo columns).
        gradient: ``"ad"`` or ``"fd"`` (finite differences of the loss).
        space: ``"linear"`` or ``"log"``: what the optimizer steps in.
        model: envmaps with a low-order ``model``, and geometry: the model
            object that maps the latent to scene values.
        targets: geometry: the scene keys written (``key`` names the estimate);
            cameras: the sensor ids matched.
    """

    key: str
    config: EstimateConfig
    kind: str
    shape: tuple[int, ...]
    initial: np.ndarray
    gradient: str = "ad"
    space: str = "linear"
    model: object | None = None
    targets: list[str] | None = None

    @property
    def scene_keys(self) -> list[str]:
        """The scene keys this parameter writes (several for a pose of meshes
        moved together)."""
        return self.targets or [self.key]

    @property
    def truth_keys(self) -> list[str]:
        """The keys read from truth.xml to score this parameter (a shape's
        faces too: its error is measured between surfaces)."""
        if self.kind == "shape":
            return self.scene_keys + [k.removesuffix("vertex_positions") + "faces"
                                      for k in self.scene_keys]
        if self.kind == "camera":
            return []  # true cameras come from [cameras] truth or truth.xml's sensors
        return self.scene_keys

    @property
    def is_geometry(self) -> bool:
        return self.kind in ("pose", "shape")

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        """Textures and envmaps: the (height, width) of each coarse-to-fine stage."""
        if self.kind in ("value", "pose", "shape", "camera") or self.model is not None:
            return []
        h, w = self.initial.shape[:2]
        if self.config.resolution:
            heights = self.config.resolution
        elif self.kind == "envmap":
            heights = sorted({max(4, h // 4), max(4, h // 2), h})
        else:
            heights = [h]
        return [(r, max(1, round(r * w / h))) for r in heights]

    @property
    def tv(self) -> float:
        """Weight of the total-variation regularizer of this parameter."""
        if self.config.tv is not None:
            return self.config.tv
        from .lighting import ENVMAP_TV

        return ENVMAP_TV if self.kind == "envmap" and self.model is None else 0.0

    def stage(self, iteration: int, iterations: int) -> int:
        """Index of the coarse-to-fine stage that ``iteration`` belongs to."""
        n = len(self.resolutions)
        if n <= 1 or iterations <= 0:
            return 0
        return min(n - 1, iteration * n // iterations)

    def latent_from_scene(self, value: np.ndarray, stage: int = 0) -> np.ndarray:
        """The latent (numpy) that represents the scene-space ``value`` at ``stage``."""
        value = np.asarray(value, dtype=np.float32)
        if self.model is not None:
            return self.model.fit(value)
        if self.kind in ("texture", "envmap"):
            value = resample_texture(value, self.resolutions[stage])
        if self.config.bounds is not None:
            value = np.clip(value, *self.config.bounds)
        if self.space == "log":
            return np.log(np.maximum(value, 1e-6)).astype(np.float32)
        return value

    def latent_bounds(self) -> tuple[float, float] | None:
        """Bounds in latent space (None: unbounded)."""
        if self.config.bounds is None or self.model is not None:
            return None
        lo, hi = self.config.bounds
        if self.space == "log":
            return (float(np.log(max(lo, 1e-6))), float(np.log(hi)))
        return (lo, hi)

    def to_scene(self, latent, like):
        """The scene value (Dr.Jit) for ``latent``, differentiably.

        Args:
            latent: the optimizer's variable.
            like: the parameter's current scene value (for its type).
        """
        import drjit as dr

        from .lighting import envmap_with_halo

        if self.model is not None:
            return envmap_with_halo(self.model.texels(latent))
        value = dr.exp(latent) if self.space == "log" else latent
        if self.kind == "envmap":
            return envmap_with_halo(value)
        if self.kind == "value" and type(value) is not type(like):
            value = type(like)(value)
        return value

    def from_scene(self, value) -> np.ndarray:
        """Numpy estimate from a scene value (envmaps without their halo)."""
        from .lighting import envmap_texels

        arr = np.array(value, dtype=np.float32)
        return envmap_texels(arr) if self.kind == "envmap" else arr


def _is_differentiable(value, flags) -> bool:
    import drjit as dr
    import mitsuba as mi

    if flags & int(mi.ParamFlags.NonDifferentiable):
        return False
    if not dr.is_array_v(value):
        return False
    return dr.is_float_v(value) and dr.is_diff_v(value)


def _node_class(params, key: str) -> str | None:
    """Class name of the scene object that owns ``key`` (e.g. ``RoughPlastic``)."""
    try:
        return params.properties[key][2].class_name()
    except (KeyError, IndexError, AttributeError, TypeError):
        return None


def known_gradient_bias(params, key: str) -> str | None:
    """Why Mitsuba's gradient of ``key`` is wrong, or None if it is not known to be."""
    plugin = _node_class(params, key)
    return BIASED_GRADIENTS.get((plugin, key.removesuffix(".value").rsplit(".", 1)[-1]))


def resolve_parameters(params, estimates: list[EstimateConfig], *,
                       source: str | Path = "invpbr.toml",
                       sensor_ids: list[str] | None = None) -> list[Parameter]:
    """Match each ``[[estimate]]`` key (globs allowed) against ``params``
    (``kind = "camera"``: against ``sensor_ids``).

    Args:
        params: ``mi.SceneParameters`` of the model scene.
        estimates: the estimate tables of the problem.
        source: the file named in error messages.
        sensor_ids: the scene's sensor ids (for camera estimates).

    Returns:
        One :class:`Parameter` per matched key, in the order of the tables.

    Raises:
        ValueError: a key matches nothing (the message suggests close keys), a
            matched key is not differentiable, or two tables claim one key.
    """
    import drjit as dr

    keys = list(params.keys())
    found: dict[str, Parameter] = {}
    claimed: set[str] = set()
    for i, est in enumerate(estimates):
        if est.kind == "camera":
            ids = [k for k in (sensor_ids or []) if fnmatch.fnmatchcase(k, est.key)]
            if not ids:
                raise ValueError(f"{source}: estimate[{i}].key {est.key!r} (kind = \"camera\") "
                                 f"matches no sensor id; sensors: {', '.join(sensor_ids or [])}")
            found["cameras"] = Parameter(key="cameras", config=est, kind="camera",
                                         shape=(len(ids), 6), initial=np.zeros((len(ids), 6)),
                                         targets=ids)
            continue
        if est.kind in ("pose", "shape"):
            for parameter in _resolve_geometry(params, est, i, source, claimed):
                found[parameter.key] = parameter
            continue
        if est.key in keys:
            matched = [est.key]
        else:
            matched = [k for k in keys if fnmatch.fnmatchcase(k, est.key)]
        if not matched:
            close = difflib.get_close_matches(est.key, keys, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"{source}: estimate[{i}].key {est.key!r} matches no parameter of the "
                             f"scene{hint} (list them with `invpbr check`)")
        for key in matched:
            if key in found or key in claimed:
                raise ValueError(f"{source}: estimate[{i}].key {est.key!r} matches {key!r}, "
                                 "which an earlier [[estimate]] already estimates")
            value = params[key]
            if not _is_differentiable(value, params.flags(key)):
                kind = type(value).__name__
                raise ValueError(f"{source}: estimate[{i}].key {key!r} is not differentiable "
                                 f"(a {kind} that Mitsuba marks non-differentiable or stores as "
                                 "integers); choose a BSDF, texture or emitter parameter")
            node_class = _node_class(params, key)
            is_tensor = isinstance(value, dr.ArrayBase) and dr.is_tensor_v(value) \
                and len(value.shape) == 3
            if is_tensor and key.endswith(".data") and node_class == "EnvironmentMapEmitter":
                kind = "envmap"
            elif is_tensor and key.endswith(".data"):
                kind = "texture"
            else:
                kind = "value"
            where = f"{source}: estimate[{i}].key {key!r}"
            if kind == "value" and (est.resolution is not None or est.tv):
                raise ValueError(f"{where}: 'resolution' and 'tv' apply to bitmap textures and "
                                 "environment maps (keys ending in .data) only")
            if kind != "envmap" and (est.model != "texels" or est.white_balance):
                raise ValueError(f"{where}: 'model' and 'white_balance' apply to environment "
                                 "maps only")
            arr = np.array(value, dtype=np.float32)
            space = est.space
            if space == "auto":
                space = "log" if kind == "envmap" or (
                    kind == "value" and is_light_key(key, node_class)) else "linear"
            if space == "log" and est.bounds is not None and est.bounds[1] <= 0:
                raise ValueError(f"{where}: space = \"log\" needs positive values, but bounds "
                                 f"are {list(est.bounds)}")
            gradient = est.gradient
            bias = known_gradient_bias(params, key)
            if gradient == "auto":
                gradient = "fd" if bias else "ad"
                if bias:
                    warnings.warn(f"{source}: estimate[{i}] {key!r}: {bias}; invpbr estimates it "
                                  "with finite differences of the loss (gradient = \"fd\")",
                                  stacklevel=2)
            elif gradient == "ad" and bias:
                warnings.warn(f"{source}: estimate[{i}] {key!r}: {bias}", stacklevel=2)
            if gradient == "fd" and (kind != "value" or arr.size > FD_MAX_COMPONENTS):
                raise ValueError(f"{where}: gradient = \"fd\" is for "
                                 f"scalars and colours (at most {FD_MAX_COMPONENTS} values), this "
                                 f"parameter has {arr.size}")
            if gradient == "fd" and space == "log":
                space = "linear"  # finite differences step in the scene's own units
            initial = arr
            model = None
            if kind == "envmap":
                from .lighting import EnvmapModel, envmap_texels

                initial = envmap_texels(arr)
                if est.model != "texels":
                    model = EnvmapModel(est.model, initial.shape[0], initial.shape[1],
                                        sh_order=est.sh_order)
            if key.endswith((".vertex_positions", ".to_world")):
                raise ValueError(f"{where}: geometry is estimated with kind = \"pose\" (a rigid "
                                 "transform) or kind = \"shape\" (free vertices, meshes only)")
            found[key] = Parameter(key=key, config=est, kind=kind, shape=tuple(arr.shape),
                                   initial=initial, gradient=gradient, space=space, model=model)
            claimed.add(key)
    return list(found.values())


def _match(keys: list[str], pattern: str) -> list[str]:
    return [pattern] if pattern in keys else [k for k in keys if fnmatch.fnmatchcase(k, pattern)]


def _resolve_geometry(params, est: EstimateConfig, i: int, source, claimed: set[str]) -> list[Parameter]:
    """The parameters of a ``kind = "pose"`` or ``"shape"`` estimate: one pose
    for all matched keys; one shape per matched mesh."""
    import mitsuba as mi

    from . import meshes as geometry

    keys = list(params.keys())
    patterns = est.key if isinstance(est.key, list) else [est.key]
    where = f"{source}: estimate[{i}].key {est.key!r}"
    matched: list[str] = []
    for pattern in patterns:
        hits = [k for k in _match(keys, pattern)
                if k.endswith(("." + geometry.VERTICES, "." + geometry.TO_WORLD))]
        if not hits:
            close = difflib.get_close_matches(pattern, [k for k in keys if k.endswith(
                ("." + geometry.VERTICES, "." + geometry.TO_WORLD))], n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"{where}: {pattern!r} matches no <shape>.vertex_positions or "
                             f"<shape>.to_world key of the scene{hint}")
        matched += [k for k in hits if k not in matched]
    for key in matched:
        if key in claimed:
            raise ValueError(f"{where} matches {key!r}, which an earlier [[estimate]] already "
                             "estimates")
        if key.endswith("." + geometry.TO_WORLD) and (
                est.kind == "shape" or not isinstance(params.properties[key][2], mi.Shape)):
            raise ValueError(f"{where}: {key!r}: kind = \"{est.kind}\" applies to shapes' "
                             "vertex_positions" + (" and to_world" if est.kind == "pose" else "")
                             + "; sensors are not differentiable in Mitsuba 3.9")
    if est.bounds is not None or est.resolution is not None or est.tv:
        raise ValueError(f"{where}: bounds, resolution and tv do not apply to kind = "
                         f"\"{est.kind}\"")
    if est.gradient == "fd":
        raise ValueError(f"{where}: gradient = \"fd\" does not apply to geometry")
    geometry.warn_traps(params, matched, where)
    claimed.update(matched)

    if est.kind == "pose":
        values = {k: geometry.scene_numpy(params, k) for k in matched}
        model = geometry.PoseModel(matched, values, scale=est.scale)
        name = matched[0] if len(matched) == 1 else "+".join(matched)
        initial = model.points(values)
        return [Parameter(key=name, config=est, kind="pose", shape=initial.shape, initial=initial,
                          model=model, targets=matched)]
    out = []
    for key in matched:
        vertices, faces = geometry.mesh_arrays(params, key)
        model = geometry.ShapeModel(key, vertices, faces, est.lambda_)
        out.append(Parameter(key=key, config=est, kind="shape", shape=vertices.shape,
                             initial=vertices, model=model, targets=[key]))
    return out


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
