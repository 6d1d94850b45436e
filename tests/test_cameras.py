"""Camera-file readers: each convention is checked three ways that must agree on a known
3D point's pixel: the file's own convention worked out by hand, `cameras.project`, and the
ray Mitsuba's sensor (from `to_mitsuba_sensor`) shoots through that pixel."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

import invpbr
from invpbr.capture import cameras

from conftest import sensor_ray_miss

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multiview"

W, H = 48, 32
POINT = np.array([0.3, -0.2, 0.25])


def _look_at_opencv(origin, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV camera-to-world (x right, y down, z forward)."""
    z = np.asarray(target, float) - origin
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, :3] = np.stack([x, y, z], axis=1)
    m[:3, 3] = origin
    return m


C2W_CV = _look_at_opencv(np.array([3.0, -2.0, 1.5]), np.array([0.1, 0.05, 0.0]))


def _write_png(path: Path, w: int = W, h: int = H) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def _ray_miss(camera: cameras.Camera, pixel, point, **kw) -> float:
    """Distance from `point` to the ray Mitsuba's sensor shoots through `pixel`."""
    invpbr.init_backend()
    import mitsuba as mi
    return sensor_ray_miss(mi.load_dict(cameras.to_mitsuba_sensor(camera, **kw)), pixel, point)


def _check(camera, expected_uv, **kw):
    uv = cameras.project(camera, POINT[None])[0]
    np.testing.assert_allclose(uv, expected_uv, atol=1e-6)
    assert _ray_miss(camera, expected_uv, POINT, **kw) < 1e-4
    # a pixel off by one misses clearly: the check can fail
    assert _ray_miss(camera, expected_uv + [1.0, 0.0], POINT, **kw) > 1e-2
    half = camera.rescaled(W // 2, H // 2)
    assert _ray_miss(camera, expected_uv / 2, POINT, resolution=(W // 2, H // 2)) < 1e-4
    np.testing.assert_allclose(cameras.project(half, POINT[None])[0], expected_uv / 2, atol=1e-6)


def _expected_opengl(c2w_gl, f, cx, cy):
    p = np.linalg.inv(c2w_gl) @ np.append(POINT, 1.0)
    return np.array([cx + f * p[0] / -p[2], cy - f * p[1] / -p[2]])


def _write_transforms(tmp_path, top, frame_extra=None, file_path="images/r_0"):
    c2w_gl = C2W_CV @ np.diag([1.0, -1.0, -1.0, 1.0])
    frame = {"file_path": file_path, "transform_matrix": c2w_gl.tolist(), **(frame_extra or {})}
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps({**top, "frames": [frame]}))
    return path, c2w_gl


def test_transforms_camera_angle_x(tmp_path):
    _write_png(tmp_path / "images" / "r_0.png")
    angle = 0.69
    path, c2w_gl = _write_transforms(tmp_path, {"camera_angle_x": angle})
    (cam,) = cameras.read_transforms(path)
    f = 0.5 * W / math.tan(0.5 * angle)
    assert (cam.id, cam.width, cam.height, cam.file_path) == ("r_0", W, H,
                                                              tmp_path / "images" / "r_0.png")
    assert cam.fx == pytest.approx(f) and cam.fy == pytest.approx(f)
    _check(cam, _expected_opengl(c2w_gl, f, W / 2, H / 2))


def test_transforms_fl_and_off_centre_principal_point(tmp_path):
    _write_png(tmp_path / "images" / "a.jpg")
    top = {"fl_x": 40.0, "fl_y": 40.0, "cx": 20.5, "cy": 18.25, "w": W, "h": H,
           "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0}
    path, c2w_gl = _write_transforms(tmp_path, top, {"cx": 27.0}, file_path="images/a.jpg")
    (cam,) = cameras.read_transforms(path)
    assert (cam.cx, cam.cy, cam.distortion) == (27.0, 18.25, (0.0, 0.0, 0.0, 0.0))
    _check(cam, _expected_opengl(c2w_gl, 40.0, 27.0, 18.25))


# -- COLMAP writers (the format of colmap/scripts/python/read_write_model.py)

def _colmap_pose():
    w2c = np.linalg.inv(C2W_CV)
    r, t = w2c[:3, :3], w2c[:3, 3]
    qw = math.sqrt(max(0.0, 1 + np.trace(r))) / 2
    q = np.array([qw, (r[2, 1] - r[1, 2]) / (4 * qw), (r[0, 2] - r[2, 0]) / (4 * qw),
                  (r[1, 0] - r[0, 1]) / (4 * qw)])
    return q, t


def _expected_opencv(fx, fy, cx, cy):
    q, t = _colmap_pose()
    p = cameras._qvec_to_rotmat(q) @ POINT + t
    return np.array([fx * p[0] / p[2] + cx, fy * p[1] / p[2] + cy])


def _num(v) -> str:
    return repr(float(v))


def _write_colmap_text(folder, model, params):
    q, t = _colmap_pose()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cameras.txt").write_text(
        f"# Camera list\n1 {model} {W} {H} {' '.join(map(_num, params))}\n")
    (folder / "images.txt").write_text(
        "# Image list\n"
        f"1 {' '.join(map(_num, q))} {' '.join(map(_num, t))} 1 view.png\n\n")
    (folder / "points3D.txt").write_text(
        f"# points\n1 {' '.join(map(_num, POINT))} 255 0 0 0.5 1 0\n")


def _write_colmap_binary(folder, model_id, params):
    q, t = _colmap_pose()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cameras.bin").write_bytes(
        struct.pack("<Q", 1) + struct.pack("<iiQQ", 1, model_id, W, H)
        + struct.pack(f"<{len(params)}d", *params))
    (folder / "images.bin").write_bytes(
        struct.pack("<Q", 1) + struct.pack("<i7di", 1, *q, *t, 1) + b"view.png\x00"
        + struct.pack("<Q", 1) + struct.pack("<ddq", 3.0, 4.0, 1))
    (folder / "points3D.bin").write_bytes(
        struct.pack("<Q", 2)
        + struct.pack("<Q3d3BdQ", 1, *POINT, 255, 0, 0, 0.5, 1) + struct.pack("<ii", 1, 0)
        + struct.pack("<Q3d3BdQ", 2, 1.0, 2.0, 3.0, 0, 0, 0, 0.1, 0))


def test_colmap_text(tmp_path):
    _write_colmap_text(tmp_path / "sparse", "PINHOLE", [41.0, 41.0, 22.0, 17.5])
    _write_png(tmp_path / "images" / "view.png")
    (cam,) = cameras.read_colmap(tmp_path / "sparse")
    assert cam.id == "view" and cam.file_path == tmp_path / "images" / "view.png"
    _check(cam, _expected_opencv(41.0, 41.0, 22.0, 17.5))
    np.testing.assert_allclose(cameras.read_colmap_points(tmp_path / "sparse" / "points3D.txt"),
                               POINT[None])


@pytest.mark.parametrize("model_id, params, pinhole", [
    (0, [39.0, 25.0, 15.0], (39.0, 39.0, 25.0, 15.0)),                       # SIMPLE_PINHOLE
    (2, [39.0, 25.0, 15.0, 0.0], (39.0, 39.0, 25.0, 15.0)),                  # SIMPLE_RADIAL
    (3, [39.0, 25.0, 15.0, 0.0, 0.0], (39.0, 39.0, 25.0, 15.0)),             # RADIAL
    (4, [39.0, 39.0, 21.0, 14.0, 0, 0, 0, 0], (39.0, 39.0, 21.0, 14.0)),     # OPENCV
])
def test_colmap_binary(tmp_path, model_id, params, pinhole):
    _write_colmap_binary(tmp_path, model_id, params)
    (cam,) = cameras.read_colmap(tmp_path)
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == pinhole
    _check(cam, _expected_opencv(*pinhole))
    np.testing.assert_allclose(cameras.read_colmap_points(tmp_path / "points3D.bin"),
                               [POINT, [1.0, 2.0, 3.0]])


def test_distortion_refused_unless_allowed(tmp_path):
    _write_colmap_binary(tmp_path, 4, [39.0, 39.0, 21.0, 14.0, -0.05, 0.01, 0.0, 0.0])
    (cam,) = cameras.read_colmap(tmp_path)
    assert cam.distortion == (-0.05, 0.01, 0.0, 0.0)
    with pytest.raises(ValueError, match="camera 'view'.*view.png.*undistort"):
        cameras.to_mitsuba_sensor(cam)
    assert cameras.to_mitsuba_sensor(cam, allow_distortion=True)["type"] == "perspective"
    # distortion moves the projected pixel only when asked to
    x, y = 0.4, 0.3   # normalized image coordinates of a point off the axis
    point = cam.c2w[:3, :3] @ [5 * x, 5 * y, 5.0] + cam.c2w[:3, 3]
    radial = 1 - 0.05 * (x * x + y * y) + 0.01 * (x * x + y * y) ** 2
    np.testing.assert_allclose(cameras.project(cam, point[None])[0], [39 * x + 21, 39 * y + 14])
    np.testing.assert_allclose(cameras.project(cam, point[None], apply_distortion=True)[0],
                               [39 * x * radial + 21, 39 * y * radial + 14])


def test_non_square_pixels_refused(tmp_path):
    _write_colmap_text(tmp_path, "PINHOLE", [41.0, 45.0, 22.0, 17.5])
    (cam,) = cameras.read_colmap(tmp_path)
    with pytest.raises(ValueError, match="camera 'view'.*fx = 41 != fy = 45.*square pixels"):
        cameras.to_mitsuba_sensor(cam)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        cameras.read_transforms(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        cameras.read_transforms(bad)
    path, _ = _write_transforms(tmp_path, {"camera_angle_x": 0.7}, file_path="images/gone")
    with pytest.raises(FileNotFoundError, match="transforms.json, frames\\[0\\].*'images/gone'"):
        cameras.read_transforms(path)
    assert cameras.read_transforms(path, skip_missing=True) == []
    with pytest.raises(FileNotFoundError, match="neither cameras.bin"):
        cameras.read_colmap(tmp_path)
    _write_colmap_text(tmp_path / "fish", "OPENCV_FISHEYE", [1.0] * 8)
    with pytest.raises(ValueError, match="camera 1 has COLMAP model 'OPENCV_FISHEYE'"):
        cameras.read_colmap(tmp_path / "fish")
    (tmp_path / "unk").mkdir()
    (tmp_path / "unk" / "cameras.txt").write_text("1 WEIRD 4 4 1 2 3\n")
    with pytest.raises(ValueError, match="cameras.txt: camera 1 has unknown COLMAP model 'WEIRD'"):
        cameras.read_colmap_cameras(tmp_path / "unk" / "cameras.txt")


def test_llff_convention(tmp_path):
    """An LLFF row [down, right, back | t | h, w, f] is the OpenCV pose (right, down, fwd)."""
    c2w = C2W_CV
    m = np.stack([c2w[:3, 1], c2w[:3, 0], -c2w[:3, 2], c2w[:3, 3], [H, W, 40.0]], axis=1)
    np.save(tmp_path / "poses_bounds.npy", np.append(m.ravel(), [0.1, 10.0])[None])
    _write_png(tmp_path / "images" / "img.png", W // 2, H // 2)   # downsampled photo
    (cam,) = cameras.read_llff(tmp_path)
    assert (cam.id, cam.width, cam.height, cam.fx) == ("img", W // 2, H // 2, 20.0)
    np.testing.assert_allclose(cam.c2w, c2w, atol=1e-12)
    with pytest.raises(ValueError, match="1 rows, image_names has 2"):
        cameras.read_llff(tmp_path, image_names=["a.png", "b.png"])


# -- real data

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real photo data absent: {DATA}")


@needs_data
def test_fox_transforms():
    cams = cameras.read_transforms(DATA / "fox" / "transforms.json")
    images = sorted((DATA / "fox" / "images").glob("*.jpg"))
    assert len(cams) == len(images) == 50
    assert sorted(c.file_path for c in cams) == images
    assert cams[0].has_distortion
    # the original file names 67 frames, only the 50 present photos are kept
    assert len(cameras.read_transforms(DATA / "fox" / "transforms_original.json",
                                       skip_missing=True)) == 50


@needs_data
def test_mother_child_points_land_in_masks():
    """COLMAP points (same world frame as poses_bounds.npy) against the masks.

    There is no images.bin, so poses come from poses_bounds.npy (read_llff); its 104 rows
    belong to the sorted original names, of which 19 photos are present: cameras.json
    gives each present photo's row. Most COLMAP points lie on the table and the room, so
    the check is leave-one-out: the points inside the mask in every other view where they
    are in frame (the object's visual hull) must fall inside this view's mask.
    """
    from PIL import Image
    folder = DATA / "mother_child"
    meta = json.loads((folder / "cameras.json").read_text())
    rows = {f["row_in_poses_bounds"]: Path(f["file_path"]).name for f in meta["frames"]}
    cams = cameras.read_llff(folder, image_names=rows)
    assert len(cams) == 19
    colmap = cameras.read_colmap_cameras(folder / "colmap_cameras.bin")[1]
    assert colmap.model == "SIMPLE_RADIAL"
    for cam, frame in zip(cams, meta["frames"]):
        np.testing.assert_allclose(cam.c2w @ np.diag([1, -1, -1, 1]), frame["c2w_opengl"],
                                   atol=1e-9)
        assert cam.fx == pytest.approx(colmap.params[0] * cam.width / colmap.width)
    points = cameras.read_colmap_points(folder / "colmap_points3D.bin")
    in_frame, in_mask = [], []
    for cam in cams:
        mask = np.asarray(Image.open(folder / "masks" / f"{cam.id}.png"))
        uv = cameras.project(cam, points)
        ok = np.isfinite(uv).all(1) & (uv >= 0).all(1) & (uv < [cam.width, cam.height]).all(1)
        inside = np.zeros(len(points), bool)
        px = uv[ok].astype(int)
        inside[ok] = mask[px[:, 1], px[:, 0]] > 127
        in_frame.append(ok)
        in_mask.append(inside)
    in_frame, in_mask = np.array(in_frame), np.array(in_mask)
    fractions = {}
    for i, cam in enumerate(cams):
        others_frame, others_mask = np.delete(in_frame, i, 0), np.delete(in_mask, i, 0)
        hull = (others_mask | ~others_frame).all(0) & (others_frame.sum(0) >= 10) & in_frame[i]
        assert hull.sum() > 1000
        fractions[cam.id] = in_mask[i][hull].mean()
    assert min(fractions.values()) >= 0.9, fractions
