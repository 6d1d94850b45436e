"""A radiance field that varies in time (issue 15, ``[field] time = true``).

Frames carry a ``"time"`` in [0, 1] in transforms.json (the D-NeRF
convention). Two models, both with ``time_slices`` moments evenly spread
over [0, 1] and linear in time between them:

- ``time_deform = N`` (the default, N = 3): D-NeRF's deformation field. One
  canonical grid (the dense grid of :mod:`.fields`, fitted by every photo)
  and a coarse grid (N cells along the box's longest side) of displacements
  per moment; a point at time t is moved by the displacement there and then
  looked up in the canonical grid. Rigid motion and smooth deformation take
  few values, and every photo, whatever its time, fits the one canonical
  grid. Smoothness in time: the squared second difference of neighbouring
  moments' displacements (``time_deform_tv``; steady motion costs nothing).
- ``time_deform = 0``: the static grid plus an offset grid (raw density and
  colour coefficients) per moment, stacked along z in one ``dr.Texture3f``
  (each lookup stays inside its block); smoothness in time: the squared
  difference between neighbouring moments' offsets and the offsets'
  squares (``time_tv``). Each moment's offsets are fitted only by the photos
  near it, so they overfit them (see README "Radiance fields in time").

One occupancy grid serves all times: it is updated from random moments, so
it holds every place the object passes through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np



def read_times(camera_file: Path, ids: list[str]) -> dict[str, float]:
    """Each photo id's ``time`` from a transforms.json (frames matched by
    their file_path's stem).

    Raises:
        ValueError: not a transforms.json, a frame without a time, or a time
            outside [0, 1] (naming the file and the frame).
    """
    camera_file = Path(camera_file)
    if camera_file.suffix != ".json":
        raise ValueError(f"{camera_file}: field.time = true needs a transforms.json whose "
                         "frames carry \"time\" in [0, 1]")
    frames = json.loads(camera_file.read_text()).get("frames", [])
    times = {}
    for i, frame in enumerate(frames):
        stem = Path(str(frame.get("file_path", ""))).stem
        t = frame.get("time")
        if stem not in ids:
            continue
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise ValueError(f"{camera_file}: frames[{i}] ({stem}): field.time = true needs a "
                             f"\"time\" in [0, 1] per frame, found {t!r}")
        times[stem] = float(t)
    missing = [i for i in ids if i not in times]
    if missing:
        raise ValueError(f"{camera_file}: no frame (with a time) for photo(s) "
                         f"{', '.join(missing[:5])}")
    return times


#: The deformation grid's latent (``[field] time_deform`` > 0) and its Adam learning rate
#: (displacements in units of the box).
DEFORM_KEY = "field.deform"
LEARNING_RATES = {DEFORM_KEY: 0.01}


def lerp_blocks(tex, u, time, dims, slices: int, first: int, blocks: int, channels: int):
    """Values of the moments ``first .. first + slices - 1`` of a texture
    holding ``blocks`` grids of ``dims`` stacked along z, at ``u`` (unit
    cube), linear in ``time`` (Float per lane, in [0, 1])."""
    import drjit as dr
    import mitsuba as mi

    nz = dims[2]
    x = dr.clip(time, 0.0, 1.0) * (slices - 1)
    k = dr.minimum(dr.floor(x), slices - 2)
    f = x - k
    z = dr.clip(u.z * nz, 0.5, nz - 0.5)
    a = tex.eval(mi.Point3f(u.x, u.y, ((k + first) * nz + z) / (blocks * nz)))
    b = tex.eval(mi.Point3f(u.x, u.y, ((k + first + 1) * nz + z) / (blocks * nz)))
    return [a[c] * (1.0 - f) + b[c] * f for c in range(channels)]


@dataclass
class TimeGridField:
    """The dense grid of :class:`~invpbr.estimates.fields.GridField` with
    ``slices`` moments: either (``deform`` None) the static grid plus an
    offset grid per moment, stacked along z (values ((slices + 1) * z, y, x,
    C)), or (``deform`` given) the static (canonical) grid alone (values
    (z, y, x, C)) and a coarse displacement per moment (values (slices * z',
    y', x', 3) of ``deform_dims``) that moves each point into it before the
    lookup; :meth:`at` binds each lane's time."""

    raw: Any
    sh: Any
    dims: tuple[int, int, int]
    degree: int
    scale: float
    slices: int = 2
    time: Any = None    # Float per lane (or a scalar), in [0, 1]
    deform: Any = None  # Float (slices * z', y', x', 3), displacements in units of the box
    deform_dims: tuple[int, int, int] | None = None
    _warped: Any = None  # (the last point moved, and where to: density and colour share it)

    @property
    def k(self) -> int:
        return (self.degree + 1) ** 2

    @property
    def blocks(self) -> int:
        """Grids stacked along z in ``raw`` and ``sh``."""
        return 1 if self.deform is not None else self.slices + 1

    def at(self, time) -> "TimeGridField":
        return TimeGridField(raw=self.raw, sh=self.sh, dims=self.dims, degree=self.degree,
                             scale=self.scale, slices=self.slices, time=time, deform=self.deform,
                             deform_dims=self.deform_dims)

    def _texture(self, values, channels, dims, blocks):
        import mitsuba as mi

        nx, ny, nz = dims
        return mi.Texture3f(mi.TensorXf(values, shape=(blocks * nz, ny, nx, channels)),
                            use_accel=False, migrate=False)

    def _times(self, u):
        import drjit as dr
        import mitsuba as mi

        time = self.time
        if isinstance(time, RandomTimes):
            time = mi.PCG32(size=dr.width(u), initstate=time.seed * 2654435761 + 5).next_float32()
        return mi.Float(time if time is not None else 0.5)

    def warp(self, u, time):
        """``u`` (unit cube) moved by the deformation grid at ``time`` (into
        the canonical grid); ``u`` itself without one."""
        import mitsuba as mi

        if self.deform is None:
            return u
        key = (self.deform.index, self.deform.index_ad)  # (the same displacements, AD included)
        if self._warped is not None and self._warped[0] is u and self._warped[1] == key:
            return self._warped[2]
        tex = self._texture(self.deform, 3, self.deform_dims, self.slices)
        move = lerp_blocks(tex, u, time, self.deform_dims, self.slices, 0, self.slices, 3)
        self._warped = (u, key, mi.Point3f(u.x + move[0], u.y + move[1], u.z + move[2]))
        return self._warped[2]

    def _lookup(self, values, channels, u):
        """Texture values at ``u`` (unit cube) and the lanes' times: the
        canonical grid's at the moved point, or the static grid's plus the
        moments' offsets, linear in time."""
        import drjit as dr
        import mitsuba as mi

        nz, blocks = self.dims[2], self.blocks
        time = self._times(u)
        u = self.warp(u, time)
        tex = self._texture(values, channels, self.dims, blocks)
        z = dr.clip(u.z * nz, 0.5, nz - 0.5)
        base = tex.eval(mi.Point3f(u.x, u.y, z / (blocks * nz)))
        if blocks == 1:
            return [base[c] for c in range(channels)]
        offset = lerp_blocks(tex, u, time, self.dims, self.slices, 1, blocks, channels)
        return [base[c] + offset[c] for c in range(channels)]

    def density(self, u):
        from .volume import softplus

        return softplus(self._lookup(self.raw, 1, u)[0]) * self.scale

    def colour(self, u, d):
        from .volume import sh_colour

        return sh_colour(self._lookup(self.sh, 3 * self.k, u), d, self.degree)


def saved_blocks(data: dict[str, Any]) -> int:
    """Grids stacked along z in a saved (or fitted) field's ``density``: one
    for a static field or one with a deformation grid, else the static grid
    and each moment's offset."""
    slices = int(data.get("time_slices", 1))
    return 1 if slices == 1 or "deform" in data else slices + 1


def saved_options(data: dict[str, Any]) -> dict[str, Any]:
    """The :class:`TimeGridField` options of a saved field (``data``, see
    :func:`~invpbr.estimates.fields.load_field`): moments, deformation grid."""
    import mitsuba as mi

    slices = int(data["time_slices"])
    out: dict[str, Any] = {"slices": slices}
    if "deform" in data:
        deform = np.asarray(data["deform"], np.float32)
        out["deform"] = mi.Float(deform.ravel())
        out["deform_dims"] = (deform.shape[2], deform.shape[1], deform.shape[0] // slices)
    return out


def frame_times(camera_file: Path) -> dict[str, float]:
    """The ``time`` of each frame of a transforms.json that has one, by its
    file_path's stem ({} for other camera files)."""
    camera_file = Path(camera_file)
    if camera_file.suffix != ".json" or not camera_file.is_file():
        return {}
    frames = json.loads(camera_file.read_text()).get("frames", [])
    return {Path(str(f.get("file_path", ""))).stem: float(f["time"]) for f in frames
            if isinstance(f.get("time"), (int, float)) and not isinstance(f.get("time"), bool)}


def random_times(seed: int) -> "RandomTimes":
    """A random time in [0, 1] per lane (for the occupancy grid's updates)."""
    return RandomTimes(seed)


class RandomTimes:
    """Stands for a time per lane, drawn by :meth:`TimeGridField._lookup`
    (the occupancy grid decides how many lanes it asks about)."""

    def __init__(self, seed: int):
        self.seed = seed


def time_tv(store, dims, slices: int, k3: int, n: int, seed: int):
    """Mean squared difference of the moments' offsets (density and the
    colours' constant terms) between random cells and the same cells one
    moment later, plus their mean square (what all moments share belongs to
    the static block)."""
    import drjit as dr
    import mitsuba as mi

    nx, ny, nz = dims
    step = nx * ny * nz
    rng = mi.PCG32(size=n, initstate=dr.opaque(mi.UInt64, seed * 7919 + 11))
    cell = step + mi.UInt32(dr.minimum(rng.next_float32() * (step * (slices - 1)),
                                       step * (slices - 1) - 1))
    dens = store["field.density"]
    total = dr.mean(dr.square(dr.gather(mi.Float, dens, cell + step)
                              - dr.gather(mi.Float, dens, cell)))
    total += dr.mean(dr.square(dr.gather(mi.Float, dens, cell)))
    for ch in range(0, k3, max(1, k3 // 3)):
        a = dr.gather(mi.Float, store["field.sh"], (cell + step) * k3 + ch)
        b = dr.gather(mi.Float, store["field.sh"], cell * k3 + ch)
        total += dr.mean(dr.square(a - b)) + dr.mean(dr.square(b))
    return total


def deform_tv(deform, dims, slices: int):
    """Smoothness in time of the deformation grid (values (slices * z, y, x,
    3)): the mean squared second difference between neighbouring moments'
    displacements (motion at a steady speed costs nothing; 0 for 2 moments)."""
    import drjit as dr
    import mitsuba as mi

    nx, ny, nz = dims
    step = nx * ny * nz * 3
    total = mi.Float(0.0)
    idx = dr.arange(mi.UInt32, step)
    blocks = [dr.gather(mi.Float, deform, idx + k * step) for k in range(slices)]
    for k in range(1, slices - 1):
        total += dr.mean(dr.square(blocks[k - 1] - 2.0 * blocks[k] + blocks[k + 1]))
    return total
