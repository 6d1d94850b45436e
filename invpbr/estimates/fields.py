"""Radiance fields (``[field]``): density and view-dependent colour in a box,
fitted to photos by differentiable volume rendering (:mod:`.volume`).

A ``[field]`` table in invpbr.toml implies the estimate (as ``[photos]
gain`` implies the gains); the folder needs only photos and a camera file::

    [cameras]
    file = "transforms.json"

    [field]

The model (``model = "grid"``) is a dense grid over the box of raw density
(``sigma = softplus(raw) * DENSITY_SCALE / box size``) and of spherical-
harmonic colour coefficients (``colour = sigmoid(sum_k c_k Y_k(d))``),
trilinearly interpolated (``dr.Texture3f``), refined coarse to fine
(``resolution = [32, 64, 96]``). Steps draw ``batch_rays`` random pixels of
all fitted photos (:class:`RandomRays`), with an occupancy grid for
empty-space skipping and early ray termination (NerfAcc), total variation,
sparsity and distortion regularizers against floaters.

With ``multiscale = true`` each ray carries its pixel's footprint and the
grid is looked up in mip levels at that width (:mod:`.field_multiscale`);
the fitted photos may then differ in size (they may without it too).

The box is ``bounds`` or, by default, the region every fitted camera sees
(:func:`auto_bounds`), cut down to the masks' visual hull where the photos
have masks. The background is a learned colour (``learned``), a learned
colour per direction (``envmap``), or fixed.

Results: ``field.npz`` in the result folder (:func:`save_field` /
:func:`load_field`), which ``invpbr view OUT --cameras FILE`` renders
(:meth:`FieldEstimate.render_views`: RGBA EXR with alpha = opacity, sRGB
PNG, depth EXR), and ``field.ply``, the marching-cubes mesh of the density.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..capture import images
from . import field_multiscale, field_options, field_time
from .field_background import (envmap_texture, envmap_uv, outvoted_photos, outvoted_rays,
                               refit_envmap, texel_of)
from .base import Estimate, register_kind
from .volume import Occupancy, render_rays, sh_colour, softplus

#: sigma (1 / world units) = softplus(raw) * DENSITY_SCALE / (the box's longest side).
DENSITY_SCALE = 300.0
#: Raw density at the start: nearly transparent (optical depth ~0.45 across the box).
RAW_START = -6.5
#: Level of the marching-cubes surface: the density whose opacity over MESH_CELLS
#: cells of the grid is MESH_OPACITY.
MESH_OPACITY = 0.5
MESH_CELLS = 4
FIELD_FILE = "field.npz"
#: Field models besides the dense grid, by ``[field] model``: FieldEstimate
#: subclasses that their modules register (``hash``: :mod:`.field_hash`).
FIELD_MODELS: dict[str, type] = {}


def other_model(data) -> type | None:
    """The registered class of a saved or fitted field's model (None: the grid)."""
    name = str(data.get("model", "grid")) if hasattr(data, "get") else "grid"
    if name == "grid":
        return None
    if name not in FIELD_MODELS:
        raise ValueError(f"field.npz: unknown field model {name!r}; known: grid, "
                         f"{', '.join(sorted(FIELD_MODELS))}")
    return FIELD_MODELS[name]


# -- the model ---------------------------------------------------------------------------------


def grid_dims(lo, hi, resolution: int) -> tuple[int, int, int]:
    """Cells along x, y, z: ``resolution`` along the box's longest side."""
    ext = np.asarray(hi, float) - np.asarray(lo, float)
    return tuple(max(2, int(round(resolution * e / ext.max()))) for e in ext)


@dataclass
class GridField:
    """A dense grid's values as Dr.Jit arrays (latents or detached) and how
    to evaluate them (see the module)."""

    raw: Any          # Float, (z, y, x) raw density
    sh: Any           # Float, (z, y, x, 3 K) colour coefficients
    dims: tuple[int, int, int]
    degree: int
    scale: float      # DENSITY_SCALE / box size

    @property
    def k(self) -> int:
        return (self.degree + 1) ** 2

    def _texture(self, values, channels):
        import mitsuba as mi

        nx, ny, nz = self.dims
        return mi.Texture3f(mi.TensorXf(values, shape=(nz, ny, nx, channels)), use_accel=False,
                            migrate=False)

    def density(self, u):
        raw = self._texture(self.raw, 1).eval(u)[0]
        return softplus(raw) * self.scale

    def colour(self, u, d):
        return sh_colour(self._texture(self.sh, 3 * self.k).eval(u), d, self.degree)


def resample_grid(values: np.ndarray, dims: tuple[int, int, int]) -> np.ndarray:
    """A (z, y, x, C) grid trilinearly resampled to ``dims`` (x, y, z) cells,
    cell centres kept in place (coarse to fine)."""
    from scipy.ndimage import map_coordinates

    nz, ny, nx, c = values.shape
    tx, ty, tz = dims
    coords = np.meshgrid((np.arange(tz) + 0.5) * nz / tz - 0.5, (np.arange(ty) + 0.5) * ny / ty - 0.5,
                         (np.arange(tx) + 0.5) * nx / tx - 0.5, indexing="ij")
    return np.stack([map_coordinates(values[..., i], coords, order=1, mode="nearest")
                     for i in range(c)], -1).astype(np.float32)


# -- background --------------------------------------------------------------------------------

#: Height of the learned lat-long background (``background = "envmap"``); width twice that.
#: (32 with ``background_tv``: 0.7 dB better held-out on scenes/field_object, but with few
#: photos, 14 of 16 x 16 pixels, the background took the object's colour: BENCHMARKS.md.)
ENVMAP_HEIGHT = 16


def background_values(spec) -> np.ndarray | None:
    """The fixed background colour of ``[field] background`` (None: learned)."""
    if isinstance(spec, list):
        return np.asarray(spec, np.float32)
    return {"white": np.ones(3, np.float32), "black": np.zeros(3, np.float32)}.get(spec)


def make_background(kind: str, values, fixed: np.ndarray | None):
    """``background(d)`` -> Color3f for ``kind`` (``learned``: ``values`` is 3
    logits; ``envmap``: ENVMAP_HEIGHT (or any h) x 2 h x 3 logits; else fixed)."""
    import drjit as dr
    import mitsuba as mi

    if fixed is not None:
        colour = mi.Color3f(*[float(v) for v in fixed])
        return lambda d: colour
    if kind == "learned":
        def learned(d):
            logits = [dr.gather(mi.Float, values, i) for i in range(3)]
            return mi.Color3f(*[dr.rcp(1.0 + dr.exp(-x)) for x in logits])
        return learned
    h = int(round(math.sqrt(dr.width(values) / 6)))  # (ENVMAP_HEIGHT; older files: 16)
    tex = envmap_texture(values, h, 3)

    def envmap(d):
        logits = tex.eval(envmap_uv(d))
        return mi.Color3f(*[dr.rcp(1.0 + dr.exp(-x)) for x in logits])
    return envmap


def envmap_tv(values):
    """The total variation of a learned lat-long background's logits
    (``values``, h x 2h x 3; around in longitude): the mean over neighbouring
    texels of ``sqrt(diff^2 + 1e-4)`` (nearly L1: a sharp horizon seen by many
    rays stays sharp, while directions that the content hides from most
    photos take their neighbours' colour instead of the content's)."""
    import drjit as dr
    import mitsuba as mi

    h = int(round(math.sqrt(dr.width(values) / 6)))
    idx = np.arange(h * 2 * h * 3).reshape(h, 2 * h, 3)
    pairs = [(idx, np.roll(idx, -1, axis=1)), (idx[:-1], idx[1:])]
    total = mi.Float(0.0)
    for a, b in pairs:
        diff = (dr.gather(mi.Float, values, mi.UInt32(a.ravel()))
                - dr.gather(mi.Float, values, mi.UInt32(b.ravel())))
        total += dr.sum(dr.sqrt(dr.square(diff) + 1e-4))
    return total / sum(a.size for a, _ in pairs)


# -- cameras, bounds and rays ------------------------------------------------------------------


def view_cameras(problem, views) -> list:
    """The pinhole camera of each of ``views`` (from the camera file, or from
    its Mitsuba sensor)."""
    from ..capture.cameras import camera_from_sensor

    out = []
    for v in views:
        cam = v.camera
        if cam is None:
            cam = camera_from_sensor(problem.scene.sensors()[v.index], v.id)
        out.append(cam)
    return out


def camera_rays_numpy(cam, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World rays through image points (xs, ys) (pixels, from the top-left
    corner) of an OpenCV pinhole camera: origins and unit directions (N, 3)."""
    d = np.stack([(xs - cam.cx) / cam.fx, (ys - cam.cy) / cam.fy, np.ones_like(xs)], -1)
    d = d @ cam.c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return np.broadcast_to(cam.c2w[:3, 3], d.shape).copy(), d


def visible(cam, points: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Which ``points`` (N, 3) lie in front of ``cam`` and inside its image
    (and its mask, where given)."""
    w2c = np.linalg.inv(cam.c2w)
    p = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = cam.fx * p[:, 0] / z + cam.cx
        y = cam.fy * p[:, 1] / z + cam.cy
    inside = (z > 1e-6) & (x >= 0) & (x < cam.width) & (y >= 0) & (y < cam.height)
    if mask is not None:
        xi = np.clip(np.nan_to_num(x).astype(int), 0, cam.width - 1)
        yi = np.clip(np.nan_to_num(y).astype(int), 0, cam.height - 1)
        inside &= mask[yi, xi]
    return inside


def auto_bounds(cameras: list, masks: list | None = None, *, source: str = "invpbr.toml"
                ) -> tuple[np.ndarray, np.ndarray]:
    """The box of a field from its cameras: the bounding box of the points
    that every camera sees (inside its image and, where it has one, its
    mask), searched around the point nearest to all optical axes.

    Raises:
        ValueError: the cameras see no common region (names the setting to give).
    """
    centres = np.array([c.c2w[:3, 3] for c in cameras])
    axes = np.array([c.c2w[:3, 2] / np.linalg.norm(c.c2w[:3, 2]) for c in cameras])
    # the point nearest to all optical axes (least squares)
    a = sum(np.eye(3) - np.outer(v, v) for v in axes)
    b = sum((np.eye(3) - np.outer(v, v)) @ p for v, p in zip(axes, centres))
    centre = np.linalg.lstsq(a, b, rcond=None)[0] if len(cameras) > 1 else centres[0] + axes[0]
    radius = float(np.median(np.linalg.norm(centres - centre, axis=1)))
    n = 48
    g = (np.arange(n) + 0.5) / n * 2 - 1
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) * radius + centre
    seen = np.ones(len(pts), bool)
    masks = masks or [None] * len(cameras)
    for cam, mask in zip(cameras, masks):
        seen &= visible(cam, pts, mask)
    if not seen.any():
        raise ValueError(f"{source}: the cameras see no common region (no point near the centre of "
                         "their optical axes is inside every photo{}); give the box as "
                         "field.bounds = [[xmin, ymin, zmin], [xmax, ymax, zmax]]".format(
                             " and its mask" if any(m is not None for m in masks) else ""))
    lo, hi = pts[seen].min(0), pts[seen].max(0)
    pad = (hi - lo) * 0.05 + radius / n
    return lo - pad, hi + pad


def check_cameras_see_box(cameras: list, lo, hi, *, source: str) -> None:
    """Every camera sees some of the box.

    Raises:
        ValueError: naming the frames that see nothing of it.
    """
    g = np.linspace(0, 1, 9)
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    pts = np.asarray(lo) + pts * (np.asarray(hi) - np.asarray(lo))
    blind = [c.id for c in cameras if not visible(c, pts).any()]
    if blind:
        raise ValueError(f"{source}: field.bounds: camera(s) {', '.join(map(repr, blind[:8]))}"
                         f"{' ...' if len(blind) > 8 else ''} see nothing of the box "
                         f"{np.round(lo, 4).tolist()} - {np.round(hi, 4).tolist()}; move the "
                         "box or leave field.bounds out (then it follows the cameras)")


class RayTable:
    """The fitted photos' pixels and cameras as Dr.Jit arrays, from which a
    step draws random rays, masked pixels left out. Photos may differ in
    size (the multi-scale protocol of Mip-NeRF): then each pixel is drawn
    with a probability proportional to its area at unit distance (Mip-NeRF's
    loss weighted by pixel area: each photo of a view at each scale weighs
    the same), otherwise uniformly."""

    def __init__(self, cameras: list, photos: list[np.ndarray], masks: list, *, source: str):
        import mitsuba as mi

        self.cameras = cameras
        self.width, self.height = cameras[0].width, cameras[0].height  # (transient layer's size)
        sizes = np.array([c.width * c.height for c in cameras], np.int64)
        self.photos = mi.Float(np.concatenate([p.reshape(-1, 3) for p in photos]).ravel())
        valid = np.concatenate([np.ones(c.width * c.height, bool) if m is None else m.ravel()
                                for c, m in zip(cameras, masks)])
        self.sizes, self.masked = sizes, valid
        self.pixel_view = mi.UInt32(np.repeat(np.arange(len(cameras), dtype=np.uint32), sizes))
        self.start = mi.UInt32(np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint32))
        self.widths = mi.UInt32(np.array([c.width for c in cameras], np.uint32))
        self.scale = mi.Float(np.array([[self.width / c.width, self.height / c.height]
                                        for c in cameras], np.float32).ravel())
        cone = np.array([1.0 / np.sqrt(c.fx * c.fy) for c in cameras], np.float32)
        self.cone = mi.Float(cone)  # (each photo's pixel width at unit distance)
        self.leave_out(None)
        self.rot = mi.Float(np.concatenate([c.c2w[:3, :3].ravel() for c in cameras]))
        self.pos = mi.Float(np.concatenate([c.c2w[:3, 3] for c in cameras]))
        self.intr = mi.Float(np.concatenate([[c.fx, c.fy, c.cx, c.cy] for c in cameras]))

    def leave_out(self, pixels: np.ndarray | None) -> None:
        """Draw from the valid pixels except ``pixels`` (indices into all the
        fitted photos' pixels, in order; None: all of them)."""
        import mitsuba as mi

        valid = self.masked.copy()
        if pixels is not None:
            valid[pixels] = False
        self.valid = mi.UInt32(np.flatnonzero(valid).astype(np.uint32))
        self.count = int(valid.sum())
        cone = np.array(self.cone, np.float64)
        self.area = None  # (pixels drawn with probability ~ their area, photos differing)
        if not np.allclose(cone, cone[0], rtol=1e-4):
            area = np.repeat(cone ** 2, self.sizes)[valid]
            self.area = mi.DiscreteDistribution(mi.Float(area.astype(np.float32)))

    def draw(self, n: int, seed, *, centre: bool = False):
        """``n`` random rays (origins, directions, target colours, per-ray
        jitter along the ray) for the seed (an ``mi.UInt32``): through a
        random point of a random pixel, or its centre (``centre``: rays whose
        footprint covers the pixel, multiscale)."""
        import drjit as dr
        import mitsuba as mi

        # (an opaque seed: a literal one would be compiled into the kernels, one set per step)
        state = dr.opaque(mi.UInt64, int(np.asarray(seed).ravel()[0]) if not isinstance(seed, int)
                          else seed)
        rng = mi.PCG32(size=n, initstate=state * 0x9E3779B9 + 17,
                       initseq=dr.arange(mi.UInt64, n))
        if self.area is None:
            k = mi.UInt32(dr.minimum(rng.next_float32() * self.count, self.count - 1))
        else:
            k = self.area.sample(rng.next_float32())
        pix = dr.gather(mi.UInt32, self.valid, k)
        view = dr.gather(mi.UInt32, self.pixel_view, pix)
        p = pix - dr.gather(mi.UInt32, self.start, view)
        width = dr.gather(mi.UInt32, self.widths, view)
        y = p // width
        x = p - y * width
        jx, jy = rng.next_float32(), rng.next_float32()
        px = mi.Float(x) + (0.5 if centre else jx)
        py = mi.Float(y) + (0.5 if centre else jy)
        intr = [dr.gather(mi.Float, self.intr, view * 4 + i) for i in range(4)]
        local = mi.Vector3f((px - intr[2]) / intr[0], (py - intr[3]) / intr[1], 1.0)
        rot = [dr.gather(mi.Float, self.rot, view * 9 + i) for i in range(9)]
        d = dr.normalize(mi.Vector3f(rot[0] * local.x + rot[1] * local.y + rot[2] * local.z,
                                     rot[3] * local.x + rot[4] * local.y + rot[5] * local.z,
                                     rot[6] * local.x + rot[7] * local.y + rot[8] * local.z))
        o = mi.Point3f(*[dr.gather(mi.Float, self.pos, view * 3 + i) for i in range(3)])
        target = mi.Color3f(*[dr.gather(mi.Float, self.photos, pix * 3 + i) for i in range(3)])
        self.view = view  # (the rays' views, for refined cameras: .field_cameras)
        # (for per-photo appearance; pixels in the first photo's size, the transient layer's)
        self.last_view = view
        self.last_pixel = (px * dr.gather(mi.Float, self.scale, view * 2),
                           py * dr.gather(mi.Float, self.scale, view * 2 + 1))
        return o, d, target, rng.next_float32()


def render_camera(model, cam, *, lo, hi, dt, background, occupancy=None, spp: int = 1,
                  chunk: int = 1 << 14, time: float | None = None) -> dict[str, np.ndarray]:
    """Render a camera's whole image without gradients: ``rgb`` (H, W, 3),
    ``alpha`` (opacity) and ``depth`` (H, W; distance along the ray, 0 where
    empty), ``spp`` jittered rays per pixel (the first at the centre; a
    multi-scale field: one ray through the centre, whose footprint is the
    pixel's, :mod:`.field_multiscale`)."""
    import drjit as dr
    import mitsuba as mi

    h, w = cam.height, cam.width
    if field_multiscale.is_multiscale(model):
        spp = 1  # (one ray through each pixel's centre: its footprint covers the pixel)
    ys, xs = np.mgrid[0:h, 0:w]
    xs, ys = xs.ravel().astype(np.float64), ys.ravel().astype(np.float64)
    rng = np.random.default_rng(7)
    rgb = np.zeros((h * w, 3)); alpha = np.zeros(h * w); depth = np.zeros(h * w)
    for s in range(spp):
        jx, jy = (0.5, 0.5) if s == 0 else rng.random(2)
        o_np, d_np = camera_rays_numpy(cam, xs + jx, ys + jy)
        for start in range(0, h * w, chunk):
            sl = slice(start, start + chunk)
            with dr.suspend_grad():
                o = mi.Point3f(*(mi.Float(o_np[sl, a].astype(np.float32)) for a in range(3)))
                d = mi.Vector3f(*(mi.Float(d_np[sl, a].astype(np.float32)) for a in range(3)))
                # (opaque: a literal would compile new kernels for each moment and camera)
                times = None if time is None else dr.opaque(mi.Float, float(time), dr.width(o))
                cone = dr.opaque(mi.Float, field_multiscale.pixel_footprint(cam), dr.width(o))
                out = render_rays(model, o, d, lo=lo, hi=hi, dt=dt, occupancy=occupancy,
                                  background=background, times=times, footprints=cone)
                rgb[sl] += np.array(out.rgb, np.float64).T  # (3, N) -> (N, 3)
                alpha[sl] += np.array(out.opacity, np.float64)
                depth[sl] += np.array(out.depth, np.float64)
    opacity = alpha / spp
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = np.where(alpha > 1e-6, depth / np.maximum(alpha, 1e-12), 0.0)
    return {"rgb": (rgb / spp).reshape(h, w, 3).astype(np.float32),
            "alpha": opacity.reshape(h, w).astype(np.float32),
            "depth": dist.reshape(h, w).astype(np.float32)}


# -- the saved field ---------------------------------------------------------------------------


def save_field(path: Path, data: dict[str, Any]) -> Path:
    """Write a field's values (``density`` raw (z, y, x), ``sh`` (z, y, x, 3K),
    ``lo``, ``hi``, ``degree``, ``background`` kind and values, ``dt``,
    ``occupied``) to an .npz file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in data.items() if v is not None}
    images.atomic_write(path, lambda tmp: np.savez_compressed(open(tmp, "wb"), **arrays))
    return path


def load_field(path: Path) -> dict[str, Any]:
    """Read :func:`save_field`'s file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a field file, or non-finite values (naming the array).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a field result folder holds {FIELD_FILE})")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a field file ({e})") from None
    try:
        model = other_model(data)
    except ValueError as e:
        raise ValueError(f"{path}: {str(e).removeprefix('field.npz: ')}") from None
    required = (model.required_keys() if model is not None
                else ("density", "sh", "lo", "hi", "degree", "background_kind"))
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{path}: not a field file (lacks {', '.join(missing)})")
    for k in ("density", "sh", "background", "table", "mlp_density", "mlp_colour", "deform"):
        if k in data and not np.all(np.isfinite(data[k])):
            raise ValueError(f"{path}: the field's {k} has NaN or infinite values")
    return data


def model_from_data(data: dict[str, Any]):
    """(model, lo, hi, dt, background function, occupancy) of a loaded field."""
    import mitsuba as mi

    if other_model(data) is not None:
        return other_model(data).model_from_data(data)

    lo, hi = data["lo"].astype(float), data["hi"].astype(float)
    dens = data["density"].astype(np.float32)
    nz, ny, nx = dens.shape
    slices = int(data.get("time_slices", 1))  # (a field in time: static + slices along z)
    model = (GridField if slices == 1 else field_time.TimeGridField)(
        raw=mi.Float(dens.ravel()), sh=mi.Float(data["sh"].astype(np.float32).ravel()),
        dims=(nx, ny, nz // field_time.saved_blocks(data)), degree=int(data["degree"]),
        scale=DENSITY_SCALE / float((hi - lo).max()), **(field_time.saved_options(data)
                                                          if slices > 1 else {}))
    if bool(data.get("multiscale", False)):
        model = field_multiscale.multiscale_model(model, lo, hi)
    return (model, lo, hi, float(data["dt"])) + saved_background_occupancy(data)


def saved_background_occupancy(data: dict[str, Any]) -> tuple:
    """The background and occupancy grid (or None) of a field file's ``data``."""
    import mitsuba as mi

    kind = str(data["background_kind"])
    values = data.get("background")
    fixed = values.astype(np.float32) if kind == "fixed" else None
    background = make_background(kind, None if fixed is not None else mi.Float(values.ravel()), fixed)
    occ = None
    if "occupied" in data:
        occupied = data["occupied"].astype(bool)
        occ = Occupancy(dims=(occupied.shape[2], occupied.shape[1], occupied.shape[0]),
                        occupied=occupied)
        occ.mask = mi.Bool(occupied.ravel())
    return background, occ


def field_mesh(data: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The marching-cubes surface of a field's density at the level whose
    opacity over MESH_CELLS cells is MESH_OPACITY, in world units (None: no surface)."""
    from skimage.measure import marching_cubes

    lo, hi = data["lo"].astype(float), data["hi"].astype(float)
    raw = data["density"].astype(np.float64)
    nz, ny, nx = raw.shape
    cell = (hi - lo) / np.array([nx, ny, nz])
    sigma = np.logaddexp(0.0, raw) * DENSITY_SCALE / float((hi - lo).max())
    level = -math.log(1.0 - MESH_OPACITY) / (MESH_CELLS * float(cell.min()))
    if not (sigma.min() < level < sigma.max()):
        return None
    verts, faces, _, _ = marching_cubes(np.pad(sigma, 1), level)
    verts = verts - 1.0  # the padding
    xyz = lo + (verts[:, ::-1] + 0.5) * cell
    return xyz.astype(np.float32), faces[:, ::-1].astype(np.int32)


def write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """A binary little-endian PLY of a triangle mesh."""
    path = Path(path)
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(vertices)}\nproperty float x\nproperty float y\n"
              f"property float z\nelement face {len(faces)}\n"
              "property list uchar int vertex_indices\nend_header\n").encode()
    face_rows = np.zeros(len(faces), dtype=[("n", "u1"), ("v", "<i4", 3)])
    face_rows["n"], face_rows["v"] = 3, faces

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(np.ascontiguousarray(vertices, "<f4").tobytes())
            f.write(face_rows.tobytes())
    images.atomic_write(path, write)
    return path


# -- the estimate ------------------------------------------------------------------------------


class RandomRays:
    """The step strategy of a field: ``batch_rays`` random pixels of all fitted
    photos, rendered and back-propagated together (see
    :mod:`invpbr.optimization.strategies`; chosen through
    :meth:`FieldEstimate.make_strategy`)."""

    freezable = False
    batched = False
    fixed_views = True

    def __init__(self, context, estimate: "FieldEstimate"):
        problem = context.problem
        views = [problem.views[v] for v in context.fit]
        self.context = context
        self.estimate = estimate
        self.table = RayTable(estimate.cameras_of(views), [v.photo for v in views],
                              [v.mask for v in views], source=str(problem.source))
        self.camera_rays = estimate.camera_rays(self.table.cameras)
        # (random rays are not images: a coarse-to-fine blur of the loss does not apply)
        self.loss_fn = getattr(context.loss_fn, "loss_fn", context.loss_fn)

    def inputs(self, chosen):
        return chosen

    def __call__(self, seed, which, spp):
        import drjit as dr
        import mitsuba as mi

        c, e = self.context, self.estimate
        n = e.config.batch_rays
        o, d, target, jitter = self.table.draw(n, seed, centre=e.config.multiscale)
        if self.camera_rays is not None:
            latent = self.camera_rays.latent(c.latents, e.iteration, e.iterations)
            o, d = self.camera_rays.apply(latent, self.table.view, o, d)
        times = e.ray_times(self.table.last_view)
        footprints = (dr.gather(mi.Float, self.table.cone, self.table.last_view)
                      if e.config.multiscale else None)
        out = e.render(c.latents, o, d, jitter=jitter, regularize=True, times=times,
                       footprints=footprints)
        rgb = out.rgb
        if e.appearance is not None:  # (issue 15: field_options)
            rgb = e.appearance.apply(c.latents[field_options.APPEARANCE_KEY],
                                     self.table.last_view, rgb)
        if e.transient is not None:
            rgb, layer = e.transient.apply(c.latents[field_options.TRANSIENT_KEY],
                                           self.table.last_view, *self.table.last_pixel, rgb)
        shape = (n, 1, 3)
        loss = self.loss_fn(mi.TensorXf(dr.ravel(rgb), shape),
                         mi.TensorXf(dr.ravel(target), shape), None)
        if e.transient is not None:
            loss = loss + e.config.transient_weight * dr.mean(layer)
        if e.config.distortion > 0:
            loss = loss + e.config.distortion * out.distortion
        if e.config.sparsity > 0:
            loss = loss + e.config.sparsity * out.sparsity
        if e.config.background_tv > 0 and e.background_kind == "envmap":
            loss = loss + e.config.background_tv * envmap_tv(c.latents["field.background"])
        e.samples.append(out.samples)
        c.latents.backward(loss)
        return dr.detach(loss)

    def after_backward(self, chosen, base_seed, spp) -> None:
        pass

    def frozen_inputs(self):
        return {}


class FieldEstimate(Estimate):
    """A radiance field (``[field]``), see the module."""

    kind = "field"
    freezable = False
    renders_itself = True
    KEY = "field"

    def __init__(self, config):
        self.key = self.KEY
        self.config = config
        self.initial = None
        self.problem = None
        self.lo = self.hi = None
        self.stage = 0
        self.dims = None
        self.occupancy: Occupancy | None = None
        self.samples: list[int] = []
        self.fixed_background = background_values(config.background)
        self.background_kind = ("fixed" if self.fixed_background is not None
                                else str(config.background))
        self._cameras: dict[str, Any] = {}
        self.camera_estimate = None
        self.iteration, self.iterations = 0, 1
        self.appearance = self.transient = None
        self.slices = int(config.time_slices) if config.time else 1
        # (static + an offset per moment; one canonical grid with a deformation grid)
        self.blocks = self.slices + 1 if config.time and not config.time_deform else 1
        self.times: dict[str, float] = {}
        self.fitted_times = None
        self.deform_dims = None  # (field_time: the deformation grid's cells, time_deform > 0)
        self.rays: RandomRays | None = None  # (the run's strategy, once it has one)
        self.left_out: list[str] = []  # (photos left out, leave_out_outvoted)
        self.left_out_at = 0

    @classmethod
    def from_config(cls, config, context) -> list["FieldEstimate"]:
        if not config.field.enabled:
            return []
        model = FIELD_MODELS.get(config.field.model, cls)
        return [model(config.field)]

    @property
    def scene_keys(self) -> list[str]:
        return []

    def cameras_of(self, views) -> list:
        missing = [v for v in views if v.id not in self._cameras]
        for v, cam in zip(missing, view_cameras(self.problem, missing)):
            self._cameras[v.id] = cam
        return [self._cameras[v.id] for v in views]

    def setup(self, problem) -> None:
        self.problem = problem
        source = str(problem.source)
        kinds = sorted({e.kind for e in problem.parameters} - {"camera"})
        if kinds:
            raise ValueError(f"{source}: [field] with [[estimate]] tables of kind "
                             f"{', '.join(kinds)} is not supported: a field is fitted alone or "
                             "with kind = \"camera\" (its cameras refined)")
        self.camera_estimate = next((e for e in problem.parameters if e.kind == "camera"), None)
        if problem.config.photos.gain != "none":
            raise ValueError(f"{source}: photos.gain = {problem.config.photos.gain!r} does not "
                             "apply to a [field] yet; leave it at \"none\"")
        fitted = [v for v in problem.views if not v.held_out]
        cams = self.cameras_of(fitted)
        self.appearance = field_options.make_appearance(self.config, [v.id for v in fitted])
        self.transient = field_options.make_transient(self.config, cams)
        if self.config.time:
            self.times = field_time.read_times(problem.folder / problem.config.cameras.file,
                                               [v.id for v in problem.views])
            import mitsuba as mi

            self.fitted_times = mi.Float(np.array([self.times[v.id] for v in fitted], np.float32))
        if self.config.bounds is not None:
            self.lo, self.hi = (np.asarray(b, float) for b in self.config.bounds)
        else:
            masks = [v.mask for v in fitted]
            self.lo, self.hi = auto_bounds(cams, masks if any(m is not None for m in masks)
                                           else None, source=source)
        check_cameras_see_box(self.cameras_of(problem.views), self.lo, self.hi, source=source)
        if self.camera_estimate is not None:  # translations in units of the box's diagonal
            self.camera_estimate.model.size = float(np.linalg.norm(self.hi - self.lo))
        self.dims = grid_dims(self.lo, self.hi, self.config.resolution[0])
        if self.config.time and self.config.time_deform > 0:
            self.deform_dims = grid_dims(self.lo, self.hi, self.config.time_deform)
        if self.config.occupancy:
            self.occupancy = Occupancy(dims=grid_dims(self.lo, self.hi,
                                                      self.config.occupancy_resolution))
        self.stage = 0
        self.store = self.initial_latents()  # (until a run's latents exist)

    # -- latents -------------------------------------------------------------------------------

    def latent_names(self) -> list[str]:
        names = ["field.density", "field.sh"]
        names += [field_options.APPEARANCE_KEY] if self.appearance is not None else []
        names += [field_options.TRANSIENT_KEY] if self.transient is not None else []
        names += [field_time.DEFORM_KEY] if self.deform_dims is not None else []
        return names + (["field.background"] if self.fixed_background is None else [])

    def initial_latents(self) -> dict[str, Any]:
        """The latents at the start: a nearly transparent grey field, a grey background."""
        import mitsuba as mi

        nx, ny, nz = self.dims
        k = (self.config.sh_degree + 1) ** 2
        cells = nx * ny * nz
        density = np.zeros(cells * self.blocks, np.float32)
        density[:cells] = RAW_START  # (a field in time: the moments' offsets start at 0)
        out = {"field.density": mi.Float(density),
               "field.sh": mi.Float(np.zeros(cells * self.blocks * 3 * k, np.float32))}
        if self.fixed_background is None:
            size = 3 if self.background_kind == "learned" else ENVMAP_HEIGHT * 2 * ENVMAP_HEIGHT * 3
            out["field.background"] = mi.Float(np.zeros(size, np.float32))
        if self.appearance is not None:
            out[field_options.APPEARANCE_KEY] = self.appearance.initial()
        if self.transient is not None:
            out[field_options.TRANSIENT_KEY] = self.transient.initial()
        if self.deform_dims is not None:  # (no displacement at the start)
            out[field_time.DEFORM_KEY] = mi.Float(np.zeros(
                self.slices * int(np.prod(self.deform_dims)) * 3, np.float32))
        return out

    def start(self, store) -> None:
        for name, value in self.initial_latents().items():
            lr = field_options.LEARNING_RATES | field_time.LEARNING_RATES
            store.add(name, value, lr=lr.get(name, self.config.lr))
        self.store = store

    def model(self, store) -> GridField:
        if self.slices > 1:
            model = field_time.TimeGridField(
                raw=store["field.density"], sh=store["field.sh"], dims=self.dims,
                degree=self.config.sh_degree, slices=self.slices,
                scale=DENSITY_SCALE / float((self.hi - self.lo).max()),
                deform=store[field_time.DEFORM_KEY] if self.deform_dims else None,
                deform_dims=self.deform_dims)
        else:
            model = GridField(raw=store["field.density"], sh=store["field.sh"], dims=self.dims,
                              degree=self.config.sh_degree,
                              scale=DENSITY_SCALE / float((self.hi - self.lo).max()))
        if self.config.multiscale:  # (mip levels, issue 15: field_multiscale)
            self._levels = field_multiscale.cached_levels(getattr(self, "_levels", None), model,
                                                          self.lo, self.hi)
            return self._levels[1]
        return model

    def ray_times(self, view):
        """Each ray's time (from its fitted photo ``view``), or None: static."""
        import drjit as dr
        import mitsuba as mi

        return None if self.fitted_times is None else dr.gather(mi.Float, self.fitted_times, view)

    def background(self, store):
        values = None if self.fixed_background is not None else store["field.background"]
        return make_background(self.background_kind, values, self.fixed_background)

    def camera_rays(self, cameras: list):
        """A :class:`.field_cameras.CameraRays` for ``cameras`` when cameras are
        refined (``[[estimate]] kind = "camera"``), else None."""
        if self.camera_estimate is None:
            return None
        from .field_cameras import CameraRays

        return CameraRays(self.camera_estimate, cameras, self.camera_estimate.model.size)

    @property
    def dt(self) -> float:
        cell = (self.hi - self.lo) / np.asarray(self.dims, float)
        return float(cell.min()) / self.config.samples

    def render(self, store, o, d, *, jitter=None, regularize: bool = False, occupancy=True,
               times=None, footprints=None):
        """Volume-render rays (o, d) through the current field (see :func:`render_rays`)."""
        return render_rays(self.model(store), o, d, lo=self.lo, hi=self.hi, dt=self.dt,
                           jitter=jitter, occupancy=self.occupancy if occupancy else None,
                           background=self.background(store), regularize=regularize,
                           times=times, footprints=footprints)

    def render_sensor(self, sensor, spp: int) -> np.ndarray:
        """A Mitsuba sensor's image of the current field (H, W, 3), without
        gradients (what the loop's renders of views show)."""
        from ..capture.cameras import camera_from_sensor

        store = self.store
        cam = camera_from_sensor(sensor, sensor.id())
        rays = self.camera_rays([cam])
        if rays is not None:  # a refined camera: as the run has it now (once it has latents)
            try:
                cam = rays.camera(np.array(store[self.camera_estimate.key]), cam)
            except KeyError:
                pass
        spp = max(1, min(int(spp), self.config.spp))
        return render_camera(self.model(store), cam, lo=self.lo, hi=self.hi, dt=self.dt,
                             background=self.background(store), occupancy=self.occupancy,
                             spp=spp, time=self.times.get(cam.id))["rgb"]

    def advance(self, store, params, iteration: int, iterations: int) -> bool:
        self.iteration, self.iterations = iteration, iterations
        stages = self.config.resolution
        stage = min(len(stages) - 1, iteration * len(stages) // max(iterations, 1))
        if stage != self.stage:
            self.leave_out_outvoted(store)
            self.upsample(store, stage)
        cfg = self.config
        if (self.occupancy is not None and iteration >= cfg.occupancy_warmup
                and (iteration - cfg.occupancy_warmup) % cfg.occupancy_every == 0):
            model = self.model(store)
            if self.slices > 1:  # (one grid for all times: each point at a random moment)
                model = model.at(field_time.random_times(iteration))
            # (multiscale: the largest density over the levels)
            density = getattr(model, "occupancy_density", model.density)
            if not self.occupancy.update(density, self.dt, threshold=cfg.occupancy_threshold,
                                         decay=cfg.occupancy_decay, seed=iteration):
                warnings.warn(
                    f"{self.problem.source if self.problem else 'field'}: the occupancy grid "
                    f"came out empty at step {iteration} (no density above "
                    f"field.occupancy_threshold = {cfg.occupancy_threshold:g}): every cell is "
                    "marched until the next update; check field.bounds and the photos",
                    stacklevel=2)
        return False

    def upsample(self, store, stage: int) -> None:
        """Move the grid to the resolution of ``stage`` (new latents, Adam reset)."""
        import mitsuba as mi

        k3 = 3 * (self.config.sh_degree + 1) ** 2
        nx, ny, nz = self.dims
        s = self.blocks
        dens = np.array(store["field.density"], np.float32).reshape(s, nz, ny, nx, 1)
        sh = np.array(store["field.sh"], np.float32).reshape(s, nz, ny, nx, k3)
        self.stage = stage
        self.dims = grid_dims(self.lo, self.hi, self.config.resolution[stage])
        store.add("field.density", mi.Float(np.concatenate(
            [resample_grid(x, self.dims).ravel() for x in dens])))
        store.add("field.sh", mi.Float(np.concatenate(
            [resample_grid(x, self.dims).ravel() for x in sh])))

    def current_stage(self) -> Any:
        return self.stage

    def state(self) -> dict[str, Any]:
        out = {"stage": self.stage, "left_out": json.dumps(self.left_out),
               "left_out_at": self.left_out_at}
        if self.occupancy is not None:
            out |= {"occupancy_ema": self.occupancy.ema, "occupied": self.occupancy.occupied,
                    "occupancy_updates": self.occupancy.updates}
        return out

    def load_state(self, store, params, state: dict[str, Any]) -> None:
        """Come back to a checkpoint's stage (grid size) and occupancy grid."""
        import mitsuba as mi

        self.stage = int(state.get("stage", 0))
        self.dims = grid_dims(self.lo, self.hi, self.config.resolution[self.stage])
        if self.occupancy is not None and "occupied" in state:
            occ = self.occupancy
            occ.ema = np.asarray(state["occupancy_ema"], np.float32)
            occ.occupied = np.asarray(state["occupied"], bool)
            occ.updates = int(state.get("occupancy_updates", 0))
            occ.mask = mi.Bool(occ.occupied.ravel()) if occ.updates else None
        self.left_out = list(json.loads(state.get("left_out", "[]")))
        self.left_out_at = int(state.get("left_out_at", 0))
        self.apply_left_out()

    def apply_left_out(self) -> None:
        """Leave the rays of the photos in :attr:`left_out` out of the ray table."""
        rays = self.rays
        if rays is None:
            return
        ids = [c.id for c in rays.table.cameras]
        bad = [ids.index(i) for i in self.left_out if i in ids]
        starts = np.concatenate([[0], np.cumsum(rays.table.sizes)])
        rays.table.leave_out(np.concatenate([np.arange(starts[v], starts[v + 1]) for v in bad])
                             if bad else None)

    def finish(self, store) -> bool:
        last = len(self.config.resolution) - 1
        changed = self.stage != last
        if changed:
            self.upsample(store, last)
        if self.left_out:
            self.refit_background(store)
        return changed

    def refit_background(self, store) -> None:
        """After a fit that left photos out (:meth:`leave_out_outvoted`): fit
        the envmap again, the field kept, without those photos' rays and
        without the other photos' rays that are outvoted in their texel
        (parts of the same occluder, seen over less of their frame)."""
        import mitsuba as mi

        view, texel, d, field_rgb, t, photo = self.background_rays(store)
        implied = (photo - field_rgb) / np.maximum(t, 1e-3)[:, None]
        ids = [c.id for c in self.rays.table.cameras]
        keep = ~outvoted_rays(view, texel, implied, t)
        keep &= ~np.isin(view, [ids.index(i) for i in self.left_out])
        values = np.array(store["field.background"], np.float32)
        h = int(round(math.sqrt(values.size / 6)))

        def dj(x, kind):
            return kind(*(mi.Float(np.ascontiguousarray(x[keep, a], np.float32))
                          for a in range(3)))
        logits = refit_envmap(values.reshape(h, 2 * h, 3), dj(d, mi.Vector3f),
                              dj(field_rgb, mi.Color3f), mi.Float(t[keep].astype(np.float32)),
                              dj(photo, mi.Color3f))
        store.add("field.background", mi.Float(logits.ravel()))

    def leave_out_outvoted(self, store) -> None:
        """Leave the fitted photos that the others outvote on the learned
        envmap (``leave_out_outvoted``, see :mod:`.field_background`) out of
        the rest of the fit (each stage decides anew, over all the photos)."""
        rays = self.rays
        if not self.config.leave_out_outvoted or self.background_kind != "envmap" or rays is None:
            return
        view, texel, d, field_rgb, transmittance, photo = self.background_rays(store)
        implied = (photo - field_rgb) / np.maximum(transmittance, 1e-3)[:, None]
        bad = outvoted_photos(view, texel, implied, transmittance)
        if len(bad) >= len(rays.table.cameras):
            bad = bad[:0]  # (all of them: nothing to go by)
        ids = [rays.table.cameras[v].id for v in bad]
        if ids and ids != self.left_out:
            self.left_out_at = self.iteration
        self.left_out = ids
        self.apply_left_out()

    def background_rays(self, store) -> tuple[np.ndarray, ...]:
        """The fitted photos' rays (:meth:`fitted_rays`, concatenated): each
        one's photo index (N,), envmap texel (N,), direction (N, 3), the
        field's own colour (N, 3, without the background), transmittance (N,)
        and the photo's colour (N, 3)."""
        import drjit as dr

        view, d, rgb, opacity, bg, photo = (np.concatenate(x) for x in
                                            zip(*self.fitted_rays(store)))
        h = int(round(math.sqrt(dr.width(store["field.background"]) / 6)))
        t = 1.0 - opacity
        return view, texel_of(d, h), d, rgb - t[:, None] * bg, t, photo

    def fitted_rays(self, store, *, most: int = 1 << 18):
        """Rays through the fitted photos' pixels (their centres, every k-th
        row and column so that at most about ``most``; masked pixels left out)
        with the current field: per photo (numpy) its index (N,), directions
        (N, 3), rendered colour (N, 3), opacity (N,), background colour (N, 3)
        and the photo's colour (N, 3), linear."""
        import drjit as dr
        import mitsuba as mi

        fitted = [v for v in self.problem.views if not v.held_out]
        cams = self.cameras_of(fitted)
        refined = self.camera_rays(cams)
        if refined is not None:  # (the cameras as the run has them now, once it has latents)
            try:
                cams = [refined.camera(np.array(store[self.camera_estimate.key]), c)
                        for c in cams]
            except KeyError:
                pass
        stride = max(1, math.ceil(math.sqrt(sum(c.width * c.height for c in cams) / most)))
        model, background = self.model(store), self.background(store)
        for index, (view, cam) in enumerate(zip(fitted, cams)):
            ys, xs = np.mgrid[0:cam.height:stride, 0:cam.width:stride]
            keep = np.ones(xs.shape, bool) if view.mask is None else view.mask[ys, xs]
            o_np, d_np = camera_rays_numpy(cam, xs[keep] + 0.5, ys[keep] + 0.5)
            with dr.suspend_grad():
                o = mi.Point3f(*(mi.Float(o_np[:, a].astype(np.float32)) for a in range(3)))
                d = mi.Vector3f(*(mi.Float(d_np[:, a].astype(np.float32)) for a in range(3)))
                time = self.times.get(cam.id) if self.slices > 1 else None
                times = None if time is None else dr.opaque(mi.Float, float(time), dr.width(o))
                cone = dr.opaque(mi.Float, field_multiscale.pixel_footprint(cam), dr.width(o))
                out = render_rays(model, o, d, lo=self.lo, hi=self.hi, dt=self.dt,
                                  occupancy=self.occupancy, background=background, times=times,
                                  footprints=cone)
                bg = background(d)
                yield (np.full(len(d_np), index), d_np, np.array(out.rgb, np.float64).T,
                       np.array(out.opacity, np.float64), np.array(bg, np.float64).T,
                       view.photo[ys[keep], xs[keep]].astype(np.float64))

    def regularizer(self, store):
        """Total variation of density and colour between random cells and
        their +x, +y, +z neighbours (``tv``; squared differences, Plenoxels)."""
        import drjit as dr
        import mitsuba as mi

        if self.config.tv <= 0:
            return None
        nx, ny, nz = self.dims
        n = min(self.config.batch_rays, nx * ny * nz)
        self._tv_calls = getattr(self, "_tv_calls", 0) + 1
        rng = mi.PCG32(size=n, initstate=dr.opaque(mi.UInt64, self._tv_calls * 7919 + 3))
        x = mi.UInt32(dr.minimum(rng.next_float32() * (nx - 1), nx - 2))
        y = mi.UInt32(dr.minimum(rng.next_float32() * (ny - 1), ny - 2))
        z = mi.UInt32(dr.minimum(rng.next_float32() * (nz - 1), nz - 2))
        cell = (z * ny + y) * nx + x
        if self.slices > 1:  # (a random time slice)
            cell += mi.UInt32(dr.minimum(rng.next_float32() * self.blocks, self.blocks - 1)) \
                * (nx * ny * nz)
        k3 = 3 * (self.config.sh_degree + 1) ** 2
        total = mi.Float(0.0)
        for step in (1, nx, nx * ny):
            total += dr.mean(dr.square(dr.gather(mi.Float, store["field.density"], cell + step)
                                       - dr.gather(mi.Float, store["field.density"], cell)))
            for ch in range(0, k3, max(1, k3 // 3)):  # the constant term of each channel
                a = dr.gather(mi.Float, store["field.sh"], (cell + step) * k3 + ch)
                b = dr.gather(mi.Float, store["field.sh"], cell * k3 + ch)
                total += dr.mean(dr.square(a - b))
        if self.blocks > 1:  # smoothness in time of the moments' offsets (field_time)
            total += (self.config.time_tv / self.config.tv) * field_time.time_tv(
                store, self.dims, self.slices, k3, n, self._tv_calls)
        total = self.config.tv * total
        if self.deform_dims is not None and self.slices > 2:  # (of the displacements)
            total += self.config.time_deform_tv * field_time.deform_tv(
                store[field_time.DEFORM_KEY], self.deform_dims, self.slices)
        return total

    # -- results -------------------------------------------------------------------------------

    def value(self, store, params) -> dict[str, Any]:
        nx, ny, nz = self.dims
        k3 = 3 * (self.config.sh_degree + 1) ** 2
        density = np.array(store["field.density"], np.float32).reshape(self.blocks * nz, ny, nx)
        sh = np.array(store["field.sh"], np.float32).reshape(self.blocks * nz, ny, nx, k3)
        bg = (self.fixed_background if self.fixed_background is not None
              else np.array(store["field.background"], np.float32))
        out = {"density": density, "sh": sh, "lo": np.asarray(self.lo, np.float32),
               "hi": np.asarray(self.hi, np.float32), "degree": np.int32(self.config.sh_degree),
               "background_kind": np.str_(self.background_kind), "background": bg,
               "dt": np.float32(self.dt)}
        if self.occupancy is not None and self.occupancy.updates:
            out["occupied"] = self.occupancy.occupied
        if self.slices > 1:  # (static, then the moments' offsets, stacked along z)
            out["time_slices"] = np.int32(self.slices)
        if self.config.multiscale:  # (renders look up mip levels at each pixel's footprint)
            out["multiscale"] = np.bool_(True)
        if self.deform_dims is not None:  # (the moments' displacements, stacked along z)
            dx, dy, dz = self.deform_dims
            out["deform"] = np.array(store[field_time.DEFORM_KEY], np.float32).reshape(
                self.slices * dz, dy, dx, 3)
        return out | self.appearance_value(store)

    def appearance_value(self, store) -> dict[str, Any]:
        """Each fitted photo's ``[M | b]`` for the saved field (renders: the identity)."""
        if self.appearance is None:
            return {}
        return {"appearance": self.appearance.matrices(store[field_options.APPEARANCE_KEY]),
                "appearance_ids": np.array(self.appearance.ids)}

    def appearance_result(self, store, problem) -> dict[str, Any]:
        """NeRF-W's evaluation of the held-out photos (see field_options), with
        per-photo appearance; else nothing."""
        held = [v for v in problem.views if v.held_out]
        if self.appearance is None or not held:
            return {}
        renders = {v.id: render_camera(self.model(store), cam, lo=self.lo, hi=self.hi,
                                       dt=self.dt, background=self.background(store),
                                       occupancy=self.occupancy, spp=self.config.spp)["rgb"]
                   for v, cam in zip(held, self.cameras_of(held))}
        return {"novel_view_appearance": field_options.appearance_scores(
            renders, {v.id: v.photo for v in held})}

    def gradcheck_applies(self, view_index: int) -> bool:
        return False  # (not a scene parameter: tests/test_fields.py checks its gradients)

    def result_fields(self, store, problem, estimates) -> dict[str, Any]:
        notes = []
        value = estimates.get(self.key)
        if value is not None and not (np.all(np.isfinite(value["density"]))
                                      and np.all(np.isfinite(value["sh"]))):
            notes.append("field: NaN or infinite values in the fitted field")
        if self.occupancy is not None and self.occupancy.emptied:
            notes.append(f"field: the occupancy grid came out empty {self.occupancy.emptied} "
                         "time(s) (see the warnings)")
        if self.left_out:
            notes.append(f"field: photo(s) {', '.join(self.left_out)} left out of the fit from "
                         f"step {self.left_out_at} on: the other photos outvote the background "
                         "they show over a third of their frame (a near occluder outside "
                         "the box?); "
                         "field.leave_out_outvoted = false keeps them")
        out: dict[str, Any] = {"notes": notes} if notes else {}
        return out | self.appearance_result(store, problem)

    def make_strategy(self, context) -> RandomRays:
        self.rays = RandomRays(context, self)
        if self.left_out:  # (a checkpoint's, loaded before the rays existed)
            self.apply_left_out()
        return self.rays

    @classmethod
    def to_json(cls, key, value, result, files) -> Any:
        if other_model(value) is not None:
            return other_model(value).to_json(key, value, result, files)
        density = value["density"]
        doc = {"model": "grid", "resolution": list(density.shape[::-1]),
               "bounds": [np.asarray(value["lo"]).tolist(), np.asarray(value["hi"]).tolist()],
               "sh_degree": int(value["degree"]), "background": str(value["background_kind"]),
               "files": dict(files)}
        if "occupied" in value:
            doc["occupied_fraction"] = float(np.mean(value["occupied"]))
        if "time_slices" in value:
            doc["time_slices"] = int(value["time_slices"])
        if bool(value.get("multiscale", False)):
            doc["multiscale"] = True
        if "deform" in value:  # (the deformation grid's cells along x, y, z)
            shape = np.shape(value["deform"])
            doc["time_deform"] = [shape[2], shape[1], shape[0] // int(value["time_slices"])]
        if "appearance" in value:  # (renders are at the neutral appearance)
            doc["appearance"] = {str(i): np.round(m, 5).tolist()
                                 for i, m in zip(value["appearance_ids"], value["appearance"])}
        return doc

    @classmethod
    def write_files(cls, key, value, result, folder: Path) -> dict[str, str]:
        files = {"field": save_field(folder / FIELD_FILE, value).name}
        blocks = field_time.saved_blocks(value)  # (a field in time: its static part's mesh)
        first = value | {"density": value["density"][:len(value["density"]) // blocks]}
        mesh = field_mesh(first) if np.all(np.isfinite(value["density"])) else None
        if mesh is not None:
            files["mesh"] = write_ply(folder / "field.ply", *mesh).name
        return files

    @classmethod
    def summary(cls, key, value, result) -> str:
        if other_model(value) is not None:
            return other_model(value).summary(key, value, result)
        nz, ny, nx = value["density"].shape
        lo, hi = (np.round(np.asarray(value[k], np.float64), 3).tolist() for k in ("lo", "hi"))
        occ = (f", {100 * float(np.mean(value['occupied'])):.1f}% occupied"
               if "occupied" in value else "")
        mip = ", multiscale" if bool(value.get("multiscale", False)) else ""
        return f"grid {nx}x{ny}x{nz} in {lo} - {hi}{occ}{mip}"

    @classmethod
    def render_views(cls, folder, cameras, *, spp, envmap=None, out, appearance=None,
                     time=None, times=None) -> list[Path]:
        """``invpbr view`` of a field result: per camera ``<id>.exr`` (linear
        RGBA, alpha = opacity), ``<id>.png`` (sRGB) and ``<id>_depth.exr``; at
        the neutral appearance or at fitted photo ``appearance``'s; a field in
        time at ``time``, else at each frame's ``times[id]``, else at 0.5."""
        data = load_field(Path(folder) / FIELD_FILE)
        colour_map = field_options.saved_appearance(data, appearance,
                                                    source=Path(folder) / FIELD_FILE)
        if envmap is not None:
            warnings.warn("invpbr view: --envmap does not apply to a radiance field (its light "
                          "is baked into its colours); ignored", stacklevel=2)
        model, lo, hi, dt, background, occ = model_from_data(data)
        out = Path(out)
        written = []
        for cam in cameras:
            moment = None
            if "time_slices" in data:
                moment = time if time is not None else (times or {}).get(cam.id, 0.5)
            img = render_camera(model, cam, lo=lo, hi=hi, dt=dt, background=background,
                                occupancy=occ, spp=max(1, min(int(spp), 16)), time=moment)
            if colour_map is not None:
                img["rgb"] = (img["rgb"] @ colour_map[:, :3].T
                              + colour_map[:, 3]).astype(np.float32)
            rgba = np.concatenate([img["rgb"], img["alpha"][..., None]], -1)
            written.append(images.save_image(out / f"{cam.id}.exr", rgba))
            written.append(images.save_image(out / f"{cam.id}.png", img["rgb"]))
            written.append(images.save_image(out / f"{cam.id}_depth.exr", img["depth"]))
        return written


register_kind(FieldEstimate)
