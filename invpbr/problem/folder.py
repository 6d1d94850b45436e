"""A scene folder loaded into a :class:`Problem`.

::

    scenes/<name>/
      scene.xml      the model (initial guesses); its sensors are the cameras
      invpbr.toml    what to estimate and how
      photos/        one image per sensor, by sensor id or by sorted order
      masks/         optional, same names; white = use the pixel
      truth.xml      optional ground truth (synthetic scenes)

or, with ``[cameras] file = "transforms.json"`` (or a COLMAP model, LLFF
poses) in invpbr.toml, the camera file's frames replace scene.xml's sensors
and name the photos (see :mod:`invpbr.capture`).
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import init_backend
from ..capture import images as io
from ..capture.cameras import sensor_ids
from ..config import ProblemConfig, load_config
from ..estimates import Estimate, implied_estimates, resolve_estimates
from ..estimates.lighting import envmap_texels
from ..estimates.meshes import scene_numpy
from .scene import (load_scene, load_scene_text, mesh_analytic_shapes, parse_xml, scene_text,
                    sensors_text)


@dataclass
class View:
    """One photo and the sensor that took it.

    Attributes:
        index: index of the sensor in ``scene.sensors()``.
        id: the sensor's id (or ``sensor_<index>`` if it has none).
        photo_path: the photo's file.
        photo: linear RGB, (H, W, 3) float32.
        mask: pixels to use, (H, W) bool, or None for all.
        held_out: not fitted; used to measure novel-view error
            (``[evaluate] held_out`` in invpbr.toml).
        camera: the pinhole camera of the photo, at the working resolution,
            when it came from a camera file (``[cameras] file``).
        clipped: the channels the camera clipped, (H, W, 3) bool, within the
            pixels the mask had before :func:`mask_saturated` took them out of it
            (None: none).
    """

    index: int
    id: str
    photo_path: Path | None
    photo: np.ndarray
    mask: np.ndarray | None = None
    held_out: bool = False
    camera: Any = None
    clipped: np.ndarray | None = None

    def clipped_channels(self) -> np.ndarray | None:
        """The channels whose photo values say only that the scene reached them (H, W,
        3) bool, or None: the clipped ones, and in a JPEG every channel of a pixel with
        one clipped (see :meth:`loss_pixels`)."""
        if self.clipped is None:
            return None
        if self.photo_path is not None and self.photo_path.suffix.lower() in (".jpg", ".jpeg"):
            return np.broadcast_to(self.clipped.any(axis=-1, keepdims=True), self.clipped.shape)
        return self.clipped

    def loss_pixels(self, bound: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The pixels a loss compares, (H, W) bool or None for all, and the ceiling of
        the renders, (H, W, 3) float32 or None: a render is compared with the photo as
        ``minimum(render, ceiling)``. ``bound`` (``[photos] clipped = "bound"``): the
        clipped pixels count, with the photo's value as the ceiling of their clipped
        channels (of every channel of such a pixel in a JPEG; elsewhere infinite), so
        that only a render darker than the photo there differs from it; otherwise
        they are left out (the mask).

        Every channel in a JPEG: its colour subsampling and compression mix the
        channels, so next to a clipped channel the others cannot be trusted either. In
        scenes/real_capture's JPEGs, the unclipped channels of partly clipped pixels of
        the brightest photo were 0.25 darker than the truth renders on average (its sky,
        clipped in every channel but compressed below the threshold in some); counted
        as plain values they pulled its gain 3 % low. In a PNG the channels are apart,
        and bounding them all would bias upward what the clipped ones do not say
        (``tests/test_clipped.py``)."""
        if not bound or self.clipped is None:
            return self.mask, None
        clipped = self.clipped_channels()
        mask = self.mask | clipped.any(axis=-1)
        ceiling = np.where(clipped, self.photo[..., :3], np.inf).astype(np.float32)
        return (None if mask.all() else mask), ceiling


@dataclass
class Problem:
    """Everything an optimization needs; every field may be changed in Python.

    Attributes:
        folder: the scene folder (None when built in Python).
        config: the problem settings (``invpbr.toml``).
        scene: the Mitsuba model scene (``scene.xml``).
        params: ``mi.traverse(scene)``.
        parameters: the estimates of the ``[[estimate]]`` tables (see
            :mod:`invpbr.estimates`); :attr:`estimates` adds those other tables
            imply (``[photos] gain``...).
        views: photos with their sensors.
        truth: key -> true value (numpy), from truth.xml, for the estimated keys.
        truth_scene: the truth.xml scene, if any.
        relight_maps: environment maps for relighting evaluation, file -> texels.
        true_cameras: sensor id -> true camera-to-world (4, 4), OpenCV
            convention (see :mod:`invpbr.capture.cameras`), for camera errors.
        true_gains: sensor id -> true per-channel gain of the photo, for gain errors.
    """

    folder: Path | None
    config: ProblemConfig
    scene: Any
    params: Any
    parameters: list[Estimate]
    views: list[View]
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    truth_scene: Any = None
    relight_maps: dict[str, np.ndarray] = field(default_factory=dict)
    true_cameras: dict[str, np.ndarray] = field(default_factory=dict)
    true_gains: dict[str, np.ndarray] = field(default_factory=dict)
    #: the model scene's XML as loaded (camera-file sensors included): what a
    #: result folder's scene.xml starts from
    scene_xml: str = ""
    #: relighting envmap -> truth.xml relit and rendered from every sensor (a cache of
    #: :func:`invpbr.results.evaluate.relit_truth`)
    relit_truth_renders: dict[str, list] = field(default_factory=dict, repr=False)

    def clipped_bounds(self) -> bool:
        """Whether the loss counts clipped channels as lower bounds (:meth:`View.loss_pixels`):
        ``[photos] clipped`` = ``bound`` or ``mask``, or ``auto``: bounds where an estimate
        asks for them (cameras) and none refuses (a posed light); see
        :meth:`Estimate.clipped_as_bounds <invpbr.estimates.base.Estimate.clipped_as_bounds>`."""
        mode = self.config.photos.clipped
        if mode != "auto":
            return mode == "bound"
        votes = [e.clipped_as_bounds(self) for e in self.parameters]
        return True in votes and False not in votes

    @property
    def name(self) -> str:
        return self.folder.resolve().name if self.folder is not None else "problem"

    @property
    def source(self) -> Path | str:
        """The file named in messages about the problem's settings."""
        return self.folder / "invpbr.toml" if self.folder else "config"

    @property
    def estimates(self) -> list[Estimate]:
        """Everything the optimizer estimates: :attr:`parameters` and the
        estimates other tables imply for the current ``config`` (each access
        makes those anew: change ``config`` in Python and they follow)."""
        return self.parameters + implied_estimates(self.config, self.params, source=self.source,
                                                   sensor_ids=sensor_ids(self.scene))

    def refresh_parameters(self) -> None:
        """Re-resolve ``config.estimate`` after changing it in Python."""
        self.parameters = resolve_estimates(self.params, self.config.estimate,
                                            source=self.source, sensor_ids=sensor_ids(self.scene))
        if self.truth_scene is not None:
            self.truth = load_truth(self.folder / "truth.xml", [k for p in self.parameters for k in p.truth_keys],
                                    self.truth_scene)


def _images_in(folder: Path) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in io.PHOTO_SUFFIXES)
    by_stem: dict[str, Path] = {}
    for p in files:
        if p.stem in by_stem:
            raise ValueError(f"{folder}: two images for {p.stem!r}: {by_stem[p.stem].name} and {p.name}")
        by_stem[p.stem] = p
    return by_stem


def match_photos(ids: list[str], folder: Path) -> list[Path]:
    """Photo file for each sensor id: by name, else by sorted order.

    Raises:
        FileNotFoundError: no photos/ folder, or photos missing for some sensors.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no photos folder (one image per sensor: "
                                f"{', '.join(i + '.png' for i in ids)})")
    images = _images_in(folder)
    named = [i for i in ids if i in images]
    if len(named) == len(ids):
        return [images[i] for i in ids]
    if not named and len(images) == len(ids):
        return list(images.values())
    missing = [i for i in ids if i not in images]
    raise FileNotFoundError(
        f"{folder}: no photo for sensor(s) {', '.join(map(repr, missing))}; found "
        f"{', '.join(p.name for p in images.values()) or 'no images'} "
        f"(photos are matched by sensor id, or by sorted order when no name matches "
        f"and there is one per sensor)")


def load_views(scene, folder: Path, *, resize: bool = False) -> list[View]:
    """Photos (and masks) of a scene folder, one per sensor of ``scene``."""
    ids = sensor_ids(scene)
    photos = match_photos(ids, folder / "photos")
    masks_dir = folder / "masks"
    masks = _images_in(masks_dir) if masks_dir.is_dir() else {}
    views = []
    for i, (sid, path) in enumerate(zip(ids, photos)):
        w, h = (int(v) for v in scene.sensors()[i].film().crop_size())
        photo = io.load_image(path)
        if photo.shape[:2] != (h, w):
            if not resize:
                raise ValueError(
                    f"{path}: photo is {photo.shape[1]}x{photo.shape[0]} but sensor {sid!r} renders "
                    f"{w}x{h}; resize the photo, change the film, or set [photos] resize = true")
            warnings.warn(f"{path}: resized from {photo.shape[1]}x{photo.shape[0]} to {w}x{h} "
                          f"for sensor {sid!r}", stacklevel=2)
            photo = io.resize_image(photo, w, h)
        mask = None
        mask_path = masks.get(path.stem) or masks.get(sid)
        if mask_path is not None:
            mask = io.load_mask(mask_path)
            if mask.shape != (h, w):
                if not resize:
                    raise ValueError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but "
                                     f"sensor {sid!r} renders {w}x{h}")
                mask = io.resize_image(mask[..., None].astype(np.float32), w, h)[..., 0] > 0.5
            if not mask.any():
                raise ValueError(f"{mask_path}: mask selects no pixel")
        views.append(View(index=i, id=sid, photo_path=path, photo=photo, mask=mask))
    return views


def mask_saturated(views: list[View], saturation: float) -> None:
    """Leave clipped pixels of 8-bit (PNG/JPEG) photos out of their views' masks:
    those with a channel at or above the linear value ``saturation`` (0: none); the
    clipped channels are kept in ``View.clipped`` (see :meth:`View.loss_pixels`).

    Raises:
        ValueError: every pixel of a photo is clipped.
    """
    if saturation <= 0:
        return
    for v in views:
        if v.photo_path is None or v.photo_path.suffix.lower() in io.LINEAR_SUFFIXES:
            continue
        channels = v.photo[..., :3] >= saturation
        if v.mask is not None:
            channels &= v.mask[..., None]
        clipped = channels.any(axis=-1)
        if not clipped.any():
            continue
        keep = ~clipped if v.mask is None else v.mask & ~clipped
        if not keep.any():
            raise ValueError(f"{v.photo_path}: every pixel is clipped (>= {saturation:g}, "
                             "[photos] saturation); the photo is overexposed")
        v.mask, v.clipped = keep, channels


def mark_held_out(views: list[View], ids: list[str], *, source="invpbr.toml") -> None:
    """Flag the views named in ``ids`` as held out from fitting.

    Raises:
        ValueError: an id names no sensor, or every view would be held out.
    """
    known = {v.id for v in views}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(f"{source}: evaluate.held_out names unknown sensor(s) "
                         f"{', '.join(map(repr, unknown))}; sensors: {', '.join(sorted(known))}")
    for v in views:
        v.held_out = v.id in ids
    if views and all(v.held_out for v in views):
        raise ValueError(f"{source}: evaluate.held_out holds out every view; none is left to fit")


def load_truth(path: Path, keys: list[str], scene=None) -> dict[str, np.ndarray]:
    """True values of ``keys`` from a truth scene (keys it lacks are skipped
    with a warning); ``scene``: the scene already loaded from ``path``."""
    import mitsuba as mi

    truth_params = mi.traverse(scene if scene is not None else load_scene(path))
    truth = {}
    for key in keys:
        if key not in truth_params:
            warnings.warn(f"{path}: has no parameter {key!r}; its error is not reported", stacklevel=2)
            continue
        value = scene_numpy(truth_params, key)
        node = truth_params.properties[key][2]
        if key.endswith(".data") and node.class_name() == "EnvironmentMapEmitter":
            value = envmap_texels(value)  # without Mitsuba's halo columns, like the estimates
        truth[key] = value
    return truth


def load_relight_maps(folder: Path | None, files: list[str]) -> dict[str, np.ndarray]:
    """The relighting environment maps, file name -> texels (H, W, 3).

    Raises:
        FileNotFoundError: a file does not exist (named relative to the folder).
    """
    maps = {}
    for name in files:
        path = (folder / name) if folder is not None else Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (named in invpbr.toml evaluate.relight)")
        maps[name] = io.load_image(path)
    return maps



def load_problem(folder: str | Path, *, variant: str | None = None) -> Problem:
    """Load a scene folder into a :class:`Problem`.

    Args:
        folder: the scene folder (see the module docstring).
        variant: Mitsuba variant (default: automatic, see ``init_backend``).

    Raises:
        FileNotFoundError: the folder, scene.xml, invpbr.toml or photos are missing.
        ValueError: a file is malformed, a photo has the wrong size or NaNs, a key
            is unknown or not differentiable (messages name the file and key).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such scene folder")
    config = load_config(folder / "invpbr.toml")
    init_backend(variant)
    import mitsuba as mi  # only now: init_backend chooses the LLVM Dr.Jit loads

    frames, sensors = _camera_file_sensors(folder, config) if config.cameras.file else (None, None)
    scene, scene_xml = model_scene(
        folder, sensors, bitmap_format="float16" if config.optimize.precision == "half"
        else "variant", mesh_rectangles=any(t.kind == "camera" for t in config.estimate))
    params = mi.traverse(scene)
    parameters = resolve_estimates(params, config.estimate, source=folder / "invpbr.toml",
                                   sensor_ids=sensor_ids(scene))
    if any(p.moves_edges for p in parameters):
        from ..estimates.meshes import delta_light_warning

        reason = delta_light_warning(scene)
        if reason:
            warnings.warn(f"{folder / 'scene.xml'}: {reason}", stacklevel=2)
    if frames is None:
        views = load_views(scene, folder, resize=config.photos.resize)
    else:
        views = [View(index=i, id=f.camera.id, photo_path=f.path, photo=f.photo, mask=f.mask,
                      camera=f.camera) for i, f in enumerate(frames)]
    if config.reconstruct is None:  # a reconstruction's masks are silhouettes: keep them whole
        mask_saturated(views, config.photos.saturation)
    mark_held_out(views, config.evaluate.held_out, source=folder / "invpbr.toml")
    _check_gain_reference(config, views, folder / "invpbr.toml")
    truth, truth_scene, relight_maps = {}, None, {}
    true_cameras, true_gains = {}, {}
    if config.cameras.truth:
        from ..capture.frames import frame_gains, truth_cameras

        true_cameras = truth_cameras(folder, config.cameras.truth, [v.id for v in views])
        true_gains = frame_gains(folder / config.cameras.truth)
    if (folder / "truth.xml").is_file():
        truth_scene = load_scene(folder / "truth.xml")
        if not config.cameras.truth:  # truth.xml's sensors, by id
            from ..capture.frames import truth_cameras

            true_cameras = truth_cameras(folder, "", [v.id for v in views], truth_scene)
        truth = load_truth(folder / "truth.xml", [k for p in parameters for k in p.truth_keys],
                           truth_scene)
        relight_maps = load_relight_maps(folder, config.evaluate.relight)
        if frames is not None and relight_maps:  # relit from the photos' cameras
            truth_scene = load_scene(folder / "truth.xml", sensors=sensors)
    elif config.evaluate.relight:
        warnings.warn(f"{folder / 'invpbr.toml'}: evaluate.relight needs a truth.xml to compare "
                      "with; relighting is not evaluated", stacklevel=2)
    return Problem(folder=folder, config=config, scene=scene, params=params, scene_xml=scene_xml,
                   parameters=parameters, views=views, truth=truth, truth_scene=truth_scene,
                   relight_maps=relight_maps, true_cameras=true_cameras, true_gains=true_gains)


def model_scene(folder: Path, sensors: list[ET.Element] | None, *,
                bitmap_format: str = "variant", mesh_rectangles: bool = False) -> tuple[Any, str]:
    """The folder's scene.xml with ``sensors`` (from a camera file) replacing
    its own, and its XML text; without a scene.xml, a scene of those sensors
    alone (radiance fields and reconstructions start from photos and cameras).
    ``mesh_rectangles``: analytic rectangles are loaded as meshes (see
    :func:`invpbr.problem.scene.mesh_analytic_shapes`; the text stays the
    file's), with a warning naming them.

    Raises:
        FileNotFoundError: no scene.xml (and no camera file).
        ValueError: malformed XML or a scene Mitsuba rejects.
    """
    path = folder / "scene.xml"
    if sensors is not None and not path.is_file():
        text = sensors_text(sensors)
    elif not path.is_file():
        raise FileNotFoundError(f"{path}: no such scene file")
    else:
        text = scene_text(path, sensors, bitmap_format)
    if not mesh_rectangles:
        return load_scene_text(text, path), text
    scene, names = mesh_analytic_shapes(text, path)
    if names:
        warnings.warn(f"{path}: camera refinement moves every shape; the analytic rectangles "
                      f"{', '.join(repr(n) for n in names)} are loaded as meshes of the same "
                      "geometry, because Mitsuba 3.9.1 differentiates a moving analytic "
                      "rectangle wrongly", stacklevel=3)
    return scene, text


def _camera_file_sensors(folder: Path, config: ProblemConfig) -> tuple[list, list[ET.Element]]:
    """The frames of ``[cameras] file`` (photos, masks, cameras) and their XML
    sensors, with scene.xml's first sensor as template."""
    from ..capture.frames import load_frames, sensor_element

    frames = load_frames(folder, config.cameras.file, resolution=config.cameras.resolution,
                         undistort=config.cameras.undistort, source=str(folder / "invpbr.toml"))
    scene_file = folder / "scene.xml"
    template = parse_xml(scene_file).getroot().find("sensor") if scene_file.is_file() else None
    return frames, [sensor_element(f.camera, template) for f in frames]


def _check_gain_reference(config: ProblemConfig, views: list[View], source) -> None:
    ref = config.photos.gain_reference
    if config.photos.gain == "none" or ref == "mean":
        return
    fitted = [v.id for v in views if not v.held_out]
    if ref not in fitted:
        raise ValueError(f"{source}: photos.gain_reference = {ref!r} is not a fitted photo; "
                         f"expected \"mean\" or one of {', '.join(fitted)}")


def check_folder(folder: str | Path, *, variant: str | None = None) -> list[str]:
    """Every problem found in a scene folder, as messages (empty: all good).

    Unlike :func:`load_problem`, keeps going after the first problem.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder}: no such scene folder"]
    problems: list[str] = []

    def attempt(fn):
        try:
            return fn()
        except (FileNotFoundError, ValueError) as e:
            problems.append(str(e))
            return None

    config = attempt(lambda: load_config(folder / "invpbr.toml"))
    init_backend(variant)
    import mitsuba as mi  # only now: init_backend chooses the LLVM Dr.Jit loads

    frames = sensors = None
    if config is not None and config.cameras.file:
        found = attempt(lambda: _camera_file_sensors(folder, config))
        if found is None:
            return problems
        frames, sensors = found
    scene = attempt(lambda: model_scene(folder, sensors)[0])
    if (folder / "truth.xml").is_file():
        attempt(lambda: load_scene(folder / "truth.xml"))
    if scene is None:
        return problems
    if config is not None:
        params = mi.traverse(scene)
        for i, est in enumerate(config.estimate):
            attempt(lambda est=est, i=i: resolve_estimates(
                params, [est], source=folder / "invpbr.toml", sensor_ids=sensor_ids(scene)))
    if frames is not None:
        no_mask = [str(f.path.name) for f in frames if f.mask is None]
        if config is not None and config.reconstruct is not None and no_mask:
            problems.append(f"{folder / 'invpbr.toml'}: [reconstruct] needs a mask for every "
                            f"photo (masks/<photo stem>.png, white = object, or the photo's "
                            f"alpha); none for {', '.join(no_mask)}")
        return problems  # the photos were checked with their frames
    ids = sensor_ids(scene)
    if not ids:
        problems.append(f"{folder / 'scene.xml'}: the scene has no sensor")
        return problems
    photos = attempt(lambda: match_photos(ids, folder / "photos"))
    resize = config is not None and config.photos.resize
    masks_dir = folder / "masks"
    masks = (attempt(lambda: _images_in(masks_dir)) if masks_dir.is_dir() else None) or {}
    if photos:
        for i, (sid, path) in enumerate(zip(ids, photos)):
            w, h = (int(v) for v in scene.sensors()[i].film().crop_size())
            img = attempt(lambda path=path: io.load_image(path))
            if img is not None and img.shape[:2] != (h, w) and not resize:
                problems.append(f"{path}: photo is {img.shape[1]}x{img.shape[0]} but sensor "
                                f"{sid!r} renders {w}x{h}")
            mask_path = masks.get(path.stem) or masks.get(sid)
            mask = None if mask_path is None else attempt(lambda m=mask_path: io.load_mask(m))
            if mask is not None and mask.shape != (h, w) and not resize:
                problems.append(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but "
                                f"sensor {sid!r} renders {w}x{h}")
            elif mask is not None and not mask.any():
                problems.append(f"{mask_path}: mask selects no pixel")
    return problems
