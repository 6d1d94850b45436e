"""Pictures for people: linear images and signed values turned into 8-bit PNGs.

Everything here is numpy, Pillow and matplotlib's colour maps (no Mitsuba), so
reports and live pages can be drawn from a result folder on any machine.

- :func:`srgb8` encodes linear RGB as 8-bit sRGB (clipped to [0, 1]);
- :func:`diverging` maps signed values to a diverging colour map (blue
  negative, white zero, red positive) symmetric about zero;
- :func:`magnitude` maps non-negative values to a sequential one;
- :func:`png_bytes` and :func:`write_png` write (H, W, 3) uint8 arrays.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

#: Colour map of signed values (negative blue, zero white, positive red).
DIVERGING_CMAP = "RdBu_r"
#: Colour map of magnitudes.
SEQUENTIAL_CMAP = "magma"
#: Longest side of a picture in a report; larger images are shrunk (Lanczos).
MAX_SIDE = 384


def srgb8(linear: np.ndarray, *, exposure: float = 1.0) -> np.ndarray:
    """Linear RGB (H, W, 3) or grey (H, W) -> 8-bit sRGB (H, W, 3) uint8.

    Args:
        linear: linear values; NaNs and infinities become 0 and 1.
        exposure: factor applied before clipping to [0, 1].
    """
    x = np.nan_to_num(np.asarray(linear, dtype=np.float64) * exposure, nan=0.0, posinf=1.0,
                      neginf=0.0)
    if x.ndim == 2:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    x = np.clip(x[..., :3], 0.0, 1.0)
    s = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.round(s * 255).astype(np.uint8)


def linear_from_srgb8(img: np.ndarray) -> np.ndarray:
    """8-bit sRGB (H, W, C) -> linear float32 (H, W, 3)."""
    s = np.asarray(img, dtype=np.float64)[..., :3] / 255.0
    return np.where(s <= 0.04045, s / 12.92, ((s + 0.055) / 1.055) ** 2.4).astype(np.float32)


def hdr_exposure(linear: np.ndarray, percentile: float = 99.0) -> float:
    """Exposure that brings the ``percentile`` of an HDR image (an environment
    map) to 1, or 1 when it is already within [0, 1]."""
    x = np.nan_to_num(np.asarray(linear, dtype=np.float64))
    top = float(np.percentile(x, percentile)) if x.size else 0.0
    return 1.0 / top if top > 1.0 else 1.0


def symmetric_limit(values: np.ndarray, percentile: float = 99.0) -> float:
    """The scale of a diverging map: the ``percentile`` of ``|values|`` (a
    few extreme pixels do not wash out the rest), never 0."""
    a = np.abs(np.nan_to_num(np.asarray(values, dtype=np.float64)))
    if not a.size:
        return 1.0
    top = float(np.percentile(a, percentile))
    if top <= 0.0:
        top = float(a.max())
    return top if top > 0.0 else 1.0


def _colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def diverging(values: np.ndarray, limit: float | None = None) -> tuple[np.ndarray, float]:
    """Signed values (H, W) -> (H, W, 3) uint8 on a diverging map over
    ``[-limit, limit]`` (default: :func:`symmetric_limit`), and the limit used."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64))
    limit = symmetric_limit(v) if limit is None or not limit > 0 else float(limit)
    rgba = _colormap(DIVERGING_CMAP)(np.clip(0.5 + 0.5 * v / limit, 0.0, 1.0))
    return np.round(rgba[..., :3] * 255).astype(np.uint8), limit


def magnitude(values: np.ndarray, limit: float | None = None) -> tuple[np.ndarray, float]:
    """Non-negative values (H, W) -> (H, W, 3) uint8 on a sequential map over
    ``[0, limit]``, and the limit used."""
    v = np.abs(np.nan_to_num(np.asarray(values, dtype=np.float64)))
    limit = symmetric_limit(v) if limit is None or not limit > 0 else float(limit)
    rgba = _colormap(SEQUENTIAL_CMAP)(np.clip(v / limit, 0.0, 1.0))
    return np.round(rgba[..., :3] * 255).astype(np.uint8), limit


def mask_picture(mask: np.ndarray) -> np.ndarray:
    """A mask (H, W), true = used, as a grey picture (used white, left out dark)."""
    m = np.asarray(mask, dtype=bool)
    return np.where(m[..., None], 255, 40).astype(np.uint8).repeat(3, axis=-1)


def shrink(img: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """``img`` (H, W, 3) uint8 shrunk to at most ``max_side`` pixels on its
    longest side (Lanczos); unchanged when smaller."""
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    from PIL import Image

    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.LANCZOS))


def png_bytes(img: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG file contents."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_png(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write (H, W, 3) uint8 as a PNG (shrunk to :data:`MAX_SIDE`), making folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(shrink(img)))
    return path


def read_png(path: str | os.PathLike) -> np.ndarray:
    """A PNG/JPEG as (H, W, 3) uint8."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def signed_difference(render: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """render - photo, averaged over colour channels, (H, W): positive where
    the render is brighter."""
    r = np.asarray(render, dtype=np.float64)[..., :3]
    p = np.asarray(photo, dtype=np.float64)[..., :3]
    return (r - p).mean(axis=-1)
