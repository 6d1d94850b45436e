"""A radiance field that varies in time (issue 15, ``[field] time = true``).

Frames carry a ``"time"`` in [0, 1] in transforms.json (the D-NeRF
convention). The model is the dense grid of :mod:`.fields` (the static
part, fitted by every photo) plus an offset grid (raw density and colour
coefficients) at each of ``time_slices`` moments evenly spread over [0, 1],
interpolated linearly in time (trilinear in space); the blocks are stacked
along z in one ``dr.Texture3f`` and each lookup stays inside its block.
Smoothness in time: the squared difference between neighbouring moments'
offsets and the offsets' squares (``time_tv``). One occupancy grid serves
all times (updated from random moments).
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


@dataclass
class TimeGridField:
    """The dense grid of :class:`~invpbr.estimates.fields.GridField` with
    ``slices`` moments stacked along z (values (slices * z, y, x, C));
    :meth:`at` binds each lane's time."""

    raw: Any
    sh: Any
    dims: tuple[int, int, int]
    degree: int
    scale: float
    slices: int = 2
    time: Any = None    # Float per lane (or a scalar), in [0, 1]

    @property
    def k(self) -> int:
        return (self.degree + 1) ** 2

    def at(self, time) -> "TimeGridField":
        return TimeGridField(raw=self.raw, sh=self.sh, dims=self.dims, degree=self.degree,
                             scale=self.scale, slices=self.slices, time=time)

    def _texture(self, values, channels):
        import mitsuba as mi

        nx, ny, nz = self.dims
        return mi.Texture3f(mi.TensorXf(values, shape=((self.slices + 1) * nz, ny, nx, channels)),
                            use_accel=False, migrate=False)

    def _lookup(self, values, channels, u):
        """Texture values at ``u`` (unit cube) and the lanes' times, linear in time."""
        import drjit as dr
        import mitsuba as mi

        nz, s = self.dims[2], self.slices
        blocks = s + 1  # (block 0: the static field; block 1 + k: moment k's offset)
        tex = self._texture(values, channels)
        time = self.time
        if isinstance(time, RandomTimes):
            time = mi.PCG32(size=dr.width(u), initstate=time.seed * 2654435761 + 5).next_float32()
        x = dr.clip(mi.Float(time if time is not None else 0.5), 0.0, 1.0) * (s - 1)
        k = dr.minimum(dr.floor(x), s - 2)
        f = x - k
        z = dr.clip(u.z * nz, 0.5, nz - 0.5)
        base = tex.eval(mi.Point3f(u.x, u.y, z / (blocks * nz)))
        a = tex.eval(mi.Point3f(u.x, u.y, ((k + 1) * nz + z) / (blocks * nz)))
        b = tex.eval(mi.Point3f(u.x, u.y, ((k + 2) * nz + z) / (blocks * nz)))
        return [base[c] + a[c] * (1.0 - f) + b[c] * f for c in range(channels)]

    def density(self, u):
        from .volume import softplus

        return softplus(self._lookup(self.raw, 1, u)[0]) * self.scale

    def colour(self, u, d):
        from .volume import sh_colour

        return sh_colour(self._lookup(self.sh, 3 * self.k, u), d, self.degree)


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
