"""Broken scene folders: load_problem stops with a message that names the file
and what is wrong, ``invpbr check`` lists every problem at once, and a failed
``invpbr run`` writes nothing. Each test changes a copy of the tiny scene."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

import invpbr
from invpbr.capture import images as io
from invpbr.run.cli import main
from invpbr.config import ConfigError
from invpbr.problem import check_folder, load_problem

from conftest import TOML


def esc(path) -> str:
    return re.escape(str(path))


def write_estimate(folder, key: str, extra: str = "") -> None:
    (folder / "invpbr.toml").write_text(f'[[estimate]]\nkey = "{key}"\n{extra}')


def nan_photo(path, res: int = 24, n: int = 2) -> None:
    """Overwrite ``path`` with an EXR holding ``n`` NaN pixels."""
    import mitsuba as mi

    img = np.full((res, res, 3), 0.5, np.float32)
    img[3, 5, 1] = np.nan
    if n > 1:
        img[10, 0, :] = np.nan
    mi.Bitmap(img).write(str(path))


def test_good_folder_loads(tiny_scene):
    problem = load_problem(tiny_scene)
    assert [v.id for v in problem.views] == ["front", "side"]
    assert [v.photo_path.name for v in problem.views] == ["front.exr", "side.exr"]
    assert all(v.photo.shape == (24, 24, 3) and v.mask is None for v in problem.views)
    assert [p.key for p in problem.parameters] == ["ball.bsdf.base_color.value"]
    np.testing.assert_allclose(problem.truth["ball.bsdf.base_color.value"].ravel(), [0.8, 0.25, 0.1],
                               rtol=1e-6)
    assert check_folder(tiny_scene) == []


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=esc(tmp_path / "nowhere") + ": no such scene folder"):
        load_problem(tmp_path / "nowhere")


def test_missing_scene_xml(tiny_scene):
    (tiny_scene / "scene.xml").unlink()
    with pytest.raises(FileNotFoundError, match=esc(tiny_scene / "scene.xml") + ": no such scene file"):
        load_problem(tiny_scene)


def test_missing_toml(tiny_scene):
    (tiny_scene / "invpbr.toml").unlink()
    with pytest.raises(FileNotFoundError, match=esc(tiny_scene / "invpbr.toml") + ": no such file"):
        load_problem(tiny_scene)


def test_missing_photos_folder(tiny_scene):
    shutil.rmtree(tiny_scene / "photos")
    with pytest.raises(FileNotFoundError, match=esc(tiny_scene / "photos")
                       + r": no photos folder \(one image per sensor: front\.png, side\.png\)"):
        load_problem(tiny_scene)


def test_one_photo_missing_names_the_sensor(tiny_scene):
    (tiny_scene / "photos" / "front.exr").unlink()
    with pytest.raises(FileNotFoundError, match=esc(tiny_scene / "photos")
                       + r": no photo for sensor\(s\) 'front'; found side\.exr"):
        load_problem(tiny_scene)


def test_two_images_for_one_sensor(tiny_scene):
    io.save_image(tiny_scene / "photos" / "front.png", np.zeros((24, 24, 3)))
    with pytest.raises(ValueError, match=esc(tiny_scene / "photos")
                       + r": two images for 'front': front\.exr and front\.png"):
        load_problem(tiny_scene)


def test_wrong_photo_size_names_file_and_both_sizes(tiny_scene):
    path = tiny_scene / "photos" / "side.exr"
    io.save_image(path, np.zeros((10, 12, 3)))
    with pytest.raises(ValueError, match=esc(path) + r": photo is 12x10 but sensor 'side' renders 24x24; "
                       r".*\[photos\] resize = true"):
        load_problem(tiny_scene)


def test_resize_true_resizes_with_a_warning(tiny_scene):
    path = tiny_scene / "photos" / "front.exr"
    original = io.load_image(path)
    big = np.repeat(np.repeat(original, 2, axis=0), 2, axis=1)  # 48x48
    io.save_image(path, big)
    (tiny_scene / "invpbr.toml").write_text(TOML + "\n[photos]\nresize = true\n")
    with pytest.warns(UserWarning, match=esc(path) + r": resized from 48x48 to 24x24 for sensor 'front'"):
        problem = load_problem(tiny_scene)
    photo = problem.views[0].photo
    assert photo.shape == (24, 24, 3)
    # a 2x2 block upsampling, resampled back, is close to the original
    assert np.abs(photo - original).mean() < 0.1 * original.mean()
    assert check_folder(tiny_scene) == []


def test_nan_in_a_photo_names_the_file(tiny_scene):
    path = tiny_scene / "photos" / "front.exr"
    nan_photo(path)
    with pytest.raises(ValueError, match=esc(path) + r": 2 pixel\(s\) are NaN or infinite"):
        load_problem(tiny_scene)


def test_photos_matched_by_sorted_order(tiny_scene):
    photos = tiny_scene / "photos"
    front, side = io.load_image(photos / "front.exr"), io.load_image(photos / "side.exr")
    (photos / "front.exr").rename(photos / "img_01.exr")
    (photos / "side.exr").rename(photos / "img_02.exr")
    problem = load_problem(tiny_scene)
    assert [(v.id, v.photo_path.name) for v in problem.views] == [("front", "img_01.exr"),
                                                                 ("side", "img_02.exr")]
    np.testing.assert_array_equal(problem.views[0].photo, front)
    np.testing.assert_array_equal(problem.views[1].photo, side)


def test_sorted_order_needs_one_photo_per_sensor(tiny_scene):
    photos = tiny_scene / "photos"
    (photos / "front.exr").rename(photos / "a.exr")
    (photos / "side.exr").rename(photos / "b.exr")
    io.save_image(photos / "c.exr", np.zeros((24, 24, 3)))
    with pytest.raises(FileNotFoundError, match=esc(photos) + r": no photo for sensor\(s\) 'front', 'side'; "
                       r"found a\.exr, b\.exr, c\.exr"):
        load_problem(tiny_scene)


def test_masks_are_loaded_and_checked(tiny_scene):
    mask = np.zeros((24, 24, 3), np.float32)
    mask[:12] = 1.0
    io.save_image(tiny_scene / "masks" / "front.png", mask)
    problem = load_problem(tiny_scene)
    assert problem.views[0].mask.dtype == bool
    assert problem.views[0].mask.sum() == 12 * 24 and problem.views[0].mask[:12].all()
    assert problem.views[1].mask is None

    io.save_image(tiny_scene / "masks" / "front.png", np.zeros((24, 24, 3)))
    with pytest.raises(ValueError, match=esc(tiny_scene / "masks" / "front.png") + ": mask selects no pixel"):
        load_problem(tiny_scene)
    assert check_folder(tiny_scene) == [f"{tiny_scene / 'masks' / 'front.png'}: mask selects no pixel"]

    io.save_image(tiny_scene / "masks" / "front.png", np.ones((8, 8, 3)))
    with pytest.raises(ValueError, match=esc(tiny_scene / "masks" / "front.png")
                       + r": mask is 8x8 but sensor 'front' renders 24x24"):
        load_problem(tiny_scene)
    assert check_folder(tiny_scene) == [
        f"{tiny_scene / 'masks' / 'front.png'}: mask is 8x8 but sensor 'front' renders 24x24"]


def test_unknown_key_suggests_a_close_key(tiny_scene):
    write_estimate(tiny_scene, "ball.bsdf.base_colour.value")
    with pytest.raises(ValueError, match=esc(tiny_scene / "invpbr.toml")
                       + r": estimate\[0\]\.key 'ball\.bsdf\.base_colour\.value' matches no parameter "
                       r"of the scene; did you mean 'ball\.bsdf\.base_color\.value'"):
        load_problem(tiny_scene)


def test_glob_matching_nothing(tiny_scene):
    write_estimate(tiny_scene, "*.nothing_like_this")
    with pytest.raises(ValueError, match=esc(tiny_scene / "invpbr.toml")
                       + r": estimate\[0\]\.key '\*\.nothing_like_this' matches no parameter"):
        load_problem(tiny_scene)


def test_glob_matches_several_keys(tiny_scene):
    write_estimate(tiny_scene, "ball.bsdf.sheen*.value")
    problem = load_problem(tiny_scene)
    assert [p.key for p in problem.parameters] == ["ball.bsdf.sheen.value", "ball.bsdf.sheen_tint.value"]


@pytest.mark.parametrize("key", [
    "ball.bsdf.main_specular_sampling_rate",  # a Python float, flagged NonDifferentiable
    "front.film.size",                        # unsigned integers of the film
    "front.x_fov",                            # a Float that Mitsuba flags NonDifferentiable
    "lamp.position",
])
def test_non_differentiable_key(tiny_scene, key):
    import mitsuba as mi

    invpbr.init_backend()
    params = mi.traverse(invpbr.load_scene(tiny_scene / "scene.xml"))
    assert params.flags(key) & int(mi.ParamFlags.NonDifferentiable)  # the premise of this test
    write_estimate(tiny_scene, key)
    with pytest.raises(ValueError, match=esc(tiny_scene / "invpbr.toml")
                       + rf": estimate\[0\]\.key '{re.escape(key)}' is not differentiable"):
        load_problem(tiny_scene)


def test_two_tables_for_one_key(tiny_scene):
    (tiny_scene / "invpbr.toml").write_text('[[estimate]]\nkey = "ball.bsdf.roughness.value"\n'
                                            '[[estimate]]\nkey = "ball.bsdf.rough*"\n')
    with pytest.raises(ValueError, match=esc(tiny_scene / "invpbr.toml")
                       + r": estimate\[1\]\.key 'ball\.bsdf\.rough\*' matches "
                       r"'ball\.bsdf\.roughness\.value', which an earlier"):
        load_problem(tiny_scene)


def test_resolution_on_a_value_key(tiny_scene):
    write_estimate(tiny_scene, "ball.bsdf.roughness.value", "resolution = [8]\n")
    with pytest.raises(ValueError, match=esc(tiny_scene / "invpbr.toml")
                       + r": estimate\[0\]\.key 'ball\.bsdf\.roughness\.value': 'resolution' and 'tv' "
                       r"apply to bitmap textures"):
        load_problem(tiny_scene)


def test_texture_key_is_a_texture(tiny_scene):
    write_estimate(tiny_scene, "floor.bsdf.reflectance.data", "resolution = [4, 8]\ntv = 0.1\n")
    (parameter,) = load_problem(tiny_scene).parameters
    assert parameter.kind == "texture" and parameter.shape == (16, 16, 3)
    assert parameter.resolutions == [(4, 4), (8, 8)]
    # grey.png: 0.5 written as dithered 8-bit sRGB, read back as floats
    np.testing.assert_allclose(parameter.initial, 0.5, atol=5e-3)
    assert parameter.initial.mean() == pytest.approx(0.5, abs=1e-3)


def test_malformed_xml_names_scene_xml(tiny_scene):
    path = tiny_scene / "scene.xml"
    path.write_text(path.read_text().replace("</shape>", "</shap>", 1))
    with pytest.raises(ValueError, match=esc(path) + ": malformed XML: mismatched tag: line 10"):
        load_problem(tiny_scene)


def test_malformed_toml_names_invpbr_toml(tiny_scene):
    path = tiny_scene / "invpbr.toml"
    path.write_text("[render\nspp = 4\n")
    with pytest.raises(ConfigError, match=esc(path) + ": malformed TOML"):
        load_problem(tiny_scene)


def test_scene_mitsuba_rejects(tiny_scene):
    path = tiny_scene / "scene.xml"
    path.write_text(path.read_text().replace('type="principled"', 'type="no_such_bsdf"'))
    with pytest.raises(ValueError,
                       match=esc(path) + r": Mitsuba cannot load this scene: .*line 5.*no_such_bsdf"):
        load_problem(tiny_scene)


def test_missing_texture_file(tiny_scene):
    (tiny_scene / "grey.png").unlink()
    with pytest.raises(ValueError, match=esc(tiny_scene / "scene.xml") + r": Mitsuba cannot load.*grey\.png"):
        load_problem(tiny_scene)


def test_check_lists_several_problems(tiny_scene, capsys):
    write_estimate(tiny_scene, "ball.bsdf.base_colour.value")
    front, side = tiny_scene / "photos" / "front.exr", tiny_scene / "photos" / "side.exr"
    io.save_image(front, np.zeros((12, 16, 3)))
    nan_photo(side, n=1)
    problems = check_folder(tiny_scene)
    assert len(problems) == 3
    assert "base_colour" in problems[0] and str(tiny_scene / "invpbr.toml") in problems[0]
    assert problems[1] == f"{front}: photo is 16x12 but sensor 'front' renders 24x24"
    assert problems[2].startswith(f"{side}: 1 pixel(s) are NaN or infinite")

    assert main(["check", str(tiny_scene)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{tiny_scene}: 3 problem(s)"
    assert out.count("\n  - ") == 3
    for name in ("invpbr.toml", "front.exr", "side.exr"):
        assert name in out


def test_check_lists_config_and_scene_problems(tiny_scene, capsys):
    (tiny_scene / "invpbr.toml").write_text("[render]\nspp = 0\n")
    (tiny_scene / "truth.xml").write_text("<scene version='3.0.0'><shape type='nope'/></scene>")
    shutil.rmtree(tiny_scene / "photos")
    problems = check_folder(tiny_scene)
    assert len(problems) == 3
    assert problems[0].startswith(f"{tiny_scene / 'invpbr.toml'}: render.spp must be >= 1")
    assert problems[1].startswith(f"{tiny_scene / 'truth.xml'}: Mitsuba cannot load this scene")
    assert problems[2].startswith(f"{tiny_scene / 'photos'}: no photos folder")
    assert main(["check", str(tiny_scene)]) == 1


def test_check_stops_at_an_unloadable_scene(tiny_scene):
    (tiny_scene / "scene.xml").write_text("<scene")
    (tiny_scene / "invpbr.toml").write_text("oops")
    problems = check_folder(tiny_scene)
    assert len(problems) == 2
    assert "invpbr.toml: malformed TOML" in problems[0]
    assert "scene.xml: malformed XML" in problems[1]


def test_check_good_folder_prints_ok(tiny_scene, capsys):
    assert main(["check", str(tiny_scene)]) == 0
    assert capsys.readouterr().out.strip() == f"{tiny_scene}: ok"


def test_check_missing_folder(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nowhere")]) == 1
    assert f"{tmp_path / 'nowhere'}: no such scene folder" in capsys.readouterr().out


def test_failed_run_writes_nothing(tiny_scene, tmp_path, capsys):
    out = tmp_path / "result"
    (tiny_scene / "photos" / "side.exr").unlink()
    assert main(["run", str(tiny_scene), "--out", str(out), "--iterations", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invpbr run: error: ") and "no photo for sensor(s) 'side'" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no temporary folder left


def test_failed_run_keeps_an_earlier_result(tiny_scene, tmp_path, capsys):
    out = tmp_path / "result"
    args = ["run", str(tiny_scene), "--out", str(out), "--iterations", "1", "--spp", "1", "--no-progress"]
    assert main(args) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert (out / "result.json").is_file() and len(before) >= 4

    (tiny_scene / "scene.xml").write_text("<scene version='3.0.0'><bsdf type='nope'/></scene>")
    capsys.readouterr()
    assert main(args) == 2
    assert "Mitsuba cannot load this scene" in capsys.readouterr().err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert json.loads((out / "result.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result", "tiny"]
