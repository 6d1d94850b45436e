"""Photo sets that come with a camera file: a scene folder's ``[cameras]`` table.

::

    [cameras]
    file = "transforms.json"        # or a COLMAP model folder, or poses_bounds.npy
    resolution = [96, 72]           # working resolution: photos and intrinsics together
    truth = "transforms_truth.json" # optional: true cameras (and gains) for errors
    undistort = true                # undistort photos of distorted cameras (OpenCV)

Each frame of the file becomes a perspective sensor of the scene (its id is the
frame's photo's file stem), replacing the sensors written in scene.xml; the
film filter and sampler of scene.xml's first sensor are kept when it has one.
Photos are the frames' files; masks come from ``masks/<stem>.*`` and from the
photos' alpha channels.
"""

from __future__ import annotations

import copy
import json
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import images as io
from .cameras import Camera, read_colmap, read_llff, read_transforms, to_mitsuba_sensor

#: Relative difference of aspect ratios still treated as the same (rounded image sizes).
ASPECT_RTOL = 0.01


@dataclass
class Frame:
    """One photo of a camera file, ready for a view.

    Attributes:
        camera: its camera at the working resolution, undistorted.
        photo: linear RGB (H, W, 3) float32 at the working resolution.
        mask: pixels to use (H, W) bool, or None for all.
        path: the photo's file.
    """

    camera: Camera
    photo: np.ndarray
    mask: np.ndarray | None
    path: Path


def check_camera(cam: Camera, path: Path) -> None:
    """Refuse a camera no renderer can use: a pose that is not a rotation and a
    translation (finite, orthonormal, right-handed), or a non-positive or
    non-finite size or focal length.

    Raises:
        ValueError: naming the file and the frame.
    """
    where = f"{path}: frame {cam.id!r}"
    c2w = np.asarray(cam.c2w, dtype=np.float64)
    if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
        raise ValueError(f"{where}: the camera pose is not a finite 4x4 matrix")
    r = c2w[:3, :3]
    if np.abs(r.T @ r - np.eye(3)).max() > 1e-3 or np.linalg.det(r) <= 0:
        raise ValueError(f"{where}: the camera pose's rotation is not a rotation (its columns "
                         "are not orthonormal and right-handed: a scaled or sheared pose)")
    numbers = {"fx": cam.fx, "fy": cam.fy, "cx": cam.cx, "cy": cam.cy}
    bad = [k for k, v in numbers.items() if not np.isfinite(v)] + \
        [k for k in ("fx", "fy") if np.isfinite(numbers[k]) and numbers[k] <= 0]
    if bad or cam.width <= 0 or cam.height <= 0:
        raise ValueError(f"{where}: bad intrinsics ({', '.join(bad) or 'size'}: fx {cam.fx}, "
                         f"fy {cam.fy}, cx {cam.cx}, cy {cam.cy}, {cam.width}x{cam.height})")


def read_camera_file(path: str | Path, *, skip_missing: bool = False,
                     need_images: bool = True) -> list[Camera]:
    """The cameras of a transforms.json, a COLMAP model folder or an LLFF
    ``poses_bounds.npy`` (by what ``path`` is).

    Raises:
        FileNotFoundError: no such file or folder.
        ValueError: a file the readers reject (their message names it), or two
            frames with the same photo file stem.
    """
    path = Path(path)
    if path.is_dir():
        cameras = read_colmap(path)
    elif not path.exists():
        raise FileNotFoundError(f"{path}: no such camera file (transforms.json, a COLMAP model "
                                "folder or poses_bounds.npy)")
    elif path.suffix == ".npy":
        cameras = read_llff(path.parent)
    elif path.suffix == ".json":
        cameras = read_transforms(path, skip_missing=skip_missing, need_images=need_images)
    else:
        raise ValueError(f"{path}: unknown camera file type {path.suffix!r}; expected a "
                         "transforms.json, a COLMAP model folder or poses_bounds.npy")
    seen: dict[str, Camera] = {}
    for cam in cameras:
        check_camera(cam, path)
        if cam.id in seen:
            raise ValueError(f"{path}: two frames have the photo name {cam.id!r} "
                             f"({seen[cam.id].file_path} and {cam.file_path}); sensor ids "
                             "are photo file stems and must differ")
        seen[cam.id] = cam
    if not cameras:
        raise ValueError(f"{path}: no camera frames")
    return cameras


def frame_gains(path: str | Path) -> dict[str, np.ndarray]:
    """Photo stem -> ``"gain"`` of the frames of a transforms.json that carry
    one (the capture simulator writes the true gains there), as (3,) arrays."""
    path = Path(path)
    if path.suffix != ".json" or not path.is_file():
        return {}
    from .cameras import photo_stem

    meta = json.loads(path.read_text())
    out = {}
    for frame in meta.get("frames", []):
        if "gain" in frame and "file_path" in frame:
            gain = np.asarray(frame["gain"], dtype=np.float64).reshape(-1)
            out[photo_stem(frame["file_path"])] = np.broadcast_to(gain, (3,)).copy()
    return out


def load_frame(camera: Camera, masks: dict[str, Path], *, resolution: list[int] | None,
               undistort: bool, source: str) -> Frame:
    """The photo (and mask) of one camera, undistorted and at the working resolution.

    Raises:
        FileNotFoundError: the photo is missing.
        ValueError: its size does not fit the camera (not even up to a uniform
            scale), it has lens distortion and ``undistort`` is off, or a mask
            selects nothing.
    """
    path = camera.file_path
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(f"{camera.source}: photo of frame {camera.id!r} not found "
                                f"({path})")
    path = Path(path)
    photo, alpha_mask = io.load_photo(path)
    h, w = photo.shape[:2]
    if (w, h) != (camera.width, camera.height):
        if abs((w / h) / (camera.width / camera.height) - 1.0) > ASPECT_RTOL:
            raise ValueError(f"{path}: photo is {w}x{h} but its camera in {camera.source} is "
                             f"{camera.width}x{camera.height} (another aspect ratio)")
        camera = camera.rescaled(w, h)
    mask = alpha_mask
    mask_path = masks.get(path.stem)
    if mask_path is not None:
        found = io.load_mask(mask_path)
        if found.shape != (h, w):
            found = io.resize_mask(found, w, h)
        mask = found if mask is None else mask & found
    if camera.has_distortion:
        if not undistort:
            raise ValueError(f"{camera.source}: camera {camera.id!r} has lens distortion "
                             f"{camera.distortion}; set [cameras] undistort = true or undistort "
                             "the photos first (e.g. colmap image_undistorter)")
        from .cameras import undistort_photo

        photo, valid, camera = undistort_photo(photo, camera, mask=mask)
        mask = valid
    if resolution is not None and tuple(resolution) != (w, h):
        rw, rh = resolution
        if abs((rw / rh) / (w / h) - 1.0) > ASPECT_RTOL:
            raise ValueError(f"{source}: cameras.resolution = [{rw}, {rh}] has another aspect "
                             f"ratio than {path} ({w}x{h})")
        photo = io.resize_image(photo, rw, rh)
        camera = camera.rescaled(rw, rh)
        if mask is not None:
            mask = io.resize_mask(mask, rw, rh)
    if mask is not None and not mask.any():
        raise ValueError(f"{mask_path or path}: mask selects no pixel")
    if mask is not None and mask.all():
        mask = None
    return Frame(camera=camera, photo=photo, mask=mask, path=path)


def sensor_element(camera: Camera, template: ET.Element | None = None) -> ET.Element:
    """A Mitsuba XML ``<sensor>`` for ``camera`` (see
    :func:`invpbr.capture.cameras.to_mitsuba_sensor`), with the film filter, sampler
    and clip planes of ``template`` (a ``<sensor>`` element) where given."""
    d = to_mitsuba_sensor(camera)
    sensor = ET.Element("sensor", {"type": "perspective", "id": camera.id})
    ET.SubElement(sensor, "string", {"name": "fov_axis", "value": "x"})
    for name in ("fov", "principal_point_offset_x", "principal_point_offset_y"):
        ET.SubElement(sensor, "float", {"name": name, "value": repr(float(d[name]))})
    matrix = np.array(d["to_world"].matrix, dtype=np.float64).reshape(4, 4)
    transform = ET.SubElement(sensor, "transform", {"name": "to_world"})
    ET.SubElement(transform, "matrix", {"value": " ".join(repr(float(v)) for v in matrix.ravel())})
    film = None
    if template is not None:
        for child in template:
            if child.tag == "float" and child.get("name") in ("near_clip", "far_clip"):
                sensor.append(copy.deepcopy(child))
            elif child.tag == "sampler":
                sensor.append(copy.deepcopy(child))
            elif child.tag == "film":
                film = copy.deepcopy(child)
    if film is None:
        film = ET.Element("film", {"type": "hdrfilm"})
        ET.SubElement(film, "string", {"name": "pixel_format", "value": "rgb"})
        # A photo's pixel integrates light over its area; projective integrators
        # want sample_border when shapes move.
        ET.SubElement(film, "rfilter", {"type": "box"})
        ET.SubElement(film, "boolean", {"name": "sample_border", "value": "true"})
    for child in list(film):
        if child.get("name") in ("width", "height", "crop_offset_x", "crop_offset_y",
                                 "crop_width", "crop_height"):
            film.remove(child)
    ET.SubElement(film, "integer", {"name": "width", "value": str(camera.width)})
    ET.SubElement(film, "integer", {"name": "height", "value": str(camera.height)})
    sensor.append(film)
    return sensor


def load_frames(folder: Path, cameras_file: str, *, resolution: list[int] | None,
                undistort: bool, source: str) -> list[Frame]:
    """Every frame of a scene folder's camera file with its photo and mask."""
    cameras = read_camera_file(folder / cameras_file)
    masks_dir = folder / "masks"
    masks = {}
    if masks_dir.is_dir():
        masks = {p.stem: p for p in sorted(masks_dir.iterdir())
                 if p.suffix.lower() in io.PHOTO_SUFFIXES}
    return [load_frame(cam, masks, resolution=resolution, undistort=undistort, source=source)
            for cam in cameras]


def truth_cameras(folder: Path, truth_file: str, ids: list[str],
                  truth_scene=None) -> dict[str, np.ndarray]:
    """Sensor id -> true OpenCV camera-to-world (4, 4), from ``truth_file`` (a
    camera file) or else from the sensors of ``truth_scene`` with those ids."""
    out: dict[str, np.ndarray] = {}
    if truth_file:
        for cam in read_camera_file(folder / truth_file, skip_missing=True, need_images=False):
            out[cam.id] = cam.c2w
    elif truth_scene is not None:
        from .cameras import OPENCV_TO_MITSUBA, sensor_ids

        for sid, sensor in zip(sensor_ids(truth_scene), truth_scene.sensors()):
            to_world = np.array(sensor.world_transform().matrix, dtype=np.float64).reshape(4, 4)
            out[sid] = to_world @ OPENCV_TO_MITSUBA
    missing = [i for i in ids if i not in out]
    if out and missing:
        warnings.warn(f"{folder / (truth_file or 'truth.xml')}: no true camera for "
                      f"{', '.join(missing)}; their camera errors are not reported", stacklevel=2)
    return {i: out[i] for i in ids if i in out}
