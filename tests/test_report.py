"""report.html, the batch index, the live view's state and server, and what
the optimizer records for them (start renders, trajectories, warnings)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import invpbr
from invpbr.results import pictures
from invpbr.results.report import error_rows, rebuild_reports, warnings_of, write_index, write_report

from conftest import make_tiny_scene


class Links(HTMLParser):
    """The img src and a href of a page."""

    def __init__(self):
        super().__init__()
        self.images, self.links = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "a":
            self.links.append(a["href"])


def page_links(path: Path) -> Links:
    parser = Links()
    parser.feed(path.read_text())
    return parser


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A tiny scene optimized for a few steps and saved (with its report)."""
    scene = make_tiny_scene(tmp_path_factory.mktemp("report") / "tiny")
    problem = invpbr.load_problem(scene)
    result = invpbr.optimize(problem, iterations=12, progress=False)
    return invpbr.save_result(result, tmp_path_factory.mktemp("out") / "tiny")


def test_run_writes_a_report_whose_pictures_all_exist(run_folder):
    page = run_folder / "report.html"
    assert page.is_file()
    links = page_links(page)
    for src in links.images:
        assert not src.startswith(("http:", "https:", "/")), src  # relative: opens from disk
        assert (run_folder / src).is_file(), src
    text = page.read_text()
    for view in ("front", "side"):  # each view at start and end, with its differences
        for name in ("photo", "start", "start_diff", "end", "end_diff"):
            assert f"report/views/{view}_{name}.png" in links.images
    assert "report/loss.png" in links.images
    assert "report/estimates/ball.bsdf.base_color.value.png" in links.images  # trajectory
    assert "Errors against the truth" in text and "completed" in text


def test_result_json_holds_what_the_report_needs(run_folder):
    data = json.loads((run_folder / "result.json").read_text())
    key = "ball.bsdf.base_color.value"
    steps = data["trajectory"][key]
    assert len(steps) == data["iterations"] + 1  # the start and every step
    assert steps[0] == pytest.approx([0.5, 0.5, 0.5])
    assert steps[-1] == pytest.approx(data["parameters"][key], abs=1e-5)
    assert data["truth"][key] == pytest.approx([0.8, 0.25, 0.1])
    assert data["kinds"][key] == "value"
    assert [v["id"] for v in data["views"]] == ["front", "side"]
    # the start render is worse than the end (12 steps from grey toward the truth)
    for view in ("front", "side"):
        assert data["psnr_initial"][view] < data["psnr"][view]
    assert len(data["step_seconds"]) == data["iterations"]
    assert (run_folder / "renders" / "start" / "front.exr").is_file()
    assert (run_folder / "renders" / "photos" / "front.png").is_file()


def test_report_rebuilds_from_the_folder_alone(run_folder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_folder, copy)
    shutil.rmtree(copy / "report")
    (copy / "report.html").unlink()
    (written,) = rebuild_reports(copy)
    assert written == copy / "report.html"
    assert sorted(page_links(written).images) == sorted(page_links(run_folder / "report.html").images)


def old_folder(folder: Path, *, loss=(0.5, 0.2), errors=None, initial=None) -> Path:
    """A result folder as invpbr wrote them before reports: result.json
    without kinds, views or trajectories; renders/<view>.png strips."""
    folder.mkdir(parents=True)
    w, h = 8, 6
    photo = np.full((h, w, 3), 0.4, np.float32)
    render = np.full((h, w, 3), 0.5, np.float32)
    strip = np.concatenate([photo, np.ones((h, 2, 3)), render, np.ones((h, 2, 3)),
                            np.abs(render - photo)], axis=1)
    (folder / "renders").mkdir()
    (folder / "renders" / "v0.png").write_bytes(pictures.png_bytes(pictures.srgb8(strip)))
    data = {"scene": folder.name, "status": "completed",
            "parameters": {"a.reflectance.value": [0.5, 0.5, 0.5]},
            "errors": errors or {"a.reflectance.value": 0.1},
            "initial_errors": initial or {"a.reflectance.value": 0.3},
            "psnr": {"v0": 20.0}, "loss": list(loss), "iterations": len(loss),
            "seconds_per_iteration": 0.1, "settings": {}}
    (folder / "result.json").write_text(json.dumps(data))
    return folder


def test_an_old_folder_gets_a_report_from_its_strips(tmp_path):
    folder = old_folder(tmp_path / "old")
    page = write_report(folder)
    links = page_links(page)
    assert "report/views/v0_photo.png" in links.images and "report/views/v0_end.png" in links.images
    photo = pictures.read_png(folder / "report/views/v0_photo.png")
    end = pictures.read_png(folder / "report/views/v0_end.png")
    assert photo.shape == end.shape == (6, 8, 3)  # cut out of the strip, gaps left out
    assert photo.mean() < end.mean()  # 0.4 against 0.5 linear


def test_a_result_worse_than_its_start_is_reported_as_such(tmp_path):
    folder = old_folder(tmp_path / "worse", loss=(0.2, 0.5), errors={"a.reflectance.value": 0.3},
                        initial={"a.reflectance.value": 0.1})
    warns = warnings_of(json.loads((folder / "result.json").read_text()))
    assert any("loss" in w and "worse" in w for w in warns), warns
    assert any("a.reflectance.value" in w and "above its start" in w for w in warns), warns
    text = write_report(folder).read_text()
    assert "worse than its start" in text
    assert "LARGER" in text  # the error's change, marked


def test_error_rows_cover_cameras_and_gains():
    data = {"camera_errors": {"a": {"rotation_deg": 0.2, "position": 0.01},
                              "b": {"rotation_deg": 0.4, "position": 0.03}},
            "camera_errors_initial": {"a": {"rotation_deg": 2.0, "position": 0.1},
                                      "b": {"rotation_deg": 2.0, "position": 0.3}},
            "gain_errors": {"a": 0.02, "b": 0.05}, "gain_errors_initial": {"a": 0.3, "b": 0.1}}
    rows = {w: (s, e) for w, s, e in error_rows(data)}
    assert rows["cameras: rotation_deg (mean of 2)"] == pytest.approx((2.0, 0.3))
    assert rows["cameras: position (mean of 2)"] == pytest.approx((0.2, 0.02))
    assert rows["gains: largest relative error"] == pytest.approx((0.3, 0.05))


def test_batch_index_has_a_row_per_scene_with_links_and_thumbnails(tmp_path):
    old_folder(tmp_path / "batch" / "one")
    old_folder(tmp_path / "batch" / "two")
    rows = [{"scene": "one", "status": "completed", "errors": {}, "seconds": 1.5, "message": ""},
            {"scene": "two", "status": "completed", "errors": {}, "seconds": 2.5, "message": ""},
            {"scene": "broken", "status": "failed", "errors": {}, "seconds": 0.1,
             "message": "invpbr run: error: scene.xml: no such file"}]
    (tmp_path / "batch" / "summary.json").write_text(json.dumps(rows))
    written = rebuild_reports(tmp_path / "batch")
    index = tmp_path / "batch" / "index.html"
    assert written[-1] == index
    links = page_links(index)
    assert links.links == ["one/report.html", "two/report.html"]
    for src in links.images:
        assert (tmp_path / "batch" / src).is_file(), src
    text = index.read_text()
    assert "broken" in text and "no such file" in text and "3 scenes" in text


def test_report_of_a_folder_without_results_is_a_clear_error(tmp_path, capsys):
    from invpbr.run.cli import main

    assert main(["report", str(tmp_path)]) == 2
    assert "neither a result folder" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "result.json").write_text("[1, 2")
    with pytest.raises(ValueError, match=r"bad/result.json: not valid JSON"):
        write_report(tmp_path / "bad")


def test_pictures_diverging_map_is_symmetric_and_signed():
    values = np.array([[-1.0, 0.0, 1.0]])
    img, limit = pictures.diverging(values, 1.0)
    assert limit == 1.0
    neg, zero, pos = img[0].astype(int)
    assert neg[2] > neg[0] and pos[0] > pos[2]  # blue below zero, red above
    assert abs(int(zero.min()) - 247) < 10  # near white at zero
    assert pictures.srgb8(np.array([[[0.0, 0.5, 1.0]]]))[0, 0].tolist() == [0, 188, 255]


def test_record_warnings_keeps_them_and_still_shows_them():
    from invpbr.optimization.records import record_warnings

    with pytest.warns(UserWarning, match="careful"):
        with record_warnings() as caught:
            warnings.warn("careful: gradients may be wrong", stacklevel=1)
    assert caught == ["UserWarning: careful: gradients may be wrong"]


# -- the live view ---------------------------------------------------------------------


class FakeInfo:
    def __init__(self, iteration, loss, image):
        self.iteration, self.loss = iteration, loss
        self.render = lambda vid: image
        self.errors = lambda: {"x": 0.1 / (iteration + 1)}


def fake_problem():
    class View:
        def __init__(self, vid):
            self.id, self.photo = vid, np.full((8, 8, 3), 0.3, np.float32)

    class Problem:
        name = "fake"
        views = [View("a"), View("b")]

    return Problem()


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_live_server_serves_state_pictures_and_nothing_outside(tmp_path):
    from invpbr.results.live import LiveServer, LiveState

    state = LiveState(fake_problem(), render_every=0.0)
    with LiveServer(state, port=0) as server:
        code, page = fetch(server.url)
        assert code == 200 and b"state.json" in page
        for i in range(3):
            state(FakeInfo(i, 1.0 / (i + 1), np.full((8, 8, 3), 0.1 * i, np.float32)))
        code, body = fetch(server.url + "state.json")
        snap = json.loads(body)
        assert snap["steps"] == 3 and snap["loss"] == pytest.approx([1.0, 0.5, 1 / 3])
        assert snap["errors"] == pytest.approx({"x": 0.1 / 3})
        assert snap["render_iteration"] == 2 and snap["views"] == ["a", "b"]
        code, png = fetch(server.url + "render/1.png")
        assert code == 200 and png[:4] == b"\x89PNG"
        assert fetch(server.url + "render/7.png")[0] == 404
        (tmp_path / "secret.txt").write_text("x")
        folder = tmp_path / "out"
        folder.mkdir()
        (folder / "report.html").write_text("<html></html>")
        state.finish("completed", folder)
        assert json.loads(fetch(server.url + "state.json")[1])["report"] == "result/report.html"
        assert fetch(server.url + "result/report.html")[0] == 200
        assert fetch(server.url + "result/../secret.txt")[0] == 404
        assert fetch(server.url + "result/%2e%2e/secret.txt")[0] == 404


def test_live_server_names_a_taken_port():
    from invpbr.results.live import LiveServer, LiveState

    state = LiveState(fake_problem())
    with LiveServer(state, port=0) as first:
        port = first.server.server_address[1]
        with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{port}.*--port"):
            LiveServer(state, port=port)


def test_step_info_renders_the_current_estimate(tiny_scene):
    problem = invpbr.load_problem(tiny_scene)
    seen = []

    def callback(info):
        if info.iteration in (0, 9):
            seen.append((info.render("side"), info.errors()))

    invpbr.optimize(problem, iterations=10, progress=False, callback=callback)
    (first, e0), (last, e9) = seen
    photo = next(v.photo for v in problem.views if v.id == "side")
    assert first.shape == photo.shape
    assert np.abs(last - photo).mean() < np.abs(first - photo).mean()
    assert e9["ball.bsdf.base_color.value"] < e0["ball.bsdf.base_color.value"]
    with pytest.raises(ValueError, match="unknown view 'nope'"):
        invpbr.optimize(problem, iterations=1, progress=False,
                        callback=lambda info: info.render("nope"))


def test_notebook_live_figure_draws_loss_and_views(tiny_scene):
    problem = invpbr.load_problem(tiny_scene)
    monitor = invpbr.notebook.live(problem, every=0.0)
    result = invpbr.optimize(problem, iterations=4, progress=False, callback=monitor)
    monitor.finish(result)
    fig = monitor.figure()
    axes = fig.get_axes()
    assert len(axes) == 1 + 2 * 2  # loss, then photo and render of both views
    assert len(axes[0].get_lines()[0].get_xdata()) == 4
    assert re.search(r"completed, 4 steps", axes[0].get_title())
    assert axes[-1].get_images()  # the last view's render is drawn
    # the last state is the result's: its errors and final renders
    assert monitor.state.errors == pytest.approx(result.errors)
    vid = problem.views[-1].id
    assert np.array_equal(monitor.state.render_arrays[vid], result.renders[vid])
