"""Camera files of real photo sets: NeRF transforms.json, COLMAP models, LLFF poses_bounds.

Every reader returns a list of :class:`Camera` with one convention: pinhole intrinsics in
pixels (pixel (0, 0)'s top-left corner is the origin, so the image centre is (w/2, h/2))
and an OpenCV camera-to-world matrix (camera looks down +z, +x right, +y down in the image).
:func:`to_mitsuba_sensor` turns a camera into a ``mi.load_dict``-able perspective sensor and
:func:`project` projects world points to pixels with numpy.

Conventions converted here (c2w columns are the camera axes in world space):

- NeRF / instant-ngp ``transform_matrix``: OpenGL (x right, y up, z back), so
  ``c2w_opencv = c2w_opengl @ diag(1, -1, -1, 1)``.
- COLMAP images: world-to-camera quaternion (qw, qx, qy, qz) and translation, OpenCV.
- LLFF ``poses_bounds.npy``: columns (down, right, back, t) and (h, w, f).
- Mitsuba perspective sensor: x left, y up, z forward, so
  ``to_world = c2w_opencv @ diag(-1, -1, 1, 1)`` (equal to MITSUBA_NOTES' NeRF rule
  ``c2w_opengl @ diag(-1, 1, -1, 1)``).
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

#: Image extensions tried, in order, when a frame's file_path has none or does not exist.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG", ".exr", ".EXR")

#: Relative difference of fx and fy still treated as square pixels by to_mitsuba_sensor.
SQUARE_PIXEL_RTOL = 1e-3

_OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
#: OpenCV camera axes (x right, y down, z forward) to Mitsuba's (x left, y up, z forward).
OPENCV_TO_MITSUBA = np.diag([-1.0, -1.0, 1.0, 1.0])


def sensor_ids(scene) -> list[str]:
    """The id of each sensor of ``scene`` (``sensor_<i>`` where it has none)."""
    ids = []
    for i, sensor in enumerate(scene.sensors()):
        sid = sensor.id()
        ids.append(sid if sid and not sid.startswith("_unnamed") else f"sensor_{i}")
    return ids


@dataclass(frozen=True)
class Camera:
    """One photo's pinhole camera.

    Attributes:
        id: photo file stem ("IMG_0948").
        width: image width in pixels.
        height: image height in pixels.
        fx: focal length along x, pixels.
        fy: focal length along y, pixels.
        cx: principal point x, pixels from the image's left edge.
        cy: principal point y, pixels from the image's top edge.
        c2w: camera-to-world matrix, (4, 4) float64, OpenCV convention (looks down +z,
            +x right, +y down).
        file_path: the photo file (may not exist for LLFF rows without their image).
        distortion: OpenCV radial-tangential (k1, k2, p1, p2), or None when the file has none.
        source: the camera file it came from (used in error messages).
    """

    id: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    c2w: np.ndarray
    file_path: Path | None = None
    distortion: tuple[float, float, float, float] | None = None
    source: str = ""

    @property
    def has_distortion(self) -> bool:
        """True when any distortion coefficient is nonzero."""
        return self.distortion is not None and any(abs(d) > 0.0 for d in self.distortion)

    def rescaled(self, width: int, height: int) -> "Camera":
        """The same camera for the image resized to (width, height) pixels."""
        sx, sy = width / self.width, height / self.height
        return replace(self, width=int(width), height=int(height), fx=self.fx * sx,
                       fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy)


# --------------------------------------------------------------------------- helpers

def _image_size(path: Path) -> tuple[int, int]:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL is present where the tests run
        import mitsuba as mi
        return tuple(int(v) for v in mi.Bitmap(str(path)).size())
    with Image.open(path) as im:
        return im.size


def _resolve_image(base: Path, file_path: str) -> Path | None:
    p = base / file_path
    if p.suffix and p.is_file():
        return p
    for ext in IMAGE_EXTENSIONS:
        q = p.with_name(p.name + ext)
        if q.is_file():
            return q
    return None


def photo_stem(file_path: str) -> str:
    """The sensor id of a frame: its photo's file name without the image extension."""
    name = Path(file_path).name
    stem = Path(name).stem
    return stem if Path(name).suffix.lower() in {e.lower() for e in IMAGE_EXTENSIONS} else name


def _qvec_to_rotmat(q: Sequence[float]) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    return path


# --------------------------------------------------------------------------- transforms.json

_INTRINSIC_KEYS = ("camera_angle_x", "camera_angle_y", "fl_x", "fl_y", "cx", "cy", "w", "h",
                   "k1", "k2", "p1", "p2")


def _transforms_camera(frame, shared: dict, path: Path, where: str, *, skip_missing: bool,
                       need_images: bool) -> Camera | None:
    """One frame of a transforms.json (None: skipped, its image missing)."""
    if "file_path" not in frame or "transform_matrix" not in frame:
        raise ValueError(f'read_transforms(): {where} needs "file_path" and "transform_matrix"')
    image = _resolve_image(path.parent, frame["file_path"])
    sized = all(key in frame or key in shared for key in ("w", "h"))
    if image is None and not (sized and not need_images):
        if skip_missing:
            return None
        raise FileNotFoundError(
            f"read_transforms(): {where}: image {frame['file_path']!r} not found "
            f"(tried extensions {', '.join(IMAGE_EXTENSIONS)}); pass skip_missing=True")
    k = {**shared, **{key: frame[key] for key in _INTRINSIC_KEYS if key in frame}}
    if "w" in k and "h" in k:
        w, h = int(round(float(k["w"]))), int(round(float(k["h"])))
    else:
        w, h = _image_size(image)
    if "fl_x" in k:
        fx = float(k["fl_x"])
    elif "camera_angle_x" in k:
        fx = 0.5 * w / math.tan(0.5 * float(k["camera_angle_x"]))
    else:
        raise ValueError(f'read_transforms(): {where}: needs "fl_x" or "camera_angle_x"')
    if "fl_y" in k:
        fy = float(k["fl_y"])
    elif "camera_angle_y" in k:
        fy = 0.5 * h / math.tan(0.5 * float(k["camera_angle_y"]))
    else:
        fy = fx
    c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
    if c2w.shape == (3, 4):
        c2w = np.vstack([c2w, [0.0, 0.0, 0.0, 1.0]])
    if c2w.shape != (4, 4):
        raise ValueError(f"read_transforms(): {where}: transform_matrix has shape "
                         f"{c2w.shape}, expected (4, 4)")
    dist = None
    if any(key in k for key in ("k1", "k2", "p1", "p2")):
        dist = tuple(float(k.get(key, 0.0)) for key in ("k1", "k2", "p1", "p2"))
    return Camera(
        id=photo_stem(frame["file_path"]), width=w, height=h, fx=fx, fy=fy,
        cx=float(k.get("cx", 0.5 * w)), cy=float(k.get("cy", 0.5 * h)),
        c2w=c2w @ _OPENGL_TO_OPENCV, file_path=image, distortion=dist, source=str(path))


def read_transforms(path: str | Path, *, skip_missing: bool = False,
                    need_images: bool = True) -> list[Camera]:
    """Cameras of a NeRF / instant-ngp ``transforms.json``.

    Intrinsics are read at the top level and may be overridden per frame: ``fl_x``/``fl_y``
    (pixels) take precedence over ``camera_angle_x``/``camera_angle_y`` (radians, full
    angle); ``cx``/``cy`` default to the image centre; ``w``/``h`` default to the image
    file's size. ``transform_matrix`` is an OpenGL camera-to-world matrix. ``file_path``
    is relative to the json and may lack its extension.

    Args:
        path: the json file.
        skip_missing: leave out frames whose image is missing instead of raising.
        need_images: False: keep frames whose image is missing (``file_path`` None)
            when the file gives their size (``w``, ``h``): poses alone, e.g. true cameras.

    Returns:
        One camera per frame, in file order.

    Raises:
        FileNotFoundError: the json, or (unless skip_missing) a frame's image, is missing.
        ValueError: the json is malformed or lacks a needed key.
    """
    path = _require_file(Path(path), "read_transforms()")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"read_transforms(): {path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise ValueError(f'read_transforms(): {path} has no "frames" list')
    shared = {k: meta[k] for k in _INTRINSIC_KEYS if k in meta}
    cameras = []
    for i, frame in enumerate(meta["frames"]):
        where = f'{path}, frames[{i}]'
        try:
            cam = _transforms_camera(frame, shared, path, where, skip_missing=skip_missing,
                                     need_images=need_images)
        except (TypeError, ValueError, OverflowError, AttributeError, KeyError) as e:
            if str(path) in str(e):
                raise
            raise ValueError(f"read_transforms(): {where}: {type(e).__name__}: {e}") from None
        if cam is not None:
            cameras.append(cam)
    return cameras


# --------------------------------------------------------------------------- COLMAP

# model id -> (name, number of params)
_COLMAP_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
}
_COLMAP_MODEL_IDS = {name: i for i, (name, _) in _COLMAP_MODELS.items()}
_SUPPORTED = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


@dataclass(frozen=True)
class ColmapIntrinsics:
    """One COLMAP camera: model name, size in pixels and its parameter list."""

    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]

    def pinhole(self, where: str) -> tuple[float, float, float, float, tuple | None]:
        """(fx, fy, cx, cy, (k1, k2, p1, p2) or None) of a supported model."""
        p = self.params
        if self.model == "SIMPLE_PINHOLE":
            return p[0], p[0], p[1], p[2], None
        if self.model == "PINHOLE":
            return p[0], p[1], p[2], p[3], None
        if self.model == "SIMPLE_RADIAL":
            return p[0], p[0], p[1], p[2], (p[3], 0.0, 0.0, 0.0)
        if self.model == "RADIAL":
            return p[0], p[0], p[1], p[2], (p[3], p[4], 0.0, 0.0)
        if self.model == "OPENCV":
            return p[0], p[1], p[2], p[3], (p[4], p[5], p[6], p[7])
        raise ValueError(f"{where}: camera {self.camera_id} has COLMAP model {self.model!r}; "
                         f"supported models are {', '.join(_SUPPORTED)}")


@contextlib.contextmanager
def _parsing(path: Path, where: str):
    """Errors of a truncated or garbled file, as a ValueError naming it."""
    try:
        yield
    except (IndexError, KeyError, struct.error, UnicodeDecodeError, OverflowError,
            MemoryError, TypeError) as e:
        raise ValueError(f"{where}: {path}: truncated or not a COLMAP file "
                         f"({type(e).__name__}: {e})") from None
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"{where}: {path}: {e}") from None


def read_colmap_cameras(path: str | Path) -> dict[int, ColmapIntrinsics]:
    """COLMAP ``cameras.bin`` or ``cameras.txt`` (by extension) as {camera_id: intrinsics}."""
    path = _require_file(Path(path), "read_colmap_cameras()")
    with _parsing(path, "read_colmap_cameras()"):
        return _read_colmap_cameras(path)


def _read_colmap_cameras(path: Path) -> dict[int, ColmapIntrinsics]:
    cams = {}
    if path.suffix == ".bin":
        data = path.read_bytes()
        (n,), off = struct.unpack_from("<Q", data, 0), 8
        for _ in range(n):
            cid, mid, w, h = struct.unpack_from("<iiQQ", data, off)
            off += 24
            if mid not in _COLMAP_MODELS:
                raise ValueError(f"read_colmap_cameras(): {path}: camera {cid} has unknown "
                                 f"COLMAP model id {mid}")
            name, nparams = _COLMAP_MODELS[mid]
            params = struct.unpack_from(f"<{nparams}d", data, off)
            off += 8 * nparams
            cams[cid] = ColmapIntrinsics(cid, name, w, h, tuple(params))
        return cams
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        cid, model, w, h = int(fields[0]), fields[1], int(fields[2]), int(fields[3])
        if model not in _COLMAP_MODEL_IDS:
            raise ValueError(f"read_colmap_cameras(): {path}: camera {cid} has unknown "
                             f"COLMAP model {model!r}")
        params = tuple(float(v) for v in fields[4:])
        if len(params) != _COLMAP_MODELS[_COLMAP_MODEL_IDS[model]][1]:
            raise ValueError(f"read_colmap_cameras(): {path}: camera {cid} ({model}) has "
                             f"{len(params)} parameters")
        cams[cid] = ColmapIntrinsics(cid, model, w, h, params)
    return cams


def read_colmap_images(path: str | Path) -> list[tuple[str, int, np.ndarray]]:
    """COLMAP ``images.bin`` / ``images.txt`` as [(name, camera_id, w2c (4, 4) OpenCV)]."""
    path = _require_file(Path(path), "read_colmap_images()")
    with _parsing(path, "read_colmap_images()"):
        out = _read_colmap_images(path)
    for name, _, m in out:
        if not np.isfinite(m).all():
            raise ValueError(f"read_colmap_images(): {path}: image {name!r} has a "
                             "non-finite pose")
    return out


def _read_colmap_images(path: Path) -> list[tuple[str, int, np.ndarray]]:
    out = []

    def w2c(q, t):
        m = np.eye(4)
        m[:3, :3] = _qvec_to_rotmat(q)
        m[:3, 3] = t
        return m

    if path.suffix == ".bin":
        data = path.read_bytes()
        (n,), off = struct.unpack_from("<Q", data, 0), 8
        for _ in range(n):
            vals = struct.unpack_from("<i7di", data, off)
            off += 4 + 56 + 4
            end = data.index(b"\x00", off)
            name = data[off:end].decode()
            off = end + 1
            (npts,) = struct.unpack_from("<Q", data, off)
            off += 8 + npts * 24
            out.append((name, vals[8], w2c(vals[1:5], vals[5:8])))
        return out
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    for i in range(0, len(lines), 2):  # two lines per image; the second (points) may be empty
        fields = lines[i].split()
        if not fields:
            continue
        if len(fields) < 10:
            raise ValueError(f"read_colmap_images(): {path}: bad image line {lines[i]!r}")
        vals = [float(v) for v in fields[1:8]]
        out.append((" ".join(fields[9:]), int(fields[8]), w2c(vals[:4], vals[4:])))
    return out


def read_colmap(folder: str | Path) -> list[Camera]:
    """Cameras of a COLMAP sparse model folder (``cameras``/``images`` ``.bin`` or ``.txt``).

    Images resolve to ``folder/<name>``, ``folder/images/<name>`` or
    ``folder/../images/<name>`` (the first that exists; else ``folder/images/<name>``).

    Raises:
        FileNotFoundError: the folder has neither the binary nor the text model.
        ValueError: an unknown or unsupported (fisheye, FOV, ...) camera model.
    """
    folder = Path(folder)
    for ext in (".bin", ".txt"):
        cams_path, imgs_path = folder / f"cameras{ext}", folder / f"images{ext}"
        if cams_path.is_file() and imgs_path.is_file():
            break
    else:
        raise FileNotFoundError(f"read_colmap(): {folder} has neither cameras.bin + images.bin "
                                f"nor cameras.txt + images.txt")
    intr = read_colmap_cameras(cams_path)
    cameras = []
    for name, cid, w2c in sorted(read_colmap_images(imgs_path), key=lambda r: r[0]):
        if cid not in intr:
            raise ValueError(f"read_colmap(): {imgs_path}: image {name!r} uses camera {cid}, "
                             f"which {cams_path} does not define")
        c = intr[cid]
        fx, fy, cx, cy, dist = c.pinhole(f"read_colmap(): {cams_path}")
        candidates = [folder / name, folder / "images" / name, folder.parent / "images" / name]
        image = next((p for p in candidates if p.is_file()), candidates[1])
        cameras.append(Camera(id=Path(name).stem, width=c.width, height=c.height, fx=fx, fy=fy,
                              cx=cx, cy=cy, c2w=np.linalg.inv(w2c), file_path=image,
                              distortion=dist, source=str(imgs_path)))
    return cameras


def read_colmap_points(path: str | Path) -> np.ndarray:
    """xyz of COLMAP ``points3D.bin`` / ``points3D.txt`` (by extension), (N, 3) float64."""
    path = _require_file(Path(path), "read_colmap_points()")
    with _parsing(path, "read_colmap_points()"):
        return _read_colmap_points(path)


def _read_colmap_points(path: Path) -> np.ndarray:
    if path.suffix != ".bin":
        rows = [ln.split()[1:4] for ln in path.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
        return np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    data = path.read_bytes()
    (n,), off = struct.unpack_from("<Q", data, 0), 8
    xyz = np.empty((n, 3))
    for i in range(n):
        xyz[i] = struct.unpack_from("<3d", data, off + 8)
        off += 8 + 24 + 3 + 8
        (track,) = struct.unpack_from("<Q", data, off)
        off += 8 + 8 * track
    return xyz


# --------------------------------------------------------------------------- LLFF

def read_llff(folder: str | Path, *,
              image_names: Sequence[str] | Mapping[int, str] | None = None) -> list[Camera]:
    """Cameras of an LLFF ``poses_bounds.npy`` (N, 17): per row a 3x5 [R | t | hwf] + bounds.

    R's columns are the camera's (down, right, back) axes in world space; hwf is the image
    height, width and focal length in pixels at the size the poses were made for (principal
    point at the centre). When the image file exists and is smaller (downsampled photos),
    the intrinsics are rescaled to it.

    Args:
        folder: folder with ``poses_bounds.npy`` and ``images/``.
        image_names: the image file of each row. A sequence of N names, or a mapping
            {row: name} that keeps only those rows. None: the sorted files in ``images/``,
            which must be N (LLFF's own rule).

    Raises:
        FileNotFoundError: no poses_bounds.npy.
        ValueError: bad array shape, or rows and image names that do not match.
    """
    folder = Path(folder)
    path = _require_file(folder / "poses_bounds.npy", "read_llff()")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"read_llff(): {path}: not a readable .npy array ({e})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[1] != 17 \
            or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"read_llff(): {path} has shape {getattr(arr, 'shape', None)} "
                         f"({getattr(arr, 'dtype', None)}), expected (N, 17) numbers")
    if not np.isfinite(arr[:, :15]).all():
        raise ValueError(f"read_llff(): {path}: non-finite poses (NaN or inf)")
    if image_names is None:
        found = sorted(p.name for p in (folder / "images").glob("*")
                       if p.suffix in IMAGE_EXTENSIONS)
        if len(found) != len(arr):
            raise ValueError(f"read_llff(): {path} has {len(arr)} rows but {folder / 'images'} "
                             f"has {len(found)} images; pass image_names")
        image_names = found
    if isinstance(image_names, Mapping):
        rows = dict(sorted(image_names.items()))
    else:
        if len(image_names) != len(arr):
            raise ValueError(f"read_llff(): {path} has {len(arr)} rows, "
                             f"image_names has {len(image_names)}")
        rows = dict(enumerate(image_names))
    cameras = []
    for row, name in rows.items():
        m = arr[row, :15].reshape(3, 5)
        h, w, f = m[:, 4]
        down, right, back = m[:, 0], m[:, 1], m[:, 2]
        c2w = np.eye(4)
        c2w[:3, :3] = np.stack([right, down, -back], axis=1)   # OpenCV x right, y down, z fwd
        c2w[:3, 3] = m[:, 3]
        image = folder / "images" / name
        cam = Camera(id=Path(name).stem, width=int(round(w)), height=int(round(h)), fx=f, fy=f,
                     cx=0.5 * w, cy=0.5 * h, c2w=c2w, file_path=image, source=str(path))
        if image.is_file():
            iw, ih = _image_size(image)
            if (iw, ih) != (cam.width, cam.height):
                cam = cam.rescaled(iw, ih)
        cameras.append(cam)
    return cameras


# --------------------------------------------------------------------------- use

def project(camera: Camera, points: np.ndarray, *, apply_distortion: bool = False) -> np.ndarray:
    """Pixel positions of world points, (N, 3) -> (N, 2) (x right, y down, in pixels).

    Points behind the camera give NaN. With ``apply_distortion`` the OpenCV
    radial-tangential model (k1, k2, p1, p2) is applied (the raw photo's pixels).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    w2c = np.linalg.inv(camera.c2w)
    pc = pts @ w2c[:3, :3].T + w2c[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = pc[:, 0] / pc[:, 2], pc[:, 1] / pc[:, 2]
    if apply_distortion and camera.distortion is not None:
        k1, k2, p1, p2 = camera.distortion
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 * r2
        x, y = (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)
    uv = np.stack([camera.fx * x + camera.cx, camera.fy * y + camera.cy], axis=1)
    uv[pc[:, 2] <= 0] = np.nan
    return uv


def to_mitsuba_sensor(camera: Camera, *, resolution: tuple[int, int] | None = None,
                      allow_distortion: bool = False) -> dict:
    """A ``mi.load_dict``-able perspective sensor that sees what ``camera`` saw.

    ``fov`` (``fov_axis="x"``) comes from fx and the width; the principal point becomes
    Mitsuba's ``principal_point_offset_x/y``, which are fractions of the film size added to
    the film sample (perspective.cpp), so offset = 0.5 - c / size.

    Args:
        camera: the camera.
        resolution: (width, height) of the film; intrinsics are rescaled to it.
        allow_distortion: accept a camera with nonzero distortion (it is ignored).

    Raises:
        ValueError: fx and fy differ by more than SQUARE_PIXEL_RTOL (Mitsuba's perspective
            sensor has square pixels), or the camera has distortion and allow_distortion is
            False.
    """
    import mitsuba as mi

    where = f"camera {camera.id!r} ({camera.file_path or camera.source})"
    if camera.has_distortion and not allow_distortion:
        raise ValueError(
            f"to_mitsuba_sensor(): {where} has lens distortion (k1, k2, p1, p2) = "
            f"{camera.distortion}; Mitsuba's perspective sensor is a pinhole: undistort the "
            f"photos first (e.g. colmap image_undistorter) or pass allow_distortion=True")
    if abs(camera.fx - camera.fy) > SQUARE_PIXEL_RTOL * max(camera.fx, camera.fy):
        raise ValueError(
            f"to_mitsuba_sensor(): {where} has fx = {camera.fx:g} != fy = {camera.fy:g}; "
            f"Mitsuba's perspective sensor has square pixels: resample the photo")
    if resolution is not None:
        camera = camera.rescaled(*resolution)
    fov = math.degrees(2.0 * math.atan(0.5 * camera.width / camera.fx))
    to_world = camera.c2w @ OPENCV_TO_MITSUBA
    return {
        "type": "perspective",
        "fov_axis": "x",
        "fov": fov,
        "principal_point_offset_x": 0.5 - camera.cx / camera.width,
        "principal_point_offset_y": 0.5 - camera.cy / camera.height,
        "to_world": mi.ScalarTransform4f(to_world.tolist()),
        "film": {"type": "hdrfilm", "width": int(camera.width), "height": int(camera.height),
                 "pixel_format": "rgb"},
    }


# --------------------------------------------------------------------------- Mitsuba to file

#: Largest deviation of a sensor's to_world rotation from orthonormal that camera_from_sensor
#: accepts (a sensor with scale or shear is not a pinhole camera pose).
RIGID_ATOL = 1e-4


def camera_from_sensor(sensor, id: str | None = None, *,
                       file_path: str | Path | None = None) -> Camera:
    """The :class:`Camera` of a Mitsuba perspective sensor: the inverse of
    :func:`to_mitsuba_sensor`.

    Reads ``mi.traverse(sensor)``: ``x_fov`` (Mitsuba stores the horizontal angle whatever
    ``fov_axis`` the sensor was made with), ``principal_point_offset_x/y`` (fractions of the
    film, c = (0.5 - offset) * size) and ``to_world`` (``c2w_opencv = to_world @
    diag(-1, -1, 1, 1)``). The camera describes the image the sensor renders: with a film
    crop window, that window's size, the principal point shifted by the crop offset.

    Args:
        sensor: a loaded ``perspective`` sensor (``scene.sensors()[i]``).
        id: the camera id (default: the sensor's id).
        file_path: recorded as the camera's photo file.

    Returns:
        The camera, square pixels (fx == fy), no distortion.

    Raises:
        ValueError: not a perspective sensor, or its to_world is not a rotation and a
            translation (scale, shear or a mirror).
    """
    import mitsuba as mi

    sid = id if id is not None else sensor.id()
    where = f"camera_from_sensor(): sensor {sid!r}"
    if sensor.class_name() != "PerspectiveCamera":
        raise ValueError(f"{where} is a {sensor.class_name()}; only perspective sensors "
                         "(pinhole cameras) are supported")
    p = mi.traverse(sensor)

    def scalar(key):
        return float(np.ravel(np.array(p[key], dtype=np.float64))[0])

    to_world = np.array(p["to_world"].matrix, dtype=np.float64).reshape(4, 4)
    c2w = to_world @ OPENCV_TO_MITSUBA
    r = c2w[:3, :3]
    if not (np.allclose(r.T @ r, np.eye(3), atol=RIGID_ATOL) and np.linalg.det(r) > 0):
        raise ValueError(f"{where}: to_world is not a rigid transform (rotation {r.tolist()} "
                         "has scale, shear or a mirror); a camera pose must be a rotation and "
                         "a translation")
    film = sensor.film()
    full_w, full_h = (int(v) for v in film.size())
    crop_w, crop_h = (int(v) for v in film.crop_size())
    off_x, off_y = (int(v) for v in film.crop_offset())
    f = 0.5 * full_w / math.tan(0.5 * math.radians(scalar("x_fov")))
    cx = (0.5 - scalar("principal_point_offset_x")) * full_w - off_x
    cy = (0.5 - scalar("principal_point_offset_y")) * full_h - off_y
    return Camera(id=str(sid), width=crop_w, height=crop_h, fx=f, fy=f, cx=cx, cy=cy,
                  c2w=c2w, file_path=Path(file_path) if file_path is not None else None,
                  source=f"Mitsuba sensor {sid!r}")


def write_transforms(path: str | Path, cameras: Sequence[Camera], *,
                     extra: Mapping[str, Mapping] | None = None,
                     top: Mapping | None = None) -> Path:
    """Write cameras as a NeRF / instant-ngp ``transforms.json`` that :func:`read_transforms`
    reads back.

    Every frame carries its own intrinsics: ``fl_x``, ``fl_y``, ``cx``, ``cy`` (pixels),
    ``w``, ``h``, and ``k1``, ``k2``, ``p1``, ``p2`` when the camera has distortion;
    ``transform_matrix`` is the OpenGL camera-to-world matrix (``c2w_opencv @
    diag(1, -1, -1, 1)``); ``file_path`` is the camera's photo relative to the json's
    folder (POSIX separators; the camera id when it has no file). When all cameras share
    their intrinsics, ``camera_angle_x`` (radians) and ``w``, ``h`` are also written at the
    top level, for loaders that read only those (the original NeRF's).

    Args:
        path: the json file to write (its folder is created).
        cameras: the cameras, written in this order.
        extra: more keys per frame, by camera id (``{"front": {"gain": [1.1, 1.0, 0.9]}}``);
            they may not replace the keys above.
        top: more top-level keys.

    Returns:
        ``path``.

    Raises:
        ValueError: two cameras with one id, ``extra`` names an id no camera has or a
            reserved key, or ``top`` has "frames".
    """
    import os

    path = Path(path)
    extra = dict(extra or {})
    ids = [c.id for c in cameras]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"write_transforms(): {path}: camera ids {dup} appear more than once")
    unknown = sorted(set(extra) - set(ids))
    if unknown:
        raise ValueError(f"write_transforms(): {path}: extra names camera(s) {unknown}, "
                         f"which are not among {ids}")
    if top and "frames" in top:
        raise ValueError(f'write_transforms(): {path}: top may not contain "frames"')
    frames = []
    for cam in cameras:
        if cam.file_path is not None:
            rel = Path(os.path.relpath(Path(cam.file_path).resolve(), path.parent.resolve()))
            file_path = rel.as_posix()
        else:
            file_path = cam.id
        frame = {"file_path": file_path,
                 "transform_matrix": (np.asarray(cam.c2w, dtype=np.float64)
                                      @ _OPENGL_TO_OPENCV).tolist(),
                 "fl_x": float(cam.fx), "fl_y": float(cam.fy), "cx": float(cam.cx),
                 "cy": float(cam.cy), "w": int(cam.width), "h": int(cam.height)}
        if cam.distortion is not None:
            frame.update(zip(("k1", "k2", "p1", "p2"), (float(d) for d in cam.distortion)))
        more = dict(extra.get(cam.id, {}))
        clash = sorted(set(more) & set(frame))
        if clash:
            raise ValueError(f"write_transforms(): {path}: extra[{cam.id!r}] would replace "
                             f"the frame's own key(s) {clash}")
        frames.append({**frame, **more})
    meta: dict = {}
    shared = {(c.width, c.height, c.fx, c.fy, c.cx, c.cy) for c in cameras}
    if len(shared) == 1:
        c = cameras[0]
        meta = {"camera_angle_x": 2.0 * math.atan(0.5 * c.width / c.fx), "w": int(c.width),
                "h": int(c.height)}
    meta.update(top or {})
    meta["frames"] = frames
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- undistorting photos

#: How far (in pixels along the image's longer side) the x and y scale factors from a camera's
#: size to its photo's size may differ for undistort_photo to rescale the camera.
RESCALE_TOLERANCE_PX = 1.0


def _import_cv2(where: str, distortion) -> object:
    try:
        import cv2
    except ImportError:
        raise ImportError(
            f"undistort_photo(): {where} has lens distortion (k1, k2, p1, p2) = {distortion}, "
            f"and undistorting a photo needs OpenCV, which is not installed: "
            f'pip install "invpbr[photos]" (opencv-python-headless), or undistort the photos '
            f"beforehand with colmap image_undistorter") from None
    return cv2


def undistort_photo(image: np.ndarray, camera: Camera, *, mask: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, Camera]:
    """The photo as the pinhole camera that :func:`to_mitsuba_sensor` renders would see it.

    Removes OpenCV radial-tangential distortion (k1, k2, p1, p2; the model of
    :func:`project` with ``apply_distortion=True``) with OpenCV
    (``cv2.initUndistortRectifyMap`` + ``cv2.remap``, bilinear, float32). The result keeps
    the image size and the intrinsics fx, fy, cx, cy, so the point that ``project(camera,
    p, apply_distortion=True)`` put at pixel q in the photo lands at ``project(camera, p)``.
    Pixel centres are at half-integers here and at integers in OpenCV, so OpenCV is given
    the principal point minus 0.5.

    Pixels whose source lies outside the original photo (with k1 > 0, pincushion, near the
    borders) are 0 and False in the returned mask. A camera without distortion returns a
    copy of the image (OpenCV is then not needed).

    Args:
        image: the photo, (H, W) or (H, W, C), linear (or any values: each channel is
            interpolated independently); returned as float32.
        camera: its camera. When (camera.width, camera.height) differs from the image's
            (W, H) by one uniform scale (photos downsampled after calibration), the camera
            is rescaled (:meth:`Camera.rescaled`) first.
        mask: optional (H, W) bool, True where the photo may be used (e.g. the object's
            mask); it is undistorted with the image (bilinear, then > 0.5).

    Returns:
        (image, valid, camera): the undistorted image, same shape as ``image``, float32;
        valid, (H, W) bool: the pixel came from inside the original photo (and inside
        ``mask``); the camera at the image's size with ``distortion=None``.

    Raises:
        ValueError: the image is not (H, W) or (H, W, C); its size is not the camera's at
            one uniform scale; mask's shape is not (H, W).
        ImportError: the camera has distortion and OpenCV (opencv-python-headless) is not
            installed; the message says how to install it.
    """
    where = f"camera {camera.id!r} ({camera.file_path or camera.source or 'no file'})"
    img = np.asarray(image)
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"undistort_photo(): {where}: image has shape {img.shape}, "
                         f"expected (H, W) or (H, W, C)")
    h, w = img.shape[:2]
    if (w, h) != (camera.width, camera.height):
        sx, sy = w / camera.width, h / camera.height
        if abs(sx - sy) * max(camera.width, camera.height) > RESCALE_TOLERANCE_PX:
            raise ValueError(
                f"undistort_photo(): {where}: the image is {w}x{h} but the camera is "
                f"{camera.width}x{camera.height}, not one uniform scale (x {sx:.4g}, "
                f"y {sy:.4g}): this photo does not belong to this camera")
        camera = camera.rescaled(w, h)
    if mask is None:
        keep = np.ones((h, w), bool)
    else:
        keep = np.asarray(mask)
        if keep.shape != (h, w):
            raise ValueError(f"undistort_photo(): {where}: mask has shape {keep.shape}, "
                             f"expected (H, W) = {(h, w)} like the image")
        keep = keep.astype(bool)
    pinhole = replace(camera, distortion=None)
    if not camera.has_distortion:
        return img.astype(np.float32, copy=True), keep.copy(), pinhole

    cv2 = _import_cv2(where, camera.distortion)
    k = np.array([[camera.fx, 0.0, camera.cx - 0.5],
                  [0.0, camera.fy, camera.cy - 0.5],
                  [0.0, 0.0, 1.0]])
    dist = np.array(camera.distortion, dtype=np.float64)
    map_x, map_y = cv2.initUndistortRectifyMap(k, dist, None, k, (w, h), cv2.CV_32FC1)
    # The photo covers [-0.5, W - 0.5) x [-0.5, H - 0.5) in OpenCV's pixel coordinates.
    inside = (map_x >= -0.5) & (map_x < w - 0.5) & (map_y >= -0.5) & (map_y < h - 0.5)
    # One channel at a time: OpenCV 5 interpolates single-channel float images at the
    # exact positions, several channels at positions rounded to 1/32 pixel.
    src = np.asarray(img, dtype=np.float32).reshape(h, w, -1)
    out = np.empty(src.shape, np.float32)
    for c in range(src.shape[2]):
        out[..., c] = cv2.remap(np.ascontiguousarray(src[..., c]), map_x, map_y,
                                interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out = out.reshape(img.shape)
    out[~inside] = 0.0
    valid = inside
    if mask is not None:
        moved = cv2.remap(keep.astype(np.float32), map_x, map_y,
                          interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        valid = inside & (moved > 0.5)
    return out, valid, pinhole
