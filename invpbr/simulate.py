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
are those of :func:`invpbr.render.render_photos`); ``seed`` drives the simulated effects.
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


def render_clean(folder, *, spp: int = 256, variant: str | None = None,
                 source: str = "truth.xml"):
    """Render every sensor of a scene folder's truth, noise-free but for Monte Carlo noise.

    Uses the scene's integrator (``path`` when it has none) and seed i for sensor i.

    Args:
        folder: the scene folder.
        spp: samples per pixel.
        variant: Mitsuba variant (default: automatic).
        source: the scene file, relative to ``folder``.

    Returns:
        ``(scene, ids, images)``: the loaded Mitsuba scene, the sensor ids
        (:func:`invpbr.problem.sensor_ids`) and one linear RGB float32 array (H, W, 3) each.

    Raises:
        FileNotFoundError: no such scene file.
        ValueError: Mitsuba cannot load it.
    """
    from .backend import init_backend
    from .problem import load_scene, sensor_ids

    init_backend(variant)
    import mitsuba as mi

    scene = load_scene(Path(folder) / source)
    integrator = scene.integrator() or mi.load_dict({"type": "path"})
    images = []
    for i in range(len(scene.sensors())):
        image = mi.render(scene, sensor=i, integrator=integrator, spp=int(spp), seed=i)
        images.append(np.array(image.numpy()[..., :3], dtype=np.float32))
    return scene, sensor_ids(scene), images


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


def _check_number(name: str, value, *, low: float = 0.0, high: float = math.inf) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"simulate_capture(): {name} = {value!r}; expected a number") from None
    if not math.isfinite(v) or v < low or v > high:
        bound = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise ValueError(f"simulate_capture(): {name} = {value!r}; expected a number {bound}")
    return v


def _write_jpeg(path: Path, image: np.ndarray, quality: int) -> Path:
    import mitsuba as mi

    from .io import _atomic_write

    img = np.ascontiguousarray(np.clip(np.nan_to_num(image), 0.0, 1.0), dtype=np.float32)
    bmp = mi.Bitmap(img).convert(mi.Bitmap.PixelFormat.RGB, mi.Struct.Type.UInt8,
                                 srgb_gamma=True)
    _atomic_write(path, lambda tmp: bmp.write(tmp, quality=int(quality)))
    return path


def _is_simulated(path: Path) -> bool:
    try:
        return MARKER in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return False


def simulate_capture(folder, *, spp: int = 256, format: str = "exr", jpeg_quality: int = 90,
                     noise: float = 0.0, exposure: float = 0.0, white_balance: float = 0.0,
                     perturb_rotation: float = 0.0, perturb_translation: float = 0.0,
                     seed: int = 0, variant: str | None = None,
                     write_cameras: bool | None = None) -> dict:
    """Render a synthetic scene folder's truth.xml into simulated real photos (see the module
    for the models) in ``folder/photos/``, and the camera files.

    Args:
        folder: the scene folder (with truth.xml).
        spp: samples per pixel of the render.
        format: ``"exr"`` (linear float), ``"png"`` (8-bit sRGB) or ``"jpg"`` (JPEG, sRGB).
        jpeg_quality: JPEG quality, 1 to 100 (jpg only).
        noise: sensor noise std at linear value 1 (0: none).
        exposure: std of each photo's exposure change, stops.
        white_balance: std of each photo's per-channel log gain (natural log).
        perturb_rotation: rotation error of every camera in transforms.json, degrees (exact).
        perturb_translation: position error of every camera in transforms.json, as a
            fraction of the truth scene's bounding-box diagonal (exact).
        seed: seed of gains, perturbations and noise.
        variant: Mitsuba variant (default: automatic).
        write_cameras: write the camera files (None: when gains or perturbations are asked).

    Returns:
        A dict: ``photos`` (written paths, in sensor order), ``gains`` ({sensor id: [r, g, b]}),
        ``perturbations`` ({sensor id: {"rotation_deg", "axis", "translation"}}, translation
        in world units), ``transforms_truth`` and ``transforms`` (paths, or None when not
        written), ``removed`` (stale camera files deleted), ``scene_diagonal`` (world units)
        and ``settings`` (the arguments, as recorded in transforms_truth.json).

    Raises:
        FileNotFoundError: the folder has no truth.xml.
        ValueError: an unknown format or an argument out of range (the message names it), or
            perturb_translation > 0 for a scene without shapes (no bounding box).
        TypeError: an argument that is not a number.
    """
    from . import io
    from .cameras import camera_from_sensor, write_transforms

    folder = Path(folder)
    if format not in FORMATS:
        raise ValueError(f"simulate_capture(): format = {format!r}; expected one of "
                         f"{', '.join(map(repr, FORMATS))}")
    if isinstance(spp, bool) or not isinstance(spp, (int, np.integer)) or spp < 1:
        raise ValueError(f"simulate_capture(): spp = {spp!r}; expected an integer >= 1")
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, (int, np.integer)) \
            or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"simulate_capture(): jpeg_quality = {jpeg_quality!r}; expected an "
                         "integer in [1, 100]")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"simulate_capture(): seed = {seed!r}; expected an integer >= 0")
    noise = _check_number("noise", noise)
    exposure = _check_number("exposure", exposure)
    white_balance = _check_number("white_balance", white_balance)
    perturb_rotation = _check_number("perturb_rotation", perturb_rotation, high=180.0)
    perturb_translation = _check_number("perturb_translation", perturb_translation)
    truth = folder / "truth.xml"
    if not truth.is_file():
        raise FileNotFoundError(f"{truth}: no such file; simulate_capture() makes photos of "
                                "synthetic scenes from their truth.xml")
    if write_cameras is None:
        write_cameras = any(v > 0 for v in (exposure, white_balance, perturb_rotation,
                                            perturb_translation))
    settings = {"spp": int(spp), "format": format, "noise": noise, "exposure": exposure,
                "white_balance": white_balance, "perturb_rotation": perturb_rotation,
                "perturb_translation": perturb_translation, "seed": int(seed)}
    if format == "jpg":
        settings["jpeg_quality"] = int(jpeg_quality)

    scene, ids, images = render_clean(folder, spp=spp, variant=variant)
    bbox = scene.bbox()
    diagonal = float(np.linalg.norm(np.array(bbox.max) - np.array(bbox.min))) \
        if bbox.valid() else float("nan")
    if perturb_translation > 0 and not math.isfinite(diagonal):
        raise ValueError(f"simulate_capture(): {truth} has no shapes, so no bounding box to "
                         "scale perturb_translation by")

    gain_rng, perturb_rng, noise_rng = (np.random.default_rng(s) for s in
                                        np.random.SeedSequence(int(seed)).spawn(3))
    gains = draw_gains(len(ids), exposure=exposure, white_balance=white_balance, rng=gain_rng)
    suffix = FORMATS[format]
    photos_dir = folder / "photos"
    outputs = []
    for i, sid in enumerate(ids):
        x = images[i].astype(np.float64) * gains[i]
        if noise > 0:
            x = x + noise * np.sqrt(np.maximum(x, 0.0) + NOISE_FLOOR) \
                * noise_rng.standard_normal(x.shape)
        outputs.append((photos_dir / f"{sid}{suffix}", x.astype(np.float32)))
    written = []
    for path, image in outputs:  # all rendered before any is written
        if format == "jpg":
            written.append(_write_jpeg(path, image, jpeg_quality))
        else:
            written.append(io.save_image(path, image))  # png: clipped, 8-bit sRGB

    others = sorted(p.name for p in photos_dir.iterdir()
                    if p.stem in ids and p.suffix.lower() in io.PHOTO_SUFFIXES
                    and p not in written)
    if others:
        warnings.warn(f"{photos_dir}: also holds {', '.join(others)} for the same sensors; "
                      "remove them, or invpbr will refuse two photos of one sensor",
                      stacklevel=2)

    result = {"photos": written, "gains": {sid: gains[i].tolist() for i, sid in enumerate(ids)},
              "perturbations": {}, "transforms_truth": None, "transforms": None,
              "removed": [], "scene_diagonal": diagonal, "settings": settings}
    if not write_cameras:
        for name in CAMERA_FILES:
            if (folder / name).is_file() and _is_simulated(folder / name):
                (folder / name).unlink()
                result["removed"].append(folder / name)
        return result

    true_cameras = [camera_from_sensor(sensor, sid, file_path=path)
                    for sensor, sid, path in zip(scene.sensors(), ids, written)]
    shift = perturb_translation * diagonal if perturb_translation > 0 else 0.0
    perturbed = []
    for cam in true_cameras:
        moved, info = perturb_camera(cam, perturb_rotation, shift, perturb_rng)
        perturbed.append(moved)
        result["perturbations"][cam.id] = info
    record = {MARKER: {**settings, "scene_diagonal": diagonal}}
    result["transforms_truth"] = write_transforms(
        folder / "transforms_truth.json", true_cameras,
        extra={sid: {"gain": g} for sid, g in result["gains"].items()}, top=record)
    result["transforms"] = write_transforms(folder / "transforms.json", perturbed, top=record)
    return result
