"""A capture simulator: "real" photos of a synthetic scene folder, made from its truth.xml.

Real photo sets differ from clean renders in ways invpbr must cope with. This module renders
the truth and then, per photo and in this order (all seeded):

1. **Gain** (exposure and white balance), per photo and colour channel, on the linear image:
   ``log g[p, c] = ln(2) * e[p] + w[p, c]`` with ``e[p] ~ N(0, exposure)`` (stops, shared by
   the channels) and ``w[p, c] ~ N(0, white_balance)`` (natural log), then shifted so that
   the geometric mean over the photos of each channel's gain is exactly 1. That is the gauge
   invpbr uses for unknown gains: a common factor of all photos cannot be told from the
   scene's own brightness (with one photo every gain is 1).
2. **Sensor noise**, Gaussian approximation of Poisson-Gaussian noise, independent per pixel
   and channel: ``x + noise * sqrt(max(x, 0) + NOISE_FLOOR) * N(0, 1)`` where ``x`` is the
   linear value after the gain. ``noise`` is the noise std at value 1 (shot noise, variance
   proportional to the signal); ``NOISE_FLOOR`` adds signal-independent read noise, std
   ``noise * sqrt(NOISE_FLOOR)`` in black regions. The noise is drawn after the gain, as
   if the whole gain were exposure (a camera's white balance, applied after readout, would
   scale the noise too; the difference does not matter for tests).
3. **Encoding**: ``exr``: linear float32, neither clipped nor quantized (negative values
   from the noise are kept: unbiased, like a raw file's black-level-subtracted data);
   ``png``: clipped to [0, 1] (saturation), 8-bit sRGB (Mitsuba's converter dithers: each
   code is within one of the exact value, unbiased); ``jpg``: the same, then JPEG at
   ``jpeg_quality``.

Camera files (with ``photos/<sensor id>.<ext>`` as each frame's file_path) are written
when gains or perturbations are asked (any of exposure, white_balance, perturb_rotation,
perturb_translation nonzero), or always with ``write_cameras=True``:

- ``transforms_truth.json``: the true cameras of truth.xml's sensors, each frame with
  ``"gain": [r, g, b]``, and a top-level ``"invpbr_simulated"`` record of the settings;
- ``transforms.json``: every camera perturbed (rotated about its centre by exactly
  ``perturb_rotation`` degrees around a random axis, moved by exactly ``perturb_translation``
  times the truth scene's bounding-box diagonal in a random direction); no gains: what a
  structure-from-motion tool would have found.

When neither is asked, ``invpbr render`` writes photos only, as before, and removes camera
files that an earlier simulation wrote (those with the ``"invpbr_simulated"`` record), since
their gains would no longer describe the photos.

The Monte Carlo render itself uses sensor i's seed i whatever ``seed`` is (the clean images
are those of :func:`invpbr.render.photos.render_photos`); ``seed`` drives the simulated effects.
Gains, perturbations and noise draw from separate streams, so turning one on does not
change the others.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

#: Output formats and their suffixes.
FORMATS = {"exr": ".exr", "png": ".png", "jpg": ".jpg"}

#: Signal-independent part of the noise variance, in units of linear value (see the module).
NOISE_FLOOR = 1e-2

#: Top-level key of the camera files this module writes (settings of the simulation).
MARKER = "invpbr_simulated"

CAMERA_FILES = ("transforms_truth.json", "transforms.json")


def draw_gains(n_photos: int, *, exposure: float = 0.0, white_balance: float = 0.0,
               rng: np.random.Generator) -> np.ndarray:
    """Per-photo, per-channel linear gains (see the module), geometric mean 1 per channel.

    Args:
        n_photos: number of photos.
        exposure: std of the exposure change, stops (log2), shared by the channels.
        white_balance: std of each channel's log gain (natural log).
        rng: the random generator.

    Returns:
        (n_photos, 3) float64, all 1 when both stds are 0.
    """
    e = rng.normal(0.0, 1.0, size=(n_photos, 1)) * exposure * math.log(2.0)
    w = rng.normal(0.0, 1.0, size=(n_photos, 3)) * white_balance
    log_gain = e + w
    log_gain -= log_gain.mean(axis=0, keepdims=True)
    return np.exp(log_gain)


def random_rotation(angle_deg: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A rotation by exactly ``angle_deg`` about an axis uniform on the sphere.

    Returns:
        ``(R, axis)``: (3, 3) rotation matrix (Rodrigues) and the unit axis (3,).
    """
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = math.radians(angle_deg)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]],
                  [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(a) * k + (1.0 - math.cos(a)) * (k @ k), axis


def perturb_camera(camera, rotation_deg: float, translation: float,
                   rng: np.random.Generator):
    """``camera`` rotated about its centre and moved, as a pose error of calibration.

    The rotation (``rotation_deg`` about a random axis) is applied in world space about the
    camera centre, so the angle between the true and perturbed rotations is exactly
    ``rotation_deg``; the centre then moves by ``translation`` (world units) in a random
    direction.

    Returns:
        ``(camera, info)``: the perturbed camera and ``{"rotation_deg", "axis",
        "translation"}`` (the axis and the translation vector as lists).
    """
    from dataclasses import replace

    r, axis = random_rotation(rotation_deg, rng)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    c2w = np.array(camera.c2w, dtype=np.float64)
    c2w[:3, :3] = r @ c2w[:3, :3]
    c2w[:3, 3] += translation * direction
    info = {"rotation_deg": float(rotation_deg), "axis": axis.tolist(),
            "translation": (translation * direction).tolist()}
    return replace(camera, c2w=c2w), info


def check_number(name: str, value, *, low: float = 0.0, high: float = math.inf) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"simulate_capture(): {name} = {value!r}; expected a number") from None
    if not math.isfinite(v) or v < low or v > high:
        bound = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise ValueError(f"simulate_capture(): {name} = {value!r}; expected a number {bound}")
    return v


def write_jpeg(path: Path, image: np.ndarray, quality: int) -> Path:
    """Write linear RGB ``image`` as an sRGB JPEG of ``quality`` (1-100), atomically."""
    import mitsuba as mi

    from .images import atomic_write

    img = np.ascontiguousarray(np.clip(np.nan_to_num(image), 0.0, 1.0), dtype=np.float32)
    bmp = mi.Bitmap(img).convert(mi.Bitmap.PixelFormat.RGB, mi.Struct.Type.UInt8,
                                 srgb_gamma=True)
    atomic_write(path, lambda tmp: bmp.write(tmp, quality=int(quality)))
    return path


def is_simulated(path: Path) -> bool:
    """Whether a camera file was written by this simulator (it carries the marker)."""
    try:
        return MARKER in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return False
