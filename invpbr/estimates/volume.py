"""Differentiable volume rendering of a radiance field, in Dr.Jit (no PyTorch).

A ray through the field's box is cut into equal steps ``dt``; at each
sample the field gives a density ``sigma`` and a colour ``c``; the pixel is

    C = sum_i T_i (1 - exp(-sigma_i dt)) c_i + T_N * background,
    T_i = exp(-sum_{j<i} sigma_j dt)

(NeRF's quadrature). Rendering is wavefront-style: every (ray, sample) pair
is one lane; an occupancy grid (:class:`Occupancy`, as NerfAcc's) drops
the lanes in empty cells, a density-only pass without gradients drops those
behind an opaque surface (transmittance below ``T_MIN``), and only the
lanes left are evaluated with gradients and compacted (``dr.compress``).
The per-ray sums are block prefix sums over the dense (ray, sample) layout
(``dr.block_prefix_reduce``), so the whole of it is plain Dr.Jit AD: the
gradient of any loss on the pixels reaches the field's latents, the
background and, where the rays are differentiable, the cameras.

The field is anything with ``density(u)`` and ``colour(u, d)`` (``u`` the
position in the box's unit cube, ``d`` the ray direction), see
:mod:`invpbr.estimates.fields`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

#: Samples behind a transmittance below this are not evaluated (early termination).
T_MIN = 1e-4


def softplus(x):
    """log(1 + exp(x)), without overflow."""
    import drjit as dr

    return dr.log(1.0 + dr.exp(dr.minimum(x, 20.0))) + dr.maximum(x - 20.0, 0.0)


def sh_basis(d, degree: int) -> list:
    """Real spherical harmonics of unit directions ``d`` up to ``degree`` (<= 2):
    (degree + 1)^2 Dr.Jit arrays, in the usual (l, m) order."""
    x, y, z = d.x, d.y, d.z
    out = [0.28209479177387814 + 0.0 * x]
    if degree >= 1:
        out += [-0.4886025119029199 * y, 0.4886025119029199 * z, -0.4886025119029199 * x]
    if degree >= 2:
        out += [1.0925484305920792 * x * y, -1.0925484305920792 * y * z,
                0.31539156525252005 * (2.0 * z * z - x * x - y * y),
                -1.0925484305920792 * x * z, 0.5462742152960396 * (x * x - y * y)]
    return out


def ray_box(o, d, lo, hi):
    """Entry and exit distances of rays (o, d) through the box [lo, hi]
    (entry clamped at 0), and whether they cross it."""
    import drjit as dr

    t0, t1 = 0.0 * o.x, 1e30 + 0.0 * o.x
    for a in range(3):
        inv = dr.rcp(dr.select(dr.abs(d[a]) < 1e-9, 1e-9, d[a]))
        ta, tb = (lo[a] - o[a]) * inv, (hi[a] - o[a]) * inv
        t0 = dr.maximum(t0, dr.minimum(ta, tb))
        t1 = dr.minimum(t1, dr.maximum(ta, tb))
    return t0, t1, t1 > t0


@dataclass
class Occupancy:
    """NerfAcc's occupancy grid: an exponential moving average of each cell's
    density (the maximum of random samples in it), and the cells whose
    one-step opacity is above a threshold marked occupied (dilated by one
    cell, since the field interpolates between cells).

    Attributes:
        dims: cells along x, y, z.
        ema: the moving average of the density, (z, y, x) numpy.
        occupied: (z, y, x) bool numpy; uploaded as :attr:`mask`.
        mask: the same as a Dr.Jit Bool array (x fastest), or None: all occupied.
    """

    dims: tuple[int, int, int]
    ema: np.ndarray = None
    occupied: np.ndarray = None
    mask: Any = None
    updates: int = 0
    emptied: int = 0

    def __post_init__(self):
        nx, ny, nz = self.dims
        if self.ema is None:
            self.ema = np.full((nz, ny, nx), np.inf, np.float32)
        if self.occupied is None:
            self.occupied = np.ones((nz, ny, nx), bool)

    @property
    def fraction(self) -> float:
        """Fraction of the box's cells occupied."""
        return float(self.occupied.mean())

    def update(self, density: Callable, dt: float, *, threshold: float, decay: float,
               seed: int) -> bool:
        """Sample ``density(u)`` (u in the unit cube, Dr.Jit Array3f) at two
        random points per cell, update the average and the occupied cells;
        whether any cell is left occupied (if none, the grid stays all occupied)."""
        import drjit as dr
        import mitsuba as mi
        from scipy.ndimage import maximum_filter

        nx, ny, nz = self.dims
        rng = np.random.default_rng(seed)
        cells = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz),
                                     indexing="ij"), -1).reshape(-1, 3)
        best = np.zeros(len(cells), np.float32)
        with dr.suspend_grad():
            for _ in range(2):
                u = (cells + rng.random(cells.shape)) / np.array(self.dims)
                sigma = density(mi.Point3f(*(mi.Float(u[:, a].astype(np.float32))
                                             for a in range(3))))
                best = np.maximum(best, np.nan_to_num(np.array(sigma, np.float32), nan=0.0))
        best = best.reshape(nx, ny, nz).transpose(2, 1, 0)
        ema = np.where(np.isfinite(self.ema), self.ema * decay, 0.0)
        self.ema = np.maximum(ema, best)
        # a step's opacity above the threshold, and never above the mean (NerfAcc)
        limit = min(-np.log1p(-min(threshold, 0.999)) / dt, float(self.ema.mean()))
        occupied = maximum_filter(self.ema > limit, size=3)
        self.updates += 1
        if not occupied.any():
            self.emptied += 1
            self.occupied = np.ones_like(occupied)
            self.mask = None
            return False
        self.occupied = occupied
        self.mask = mi.Bool(occupied.ravel())
        return True

    def test(self, u):
        """Whether points ``u`` (unit cube) lie in occupied cells."""
        import drjit as dr
        import mitsuba as mi

        if self.mask is None:
            return mi.Bool(True)
        nx, ny, nz = self.dims
        ix = dr.clip(mi.Int32(dr.floor(u.x * nx)), 0, nx - 1)
        iy = dr.clip(mi.Int32(dr.floor(u.y * ny)), 0, ny - 1)
        iz = dr.clip(mi.Int32(dr.floor(u.z * nz)), 0, nz - 1)
        return dr.gather(mi.Bool, self.mask, mi.UInt32((iz * ny + iy) * nx + ix))


@dataclass
class Rendered:
    """What :func:`render_rays` returns: per ray ``rgb`` (Array3f, with the
    background), ``opacity`` and ``depth`` (Float), the regularizer terms
    ``distortion`` and ``sparsity`` (Dr.Jit scalars, means over the rays),
    and ``samples``: how many samples were evaluated with gradients."""

    rgb: Any
    opacity: Any
    depth: Any
    distortion: Any = None
    sparsity: Any = None
    samples: int = 0
    stats: dict = field(default_factory=dict)


def render_rays(model, o, d, *, lo, hi, dt: float, jitter=None, occupancy: Occupancy | None = None,
                background=None, regularize: bool = False, times=None,
                footprints=None) -> Rendered:
    """Volume-render rays (o, d) (Dr.Jit Array3f, unit directions) through
    ``model``'s box [lo, hi] (world units) in steps of ``dt``.

    Args:
        model: has ``density(u)`` and ``colour(u, d)`` (``u`` in the unit cube).
        jitter: per-ray offset of the first sample in [0, 1) (stratified
            sampling while training); None: 0.5.
        occupancy: skip samples in empty cells and behind opaque ones; None: all.
        background: ``background(d)`` -> Array3f, or None (black).
        regularize: also compute the distortion and sparsity terms.
        times: per-ray time (Float) of a field that varies in time (its
            ``at(time per lane)`` gives the field at those moments); None: static.
        footprints: per-ray width of the ray's pixel at unit distance (Float
            or a number), for a multi-scale field (its ``with_footprint(width
            per sample)``, :mod:`.field_multiscale`); None or another field: ignored.
    """
    import drjit as dr
    import mitsuba as mi

    n_rays = dr.width(o)
    lo3, hi3 = mi.ScalarPoint3f(*lo), mi.ScalarPoint3f(*hi)
    ext = hi3 - lo3
    t0, t1, hit = ray_box(o, d, lo3, hi3)
    diag = float(np.linalg.norm(np.asarray(hi, float) - np.asarray(lo, float)))
    n = max(1, int(np.ceil(diag / dt)))
    jit = mi.Float(0.5) if jitter is None else jitter

    def lanes_of(index):
        ray = index // n
        k = mi.Float(index - ray * n)
        oo, dd = dr.gather(mi.Point3f, mi.Point3f(o), ray), dr.gather(mi.Vector3f, mi.Vector3f(d), ray)
        t = dr.gather(mi.Float, t0, ray) + (k + (jit if jitter is None
                                               else dr.gather(mi.Float, jit, ray))) * dt
        return ray, t, oo, dd

    with dr.suspend_grad():
        every = dr.arange(mi.UInt32, n_rays * n)
        ray, t, oo, dd = lanes_of(every)
        active = dr.gather(mi.Bool, hit, ray) & (t < dr.gather(mi.Float, t1, ray))
        u = (dr.detach(oo) + dr.detach(dd) * t - lo3) / ext
        if occupancy is not None:
            active &= occupancy.test(u)
        index = dr.compress(active)
        if occupancy is not None and dr.width(index) > 0:
            # a density-only pass: drop the samples behind opaque ones
            rc, tc, oc, dc = lanes_of(index)
            tau = dr.zeros(mi.Float, n_rays * n)
            at = at_lanes(model, times, footprints, rc, tc)
            dr.scatter(tau, at.density((oc + dc * tc - lo3) / ext) * dt, index)
            trans = dr.exp(-dr.block_prefix_reduce(dr.ReduceOp.Add, tau, n, exclusive=True))
            keep = dr.gather(mi.Float, trans, index) > T_MIN
            index = dr.gather(mi.UInt32, index, dr.compress(keep))
    count = dr.width(index)
    ray, t, oo, dd = lanes_of(index)
    u = (oo + dd * t - lo3) / ext
    bg = background(d) if background is not None else mi.Color3f(0.0)
    if count == 0:
        zero = dr.zeros(mi.Float, n_rays)
        return Rendered(rgb=mi.Color3f(bg), opacity=zero, depth=zero, distortion=mi.Float(0.0),
                        sparsity=mi.Float(0.0), samples=0)
    model = at_lanes(model, times, footprints, ray, t)
    sigma = model.density(u)
    colour = model.colour(u, dd)
    tau = dr.zeros(mi.Float, n_rays * n)
    dr.scatter(tau, sigma * dt, index)
    alpha = 1.0 - dr.exp(-tau)
    weight = dr.exp(-dr.block_prefix_reduce(dr.ReduceOp.Add, tau, n, exclusive=True)) * alpha
    w = dr.gather(mi.Float, weight, index)
    rgb = dr.zeros(mi.Color3f, n_rays)
    dr.scatter_reduce(dr.ReduceOp.Add, rgb, mi.Color3f(colour) * w, ray)
    opacity = dr.block_reduce(dr.ReduceOp.Add, weight, n)
    depth = dr.zeros(mi.Float, n_rays)
    dr.scatter_reduce(dr.ReduceOp.Add, depth, w * t, ray)
    out = Rendered(rgb=rgb + bg * (1.0 - opacity), opacity=opacity, depth=depth, samples=count)
    if regularize:
        # Mip-NeRF 360's distortion loss in O(n) per ray, on distances over the box diagonal:
        # sum_ij w_i w_j |m_i - m_j| = 2 sum_i w_i (m_i W_<i - S_<i), plus sum_i w_i^2 s / 3
        every = dr.arange(mi.UInt32, n_rays * n)
        m = (mi.Float(every % n) + 0.5) * (dt / diag)
        w_before = dr.block_prefix_reduce(dr.ReduceOp.Add, weight, n, exclusive=True)
        wm_before = dr.block_prefix_reduce(dr.ReduceOp.Add, weight * m, n, exclusive=True)
        dist = 2.0 * weight * (m * w_before - wm_before) + weight * weight * (dt / diag) / 3.0
        out.distortion = dr.sum(dist) / n_rays
        out.sparsity = dr.sum(dr.log(1.0 + 2.0 * dr.square(sigma * dt))) / n_rays
    return out


def at_lanes(model, times, footprints, ray, t):
    """``model`` at each lane's time and footprint (lanes: samples at
    distance ``t`` on rays ``ray``; see :func:`render_rays`)."""
    import drjit as dr
    import mitsuba as mi

    if times is not None:
        model = model.at(dr.gather(mi.Float, times, ray))
    if footprints is not None and hasattr(model, "with_footprint"):
        cone = footprints if isinstance(footprints, (int, float)) \
            else dr.gather(mi.Float, footprints, ray)
        model = model.with_footprint(cone * t)
    return model


def sh_colour(coeffs, d, degree: int):
    """RGB in (0, 1) from per-channel SH coefficients (``3 * (degree + 1)^2``
    values, channel-major) seen along direction ``d``: a sigmoid of the SH sum."""
    import drjit as dr
    import mitsuba as mi

    k = (degree + 1) ** 2
    basis = sh_basis(d, degree)
    rgb = []
    for c in range(3):
        x = coeffs[c * k] * basis[0]
        for j in range(1, k):
            x = x + coeffs[c * k + j] * basis[j]
        rgb.append(dr.rcp(1.0 + dr.exp(-x)))
    return mi.Color3f(*rgb)
