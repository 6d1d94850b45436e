"""Images on disk: photos, masks, renders and textures.

Every image in invpbr's memory is a float32 numpy array (H, W, C) of *linear*
values. On disk: EXR and HDR are linear; PNG and JPEG are sRGB-encoded (8 or
16 bit) and are decoded to linear when read and encoded when written.
Reading and writing go through ``mi.Bitmap``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

PHOTO_SUFFIXES = (".exr", ".hdr", ".png", ".jpg", ".jpeg")
LINEAR_SUFFIXES = (".exr", ".hdr")


def _bitmap(path: Path):
    import mitsuba as mi

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    if path.suffix.lower() not in PHOTO_SUFFIXES:
        raise ValueError(f"{path}: unsupported image format {path.suffix!r}; "
                         f"expected one of {', '.join(PHOTO_SUFFIXES)}")
    try:
        return mi.Bitmap(str(path))
    except Exception as e:  # Mitsuba raises RuntimeError with its own text
        raise ValueError(f"{path}: cannot be read as an image: {e}") from None


def load_image(path: str | os.PathLike, *, channels: int = 3) -> np.ndarray:
    """Read an image as linear float32.

    Args:
        path: EXR/HDR (linear) or PNG/JPEG (sRGB, 8 or 16 bit).
        channels: 3 for RGB (grey images are repeated, alpha dropped),
            1 for luminance-free single channel (first channel).

    Returns:
        Linear values, (H, W, channels) float32.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an image Mitsuba can read, or non-finite values
            (the message gives the file and how many pixels).
    """
    import mitsuba as mi

    path = Path(path)
    bmp = _bitmap(path)
    n = bmp.channel_count()
    fmt = mi.Bitmap.PixelFormat
    if channels == 1:
        pixel_format = fmt.Y if n in (1, 2) else fmt.RGB
    else:
        pixel_format = fmt.RGB
    return _linear(bmp, path, pixel_format, channels=channels)


def _linear(bmp, path: Path, pixel_format, *, channels: int | None = None) -> np.ndarray:
    """The bitmap converted to float32 linear values, (H, W, C) (the first ``channels``);
    refuses NaN/inf in them."""
    import mitsuba as mi

    # srgb_gamma=False: decode to linear (a no-op for EXR/HDR, which are linear).
    arr = np.array(bmp.convert(pixel_format, mi.Struct.Type.Float32, srgb_gamma=False),
                   dtype=np.float32, copy=True)
    if arr.ndim == 2:
        arr = arr[..., None]
    if channels is not None:
        arr = arr[..., :channels]
    bad = ~np.isfinite(arr).all(axis=-1)
    if bad.any():
        y, x = np.argwhere(bad)[0]
        raise ValueError(f"{path}: {int(bad.sum())} pixel(s) are NaN or infinite "
                         f"(first at x={x}, y={y})")
    return arr


def load_alpha(path: str | os.PathLike) -> np.ndarray | None:
    """The alpha channel of an image as (H, W) float32 in [0, 1], or None."""
    import mitsuba as mi

    path = Path(path)
    bmp = _bitmap(path)
    if not bmp.has_alpha():
        return None
    rgba = np.array(bmp.convert(mi.Bitmap.PixelFormat.RGBA, mi.Struct.Type.Float32,
                                srgb_gamma=False), dtype=np.float32)
    return rgba[..., 3]


#: Alpha above which load_photo's mask marks a pixel as part of the photo.
ALPHA_THRESHOLD = 0.5


def load_photo(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a photo and the mask its alpha channel gives, if it has one.

    Colour with alpha: Mitsuba's Bitmap never premultiplies nor divides when it converts
    or drops alpha; it returns the RGB as the file stores it. PNG stores straight
    (unassociated) colour, so a transparent pixel keeps its RGB (often the original
    background, or anything the matting tool left). OpenEXR stores premultiplied colour
    (Mitsuba flags every EXR it reads as premultiplied, and its own ``rgba`` films write
    R = alpha * colour). Here the RGB is always straight colour: PNG as stored; EXR
    divided by alpha where alpha > 0. Pixels with alpha <= ALPHA_THRESHOLD are outside the
    mask, so their colour should not be used.

    Args:
        path: EXR/HDR (linear) or PNG/JPEG (sRGB, 8 or 16 bit); RGB, RGBA, grey or grey +
            alpha.

    Returns:
        (rgb, mask): rgb, linear RGB (H, W, 3) float32 (grey repeated); mask, (H, W) bool,
        alpha > ALPHA_THRESHOLD, or None when the file has no alpha channel.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an image Mitsuba can read, or non-finite values.
    """
    import mitsuba as mi

    path = Path(path)
    bmp = _bitmap(path)
    if not bmp.has_alpha():
        return _linear(bmp, path, mi.Bitmap.PixelFormat.RGB), None
    rgba = _linear(bmp, path, mi.Bitmap.PixelFormat.RGBA)
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    if bmp.premultiplied_alpha() and path.suffix.lower() in LINEAR_SUFFIXES:
        covered = alpha > 0.0
        rgb[covered] /= alpha[covered, None]
    return np.ascontiguousarray(rgb), alpha > ALPHA_THRESHOLD


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask: white (> 0.5 after decoding) marks pixels to use.

    Returns:
        (H, W) bool.
    """
    img = load_image(path, channels=3)
    # 0.214 is sRGB's mid grey (0.5 encoded) decoded to linear.
    threshold = 0.5 if Path(path).suffix.lower() in LINEAR_SUFFIXES else 0.214
    return img.mean(axis=-1) > threshold


def resize_image(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resample a linear image to (height, width) with Mitsuba's Lanczos filter.

    When downsampling, ``mi.Bitmap.resample`` widens the filter by the scale factor, so
    detail finer than the new pixels is averaged away, not aliased: a checkerboard of
    1-pixel squares, 256x256 to 16x16 (or to 15x17), gives 0.5 +- 0.005 everywhere
    (tests/test_io.py). Pixel centres stay aligned (pixel (0, 0)'s corner is fixed, as in
    :mod:`invpbr.capture.cameras`). Lanczos rings: near sharp edges values can overshoot the
    input's range by a few percent (slightly negative next to black).

    Args:
        img: linear values, (H, W, C) (or (H, W)); C channels resampled independently.
        width: new width in pixels.
        height: new height in pixels.

    Returns:
        (height, width, C) float32.
    """
    import mitsuba as mi

    img = np.ascontiguousarray(img, dtype=np.float32)
    bmp = mi.Bitmap(img)
    out = np.array(bmp.resample([int(width), int(height)]), dtype=np.float32)
    if out.ndim == 2:
        out = out[..., None]
    return out


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): the fraction of output pixel i's extent covered by input pixel j."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / (n_in / n_out)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a bool mask: a new pixel is True when more than half its area was True.

    Exact area coverage (box filter over each new pixel's footprint, fractional pixels
    weighted by overlap), for any factor, up or down; pixel (0, 0)'s corner stays fixed as
    in :func:`resize_image`.

    Args:
        mask: (H, W) bool (or anything nonzero = True).
        width: new width in pixels.
        height: new height in pixels.

    Returns:
        (height, width) bool.

    Raises:
        ValueError: mask is not 2-D, or width/height is not positive.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"resize_mask(): mask has shape {mask.shape}, expected (H, W)")
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"resize_mask(): size {width}x{height} must be positive")
    wy = _area_weights(mask.shape[0], int(height))
    wx = _area_weights(mask.shape[1], int(width))
    coverage = wy @ (mask != 0).astype(np.float64) @ wx.T
    # 1e-9: coverage of exactly one half (0.5 up to rounding) is not "more than half".
    return coverage > 0.5 + 1e-9


def atomic_write(path: Path, write) -> None:
    """Write ``path`` whole or not at all: ``write(tmp)`` writes a temporary file
    beside it, which is then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent, prefix=".tmp-")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_image(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write a linear image; PNG/JPEG are sRGB-encoded 8 bit, EXR float32.

    Args:
        path: destination; the suffix picks the format.
        img: linear values, (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (RGBA:
            the alpha channel is stored linear, also in PNG).

    The file appears whole or not at all (written beside it, then renamed).
    """
    import mitsuba as mi

    path = Path(path)
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 2:
        img = img[..., None]
    suffix = path.suffix.lower()
    if suffix not in PHOTO_SUFFIXES:
        raise ValueError(f"{path}: unsupported image format {path.suffix!r}")
    formats = {1: mi.Bitmap.PixelFormat.Y, 3: mi.Bitmap.PixelFormat.RGB,
               4: mi.Bitmap.PixelFormat.RGBA}
    if img.shape[-1] not in formats:
        raise ValueError(f"{path}: cannot write an image with {img.shape[-1]} channels "
                         "(1, 3 or 4)")
    fmt = formats[img.shape[-1]]
    bmp = mi.Bitmap(np.ascontiguousarray(img), pixel_format=fmt)
    if suffix in (".png", ".jpg", ".jpeg"):
        img = np.clip(np.nan_to_num(img), 0.0, 1.0)
        bmp = mi.Bitmap(np.ascontiguousarray(img), pixel_format=fmt).convert(
            fmt, mi.Struct.Type.UInt8, srgb_gamma=True)
    atomic_write(path, lambda tmp: bmp.write(tmp))
    return path
