"""Gradient images: dLoss/dpixel, dI/dθ (forward mode) and each pixel's
contribution, whose sum must be the loss's gradient that reverse mode gives;
the command line; and the images in a run's result folder and report."""

from __future__ import annotations

import json

import numpy as np
import pytest

import invpbr
from invpbr.optimization.gradient_images import gradient_images

KEY = "ball.bsdf.base_color.value"


def test_contributions_sum_to_the_reverse_mode_gradient_of_the_loss(tiny_scene):
    """Each channel's contribution image sums to dLoss/dθ, computed here
    independently by reverse mode with the same seed and samples."""
    import drjit as dr
    import mitsuba as mi

    from invpbr.optimization.losses import image_loss
    from invpbr.render.integrators import make_integrator

    problem = invpbr.load_problem(tiny_scene)
    images = gradient_images(problem, spp=16, seed=3)
    view = problem.views[0]
    pixel = [g for g in images if g.what == "dloss_dpixel"]
    assert [g.view for g in pixel] == [view.id]  # the first fitted view only, by default
    contributions = {g.label: g for g in images if g.what == "contribution" and g.key == KEY}
    assert sorted(contributions) == ["[0]", "[1]", "[2]"]

    params = problem.params
    integrator = make_integrator(problem.config.render, problem.parameters, problem.scene)
    x = type(params[KEY])(np.array(params[KEY]))
    dr.enable_grad(x)
    params[KEY] = x
    params.update()
    image = mi.render(problem.scene, params, sensor=view.index, integrator=integrator, spp=16, seed=3)
    loss = image_loss(problem.config.optimize.loss)(image, mi.TensorXf(view.photo), None)
    dr.backward(loss)
    reverse = np.array(dr.grad(x)).ravel()
    for i in range(3):
        total = contributions[f"[{i}]"].total
        assert total == pytest.approx(reverse[i], rel=0.05, abs=1e-6), (i, total, reverse)
    # the start (grey 0.5) is too blue and too green for the truth (0.8, 0.25, 0.1): raising
    # red lowers the loss, raising green or blue raises it
    assert reverse[0] < 0 < reverse[1] and reverse[2] > 0
    # dI/dθ of a colour channel is where the ball is lit: positive, none off the ball
    d_red = next(g for g in images if g.what == "dimage" and g.label == "[0]").signed_map()
    assert d_red.max() > 0 and d_red.min() >= -1e-3 * d_red.max()


def test_the_scene_is_left_as_it_was(tiny_scene):
    problem = invpbr.load_problem(tiny_scene)
    before = np.array(problem.params[KEY]).copy()
    gradient_images(problem, spp=4)
    assert np.array(problem.params[KEY]) == pytest.approx(before)


def test_unknown_key_or_view_is_named(tiny_scene):
    problem = invpbr.load_problem(tiny_scene)
    with pytest.raises(ValueError, match=r"'nope' is not an estimate of tiny; estimates: ball"):
        gradient_images(problem, keys=["nope"])
    with pytest.raises(ValueError, match=r"unknown view\(s\) \['back'\]; views: front, side"):
        gradient_images(problem, views=["back"])


def test_gradients_command_writes_images_for_one_key(tiny_scene, tmp_path, capsys):
    from invpbr.run.cli import main

    out = tmp_path / "grads"
    assert main(["gradients", str(tiny_scene), "--key", KEY, "--views", "side", "--spp", "4",
                 "--out", str(out)]) == 0
    entries = json.loads((out / "index.json").read_text())
    assert {e["view"] for e in entries} == {"side"}
    assert {e["what"] for e in entries} == {"dloss_dpixel", "dimage", "contribution"}
    for e in entries:
        assert (out / e["file"]).is_file() and e["limit"] > 0
    assert "index.html" in capsys.readouterr().out
    assert main(["gradients", str(tiny_scene), "--key", "nope", "--out", str(out)]) == 2
    assert "not an estimate" in capsys.readouterr().err


def test_a_run_keeps_gradient_images_at_start_and_end(tiny_scene, tmp_path):
    problem = invpbr.load_problem(tiny_scene)
    result = invpbr.optimize(problem, iterations=6, progress=False)
    stages = {g.stage for g in result.gradient_images}
    assert stages == {"start", "end"}
    folder = invpbr.save_result(result, tmp_path / "out")
    entries = json.loads((folder / "gradients" / "index.json").read_text())
    assert len(entries) == len(result.gradient_images)
    page = (folder / "report.html").read_text()
    assert "Gradient images" in page and "gradients/" + entries[0]["file"] in page
    # the pull on red shrinks as the estimate approaches the truth
    start, end = (next(g.total for g in result.gradient_images if g.stage == s
                       and g.what == "contribution" and g.label == "[0]") for s in ("start", "end"))
    assert abs(end) < abs(start)


def test_report_gradients_false_skips_them(tiny_scene):
    problem = invpbr.load_problem(tiny_scene)
    problem.config.report.gradients = False
    result = invpbr.optimize(problem, iterations=2, progress=False)
    assert result.gradient_images == []


def test_report_table_is_validated(tmp_path):
    from invpbr.config import ConfigError, parse_config

    assert parse_config({"report": {"gradient_views": 2}}).report.gradient_views == 2
    with pytest.raises(ConfigError, match=r"x.toml: report.gradient_spp must be >= 1"):
        parse_config({"report": {"gradient_spp": 0}}, source="x.toml")
    with pytest.raises(ConfigError, match=r"unknown key report.colour"):
        parse_config({"report": {"colour": 1}})


def test_a_camera_that_is_off_pulls_at_the_edges():
    """scenes/real_capture's cameras start 2 deg and 2 % of the scene off: each
    camera direction's contribution sits on the photo's edges (silhouettes,
    texture edges), which are 30 % of the pixels (measured: 61-70 % of the
    contribution's absolute mass there at 8 spp)."""
    from scipy.ndimage import binary_dilation

    from conftest import REPO

    problem = invpbr.load_problem(REPO / "scenes" / "real_capture")
    images = gradient_images(problem, keys=["cameras"], spp=8)
    luminance = problem.views[0].photo.mean(axis=-1)
    gy, gx = np.gradient(luminance)
    strength = np.hypot(gx, gy)
    edges = binary_dilation(strength > np.percentile(strength, 85))
    assert 0.2 < edges.mean() < 0.4
    contributions = [g for g in images if g.what == "contribution"]
    assert [g.label for g in contributions] == [f"camera {n}" for n in
                                                ("tx", "ty", "tz", "rx", "ry", "rz")]
    for g in contributions:
        mass = np.abs(g.signed_map())
        assert mass[edges].sum() > 0.5 * mass.sum(), g.label
    assert max(abs(g.total) for g in contributions) > 0.1  # a real pull, not noise
