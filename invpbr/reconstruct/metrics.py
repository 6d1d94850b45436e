"""Figures of a reconstruction: image PSNRs, mask IoU, surface errors.

Pure numpy (and scipy's k-d tree); no rendering.
"""

from __future__ import annotations

import math

import numpy as np


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """sRGB encoding of linear values, clipped to [0, 1] first."""
    x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def psnr_srgb(image: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR (dB, peak 1) of two linear RGB images (H, W, 3) compared in sRGB
    clipped to [0, 1], over the whole frame or the pixels where ``mask`` (H, W) is true."""
    d = linear_to_srgb(image[..., :3]) - linear_to_srgb(reference[..., :3])
    if mask is not None:
        d = d[np.asarray(mask, bool)]
        if d.size == 0:
            return float("nan")
    mse = float(np.mean(d ** 2))
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def mask_iou(coverage: np.ndarray, mask: np.ndarray) -> float:
    """Intersection over union of ``coverage > 0.5`` and ``mask > 0.5`` ((H, W) each);
    1 where both are empty."""
    a, b = np.asarray(coverage) > 0.5, np.asarray(mask) > 0.5
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def scale_invariant(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` times the per-channel factor that best fits ``reference``
    (least squares, linear) inside ``mask``: albedo x light is known up to scale."""
    m = np.asarray(mask, bool)
    a, b = image[..., :3][m], reference[..., :3][m]
    scale = (a * b).sum(axis=0) / np.maximum((a * a).sum(axis=0), 1e-12)
    return image[..., :3] * scale


def _sample_with_normals(v: np.ndarray, f: np.ndarray, n: int, seed: int):
    """``n`` area-uniform points on a mesh and their faces' unit normals."""
    v = np.asarray(v, np.float64)
    tri = v[np.asarray(f)]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = 0.5 * np.linalg.norm(cross, axis=1)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(tri), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)
    normals = cross[chosen] / np.maximum(np.linalg.norm(cross[chosen], axis=1, keepdims=True), 1e-20)
    return (tri[chosen] * w[:, :, None]).sum(axis=1), normals


def surface_errors(v: np.ndarray, f: np.ndarray, v_true: np.ndarray, f_true: np.ndarray,
                   *, samples: int = 20000) -> dict[str, float]:
    """Chamfer distance (symmetric mean of nearest-point distances between
    area-uniform samples, each side against a ten times denser sampling of the
    other) divided by the truth's bounding-box diagonal, and the mean angle
    (degrees) between the face normals of those nearest points."""
    from scipy.spatial import cKDTree

    diag = float(np.linalg.norm(np.ptp(np.asarray(v_true, np.float64), axis=0)))
    a, na = _sample_with_normals(v, f, samples, 1)
    b, nb = _sample_with_normals(v_true, f_true, samples, 2)
    a_ref, na_ref = _sample_with_normals(v, f, 10 * samples, 3)
    b_ref, nb_ref = _sample_with_normals(v_true, f_true, 10 * samples, 4)
    d_ab, i_ab = cKDTree(b_ref).query(a)
    d_ba, i_ba = cKDTree(a_ref).query(b)
    cos_ab = np.clip((na * nb_ref[i_ab]).sum(axis=1), -1, 1)
    cos_ba = np.clip((nb * na_ref[i_ba]).sum(axis=1), -1, 1)
    angle = 0.5 * (np.degrees(np.arccos(cos_ab)).mean() + np.degrees(np.arccos(cos_ba)).mean())
    return {"chamfer_over_diagonal": float(0.5 * (d_ab.mean() + d_ba.mean()) / diag),
            "normal_angle_deg": float(angle)}


def image_figures(renders: list[np.ndarray], coverages: list[np.ndarray],
                  photos: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, float]:
    """Mean PSNR (full frame, inside the mask) and mask IoU over views."""
    full = [psnr_srgb(r, p) for r, p in zip(renders, photos)]
    inside = [psnr_srgb(r, p, m > 0.5) for r, p, m in zip(renders, photos, masks)]
    iou = [mask_iou(c, m) for c, m in zip(coverages, masks)]
    return {"psnr": float(np.mean(full)), "psnr_mask": float(np.nanmean(inside)),
            "iou": float(np.mean(iou))}
