"""The capture simulator (`invpbr render` with noise, gains, 8-bit, JPEG and camera errors)
and the camera helpers it uses (`cameras.camera_from_sensor`, `cameras.write_transforms`).

Scenes are a copy of scenes/principled_sphere with 24x16 films (non-square, so a swapped
width and height shows), rendered at 2-4 spp."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import invpbr
from invpbr.capture import cameras, images as io
from invpbr.run.cli import main
from invpbr.capture.simulate import NOISE_FLOOR
from invpbr.render.photos import render_clean, simulate_capture

from conftest import sensor_ray_miss

REPO = Path(__file__).resolve().parents[1]
W, H = 24, 16
POINT = np.array([0.3, -0.2, 0.25])
#: principled_sphere's bounding box: the ground (a 10 x 10 rectangle at y = -1) and the
#: unit sphere at the origin: [-5, -1, -5] to [5, 1, 5].
DIAGONAL = math.sqrt(10.0 ** 2 + 2.0 ** 2 + 10.0 ** 2)


@pytest.fixture(scope="module")
def scene_master(tmp_path_factory) -> Path:
    src = REPO / "scenes" / "principled_sphere"
    dst = tmp_path_factory.mktemp("sim") / "sphere"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("photos"))
    for name in ("truth.xml", "scene.xml"):
        text = (dst / name).read_text()
        text = text.replace('name="width" value="64"', f'name="width" value="{W}"')
        text = text.replace('name="height" value="64"', f'name="height" value="{H}"')
        (dst / name).write_text(text)
    return dst


@pytest.fixture
def scene(scene_master, tmp_path) -> Path:
    """A fresh copy of the small principled_sphere folder (no photos)."""
    dst = tmp_path / "sphere"
    shutil.copytree(scene_master, dst)
    return dst


@pytest.fixture(scope="module")
def clean(scene_master):
    """The clean renders (spp 4) of the scene's sensors: (ids, images)."""
    _, ids, images = render_clean(scene_master, spp=4)
    return ids, images


# --------------------------------------------------------------------------- cameras

def _sensor(**kw):
    invpbr.init_backend()
    import mitsuba as mi
    props = {"type": "perspective", "fov": 35.0, "fov_axis": "x",
             "to_world": mi.ScalarTransform4f().look_at(origin=[3.0, -2.0, 1.5],
                                                        target=[0.1, 0.05, 0.0], up=[0, 0, 1]),
             "film": {"type": "hdrfilm", "width": W, "height": H}}
    film = kw.pop("film", {})
    props.update(kw)
    props["film"].update(film)
    return mi.load_dict(props)


def _ray_miss(sensor, pixel, point) -> float:
    return sensor_ray_miss(sensor, pixel, point)


def _params(sensor) -> dict:
    import mitsuba as mi
    p = mi.traverse(sensor)
    scalar = {k: float(np.ravel(np.array(p[k]))[0])
              for k in ("x_fov", "principal_point_offset_x", "principal_point_offset_y")}
    return {**scalar, "to_world": np.array(p["to_world"].matrix).reshape(4, 4),
            "size": tuple(int(v) for v in sensor.film().crop_size())}


@pytest.mark.parametrize("kw", [
    {},
    {"fov_axis": "y", "fov": 30.0},
    {"fov_axis": "diagonal", "principal_point_offset_x": 0.08},
    {"fov_axis": "smaller", "principal_point_offset_x": -0.05, "principal_point_offset_y": 0.1},
], ids=["x", "y", "diagonal", "smaller_offset"])
def test_sensor_camera_file_round_trip(tmp_path, kw):
    """sensor -> camera -> transforms.json -> camera -> sensor: the same sensor, and a point
    projects (cameras.project) to the pixel whose Mitsuba ray passes through it."""
    import mitsuba as mi
    sensor = _sensor(**kw)
    photo = tmp_path / "photos" / "cam.png"
    io.save_image(photo, np.zeros((H, W, 3), np.float32))
    cam = cameras.camera_from_sensor(sensor, "cam", file_path=photo)
    assert (cam.id, cam.width, cam.height, cam.fx) == ("cam", W, H, pytest.approx(cam.fy))
    uv = cameras.project(cam, POINT[None])[0]
    assert _ray_miss(sensor, uv, POINT) < 1e-4
    assert _ray_miss(sensor, uv + [1.0, 0.0], POINT) > 1e-2   # the check can fail

    path = cameras.write_transforms(tmp_path / "transforms.json", [cam],
                                    extra={"cam": {"gain": [1.0, 2.0, 3.0]}})
    frame = json.loads(path.read_text())["frames"][0]
    assert frame["file_path"] == "photos/cam.png" and frame["gain"] == [1.0, 2.0, 3.0]
    assert {"fl_x", "fl_y", "cx", "cy", "w", "h", "transform_matrix"} <= set(frame)
    (back,) = cameras.read_transforms(path)
    assert back.file_path == photo
    np.testing.assert_allclose(back.c2w, cam.c2w, atol=1e-12)
    assert (back.fx, back.cx, back.cy) == pytest.approx((cam.fx, cam.cx, cam.cy), rel=1e-12)

    again = mi.load_dict(cameras.to_mitsuba_sensor(back))
    a, b = _params(sensor), _params(again)
    np.testing.assert_allclose(b["to_world"], a["to_world"], atol=1e-6)
    assert b["size"] == a["size"] == (W, H)
    for key in ("x_fov", "principal_point_offset_x", "principal_point_offset_y"):
        assert b[key] == pytest.approx(a[key], abs=1e-5), key
    assert _ray_miss(again, uv, POINT) < 1e-4


def test_camera_of_a_cropped_film():
    """A crop window: the camera is the window's image (principal point shifted)."""
    sensor = _sensor(film={"crop_offset_x": 5, "crop_offset_y": 2, "crop_width": 14,
                           "crop_height": 12}, fov=60.0)
    cam = cameras.camera_from_sensor(sensor)
    assert (cam.id, cam.width, cam.height) == (sensor.id(), 14, 12)
    assert (cam.cx, cam.cy) == pytest.approx((W / 2 - 5, H / 2 - 2))
    uv = cameras.project(cam, POINT[None])[0]
    assert _ray_miss(sensor, uv, POINT) < 1e-4


def test_camera_from_sensor_refuses(tmp_path):
    import mitsuba as mi
    ortho = mi.load_dict({"type": "orthographic", "film": {"type": "hdrfilm", "width": 8,
                                                           "height": 8}})
    with pytest.raises(ValueError, match="sensor 'o' is a .*only perspective sensors"):
        cameras.camera_from_sensor(ortho, "o")
    # Mitsuba itself refuses scale factors, but not a mirror
    mirrored = _sensor(to_world=mi.ScalarTransform4f().scale([-1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="sensor 'm': to_world is not a rigid transform"):
        cameras.camera_from_sensor(mirrored, "m")


def test_write_transforms_refuses(tmp_path):
    cam = cameras.camera_from_sensor(_sensor(), "a")
    with pytest.raises(ValueError, match=r"extra names camera\(s\) \['b'\]"):
        cameras.write_transforms(tmp_path / "t.json", [cam], extra={"b": {"gain": 1}})
    with pytest.raises(ValueError, match=r"extra\['a'\] would replace .*\['fl_x'\]"):
        cameras.write_transforms(tmp_path / "t.json", [cam], extra={"a": {"fl_x": 1}})
    with pytest.raises(ValueError, match=r"camera ids \['a'\] appear more than once"):
        cameras.write_transforms(tmp_path / "t.json", [cam, cam])
    assert not (tmp_path / "t.json").exists()


# --------------------------------------------------------------------------- photos

def _srgb(x):
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def test_gains_and_exr_photos(scene, clean):
    ids, images = clean
    out = simulate_capture(scene, spp=4, exposure=0.7, white_balance=0.2, seed=5)
    gains = np.array([out["gains"][i] for i in ids])
    assert gains.shape == (3, 3)
    np.testing.assert_allclose(np.exp(np.log(gains).mean(axis=0)), 1.0, atol=1e-12)
    assert np.ptp(gains[:, 0]) > 0.1                 # the gains do differ
    assert out["photos"] == [scene / "photos" / f"{i}.exr" for i in ids]
    for sid, image, g in zip(ids, images, gains):
        photo = io.load_image(scene / "photos" / f"{sid}.exr")
        np.testing.assert_allclose(photo, image * g, rtol=1e-5, atol=1e-6)
    # the true cameras, with their gains, in transforms_truth.json
    truth = json.loads((scene / "transforms_truth.json").read_text())
    assert truth["invpbr_simulated"]["exposure"] == 0.7
    for frame, sid, g in zip(truth["frames"], ids, gains):
        assert frame["file_path"] == f"photos/{sid}.exr"
        np.testing.assert_allclose(frame["gain"], g, rtol=1e-12)
    read = cameras.read_transforms(scene / "transforms_truth.json")
    scene_mi = invpbr.load_scene(scene / "truth.xml")
    for cam, sensor in zip(read, scene_mi.sensors()):
        true = cameras.camera_from_sensor(sensor)
        np.testing.assert_allclose(cam.c2w, true.c2w, atol=1e-12)
        assert (cam.id, cam.width, cam.height, cam.fx) == (true.id, W, H, pytest.approx(true.fx))
    frames = json.loads((scene / "transforms.json").read_text())["frames"]
    assert all("gain" not in f for f in frames)


def test_no_options_is_a_plain_render(scene, clean):
    ids, images = clean
    (scene / "transforms.json").write_text('{"frames": []}')   # a user's file is kept
    out = simulate_capture(scene, spp=4)
    assert out["transforms"] is None and out["transforms_truth"] is None
    assert all(g == [1.0, 1.0, 1.0] for g in out["gains"].values())
    for sid, image in zip(ids, images):
        np.testing.assert_allclose(io.load_image(scene / "photos" / f"{sid}.exr"), image,
                                   rtol=1e-6, atol=1e-7)
    assert (scene / "transforms.json").read_text() == '{"frames": []}'


def test_png_is_8bit_srgb_and_saturates(scene, clean):
    from PIL import Image
    ids, images = clean
    out = simulate_capture(scene, spp=4, format="png", exposure=1.5, seed=2)
    saturated = 0
    for sid, image in zip(ids, images):
        with Image.open(scene / "photos" / f"{sid}.png") as im:
            assert (im.mode, im.size) == ("RGB", (W, H))
            codes = np.asarray(im).astype(np.float64)
        linear = io.load_image(scene / "photos" / f"{sid}.png")
        # decoded values lie on the 8-bit sRGB grid k / 255
        np.testing.assert_allclose(_srgb(linear) * 255, codes, atol=2e-3)
        # Mitsuba's 8-bit conversion dithers (deterministically): within one code, unbiased
        exact = _srgb(image * np.array(out["gains"][sid])) * 255
        assert np.abs(codes - exact).max() < 1
        assert abs(np.mean(codes - exact)) < 0.1
        over = image * np.array(out["gains"][sid]) > 1.0
        assert (codes[over] == 255).all()
        saturated += over.sum()
    assert saturated > 0       # the check above did test something


def test_jpeg(scene, clean):
    ids, images = clean
    out = simulate_capture(scene, spp=4, format="jpg", jpeg_quality=95)
    assert out["photos"] == [scene / "photos" / f"{i}.jpg" for i in ids]
    sizes = {}
    for sid, image in zip(ids, images):
        photo = io.load_image(scene / "photos" / f"{sid}.jpg")
        assert photo.shape == (H, W, 3)
        # JPEG loses detail (chroma subsampling of the 4-spp noise) but keeps the colours
        assert np.abs(_srgb(photo) - _srgb(image)).mean() < 0.05
        np.testing.assert_allclose(_srgb(photo).mean((0, 1)), _srgb(image).mean((0, 1)),
                                   atol=0.01)
        sizes[sid] = (scene / "photos" / f"{sid}.jpg").stat().st_size
    simulate_capture(scene, spp=4, format="jpg", jpeg_quality=10)
    for sid in ids:
        assert (scene / "photos" / f"{sid}.jpg").stat().st_size < sizes[sid]  # quality used
        with open(scene / "photos" / f"{sid}.jpg", "rb") as f:
            assert f.read(2) == b"\xff\xd8"       # a JPEG, whatever the suffix


def test_noise_model(scene, clean):
    ids, images = clean
    simulate_capture(scene, spp=4, noise=0.05, seed=1)
    z = []
    for sid, image in zip(ids, images):
        photo = io.load_image(scene / "photos" / f"{sid}.exr")
        z.append((photo - image) / np.sqrt(np.maximum(image, 0) + NOISE_FLOOR))
    z = np.concatenate([v.ravel() for v in z])
    assert z.std() == pytest.approx(0.05, rel=0.05)
    assert abs(z.mean()) < 0.005


def _rotation_deg(a, b):
    r = a[:3, :3] @ b[:3, :3].T
    return math.degrees(math.acos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)))


def test_perturbation_magnitudes(scene):
    out = simulate_capture(scene, spp=2, perturb_rotation=3.0, perturb_translation=0.05, seed=4)
    assert out["scene_diagonal"] == pytest.approx(DIAGONAL, rel=1e-5)
    assert all(g == pytest.approx([1.0, 1.0, 1.0]) for g in out["gains"].values())
    truth = {c.id: c for c in cameras.read_transforms(scene / "transforms_truth.json")}
    moved = {c.id: c for c in cameras.read_transforms(scene / "transforms.json")}
    assert sorted(truth) == sorted(moved) == ["view0", "view1", "view2"]
    axes = []
    for sid, cam in moved.items():
        true = truth[sid]
        assert _rotation_deg(cam.c2w, true.c2w) == pytest.approx(3.0, abs=1e-3)
        shift = np.linalg.norm(cam.c2w[:3, 3] - true.c2w[:3, 3])
        assert shift / DIAGONAL == pytest.approx(0.05, rel=1e-5)
        assert (cam.fx, cam.cx, cam.cy) == (true.fx, true.cx, true.cy)
        np.testing.assert_allclose(out["perturbations"][sid]["translation"],
                                   cam.c2w[:3, 3] - true.c2w[:3, 3], atol=1e-9)
        axes.append(out["perturbations"][sid]["axis"])
    assert np.linalg.matrix_rank(np.array(axes)) == 3   # a random axis per camera


def test_seed_reproducible(scene, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(scene, other)
    kw = dict(spp=2, format="png", noise=0.02, exposure=0.5, white_balance=0.1,
              perturb_rotation=1.0, perturb_translation=0.01, seed=7)
    a, b = simulate_capture(scene, **kw), simulate_capture(other, **kw)
    assert a["gains"] == b["gains"] and a["perturbations"] == b["perturbations"]
    for name in ("transforms.json", "transforms_truth.json"):
        assert (scene / name).read_text() == (other / name).read_text()
    for p, q in zip(a["photos"], b["photos"]):
        assert np.abs(io.load_image(p) - io.load_image(q)).max() < 1e-2
    c = simulate_capture(other, **{**kw, "seed": 8})
    assert c["gains"] != a["gains"] and c["perturbations"] != a["perturbations"]
    # the streams are separate: adding noise does not change the gains
    d = simulate_capture(other, **{**kw, "noise": 0.0})
    assert d["gains"] == a["gains"] and d["perturbations"] == a["perturbations"]


# --------------------------------------------------------------------------- command line

def test_cli_render_simulated(scene, capsys):
    args = ["render", str(scene), "--spp", "2", "--format", "png", "--noise", "0.01",
            "--exposure", "0.3", "--white-balance", "0.05", "--perturb-rotation", "1",
            "--perturb-translation", "0.01", "--seed", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for sid in ("view0", "view1", "view2"):
        assert f"wrote {scene / 'photos' / f'{sid}.png'}" in out
        assert f"  {sid}: gain " in out
    assert f"wrote {scene / 'transforms_truth.json'}" in out
    assert f"wrote {scene / 'transforms.json'}" in out
    assert "cameras perturbed by 1 deg and 0.01 x scene diagonal" in out
    assert len(cameras.read_transforms(scene / "transforms.json")) == 3
    assert main(["check", str(scene)]) == 0
    capsys.readouterr()
    # a plain render afterwards removes the simulation's camera files (stale gains)
    assert main(["render", str(scene), "--spp", "2", "--format", "png"]) == 0
    out = capsys.readouterr().out
    assert f"removed {scene / 'transforms.json'} (from an earlier simulation)" in out
    assert not (scene / "transforms.json").exists()
    assert not (scene / "transforms_truth.json").exists()


def test_cli_render_bad_input(scene, tmp_path, capsys):
    assert main(["render", str(scene), "--noise", "-0.1"]) == 2
    assert "invpbr render: error: simulate_capture(): noise = -0.1; expected a number >= 0" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["render", str(scene), "--format", "tiff"])
    assert info.value.code == 2
    assert "invalid choice: 'tiff'" in capsys.readouterr().err
    assert main(["render", str(tmp_path / "nowhere")]) == 2
    assert "nowhere/truth.xml: no such file" in capsys.readouterr().err
    assert not (scene / "photos").exists()


@pytest.mark.parametrize("kw, match", [
    ({"format": "tiff"}, "format = 'tiff'; expected one of 'exr', 'png', 'jpg'"),
    ({"noise": -1.0}, r"noise = -1.0; expected a number >= 0"),
    ({"exposure": float("nan")}, r"exposure = nan"),
    ({"perturb_rotation": 200}, r"perturb_rotation = 200; expected a number in \[0, 180\]"),
    ({"jpeg_quality": 0, "format": "jpg"}, r"jpeg_quality = 0; expected an integer in \[1, 100\]"),
    ({"spp": 0}, r"spp = 0; expected an integer >= 1"),
])
def test_bad_arguments(scene, kw, match):
    with pytest.raises(ValueError, match=match):
        simulate_capture(scene, **kw)
    assert not (scene / "photos").exists()


def test_no_truth(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"truth.xml: no such file.*synthetic scenes"):
        simulate_capture(tmp_path)
    with pytest.raises(TypeError, match=r"noise = 'loud'; expected a number"):
        simulate_capture(tmp_path, noise="loud")
