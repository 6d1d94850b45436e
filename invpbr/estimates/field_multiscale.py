"""A multi-scale, anti-aliased radiance field (issue 15, ``[field] multiscale = true``).

Each ray goes through its pixel's centre and carries its footprint: the
width of the pixel at unit distance (``1 / sqrt(fx fy)`` of its photo's
camera, so photos of one folder may have any size and field of view); each
sample along it has the footprint's width at its distance, ``t / sqrt(fx
fy)`` (a cone, Mip-NeRF). The dense grid is prefiltered to that width with
mip levels, as Tri-MipRF and PyNeRF do: a pyramid built from the fitted
(finest) grid by 2x box downsampling (``dr.resample``, differentiable, so
every level's gradient reaches the finest values; the density averaged after
its softplus, the colour coefficients weighted by density), stacked in one
``dr.Texture3f`` per quantity (:class:`MipAtlas`), and the density and
colour blended linearly between the two levels around ``log2(width / cell)
+ LEVEL_BIAS`` (``cell``: the finest grid's cell). A sample whose footprint
is smaller than a cell sees the finest grid.

The hash model has no mip levels: :func:`weighted_hash_features` multiplies
each hash level's features by Zip-NeRF's weight for the footprint.

The occupancy grid is updated from the largest density over the levels
(a coarse level spreads density into cells the finest leaves empty).
Renders of any camera (held-out views, ``invpbr view --width --height``)
give each pixel its own footprint, one ray per pixel; the saved field
records ``multiscale``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

#: At most this many levels (the finest and its 2x, 4x, ... downsamplings).
MAX_LEVELS = 6
#: A level's shortest side keeps at least this many cells.
MIN_CELLS = 2
#: Added to log2(width / cell): a level's trilinear lookup blurs more than a box of
#: its cell (-0.5 against 0: held-out error over the scales 1.90e-3 against 1.97e-3 on
#: the 48x48 protocol folder of invpbr/testing/field_multiscale.py, 24 views, 250 steps).
LEVEL_BIAS = -0.5


def level_dims(dims: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """The cells (x, y, z) of each level, the finest first: halved (rounded
    up) while the shortest side keeps MIN_CELLS, at most MAX_LEVELS."""
    out = [tuple(int(v) for v in dims)]
    while len(out) < MAX_LEVELS:
        nxt = tuple((v + 1) // 2 for v in out[-1])
        if min(nxt) < MIN_CELLS or nxt == out[-1]:
            break
        out.append(nxt)
    return out


def pyramid(tensor, dims: tuple[int, int, int]) -> list:
    """The levels of a grid ``tensor`` (TensorXf, (blocks, z, y, x, C);
    blocks: a field in time's static grid and moments) for
    :func:`level_dims`, finest first: each level the 2x box downsampling of
    the one before (``dr.resample``, differentiable)."""
    import drjit as dr

    levels = [tensor]
    for d in level_dims(dims)[1:]:
        levels.append(dr.resample(levels[-1], (tensor.shape[0], d[2], d[1], d[0],
                                               tensor.shape[4]), filter="box"))
    return levels


def inverse_softplus(x):
    """The raw value whose softplus is ``x`` (> 0)."""
    import drjit as dr

    x = dr.maximum(x, 1e-6)
    return dr.select(x > 20.0, x, dr.log(dr.maximum(dr.exp(dr.minimum(x, 20.0)) - 1.0, 1e-12)))


def prefiltered_levels(model) -> list[tuple[Any, Any, tuple[int, int, int]]]:
    """(raw density, colour coefficients, dims) of each mip level of a dense
    grid ``model``: the density (after its softplus) box-averaged, and the
    colour coefficients averaged weighted by the density (the colour of what
    is there, not of empty space); level 0 is the model's own values. A
    field in time (blocks summed before the softplus) averages its raw
    values and coefficients linearly."""
    import drjit as dr
    import mitsuba as mi

    from .volume import softplus

    k3 = 3 * model.k
    blocks = getattr(model, "blocks", 1)  # (a field in time: static + moments, or deformed: 1)
    nx, ny, nz = model.dims
    raw = mi.TensorXf(model.raw, shape=(blocks, nz, ny, nx, 1))
    sh = mi.TensorXf(model.sh, shape=(blocks, nz, ny, nx, k3))
    dims = level_dims(model.dims)
    out = [(model.raw, model.sh, dims[0])]
    if blocks > 1:  # (a field in time sums its blocks before the softplus: linear averages)
        for d, r, c in zip(dims[1:], pyramid(raw, model.dims)[1:], pyramid(sh, model.dims)[1:]):
            out.append((r.array, c.array, d))
    else:
        sigma = softplus(raw)
        weighted = mi.TensorXf(dr.repeat(sigma.array, k3) * sh.array, sh.shape)
        for d, s, ws in zip(dims[1:], pyramid(sigma, model.dims)[1:],
                            pyramid(weighted, model.dims)[1:]):
            colour = ws.array / dr.repeat(dr.maximum(s.array, 1e-6), k3)
            out.append((inverse_softplus(s.array), colour, d))
    dr.eval([v for level in out[1:] for v in level[:2]])  # (once, not in every chunk of a render)
    return out


@functools.lru_cache(maxsize=64)
def slab_index(dims: tuple[int, int, int], nx0: int, ny0: int, channels: int) -> np.ndarray:
    """For each value of a (nz, ny0, nx0, channels) slab, the index of the
    value of a level of ``dims`` cells it holds (the level's edge beyond it)."""
    nx, ny, nz = dims
    z, y, x = np.meshgrid(np.arange(nz), np.minimum(np.arange(ny0), ny - 1),
                          np.minimum(np.arange(nx0), nx - 1), indexing="ij")
    cell = ((z * ny + y) * nx + x).ravel()
    return (cell[:, None] * channels + np.arange(channels)).ravel().astype(np.uint32)


class MipAtlas:
    """The mip levels of a static dense grid stacked along z in one texture
    per quantity (each level in the corner of a slab as wide as the finest
    level), so that a lane looks up its two levels with two texture lookups
    whatever their number."""

    def __init__(self, levels: list, degree: int, scale: float):
        import drjit as dr
        import mitsuba as mi

        self.degree, self.scale = degree, scale
        self.k3 = 3 * (degree + 1) ** 2
        nx0, ny0 = levels[0][2][0], levels[0][2][1]
        self.depth = sum(d[2] for _, _, d in levels)
        offsets = np.cumsum([0] + [d[2] for _, _, d in levels[:-1]])
        size = mi.Float
        self.nx = size([d[0] for _, _, d in levels])
        self.ny = size([d[1] for _, _, d in levels])
        self.nz = size([d[2] for _, _, d in levels])
        self.offset = size(offsets.astype(np.float32))
        self.x0, self.y0 = float(nx0), float(ny0)

        def stack(which: int, channels: int):
            parts = [dr.gather(mi.Float, level[which],
                               mi.UInt32(slab_index(level[2], nx0, ny0, channels)))
                     for level in levels]
            values = dr.concat(parts) if len(parts) > 1 else parts[0]
            return mi.Texture3f(mi.TensorXf(values, shape=(self.depth, ny0, nx0, channels)),
                                use_accel=False, migrate=False)

        self.raw = stack(0, 1)
        self.sh = stack(1, self.k3)

    def position(self, u, level):
        """Texture coordinates of points ``u`` (unit cube) in mip ``level``
        (UInt32 per lane): inside the level's slab, clamped half a cell in."""
        import drjit as dr
        import mitsuba as mi

        nx, ny, nz = (dr.gather(mi.Float, a, level) for a in (self.nx, self.ny, self.nz))
        x = dr.clip(u.x * nx, 0.5, nx - 0.5) / self.x0
        y = dr.clip(u.y * ny, 0.5, ny - 0.5) / self.y0
        z = (dr.gather(mi.Float, self.offset, level) + dr.clip(u.z * nz, 0.5, nz - 0.5)) / self.depth
        return mi.Point3f(x, y, z)


@dataclass
class MultiscaleField:
    """A field's mip levels (models with ``density(u)``, ``colour(u, d)``
    and, for a field in time, ``at(time)``; finest first) looked up at a
    footprint ``width`` per lane (world units; None: the finest level); a
    static grid's levels also as one :class:`MipAtlas`."""

    levels: list
    cell: float        # the finest level's cell (world units)
    width: Any = None  # Float per lane: the footprint's width at each sample
    atlas: MipAtlas | None = None

    def at(self, time) -> "MultiscaleField":
        return replace(self, levels=[m.at(time) for m in self.levels])

    def with_footprint(self, width) -> "MultiscaleField":
        """The field seen by samples whose footprints are ``width`` wide (per lane)."""
        return replace(self, width=width)

    def level(self):
        """Each lane's mip level, log2(width / cell), in [0, levels - 1]."""
        import drjit as dr

        top = len(self.levels) - 1
        return dr.clip(dr.log2(dr.maximum(self.width, 1e-12) * (1.0 / self.cell)) + LEVEL_BIAS,
                       0.0, top)

    def _blend(self, lookup):
        """(1 - f) lookup(l0) + f lookup(l0 + 1) at each lane's level l0 + f."""
        import drjit as dr
        import mitsuba as mi

        level = self.level()
        l0 = mi.UInt32(dr.floor(level))
        l1 = dr.minimum(l0 + 1, len(self.levels) - 1)
        f = level - mi.Float(l0)
        return lookup(l0) * (1.0 - f) + lookup(l1) * f

    def density(self, u):
        import drjit as dr

        from .volume import softplus

        if self.width is None or len(self.levels) == 1:
            return self.levels[0].density(u)
        if self.atlas is not None:
            a = self.atlas
            return self._blend(lambda l: softplus(a.raw.eval(a.position(u, l))[0])) * a.scale
        total = 0.0
        for i, m in enumerate(self.levels):
            total = total + dr.maximum(0.0, 1.0 - dr.abs(self.level() - i)) * m.density(u)
        return total

    def colour(self, u, d):
        import drjit as dr

        from .volume import sh_colour

        if self.width is None or len(self.levels) == 1:
            return self.levels[0].colour(u, d)
        if self.atlas is not None:
            a = self.atlas
            return self._blend(lambda l: sh_colour(a.sh.eval(a.position(u, l)), d, a.degree))
        total = 0.0
        for i, m in enumerate(self.levels):
            total = total + dr.maximum(0.0, 1.0 - dr.abs(self.level() - i)) * m.colour(u, d)
        return total

    def occupancy_density(self, u):
        """The largest density over the levels at ``u`` (for the occupancy grid)."""
        import drjit as dr

        out = self.levels[0].density(u)
        for m in self.levels[1:]:
            out = dr.maximum(out, m.density(u))
        return out


def multiscale_model(model, lo, hi) -> MultiscaleField:
    """The mip levels of a dense grid ``model`` (a GridField or a
    TimeGridField over the box [lo, hi]) as a :class:`MultiscaleField`."""
    values = prefiltered_levels(model)
    levels = [replace(model, raw=r, sh=s, dims=d) for r, s, d in values]
    cell = float((np.asarray(hi, float) - np.asarray(lo, float)).max()) / max(model.dims)
    atlas = None if hasattr(model, "slices") else MipAtlas(values, model.degree, model.scale)
    return MultiscaleField(levels=levels, cell=cell, atlas=atlas)


def cached_levels(cache: tuple | None, model, lo, hi) -> tuple:
    """(key, :func:`multiscale_model` of ``model``), reusing ``cache`` (an
    earlier return value) while the model's values are the same Dr.Jit
    variables (the renders of every view after a run build the levels once)."""
    key = (model.raw.index, model.raw.index_ad, model.sh.index, model.sh.index_ad, model.dims)
    if cache is not None and cache[0] == key:
        return cache
    return key, multiscale_model(model, lo, hi)


def weighted_hash_features(features, width, cells: list[float], per_level: int) -> list:
    """A hash encoding's ``features`` (level-major, ``per_level`` per level)
    down-weighted as Zip-NeRF does: level ``l`` (``cells[l]`` cells along the
    box) by ``erf(1 / sqrt(8 s^2 n_l^2))``, ``s = width / sqrt(12)`` the
    standard deviation of a box footprint ``width`` wide (in box units): 1
    for levels coarser than the footprint, towards 0 for finer ones."""
    import drjit as dr

    s = width * (1.0 / math.sqrt(12.0))
    out = []
    for level, n in enumerate(cells):
        w = dr.erf(dr.rcp(dr.maximum(math.sqrt(8.0) * s * n, 1e-6)))
        out += [features[level * per_level + j] * w for j in range(per_level)]
    return out


def is_multiscale(model) -> bool:
    """Whether ``model`` looks up footprints (a multi-scale grid or hash field)."""
    return isinstance(model, MultiscaleField) or bool(getattr(model, "multiscale", False))


def pixel_footprint(cam) -> float:
    """The width of one pixel of ``cam`` at unit distance (world units per
    unit of distance along the ray)."""
    return 1.0 / float(np.sqrt(cam.fx * cam.fy))
