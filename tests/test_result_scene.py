"""Every result is a scene: scene.xml in the result folder renders in plain
Mitsuba like invpbr's final renders, and ``invpbr view`` renders any result
from the cameras of any camera file (transforms.json, COLMAP), relit by
another environment map, at another size."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import invpbr
from invpbr.capture.cameras import camera_from_sensor, write_transforms
from invpbr.estimates.meshes import rotation_numpy

from conftest import REPO, write_colmap_text

# (radiance fields have no Mitsuba scene to write: tests/test_fields.py checks their results;
# [reconstruct] folders are not optimize() problems: tests/test_reconstruct.py loads their
# result folders in plain Mitsuba)
SHIPPED = sorted(p.name for p in (REPO / "scenes").iterdir() if (p / "invpbr.toml").is_file()
                 and not {"[field]", "[reconstruct]"} & set(
                     (p / "invpbr.toml").read_text().split()))


def run_briefly(name: str, out: Path, iterations: int = 2):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem = invpbr.load_problem(REPO / "scenes" / name)
        for e in problem.estimates:  # (two steps: the Gauss-Newton polish would be most of the run)
            if e.kind in ("pose", "camera"):
                e.config.polish = 0
        result = invpbr.optimize(problem, iterations=iterations, progress=False)
    return problem, result, invpbr.save_result(result, out)


def orbiting_cameras(problem, degrees: float = 25.0) -> list:
    """Two cameras that are not the problem's: its first view's camera turned
    about the scene's centre by +-``degrees`` around the vertical."""
    bbox = problem.scene.bbox()
    centre = 0.5 * (np.array(bbox.min) + np.array(bbox.max))
    first = problem.scene.sensors()[problem.views[0].index]
    cam = camera_from_sensor(first, "new")
    out = []
    for i, angle in enumerate((degrees, -degrees)):
        r = np.eye(4)
        r[:3, :3] = rotation_numpy([0.0, np.radians(angle), 0.0])
        move = np.eye(4)
        move[:3, 3] = centre
        back = np.eye(4)
        back[:3, 3] = -centre
        out.append(replace(cam, id=f"orbit{i}", c2w=move @ r @ back @ cam.c2w, file_path=None))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_result_scene_renders_like_the_final_renders(name, tmp_path, mi):
    from invpbr.render.integrators import make_integrator

    problem, result, out = run_briefly(name, tmp_path / name)
    doc = json.loads((out / "result.json").read_text())
    assert doc["scene_file"] == "scene.xml" and doc["scene_file_lacks"] == []
    scene = mi.load_file(str(out / "scene.xml"))   # plain Mitsuba, files in assets/
    assert [s.id() for s in scene.sensors()] == [s.id() for s in problem.scene.sensors()]
    integrator = make_integrator(problem.config.render, problem.estimates, scene)
    moved = bool(result.cameras)   # final renders moved the scene; scene.xml moves sensors
    for i, view in enumerate(problem.views[:2]):
        spp = problem.config.render.spp_final
        image = np.array(mi.render(scene, sensor=view.index, integrator=integrator, spp=spp,
                                   seed=2**31 - 1), dtype=np.float32)[..., :3]
        reference = result.renders[view.id] / result.gains.get(view.id, 1.0)
        if not moved:
            # the same scene, the same samples: the same image
            np.testing.assert_allclose(image, reference, atol=2e-4, rtol=1e-3)
        else:
            other = np.array(mi.render(scene, sensor=view.index, integrator=integrator,
                                       spp=spp, seed=7), dtype=np.float32)[..., :3]
            noise = np.abs(other - image).mean()
            assert np.abs(image - reference).mean() < 1.5 * noise, view.id
    # new cameras: every shipped result renders from cameras it was not fitted from
    cameras = write_transforms(tmp_path / "new.json", orbiting_cameras(problem))
    from invpbr.results.view import view_result

    written = view_result(out, cameras, spp=4, width=24, out=tmp_path / "views")
    assert sorted(p.name for p in written) == ["orbit0.exr", "orbit0.png", "orbit1.exr",
                                               "orbit1.png"]
    rgba = np.array(mi.Bitmap(str(tmp_path / "views" / "orbit0.exr")))
    assert rgba.shape[1] == 24 and rgba.shape[2] == 4 and rgba[..., :3].max() > 0


@pytest.fixture(scope="module")
def pose_result(tmp_path_factory):
    """object_pose after a few steps: a mesh over a constant background."""
    out = tmp_path_factory.mktemp("pose") / "out"
    problem, result, out = run_briefly("object_pose", out, iterations=2)
    return problem, out


def test_view_writes_rgba_with_coverage_from_transforms_and_colmap(pose_result, tmp_path, mi):
    from invpbr.results.view import view_result
    from invpbr.run.cli import main

    problem, out = pose_result
    cams = orbiting_cameras(problem, degrees=10.0)
    transforms = write_transforms(tmp_path / "cams.json", cams)
    assert main(["view", str(out), "--cameras", str(transforms), "--spp", "8",
                 "--out", str(tmp_path / "a")]) == 0
    a = np.array(mi.Bitmap(str(tmp_path / "a" / "orbit0.exr")))
    h, w = cams[0].height, cams[0].width
    assert a.shape == (h, w, 4)
    alpha = a[..., 3]
    # the object covers part of the frame; the rest is background (alpha 0 at a corner
    # unless the scene has geometry there)
    assert 0.0 <= alpha.min() and alpha.max() == pytest.approx(1.0)
    png = mi.Bitmap(str(tmp_path / "a" / "orbit0.png"))
    assert png.pixel_format() == mi.Bitmap.PixelFormat.RGBA
    # the same cameras as a COLMAP text model give the same images
    sparse = write_colmap_text(tmp_path / "sparse", cams)
    view_result(out, sparse, spp=8, out=tmp_path / "b")
    b = np.array(mi.Bitmap(str(tmp_path / "b" / "orbit0.exr")))
    np.testing.assert_allclose(a, b, atol=1e-4)
    # another size: the same view, fewer pixels
    view_result(out, transforms, spp=8, width=w // 2, out=tmp_path / "c")
    c = np.array(mi.Bitmap(str(tmp_path / "c" / "orbit0.exr")))
    assert c.shape == (round(h * (w // 2) / w), w // 2, 4)


def test_view_relights_with_another_envmap(tmp_path, mi):
    from invpbr.results.view import view_result

    problem, result, out = run_briefly("envmap_known_materials", tmp_path / "env", iterations=1)
    cams = write_transforms(tmp_path / "cams.json", orbiting_cameras(problem, degrees=5.0))
    view_result(out, cams, spp=16, out=tmp_path / "own")
    dark = np.full((8, 16, 3), 0.05, np.float32)
    invpbr.capture.images.save_image(tmp_path / "dark.exr", dark)
    view_result(out, cams, spp=16, envmap=tmp_path / "dark.exr", out=tmp_path / "dark")
    own = np.array(mi.Bitmap(str(tmp_path / "own" / "orbit0.exr")))[..., :3]
    relit = np.array(mi.Bitmap(str(tmp_path / "dark" / "orbit0.exr")))[..., :3]
    assert relit.mean() < 0.3 * own.mean()


def test_view_errors_name_what_is_missing(tmp_path, pose_result):
    from invpbr.results.view import view_result
    from invpbr.run.cli import main

    problem, out = pose_result
    with pytest.raises(FileNotFoundError, match=r"result\.json: no such file"):
        view_result(tmp_path, tmp_path / "cams.json")
    with pytest.raises(FileNotFoundError, match=r"nope\.json: no such camera file"):
        view_result(out, tmp_path / "nope.json")
    cams = write_transforms(tmp_path / "cams.json", orbiting_cameras(problem))
    with pytest.raises(FileNotFoundError, match=r"sky\.exr: no such environment map"):
        view_result(out, cams, envmap=tmp_path / "sky.exr")
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / "scene.xml").unlink()
    with pytest.raises(ValueError, match=r"old: no scene\.xml"):
        view_result(old, cams)
    assert main(["view", str(old), "--cameras", str(cams)]) == 2
