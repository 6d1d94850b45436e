"""Bitmap textures (``kind = "auto"`` on a ``<...>.data`` key of a ``bitmap``):
every texel estimated, coarse to fine, with a total-variation prior.

The latent is the texture itself (or its log), stored at the resolution of
the current stage (``resolution = [16, 32, 64]``: the iterations split evenly)
and resampled into the next stage when due. Half precision
(``[optimize] precision = "half"``) stores it in float16.

When the gradient is valid: as for any shading parameter, ``prb``'s
gradients are unbiased; a texel that no photo sees gets no gradient and
keeps its start value (the TV prior pulls it towards its neighbours).
"""

from __future__ import annotations

from pathlib import Path
import numpy as np

from ..capture import images
from ..config import EstimateConfig
from .base import ResolveContext, register_kind
from .values import SceneValue, check_log_bounds, choose_gradient, refuse_fd, resample_texture


def total_variation(texture):
    """Anisotropic total variation of a texture (H, W, C): the mean absolute
    difference between horizontally and vertically neighbouring texels."""
    import drjit as dr

    h, w = texture.shape[0], texture.shape[1]
    tv = 0.0
    if h > 1:
        tv = tv + dr.mean(dr.abs(texture[1:, :, :] - texture[:-1, :, :]), axis=None)
    if w > 1:
        tv = tv + dr.mean(dr.abs(texture[:, 1:, :] - texture[:, :-1, :]), axis=None)
    return tv


def file_name(key: str) -> str:
    """A file name made of ``key`` (letters, digits, ``._-``; others become ``_``)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


class Bitmap(SceneValue):
    """What textures and environment maps share: a (H, W, C) latent, coarse to
    fine, a TV prior, saved as EXR (and an sRGB PNG preview)."""

    default_tv = 0.0

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        if self.model is not None:
            return []
        h, w = self.initial.shape[:2]
        heights = self.config.resolution if self.config.resolution else self.default_heights(h)
        return [(r, max(1, round(r * w / h))) for r in heights]

    def default_heights(self, h: int) -> list[int]:
        return [h]

    @property
    def tv(self) -> float:
        """Weight of the total-variation regularizer of this parameter."""
        if self.config.tv is not None:
            return self.config.tv
        return self.default_tv if self.model is None else 0.0

    def stage(self, iteration: int, iterations: int) -> int:
        """Index of the coarse-to-fine stage that ``iteration`` belongs to."""
        n = len(self.resolutions)
        if n <= 1 or iterations <= 0:
            return 0
        return min(n - 1, iteration * n // iterations)

    def latent_from_scene(self, value: np.ndarray, stage: int = 0) -> np.ndarray:
        value = np.asarray(value, dtype=np.float32)
        if self.model is not None:
            return self.model.fit(value)
        return super().latent_from_scene(resample_texture(value, self.resolutions[stage]), stage)

    def make_latent(self, latent: np.ndarray, store):
        import mitsuba as mi

        return mi.TensorXf(latent)

    def advance(self, store, params, iteration: int, iterations: int) -> bool:
        if not self.resolutions:
            return False
        stage = self.stage(iteration, iterations)
        if stage == self._stage:
            return False
        self.resample_latent(store, stage)
        return True

    def resample_latent(self, store, stage: int) -> None:
        """Resample the latent itself (log radiance for envmaps) into ``stage``."""
        latent = resample_texture(np.array(store[self.key], dtype=np.float32),
                                  self.resolutions[stage])
        self.set_latent(store, latent, stage)

    def finish(self, store) -> bool:
        last = len(self.resolutions) - 1
        if last < 0 or self._stage == last:
            return False
        self.resample_latent(store, last)
        return True

    def regularizer(self, store):
        import mitsuba as mi

        if self.tv > 0 and self.model is None:
            # (in float32: a float16 mean over a large texture loses its small terms)
            return self.tv * total_variation(mi.TensorXf(store[self.key]))
        return None

    @classmethod
    def to_json(cls, key, value, result, files):
        return files.get("exr", [float(v) for v in np.asarray(value).ravel()])

    @classmethod
    def write_files(cls, key: str, value: np.ndarray, result, folder: Path) -> dict[str, str]:
        rel = f"textures/{file_name(key)}.exr"
        images.save_image(folder / rel, value)
        images.save_image(folder / f"textures/{file_name(key)}.png", value)
        return {"exr": rel}

    @classmethod
    def summary(cls, key, value, result) -> str:
        return f"{cls.kind} " + "x".join(map(str, np.shape(value)))

    @classmethod
    def write_xml(cls, scene, key, value, result, files) -> bool:
        """The bitmap (texture or envmap) reads the estimate's EXR."""
        found = scene.owner(key)
        if found is None or found[1] != "data" or "exr" not in files:
            return False
        scene.set_string(found[0], "filename", files["exr"])
        return True

    def gradcheck_directions(self, value, grad, view_index):
        h, w, c = value.shape
        strength = np.abs(grad).sum(axis=-1)
        self.mask_directions(strength)
        y, x = np.unravel_index(int(np.argmax(strength)), (h, w))
        d = np.zeros_like(value)
        d[y, x, :] = 1.0
        return [(f"texel ({y}, {x})", d)]

    def mask_directions(self, strength: np.ndarray) -> None:
        """Texels never chosen as a gradient-check direction (set to -1)."""


class Texture(Bitmap):
    """A bitmap texture's texels (``<...>.data`` of a ``bitmap`` texture)."""

    kind = "texture"
    auto_priority = 1

    @classmethod
    def claims(cls, params, key: str) -> bool:
        import drjit as dr

        value = params[key]
        return (key.endswith(".data") and isinstance(value, dr.ArrayBase)
                and dr.is_tensor_v(value) and len(value.shape) == 3)

    @classmethod
    def from_key(cls, table: EstimateConfig, index: int, key: str,
                 context: ResolveContext) -> "Texture":
        params = context.params
        where = f"{context.source}: estimate[{index}].key {key!r}"
        if table.model != "texels" or table.white_balance:
            raise ValueError(f"{where}: 'model' and 'white_balance' apply to environment maps only")
        arr = np.array(params[key], dtype=np.float32)
        space = "linear" if table.space == "auto" else table.space
        check_log_bounds(where, space, table)
        gradient = choose_gradient(params, key, table, index, context.source)
        refuse_fd(where, gradient, arr.size)
        return cls(key, table, shape=tuple(arr.shape), initial=arr, space=space,
                   gradient=gradient, scene_type=type(params[key]))

    def make_latent(self, latent: np.ndarray, store):
        import mitsuba as mi

        if store.half:
            return mi.TensorXf16(np.asarray(latent, dtype=np.float16))
        return mi.TensorXf(latent)

    def to_scene(self, latent, like):
        import drjit as dr

        return dr.exp(latent) if self.space == "log" else latent


register_kind(Texture, auto=True)
