"""Photos of synthetic scene folders: clean renders of truth.xml, and simulated
real captures (the effects themselves are in :mod:`invpbr.capture.simulate`)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from ..capture import images as io
from ..capture.cameras import camera_from_sensor, sensor_ids, write_transforms
from ..capture.simulate import (CAMERA_FILES, FORMATS, MARKER, NOISE_FLOOR, check_number,
                                draw_gains, is_simulated, perturb_camera, write_jpeg)


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
        (:func:`invpbr.capture.cameras.sensor_ids`) and one linear RGB float32 array (H, W, 3) each.

    Raises:
        FileNotFoundError: no such scene file.
        ValueError: Mitsuba cannot load it.
    """
    from ..backend import init_backend
    from ..problem.scene import load_scene

    init_backend(variant)
    import mitsuba as mi

    scene = load_scene(Path(folder) / source)
    integrator = scene.integrator() or mi.load_dict({"type": "path"})
    images = []
    for i in range(len(scene.sensors())):
        image = mi.render(scene, sensor=i, integrator=integrator, spp=int(spp), seed=i)
        images.append(np.array(image.numpy()[..., :3], dtype=np.float32))
    return scene, sensor_ids(scene), images



def render_photos(folder, *, spp: int = 256, suffix: str = ".exr", variant: str | None = None,
                  source: str = "truth.xml") -> list:
    """Render a scene folder's truth into ``photos/`` (synthetic scenes).

    Args:
        folder: the scene folder.
        spp: samples per pixel.
        suffix: ``.exr`` (linear float) or ``.png`` (8-bit sRGB).
        variant: Mitsuba variant (default: automatic).
        source: the scene file to render, relative to ``folder``.

    Returns:
        The written photo paths, one per sensor, named by sensor id.
    """
    folder = Path(folder)
    _, ids, images = render_clean(folder, spp=spp, variant=variant, source=source)
    # all rendered before any is written
    return [io.save_image(folder / "photos" / f"{sid}{suffix}", image)
            for sid, image in zip(ids, images)]


def check_simulation(*, spp, format, jpeg_quality, seed, noise, exposure, white_balance,
                     perturb_rotation, perturb_translation) -> tuple[float, ...]:
    """Check :func:`simulate_capture`'s arguments; the five effect sizes as floats.

    Raises:
        ValueError: an unknown format or an argument out of range (named).
        TypeError: an argument that is not a number.
    """
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
    noise = check_number("noise", noise)
    exposure = check_number("exposure", exposure)
    white_balance = check_number("white_balance", white_balance)
    perturb_rotation = check_number("perturb_rotation", perturb_rotation, high=180.0)
    perturb_translation = check_number("perturb_translation", perturb_translation)
    return noise, exposure, white_balance, perturb_rotation, perturb_translation


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
    folder = Path(folder)
    noise, exposure, white_balance, perturb_rotation, perturb_translation = check_simulation(
        spp=spp, format=format, jpeg_quality=jpeg_quality, seed=seed, noise=noise,
        exposure=exposure, white_balance=white_balance, perturb_rotation=perturb_rotation,
        perturb_translation=perturb_translation)
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
            written.append(write_jpeg(path, image, jpeg_quality))
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
            if (folder / name).is_file() and is_simulated(folder / name):
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
