"""Environment maps (``<emitter type="envmap" id="sky">``, key ``sky.data``):
log radiance per texel, coarse to fine (1/4, 1/2, all of the height by
default), a total-variation prior (:data:`~invpbr.estimates.lighting.ENVMAP_TV`),
an optional white-balance prior, or a low-order ``model`` (``sh``: spherical
harmonics, ``sun_sky``: a sun lobe and a sky gradient) for few views.

Mitsuba stores the map with a halo column at each side (copies of the
opposite edge); the latent and the estimate are the real (H, W, 3) texels.

When the gradient is valid: ``prb``'s gradients of the texels are unbiased;
texels seen by no photo (directly or in reflections) are constrained only by
the priors, and with unknown albedos only the product albedo x light is
determined (see :func:`invpbr.estimates.lighting.scale_invariant_error`).
"""

from __future__ import annotations

import numpy as np

from ..config import EstimateConfig
from .base import ResolveContext, register_kind
from .lighting import (ENVMAP_TV, EnvmapModel, envmap_texels, envmap_with_halo,
                       texel_solid_angles)
from .textures import Bitmap
from .values import check_log_bounds, choose_gradient, refuse_fd


class Envmap(Bitmap):
    """The texels (or a low-order model) of an environment map."""

    kind = "envmap"
    auto_priority = 0
    default_tv = ENVMAP_TV

    @classmethod
    def claims(cls, params, key: str) -> bool:
        import drjit as dr

        from .base import node_class

        value = params[key]
        return (key.endswith(".data") and node_class(params, key) == "EnvironmentMapEmitter"
                and isinstance(value, dr.ArrayBase) and dr.is_tensor_v(value)
                and len(value.shape) == 3)

    @classmethod
    def from_key(cls, table: EstimateConfig, index: int, key: str,
                 context: ResolveContext) -> "Envmap":
        params = context.params
        where = f"{context.source}: estimate[{index}].key {key!r}"
        arr = np.array(params[key], dtype=np.float32)
        space = "log" if table.space == "auto" else table.space
        check_log_bounds(where, space, table)
        gradient = choose_gradient(params, key, table, index, context.source)
        refuse_fd(where, gradient, arr.size)
        initial = envmap_texels(arr)
        estimate = cls(key, table, shape=tuple(arr.shape), initial=initial, space=space,
                       gradient=gradient, scene_type=type(params[key]))
        if table.model != "texels":
            estimate.model = EnvmapModel(table.model, initial.shape[0], initial.shape[1],
                                         sh_order=table.sh_order)
        return estimate

    def default_heights(self, h: int) -> list[int]:
        return sorted({max(4, h // 4), max(4, h // 2), h})

    def latent_bounds(self):
        return None if self.model is not None else super().latent_bounds()

    def make_latent(self, latent: np.ndarray, store):
        import mitsuba as mi

        if self.model is not None:
            return mi.Float(np.ravel(latent))
        return mi.TensorXf(latent)

    def to_scene(self, latent, like):
        import drjit as dr

        if self.model is not None:
            return envmap_with_halo(self.model.texels(latent))
        return envmap_with_halo(dr.exp(latent) if self.space == "log" else latent)

    def from_scene(self, value) -> np.ndarray:
        return envmap_texels(np.array(value, dtype=np.float32))

    def regularizer(self, store):
        import drjit as dr
        import mitsuba as mi

        total = super().regularizer(store)
        if self.config.white_balance > 0:
            texels = self.to_scene(store[self.key], None)[:, 1:-1, :]
            h, w = texels.shape[0], texels.shape[1]
            weight = mi.TensorXf(texel_solid_angles(h, w)[..., None].astype(np.float32))
            means = dr.sum(dr.sum(texels * weight, axis=0), axis=0)  # (3,)
            logs = dr.log(dr.maximum(means, 1e-8))
            centred = logs - dr.mean(logs)
            term = self.config.white_balance * dr.sum(dr.square(centred), axis=None)
            total = term if total is None else total + term
        return total

    def mask_directions(self, strength: np.ndarray) -> None:
        strength[:, [0, -1]] = -1  # Mitsuba's halo columns copy the opposite edge


register_kind(Envmap, auto=True)
