"""The visual hull of an object seen in masked photos: its bounds, the carved
voxel grid and the mesh of that grid.

All of it is numpy and scikit-image (no rendering): each voxel centre is
projected into every photo (:func:`invpbr.capture.cameras.project`) and the
photo's mask is sampled there bilinearly, so the occupancy is a smooth field
whose 0.5 level set lies on the masks' edges to a fraction of a pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..capture.cameras import Camera, project


class HullError(ValueError):
    """Masks and cameras that give no usable hull; the message names the photos."""


@dataclass
class Silhouettes:
    """The masks of the fitted photos with their cameras.

    Attributes:
        cameras: one pinhole camera per photo.
        masks: object pixels, (H, W) float32 in [0, 1] per photo (1: object).
        names: the photos' files (or ids), for messages.
    """

    cameras: list[Camera]
    masks: list[np.ndarray]
    names: list[str]


def sample_masks(sil: Silhouettes, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each photo's mask at each point, bilinearly.

    Returns:
        (values, inside): (V, N) float32 mask values (0 outside the frame) and
        (V, N) bool, the point projects inside the frame, in front of the camera.
    """
    values = np.zeros((len(sil.cameras), len(points)), np.float32)
    inside = np.zeros((len(sil.cameras), len(points)), bool)
    for i, (cam, mask) in enumerate(zip(sil.cameras, sil.masks)):
        uv = project(cam, points)
        h, w = mask.shape
        x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5  # pixel centres at integer + 0.5
        ok = np.isfinite(x) & (x > -0.5) & (x < w - 0.5) & (y > -0.5) & (y < h - 0.5)
        xs, ys = np.clip(np.nan_to_num(x), 0, w - 1), np.clip(np.nan_to_num(y), 0, h - 1)
        x0, y0 = np.minimum(xs.astype(int), w - 2 if w > 1 else 0), \
            np.minimum(ys.astype(int), h - 2 if h > 1 else 0)
        x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
        fx, fy = xs - x0, ys - y0
        v = (mask[y0, x0] * (1 - fx) * (1 - fy) + mask[y0, x1] * fx * (1 - fy)
             + mask[y1, x0] * (1 - fx) * fy + mask[y1, x1] * fx * fy)
        values[i] = np.where(ok, v, 0.0)
        inside[i] = ok
    return values, inside


def check_silhouettes(sil: Silhouettes) -> None:
    """Refuse inputs no hull can come from.

    Raises:
        HullError: fewer than two photos, or masks with no object pixel
            (named), or masks that are object everywhere.
    """
    if len(sil.cameras) < 2:
        raise HullError(f"reconstruct: {len(sil.cameras)} photo(s) ({', '.join(sil.names)}); "
                        "a visual hull needs at least two photos from different directions")
    empty = [n for n, m in zip(sil.names, sil.masks) if not (m > 0.5).any()]
    if empty:
        raise HullError(f"reconstruct: the mask of {', '.join(empty)} has no object pixel "
                        "(white = object); fix or remove those photos")
    full = [n for n, m in zip(sil.names, sil.masks) if (m > 0.5).all()]
    if len(full) == len(sil.names):
        raise HullError("reconstruct: every mask is object everywhere (" + ", ".join(full)
                        + "); masks must separate the object from its background")


def _centre(sil: Silhouettes) -> np.ndarray:
    """The point closest (least squares) to the rays through the masks' centroids."""
    a, b = np.zeros((3, 3)), np.zeros(3)
    for cam, mask in zip(sil.cameras, sil.masks):
        ys, xs = np.nonzero(mask > 0.5)
        d_cam = np.array([(xs.mean() + 0.5 - cam.cx) / cam.fx, (ys.mean() + 0.5 - cam.cy) / cam.fy, 1.0])
        d = cam.c2w[:3, :3] @ d_cam
        d /= np.linalg.norm(d)
        p = np.eye(3) - np.outer(d, d)
        a += p
        b += p @ cam.c2w[:3, 3]
    return np.linalg.lstsq(a, b, rcond=None)[0]


def occupancy(sil: Silhouettes, lo: np.ndarray, hi: np.ndarray, resolution: int,
              *, min_views: int | None = None, tolerance: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The carved grid over the box ``[lo, hi]``: for each voxel centre the
    smallest mask value over the photos that see it (1: object in every
    photo), 0 where fewer than ``min_views`` photos see it.

    Returns:
        (occ, spacing): occ (R0, R1, R2) float32 with R of the longest side
        ``resolution``; spacing (3,) the voxel size.
    """
    extent = hi - lo
    step = float(extent.max()) / resolution
    dims = np.maximum(np.ceil(extent / step).astype(int), 2)
    axes = [lo[i] + (np.arange(dims[i]) + 0.5) * step for i in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    values, inside = sample_masks(sil, pts)
    seen = inside.sum(axis=0)
    need = max(2, math.ceil(0.5 * len(sil.cameras))) if min_views is None else min_views
    if tolerance:  # kept unless more than ``tolerance`` photos see background there
        carves = (inside & (values < 0.5)).sum(axis=0)
        occ = (carves <= tolerance).astype(np.float32)
    else:
        occ = np.where(inside, values, 1.0).min(axis=0)
    occ = np.where(seen >= need, occ, 0.0).astype(np.float32)
    return occ.reshape(dims), np.full(3, step)


def object_bounds(sil: Silhouettes, *, resolution: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """The box that holds the object, from the cameras and masks alone: a
    coarse hull carved in a box around the point the masks' centroids point
    at (as large as the cameras' distance to it), its occupied voxels padded.

    Raises:
        HullError: the masks carve everything away (they disagree: wrong
            cameras or masks), naming the photos whose masks miss the rest.
    """
    check_silhouettes(sil)
    centre = _centre(sil)
    radius = max(float(np.linalg.norm(c.c2w[:3, 3] - centre)) for c in sil.cameras)
    lo, hi = centre - radius, centre + radius
    check_agreement(sil, lo, hi, resolution)
    for _ in range(3):  # zoom in: the coarse grid may be far larger than the object
        occ, step = occupancy(sil, lo, hi, resolution)
        full = np.argwhere(occ > 0.5)
        if len(full) == 0:
            raise HullError(_disagreement(sil, centre))
        new_lo = lo + (full.min(axis=0) - 1.5) * step
        new_hi = lo + (full.max(axis=0) + 2.5) * step
        shrink = (new_hi - new_lo).max() / (hi - lo).max()
        lo, hi = np.maximum(new_lo, lo), np.minimum(new_hi, hi)
        if shrink > 0.5:
            break
    return lo, hi


#: A mask less covered than this by the hull's projection disagrees with the others.
MIN_MASK_COVERAGE = 0.5


def mask_coverage(sil: Silhouettes, occ: np.ndarray, lo: np.ndarray, step: np.ndarray) -> list[float]:
    """For each photo, the fraction of its mask's pixels that the carved
    voxels (``occ > 0.5``) cover when projected (each voxel splatted as a disc
    of its projected size)."""
    from scipy.ndimage import binary_dilation

    idx = np.argwhere(occ > 0.5)
    centres = lo + (idx + 0.5) * step
    out = []
    for cam, mask in zip(sil.cameras, sil.masks):
        uv = project(cam, centres)
        ok = np.isfinite(uv).all(axis=1)
        h, w = mask.shape
        hit = np.zeros((h, w), bool)
        px = np.floor(uv[ok]).astype(int)
        inside = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
        hit[px[inside, 1], px[inside, 0]] = True
        if ok.any():
            depth = np.linalg.norm(centres[ok] - cam.c2w[:3, 3], axis=1)
            radius = int(np.ceil(np.median(0.87 * step[0] * cam.fx / depth)))
            yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
            hit = binary_dilation(hit, structure=xx ** 2 + yy ** 2 <= radius ** 2)
        m = mask > 0.5
        out.append(float((hit & m).sum() / max(m.sum(), 1)))
    return out


def check_agreement(sil: Silhouettes, lo: np.ndarray, hi: np.ndarray, resolution: int) -> None:
    """Refuse masks that the hull of all of them does not fill. A culprit is
    a photo without which the others agree (each left out in turn).

    Raises:
        HullError: naming the photos whose masks the hull covers less than
            ``MIN_MASK_COVERAGE`` (another photo's mask, a wrong camera).
    """
    occ, step = occupancy(sil, lo, hi, resolution)
    coverage = mask_coverage(sil, occ, lo, step)
    if min(coverage) >= MIN_MASK_COVERAGE:
        return
    culprits = []
    if len(sil.names) > 2:
        for i, name in enumerate(sil.names):
            others = Silhouettes([c for j, c in enumerate(sil.cameras) if j != i],
                                 [m for j, m in enumerate(sil.masks) if j != i],
                                 [n for j, n in enumerate(sil.names) if j != i])
            rest, _ = occupancy(others, lo, hi, resolution)
            if (rest > 0.5).any() and min(mask_coverage(others, rest, lo, step)) >= MIN_MASK_COVERAGE:
                culprits.append(name)
    if culprits:
        raise HullError("reconstruct: the masks disagree: without the photo(s) "
                        f"{', '.join(culprits)} the others agree on one object. Their camera or "
                        "mask is wrong (another photo's mask, a wrong pose); fix or remove them")
    bad = [f"{n} ({100 * c:.0f} %)" for n, c in zip(sil.names, coverage) if c < MIN_MASK_COVERAGE]
    raise HullError("reconstruct: the masks disagree: the object they carve out together "
                    f"covers little of the mask of {', '.join(bad)}. The cameras or masks are "
                    "wrong (masks of another photo set, a wrong camera file, masks where "
                    "black is the object)")


def _disagreement(sil: Silhouettes, centre: np.ndarray) -> str:
    """Which photos do not see the object where the others put it."""
    values, inside = sample_masks(sil, centre[None])
    missing = [n for n, v, s in zip(sil.names, values[:, 0], inside[:, 0]) if not s or v < 0.5]
    which = (f"; the point the masks agree on most is outside the mask of {', '.join(missing)}"
             if missing else "")
    return ("reconstruct: the masks carve everything away: no point is inside the mask of "
            f"every photo that sees it{which}. The cameras or masks disagree (wrong camera file, "
            "masks of another photo set, or masks where black is the object)")


def hull_mesh(sil: Silhouettes, lo: np.ndarray, hi: np.ndarray, *, resolution: int = 128,
              faces: int = 6000) -> tuple[np.ndarray, np.ndarray]:
    """The visual hull as a closed triangle mesh: the grid carved at
    ``resolution``, marching cubes at the 0.5 level (scikit-image), its
    largest connected component, isotropically remeshed (gpytoolbox) to
    about ``faces`` triangles.

    Raises:
        HullError: nothing is left after carving.
    """
    try:
        from skimage.measure import marching_cubes
    except ImportError:
        raise ImportError("[reconstruct] needs scikit-image, gpytoolbox and xatlas: "
                          "pip install 'invpbr[reconstruct]'") from None

    occ, step = occupancy(sil, lo, hi, resolution)
    if not (occ > 0.5).any():
        raise HullError(_disagreement(sil, 0.5 * (lo + hi)))
    padded = np.pad(occ, 1)  # closed surface where the object touches the box
    verts, tris, _, _ = marching_cubes(padded, level=0.5, spacing=tuple(step))
    verts = verts - step + lo + 0.5 * step
    verts, tris = largest_component(verts, tris)
    area = triangle_areas(verts, tris).sum()
    # equilateral triangles of edge h have area sqrt(3)/4 h^2
    edge = math.sqrt(4.0 * area / (math.sqrt(3.0) * max(faces, 4)))
    from ..estimates.meshes import remesh

    v, f = remesh(verts, tris, edge, iterations=10)
    v, f = largest_component(v, f)
    return v.astype(np.float32), outward(v, f)


def outward(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Faces of a closed mesh ordered so that their normals point outwards
    (positive enclosed volume)."""
    t = np.asarray(v, np.float64)[np.asarray(f)]
    volume = np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0
    f = np.asarray(f, np.int64)
    return f if volume >= 0 else f[:, ::-1].copy()


def triangle_areas(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    t = np.asarray(v, np.float64)[np.asarray(f)]
    return 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)


def largest_component(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The connected component of the mesh with the largest area, its
    unused vertices dropped."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    f = np.asarray(f, np.int64)
    n = len(v)
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    face_label = labels[f[:, 0]]
    area = np.bincount(face_label, weights=triangle_areas(v, f))
    keep = f[face_label == int(np.argmax(area))]
    used = np.unique(keep)
    index = np.full(n, -1, np.int64)
    index[used] = np.arange(len(used))
    return np.asarray(v)[used], index[keep]
