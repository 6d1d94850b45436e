"""Photo sets with a camera file (invpbr.capture, ``[cameras]`` in invpbr.toml) and the
photo handling around them in invpbr.problem: frames become sensors named by photo stem,
working resolution, undistortion, masks (files, alpha, clipped pixels), gain reference,
config errors, check_folder, and scene.xml's sensor as a template.

Runs on copies of the shipped scenes/real_capture (6 JPEG photos, 64x48). No rendering."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import invpbr

from conftest import write_colmap_text
from invpbr.capture import cameras, images as io
from invpbr.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "scenes" / "real_capture"
IDS = [f"IMG_000{i}" for i in range(1, 7)]
W, H = 64, 48


@pytest.fixture
def capture(tmp_path, mi) -> Path:
    """A fresh copy of scenes/real_capture that a test may change."""
    dst = tmp_path / "real_capture"
    shutil.copytree(REAL, dst)
    return dst


def _set_toml(folder: Path, table: str, line: str) -> None:
    """Add ``line`` at the top of ``[table]`` in folder/invpbr.toml (the table is made
    when missing)."""
    path = folder / "invpbr.toml"
    text = path.read_text()
    if f"[{table}]\n" in text:
        text = text.replace(f"[{table}]\n", f"[{table}]\n{line}\n", 1)
    else:
        text = f"[{table}]\n{line}\n\n" + text
    path.write_text(text)


def _edit_frames(folder: Path, edit, name: str = "transforms.json") -> None:
    path = folder / name
    meta = json.loads(path.read_text())
    edit(meta["frames"])
    path.write_text(json.dumps(meta, indent=2))


def _to_world(sensor) -> np.ndarray:
    return np.array(sensor.world_transform().matrix, dtype=np.float64).reshape(4, 4)


# --------------------------------------------------------------------------- the shipped scene

def test_real_capture_frames_become_sensors(mi):
    problem = invpbr.load_problem(REAL)
    cams = cameras.read_transforms(REAL / "transforms.json")
    assert [v.id for v in problem.views] == IDS == [c.id for c in cams]
    sensors = problem.scene.sensors()
    assert len(sensors) == 6
    assert invpbr.capture.cameras.sensor_ids(problem.scene) == IDS
    for view, cam, sensor in zip(problem.views, cams, sensors):
        assert view.index == IDS.index(view.id)
        expected = cameras.to_mitsuba_sensor(cam)
        np.testing.assert_allclose(_to_world(sensor),
                                   np.array(expected["to_world"].matrix).reshape(4, 4), atol=1e-6)
        p = mi.traverse(sensor)
        np.testing.assert_allclose(float(p["x_fov"][0]), expected["fov"], rtol=1e-6)
        assert float(p["principal_point_offset_x"][0]) == pytest.approx(0.0, abs=1e-7)
        assert tuple(sensor.film().crop_size()) == (W, H)
        # the photo is the frame's file, as io reads it, at the camera file's size
        assert view.photo_path == cam.file_path == REAL / "photos" / f"{view.id}.jpg"
        np.testing.assert_array_equal(view.photo, io.load_image(cam.file_path))
        assert view.camera.c2w.tolist() == cam.c2w.tolist()
    truth = cameras.read_transforms(REAL / "transforms_truth.json")
    assert sorted(problem.true_cameras) == IDS
    for cam in truth:
        np.testing.assert_array_equal(problem.true_cameras[cam.id], cam.c2w)
    # transforms.json is 2 degrees off the truth, so the two files differ
    assert not np.allclose(problem.true_cameras["IMG_0001"], cams[0].c2w, atol=1e-3)
    frames = json.loads((REAL / "transforms_truth.json").read_text())["frames"]
    assert sorted(problem.true_gains) == IDS
    for frame in frames:
        stem = Path(frame["file_path"]).stem
        np.testing.assert_allclose(problem.true_gains[stem], frame["gain"])
    # the simulator's gains have geometric mean 1 per channel
    gains = np.array([problem.true_gains[i] for i in IDS])
    np.testing.assert_allclose(np.exp(np.log(gains).mean(axis=0)), 1.0, atol=1e-9)
    assert [p.key for p in problem.parameters][-1] == "cameras"


# --------------------------------------------------------------------------- working resolution

def test_resolution_rescales_photos_and_intrinsics(capture, mi):
    _set_toml(capture, "cameras", "resolution = [32, 24]")
    problem = invpbr.load_problem(capture)
    full = cameras.read_transforms(capture / "transforms.json")
    points = np.array([[0.0, 0.0, 0.0], [0.6, 0.3, -0.4], [-0.8, -0.5, 0.7]])
    for view, cam in zip(problem.views, full):
        assert view.photo.shape == (24, 32, 3)
        assert view.mask is None or view.mask.shape == (24, 32)
        resized = io.resize_image(io.load_image(cam.file_path), 32, 24)
        np.testing.assert_allclose(view.photo, resized, atol=1e-6)
        sensor = problem.scene.sensors()[view.index]
        assert tuple(sensor.film().crop_size()) == (32, 24)
        # the sensor as loaded sees a point at the same fraction of the image
        small = cameras.camera_from_sensor(sensor)
        uv_full = cameras.project(cam, points) / [W, H]
        uv_small = cameras.project(small, points) / [32, 24]
        assert np.isfinite(uv_full).all()
        np.testing.assert_allclose(uv_small, uv_full, atol=1e-5)
        uv_view = cameras.project(view.camera, points) / [32, 24]
        np.testing.assert_allclose(uv_view, uv_full, atol=1e-9)


def test_resolution_with_another_aspect_is_refused(capture, mi):
    _set_toml(capture, "cameras", "resolution = [32, 32]")
    with pytest.raises(ValueError, match=r"cameras\.resolution = \[32, 32\].*aspect"):
        invpbr.load_problem(capture)


# --------------------------------------------------------------------------- bad frames

def test_missing_photo_names_frame_and_camera_file(capture, mi):
    (capture / "photos" / "IMG_0003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"transforms\.json.*IMG_0003"):
        invpbr.load_problem(capture)


def test_duplicate_photo_stems_are_refused(capture, mi):
    (capture / "photos" / "extra").mkdir()
    shutil.copy(capture / "photos" / "IMG_0001.jpg", capture / "photos" / "extra" / "IMG_0001.jpg")
    _edit_frames(capture, lambda frames: frames[1].update(file_path="photos/extra/IMG_0001.jpg"))
    with pytest.raises(ValueError, match=r"two frames have the photo name 'IMG_0001'"):
        invpbr.load_problem(capture)


def test_distorted_camera_refused_without_undistort(capture, mi):
    _edit_frames(capture, lambda frames: frames[1].update(k1=0.1))
    _set_toml(capture, "cameras", "undistort = false")
    with pytest.raises(ValueError, match=r"camera 'IMG_0002' has lens distortion.*undistort"):
        invpbr.load_problem(capture)


def test_undistort_gives_the_view_a_mask(capture, mi):
    pytest.importorskip("cv2", reason="opencv-python-headless is not installed")
    _edit_frames(capture, lambda frames: frames[1].update(k1=0.1))
    _set_toml(capture, "photos", "saturation = 0")
    problem = invpbr.load_problem(capture)
    view = problem.views[1]
    assert view.id == "IMG_0002"
    cam = cameras.read_transforms(capture / "transforms.json")[1]
    assert cam.has_distortion
    photo, valid, pinhole = cameras.undistort_photo(io.load_image(cam.file_path), cam)
    assert view.mask is not None and not valid.all()
    np.testing.assert_array_equal(view.mask, valid)
    np.testing.assert_array_equal(view.photo, photo)
    # pincushion (k1 > 0): the corners have no source pixel, the centre has
    assert not view.mask[0, 0] and not view.mask[-1, -1] and view.mask[H // 2, W // 2]
    assert view.camera.distortion is None
    # the other (undistorted) frames keep every pixel
    assert all(v.mask is None for v in problem.views if v.id != "IMG_0002")


# --------------------------------------------------------------------------- masks

def test_mask_file_restricts_the_view(capture, mi):
    _set_toml(capture, "photos", "saturation = 0")
    mask = np.zeros((H, W), np.float32)
    mask[8:40, 10:50] = 1.0
    io.save_image(capture / "masks" / "IMG_0002.png", mask)
    problem = invpbr.load_problem(capture)
    by_id = {v.id: v for v in problem.views}
    np.testing.assert_array_equal(by_id["IMG_0002"].mask, mask > 0.5)
    assert all(by_id[i].mask is None for i in IDS if i != "IMG_0002")


def test_mask_file_and_alpha_are_combined_and_resized(capture, mi):
    """A mask file and the photo's alpha both restrict; at a working resolution the
    mask is resized by area coverage."""
    from PIL import Image

    _set_toml(capture, "photos", "saturation = 0")
    _set_toml(capture, "cameras", "resolution = [32, 24]")
    rgb = np.asarray(Image.open(capture / "photos" / "IMG_0004.jpg").convert("RGB"))
    alpha = np.zeros((H, W), np.uint8)
    alpha[:, :40] = 255
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(capture / "photos" / "IMG_0004.png")
    (capture / "photos" / "IMG_0004.jpg").unlink()
    for name in ("transforms.json", "transforms_truth.json"):
        _edit_frames(capture, lambda frames: frames[3].update(file_path="photos/IMG_0004.png"),
                     name)
    mask = np.zeros((H, W), np.float32)
    mask[:, 16:] = 1.0
    io.save_image(capture / "masks" / "IMG_0004.png", mask)
    view = invpbr.load_problem(capture).views[3]
    expected = io.resize_mask((alpha > 127) & (mask > 0.5), 32, 24)
    assert expected[:, 8:20].all() and not expected[:, :8].any() and not expected[:, 20:].any()
    np.testing.assert_array_equal(view.mask, expected)


def test_rgba_photo_alpha_becomes_the_mask(capture, mi):
    from PIL import Image

    _set_toml(capture, "photos", "saturation = 0")
    rgb = np.asarray(Image.open(capture / "photos" / "IMG_0004.jpg").convert("RGB"))
    alpha = np.zeros((H, W), np.uint8)
    alpha[10:40, 5:45] = 255
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(capture / "photos" / "IMG_0004.png")
    (capture / "photos" / "IMG_0004.jpg").unlink()
    for name in ("transforms.json", "transforms_truth.json"):
        _edit_frames(capture, lambda frames: frames[3].update(file_path="photos/IMG_0004"), name)
    problem = invpbr.load_problem(capture)
    view = problem.views[3]
    assert view.id == "IMG_0004" and view.photo_path.name == "IMG_0004.png"
    np.testing.assert_array_equal(view.mask, alpha > 127)
    # straight colour: the RGB as the PNG stores it, alpha dropped
    np.testing.assert_allclose(view.photo, io.load_image(view.photo_path), atol=0)
    assert all(v.mask is None for v in problem.views if v.id != "IMG_0004")


def test_saturated_pixels_of_8bit_photos_are_masked(capture, mi):
    # IMG_0005 as a linear EXR, brighter than 1 in places: never treated as clipped
    bright = 2.0 * io.load_image(capture / "photos" / "IMG_0005.jpg")
    io.save_image(capture / "photos" / "IMG_0005.exr", bright)
    (capture / "photos" / "IMG_0005.jpg").unlink()
    for name in ("transforms.json", "transforms_truth.json"):
        _edit_frames(capture, lambda frames: frames[4].update(file_path="photos/IMG_0005.exr"),
                     name)
    assert (bright.max(axis=-1) >= 0.98).any()

    problem = invpbr.load_problem(capture)   # default saturation 0.98
    assert problem.config.photos.saturation == 0.98
    assert problem.clipped_bounds()  # (it refines cameras: "auto" makes them bounds)
    masked = 0
    for view in problem.views:
        clipped = view.photo.max(axis=-1) >= 0.98
        if view.id == "IMG_0005" or not clipped.any():
            assert view.mask is None, view.id
        else:
            np.testing.assert_array_equal(view.mask, ~clipped)
            masked += 1
            # the clipped channels are kept: [photos] clipped = "auto" (the default) counts
            # their pixels again, with the photo's value as the renders' ceiling there
            np.testing.assert_array_equal(view.clipped, view.photo >= 0.98)
            mask, ceiling = view.loss_pixels(problem.clipped_bounds())
            assert mask is None
            np.testing.assert_array_equal(ceiling, np.where(view.clipped.any(axis=-1)[..., None],
                                                            view.photo, np.inf))
            assert view.loss_pixels(False) == (view.mask, None)
    assert masked >= 3  # the shipped JPEGs have clipped highlights

    text = (capture / "invpbr.toml").read_text()
    _set_toml(capture, "photos", "saturation = 0.5")
    for view in invpbr.load_problem(capture).views:
        clipped = view.photo.max(axis=-1) >= 0.5
        if view.id == "IMG_0005":
            assert view.mask is None
        else:
            assert clipped.any() and not clipped.all()
            np.testing.assert_array_equal(view.mask, ~clipped)

    (capture / "invpbr.toml").write_text(text)
    _set_toml(capture, "photos", "saturation = 0")
    assert all(v.mask is None for v in invpbr.load_problem(capture).views)


# --------------------------------------------------------------------------- config errors

def test_gain_reference_must_be_a_fitted_photo(capture, mi):
    _set_toml(capture, "photos", 'gain_reference = "nope"')
    with pytest.raises(ValueError, match=r"gain_reference = 'nope'.*IMG_0001, IMG_0002, IMG_0003"):
        invpbr.load_problem(capture)
    # a held-out photo cannot be the reference either
    text = (capture / "invpbr.toml").read_text().replace('"nope"', '"IMG_0006"')
    (capture / "invpbr.toml").write_text(text + '\n[evaluate]\nheld_out = ["IMG_0006"]\n')
    with pytest.raises(ValueError, match=r"gain_reference = 'IMG_0006' is not a fitted photo"):
        invpbr.load_problem(capture)
    text = (capture / "invpbr.toml").read_text().replace('held_out = ["IMG_0006"]', "")
    (capture / "invpbr.toml").write_text(text)
    problem = invpbr.load_problem(capture)
    assert problem.config.photos.gain_reference == "IMG_0006"


def test_cameras_truth_needs_file(capture, mi):
    text = (capture / "invpbr.toml").read_text()
    text = text.replace('file = "transforms.json"', "")
    (capture / "invpbr.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"cameras\.truth needs cameras\.file"):
        invpbr.load_problem(capture)


def test_unknown_cameras_key(capture, mi):
    _set_toml(capture, "cameras", 'undistrot = true')
    with pytest.raises(ConfigError, match=r"unknown key cameras\.undistrot"):
        invpbr.load_problem(capture)


# --------------------------------------------------------------------------- check_folder

def test_check_folder(capture, mi):
    assert invpbr.check_folder(capture) == []
    (capture / "photos" / "IMG_0005.jpg").unlink()
    problems = invpbr.check_folder(capture)
    assert len(problems) == 1
    assert "IMG_0005" in problems[0] and "transforms.json" in problems[0]


# --------------------------------------------------------------------------- scene.xml sensor

TEMPLATE = """
    <sensor type="perspective" id="old">
        <float name="fov" value="60"/>
        <float name="near_clip" value="0.25"/>
        <transform name="to_world">
            <lookat origin="0, 0, 9" target="0, 0, 0" up="0, 1, 0"/>
        </transform>
        <sampler type="stratified"><integer name="sample_count" value="9"/></sampler>
        <film type="hdrfilm">
            <integer name="width" value="10"/>
            <integer name="height" value="10"/>
            <rfilter type="gaussian"/>
        </film>
    </sensor>
</scene>"""


def test_scene_xml_sensor_is_the_template(capture, mi):
    xml = (capture / "scene.xml").read_text()
    (capture / "scene.xml").write_text(xml.replace("</scene>", TEMPLATE))
    problem = invpbr.load_problem(capture)
    cams = cameras.read_transforms(capture / "transforms.json")
    sensors = problem.scene.sensors()
    assert invpbr.capture.cameras.sensor_ids(problem.scene) == IDS   # "old" replaced
    for sensor, cam in zip(sensors, cams):
        assert sensor.film().rfilter().class_name() == "GaussianFilter"
        assert sensor.sampler().class_name() == "StratifiedSampler"
        assert sensor.sampler().sample_count() == 9
        assert float(mi.traverse(sensor)["near_clip"]) == pytest.approx(0.25)
        assert tuple(sensor.film().crop_size()) == (W, H)           # the camera's, not 10x10
        np.testing.assert_allclose(
            _to_world(sensor), np.array(cameras.to_mitsuba_sensor(cam)["to_world"].matrix)
            .reshape(4, 4), atol=1e-6)
        fov = float(mi.traverse(sensor)["x_fov"][0])
        assert fov == pytest.approx(45.0, rel=1e-5)                  # not the template's 60

    # without a template the film is a box-filtered hdrfilm with sample_border
    plain = invpbr.load_problem(REAL).scene.sensors()[0]
    assert plain.film().rfilter().class_name() == "BoxFilter"
    assert re.search(r"sample_border\s*=\s*1|sample_border\s*=\s*true", str(plain.film()))


def test_true_cameras_need_no_photos(capture, mi):
    """transforms_truth.json in another folder (its photo paths lead nowhere): its frames
    still give the true cameras, since they carry their size."""
    from invpbr.problem import load_problem

    (capture / "truth").mkdir()
    (capture / "transforms_truth.json").rename(capture / "truth" / "transforms_truth.json")
    toml = capture / "invpbr.toml"
    toml.write_text(toml.read_text().replace('truth = "transforms_truth.json"',
                                             'truth = "truth/transforms_truth.json"'))
    problem = load_problem(capture)
    assert sorted(problem.true_cameras) == [f"IMG_{i:04d}" for i in range(1, 7)]


def test_truth_xml_sensors_are_the_true_cameras(capture, mi):
    """Without [cameras] truth, truth.xml's sensors with the same ids are the truth."""
    from invpbr.estimates.cameras import camera_errors
    from invpbr.problem import load_problem

    text = (capture / "invpbr.toml").read_text()
    (capture / "invpbr.toml").write_text(
        "\n".join(ln for ln in text.splitlines() if not ln.startswith("truth =")) + "\n")
    problem = load_problem(capture)
    start = {v.id: v.camera.c2w for v in problem.views}
    errors = camera_errors(start, problem.true_cameras)
    assert sorted(errors) == [f"IMG_{i:04d}" for i in range(1, 7)]
    for e in errors.values():  # the file's cameras are 2 degrees off truth.xml's sensors
        assert abs(e["rotation_deg"] - 2.0) < 1e-3


def test_colmap_model_folder_as_camera_file(capture, mi):
    """The same cameras as a COLMAP text model (PINHOLE, world-to-camera quaternions) in
    capture/sparse, photos in capture/images: the sensors equal the transforms.json ones."""
    from invpbr.capture.cameras import read_transforms
    from invpbr.problem import load_problem

    cams = read_transforms(capture / "transforms.json")
    (capture / "images").mkdir()
    for c in cams:
        shutil.copy(c.file_path, capture / "images" / c.file_path.name)
    write_colmap_text(capture / "sparse", cams)
    reference = load_problem(capture)
    toml = capture / "invpbr.toml"
    toml.write_text(toml.read_text().replace('file = "transforms.json"', 'file = "sparse"'))
    problem = load_problem(capture)
    assert [v.id for v in problem.views] == [v.id for v in reference.views]
    for v, r in zip(problem.views, reference.views):
        assert v.photo_path == capture / "images" / r.photo_path.name
        np.testing.assert_allclose(v.photo, r.photo)
        np.testing.assert_allclose(_to_world(problem.scene.sensors()[v.index]),
                                   _to_world(reference.scene.sensors()[r.index]), atol=1e-5)
