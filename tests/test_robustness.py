"""Camera and pose refinement on random scenes (issue 13): the cause of divergence found,
best-state keeping, honest status, the small version of benchmarks/robustness.py.

The full benchmark (20 scenes per kind, BENCHMARKS.md) is
``python benchmarks/robustness.py --kind camera|pose --n 20 --seed 100``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import invpbr

ROOT = Path(__file__).resolve().parent.parent

#: Figures stated in README's robustness table (measured by the tests below).
STATED = {
    "back-facing lamp: image-sum derivative error with the fix": 0.25,
    "back-facing lamp: image-sum derivative error without it": 0.5,
    "lamp seen from behind: per-pixel derivative error without the term": 0.25,
    "lamp seen from behind: per-pixel derivative error with it": 0.3,
    "lamp seen from behind: image-sum derivative error without the term": 0.8,
    "lamp seen from behind: image-sum derivative error with it": 2.5,
    "small benchmark: median rotation, fraction of start": 0.3,   # measured 0.15 (0.68 before the polish)
    "small benchmark: worst rotation, times its start": 0.6,      # measured 0.32 (1.17 before the polish)
    "small benchmark: worst position, fraction of the diagonal": 0.01,  # measured 0.0065
    "polish alone: worst camera rotation (deg)": 0.4,
    "small light benchmark: rotation, fraction of start": 0.35,  # measured 0.09-0.14 (run seeds 0-2)
    "small light benchmark: position, fraction of start": 0.25,  # measured 0.034
}


@pytest.fixture(scope="module")
def lamp_scene(tmp_path_factory, mi):
    """A random camera scene (seed 0) whose rectangle lamp faces down, cameras above it."""
    from invpbr.testing.random_scenes import make_random_scene

    folder = tmp_path_factory.mktemp("lamp") / "scene"
    info = make_random_scene(folder, "camera", 0, size=24, n_cameras=(3, 3), spp=4,
                             iterations=10, photo_spp=32)
    assert info["lighting"] == "area"
    return folder


def test_random_scene_is_seeded_and_complete(tmp_path, mi):
    from invpbr.testing.random_scenes import make_random_scene

    a = make_random_scene(tmp_path / "a", "pose", 3, size=16, photo_spp=8)
    b = make_random_scene(tmp_path / "b", "pose", 3, size=16, photo_spp=8)
    assert a == b | {"diagonal": a["diagonal"]}
    for name in ("scene.xml", "truth.xml", "invpbr.toml", "truth.json"):
        assert (tmp_path / "a" / name).is_file()
    photos = sorted((tmp_path / "a" / "photos").glob("*.png"))
    assert len(photos) == a["cameras"] and 3 <= a["cameras"] <= 6
    assert (tmp_path / "a" / "photos" / photos[0].name).read_bytes() == \
        (tmp_path / "b" / "photos" / photos[0].name).read_bytes()
    with pytest.raises(ValueError, match="kind"):
        make_random_scene(tmp_path / "c", "texture", 0)
    # linear photos (--photo-format exr): the same draw, nothing clipped or quantized
    from invpbr.problem.folder import load_problem

    d = make_random_scene(tmp_path / "d", "pose", 3, size=16, photo_spp=8, photo_format="exr")
    assert d == a | {"diagonal": d["diagonal"]}
    views = load_problem(tmp_path / "d").views
    assert len(views) == a["cameras"] and all(v.photo_path.suffix == ".exr" for v in views)
    assert all(v.clipped is None and v.mask is None for v in views)
    # [photos] clipped = "auto": an object's pose leaves them out (bounds measured worse)
    assert not load_problem(tmp_path / "a").clipped_bounds()
    # other starting errors (robustness.py --start-rotation): the same draw otherwise
    e = make_random_scene(tmp_path / "e", "pose", 3, size=16, photo_spp=8,
                          start_errors={"rotation_deg": (12, 20)})
    assert 12 <= e["perturbation"]["rotation_deg"] <= 20
    assert e["perturbation"]["translation"] == a["perturbation"]["translation"]
    assert (tmp_path / "e" / "truth.xml").read_text() == (tmp_path / "a" / "truth.xml").read_text()
    for bad, message in (({"rotation": (1, 2)}, "start range 'rotation'; expected one of"),
                         ({"rotation_deg": (3, 2)}, "expected 0 <= low <= high")):
        with pytest.raises(ValueError, match=message):
            make_random_scene(tmp_path / "f", "pose", 3, size=16, start_errors=bad)
        assert not (tmp_path / "f").exists()  # (refused before anything is written)


def test_random_light_scene_moves_only_its_lamp(tmp_path, mi):
    """``kind = "light"``: the area light starts off its true pose by the drawn rotation
    and translation (about its centre); nothing else in scene.xml differs from truth.xml."""
    import re

    from invpbr.testing.random_scenes import make_random_scene

    from invpbr.problem.folder import load_problem

    info = make_random_scene(tmp_path, "light", 5, size=16, photo_spp=8)
    assert info["lighting"] == "area (estimated)"
    assert 'key = "lamp.to_world"' in (tmp_path / "invpbr.toml").read_text()
    # [photos] clipped = "auto": a posed light leaves clipped pixels out; "bound" is obeyed
    problem = load_problem(tmp_path)
    assert problem.config.photos.clipped == "auto" and not problem.clipped_bounds()
    problem.config.photos.clipped = "bound"
    assert problem.clipped_bounds()
    scene, truth = ((tmp_path / n).read_text() for n in ("scene.xml", "truth.xml"))
    lamp = re.compile(r'<shape type="rectangle" id="lamp"><transform name="to_world">'
                      r'<matrix value="([^"]+)"/>')
    assert lamp.sub("", scene) == lamp.sub("", truth)

    def matrix(text):
        return np.array([float(v) for v in lamp.search(text).group(1).split(",")]).reshape(4, 4)

    start, true = matrix(scene), matrix(truth)
    motion = start @ np.linalg.inv(true)
    angle = np.degrees(np.arccos(np.clip((np.trace(motion[:3, :3]) - 1) / 2, -1, 1)))
    assert angle == pytest.approx(info["perturbation"]["rotation_deg"], rel=1e-3)
    moved = np.linalg.norm(start[:3, 3] - true[:3, 3]) / info["diagonal"]
    assert moved == pytest.approx(info["perturbation"]["translation"], rel=1e-3)


def test_random_shape_scene_starts_from_a_dented_copy_of_its_object(tmp_path, mi):
    """``kind = "shape"``: scene.xml differs from truth.xml only in the estimated object's
    mesh file; the start mesh has the truth's faces, its vertices moved along their rays
    from the object's centre by bumps of 4-10 % of the radius, and the run's Chamfer
    distance at the start is what those bumps make of it (not zero, not a wholly other
    shape)."""
    from invpbr.problem.folder import load_problem
    from invpbr.testing.random_scenes import SHAPE_PERTURBATION, dented

    info = _tiny_scene(tmp_path, "shape", 4)
    assert 'kind = "shape"\nkey = "obj0.vertex_positions"' in (tmp_path / "invpbr.toml").read_text()
    scene, truth = ((tmp_path / n).read_text() for n in ("scene.xml", "truth.xml"))
    assert scene.replace("meshes/obj0_start.ply", "meshes/obj0.ply") == truth
    assert "obj0_start.ply" in scene and info["objects"][0]["shape"] == "blob"
    problem = load_problem(tmp_path)
    start = np.array(problem.params["obj0.vertex_positions"]).reshape(-1, 3)
    shape = problem.estimates[0]
    assert shape.kind == "shape"
    chamfer = shape.errors(start.ravel(), problem)[1]["chamfer"]
    assert 0.002 < chamfer < 0.05, chamfer
    # dented(): radial, the heights drawn, bumps where the draws put them
    v = np.random.default_rng(0).normal(size=(500, 3))
    moved = dented(v, np.random.default_rng(1), SHAPE_PERTURBATION)
    ratio = np.linalg.norm(moved, axis=1) / np.linalg.norm(v, axis=1)
    assert np.allclose(np.cross(moved, v), 0, atol=1e-9)
    assert 1 - 3 * SHAPE_PERTURBATION[1] <= ratio.min() and ratio.max() <= 1 + 3 * SHAPE_PERTURBATION[1]
    assert np.abs(ratio - 1).max() >= SHAPE_PERTURBATION[0] * 0.9


def _object_in_view(folder: Path, mi) -> np.ndarray:
    """Per camera of ``folder``'s truth: the angle that object 0's bounding sphere spans
    from the camera, as a fraction of the camera's half field of view."""
    scene = mi.load_file(str(folder / "truth.xml"))
    box = next(s for s in scene.shapes() if s.id() == "obj0").bbox()
    centre = np.array(box.center()).ravel()
    radius = np.linalg.norm(np.array(box.extents()).ravel()) / 2
    out = []
    for sensor in scene.sensors():
        origin = np.array(sensor.world_transform() @ mi.ScalarPoint3f(0, 0, 0)).ravel()
        fov = np.radians(np.array(mi.traverse(sensor)["x_fov"]).ravel()[0])
        out.append(np.arcsin(min(1.0, radius / np.linalg.norm(centre - origin))) / (fov / 2))
    return np.array(out)


def test_random_pose_scene_framed_on_its_object(tmp_path, mi):
    """``framing = "object"`` (the benchmark's ``--framing object``): the same draw, but
    every camera frames the estimated object, which then spans several times the angle it
    spans when the cameras frame the whole scene (the default for poses)."""
    from invpbr.testing.random_scenes import make_random_scene

    for seed in (3, 7):
        wide = make_random_scene(tmp_path / f"wide{seed}", "pose", seed, size=16, photo_spp=4)
        near = make_random_scene(tmp_path / f"near{seed}", "pose", seed, size=16, photo_spp=4,
                                 framing="object")
        assert (wide["framing"], near["framing"]) == ("scene", "object")
        assert near == wide | {"framing": "object", "diagonal": near["diagonal"]}
        far_span, near_span = (_object_in_view(tmp_path / f"{n}{seed}", mi) for n in ("wide", "near"))
        assert np.all(near_span > 1.5 * far_span) and np.median(near_span) > 0.6, (far_span, near_span)
    with pytest.raises(ValueError, match="framing 'close'"):
        make_random_scene(tmp_path / "bad", "pose", 0, framing="close")


def _tiny_scene(folder, kind: str, seed: int) -> dict:
    """A tiny random scene of ``kind`` (16x16, 8-spp photos)."""
    from invpbr.testing.random_scenes import make_random_scene

    return make_random_scene(folder, kind, seed, size=16, photo_spp=8)


def _derivative_error(folder, view_id: str, component: int, hide: bool) -> float:
    """|AD - FD| of one camera component's image-sum derivative, relative to the sum of
    |FD| over the pixels (a sum alone can cancel to nothing), on view ``view_id``."""
    import drjit as dr
    import mitsuba as mi

    from invpbr.problem.folder import load_problem
    from invpbr.render.integrators import make_integrator

    problem = load_problem(folder)
    camera = problem.estimates[0]
    camera.setup(problem)
    if not hide:
        camera.model.hidden = [set() for _ in camera.model.hidden]
    view = next(v for v in problem.views if v.id == view_id)
    integrator = make_integrator(problem.config.render, problem.parameters, problem.scene)
    base, to_dr, write, restore = camera.gradcheck_writer(problem.params, view.index)
    direction = np.zeros_like(base)
    direction[6 * camera.model.slot[view.index] + component] = 1.0

    def render(x, spp, seed):
        write(to_dr(x))
        with dr.suspend_grad():
            return np.array(mi.render(problem.scene, problem.params, sensor=view.index,
                                      integrator=integrator, spp=spp, seed=seed))[..., :3]

    theta = mi.Float(0.0)
    dr.enable_grad(theta)
    write(to_dr(base) + to_dr(direction) * theta)
    image = mi.render(problem.scene, problem.params, sensor=view.index, integrator=integrator,
                      spp=128, seed=0)
    dr.forward(theta)
    ad = np.array(dr.grad(image))[..., :3]
    eps = 0.005
    fd = (render(base + eps * direction, 512, 1) - render(base - eps * direction, 512, 1)) / (2 * eps)
    restore()
    return float(abs(ad.sum() - fd.sum()) / np.abs(fd).sum())


def test_back_facing_lamp_is_the_divergence_and_is_fixed(lamp_scene, mi):
    """The measured cause: Mitsuba 3.9.1 gives a one-sided area emitter seen from behind a
    front-side boundary term when the scene moves with a camera. invpbr takes that
    emitter's silhouette samples away for such cameras; the derivative then agrees with
    finite differences, and without that it is off several times over (measured 0.10 against 0.64)."""
    from invpbr.problem.folder import load_problem

    problem = load_problem(lamp_scene)
    camera = problem.estimates[0]
    camera.setup(problem)
    behind = [problem.views[i].id for i, keys in enumerate(camera.model.hidden)
              if "lamp.silhouette_sampling_weight" in keys]
    assert behind, "the draw was meant to have cameras above the lamp"
    fixed = _derivative_error(lamp_scene, behind[0], 1, hide=True)
    broken = _derivative_error(lamp_scene, behind[0], 1, hide=False)
    assert fixed < STATED["back-facing lamp: image-sum derivative error with the fix"], fixed
    assert broken > STATED["back-facing lamp: image-sum derivative error without it"], broken


def test_posed_lamp_renders_its_derivatives_without_the_wrong_edge_term(tmp_path, mi):
    """A posed area light: its views render their derivatives without the primary-edge
    term (all of them since 2026-12-05, see `Pose.needs_primary_edges`); for the cameras
    that see it only from behind that term is wrong (Mitsuba 3.9.1 gives the lamp's
    outline there a term as if its emitting side faced them), and `check_gradients` (which
    renders each view as the optimizer does) agrees with finite differences; the
    problem's integrator with the term does not. Light seed 109, 48x48, its 3 cameras
    behind the lamp, 6 pose components: median per-pixel error 0.12 without the term
    (0.47 with it), image-sum error 0.43 (6.0 with it)."""
    from invpbr.optimization.gradcheck import check_direction_set, check_gradients
    from invpbr.problem.folder import load_problem
    from invpbr.render.integrators import make_integrator
    from invpbr.testing.random_scenes import make_random_scene

    folder = tmp_path / "light"
    make_random_scene(folder, "light", 109, size=48, spp=8, iterations=10, photo_spp=4)
    problem = load_problem(folder)
    pose = problem.estimates[0]
    pose.setup(problem)
    # the cameras on the lamp's back side, from scene.xml's lamp (an independent reading)
    scene = mi.load_file(str(folder / "scene.xml"))
    lamp = np.array(mi.traverse(scene)["lamp.to_world"].matrix, dtype=np.float64).reshape(4, 4)
    normal = np.linalg.inv(lamp[:3, :3]).T @ [0.0, 0.0, 1.0]
    behind = []
    for sensor in scene.sensors():
        c2w = np.array(sensor.world_transform().matrix, dtype=np.float64).reshape(4, 4)
        if np.dot(c2w[:3, 3] - lamp[:3, 3], normal) <= 0.0:
            behind.append(sensor.id())
    # a lamp's pose renders every view without the term (those behind it: the wrong
    # term, measured here; those in front: see Pose.needs_primary_edges)
    assert pose.lamp and not any(pose.needs_primary_edges(v.index) for v in problem.views)
    assert 0 < len(behind) < len(problem.views)  # (the draw has cameras on both sides)
    settings = {"spp": 128, "fd_spp": 512, "epsilon": 0.003, "seed": 0}
    fixed = check_gradients(problem, views=behind, **settings)
    integrator = make_integrator(problem.config.render, problem.estimates, problem.scene)
    broken = [c for v in problem.views if v.id in behind
              for c in check_direction_set(problem, pose, v, integrator, **settings)]
    pixel = [np.median([c.error_mean for c in checks]) for checks in (fixed, broken)]
    image_sum = [np.median([c.sum_error for c in checks]) for checks in (fixed, broken)]
    print("per-pixel", pixel, "image sum", image_sum)
    assert pixel[0] < STATED["lamp seen from behind: per-pixel derivative error without the term"]
    assert pixel[1] > STATED["lamp seen from behind: per-pixel derivative error with it"]
    assert image_sum[0] < STATED["lamp seen from behind: image-sum derivative error without the term"]
    assert image_sum[1] > STATED["lamp seen from behind: image-sum derivative error with it"]
    # `invpbr gradients` shows what the optimizer renders too: its images of a camera
    # behind the lamp are those without the term (same seed), far from those with it
    from invpbr.optimization.gradient_images import gradient_images

    def totals(**given):
        return np.array([g.total for g in gradient_images(problem, views=behind[:1], spp=32,
                                                          setup=False, **given)
                         if g.what == "dimage"])

    shown = totals()
    without = totals(integrator=make_integrator(problem.config.render, problem.estimates,
                                                problem.scene, primary_edges=False))
    assert len(shown) == 6 and np.abs(shown - without).max() < 0.05 * np.abs(without).max()
    assert np.abs(totals(integrator=integrator) - without).max() > 0.5 * np.abs(without).max()


def test_rectangles_are_loaded_as_meshes_when_cameras_move(lamp_scene, mi):
    """Camera refinement moves every shape; an analytic rectangle moved out of its plane
    is one of Mitsuba 3.9.1's traps (tests/test_discontinuities.py: the same rectangle as
    a mesh agrees with finite differences). invpbr loads rectangles as meshes then, with
    the same geometry, normals and texture coordinates: the same image at the same seed."""
    import warnings

    from invpbr.problem.folder import load_problem
    from invpbr.problem.scene import load_scene, mesh_analytic_shapes, scene_text

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        problem = load_problem(lamp_scene)
    said = " ".join(str(w.message) for w in caught)
    assert "'lamp'" in said and "loaded as meshes" in said, said
    keys = set(problem.params.keys())
    assert "lamp.vertex_positions" in keys and "lamp.to_world" not in keys
    meshed, names = mesh_analytic_shapes(scene_text(lamp_scene / "truth.xml"),
                                         lamp_scene / "truth.xml")
    analytic = load_scene(lamp_scene / "truth.xml")
    assert "lamp" in names and len(analytic.shapes()) == len(meshed.shapes())
    # The light is sampled differently (a mesh's triangles vs the rectangle's own
    # parameterization), so the images agree within Monte Carlo noise, not bit for bit:
    # the analytic scene against itself at another seed is the yardstick.
    a1, a2, b = (np.array(mi.render(scene, spp=128, seed=seed))
                 for scene, seed in ((analytic, 1), (analytic, 2), (meshed, 2)))
    noise, across = np.abs(a1 - a2).mean(), np.abs(a1 - b).mean()
    assert across < 1.25 * noise, (across, noise)


def test_smoothed_loss_detects_a_rise():
    from invpbr.optimization.watch import Series

    rng = np.random.default_rng(0)
    s = Series(half=2)
    for x in 1.0 - 0.5 * np.linspace(0, 1, 40) + 0.02 * rng.normal(size=40):
        s.add(float(x))
    assert not s.clearly_above_best()  # falling with noise: no rise
    assert s.clearly_below_start()
    for x in 0.5 + np.linspace(0, 0.5, 20) + 0.02 * rng.normal(size=20):
        s.add(float(x))
    assert s.clearly_above_best()
    assert 0.45 < s.best < 0.6 and 35 <= s.best_step <= 41
    flat = Series(half=2)
    for x in 0.3 + 0.05 * rng.normal(size=60):  # noise alone is never "clearly above"
        flat.add(float(x))
    assert not flat.clearly_above_best()


def test_run_that_only_gets_worse_returns_its_start_and_exits_non_zero(tmp_path, mi):
    """Cameras that start at the truth with a learning rate far too large: every step
    makes the loss worse. The run returns the state of its lowest smoothed loss (the
    start), says "diverged" in result.json and on the console, and `invpbr run` exits 1."""
    import os
    import shutil

    from invpbr.testing.random_scenes import make_random_scene

    folder = tmp_path / "scene"
    make_random_scene(folder, "camera", 2, size=24, n_cameras=(3, 3), spp=4, iterations=16,
                      photo_spp=32)
    shutil.copy(folder / "transforms_truth.json", folder / "transforms.json")  # start = truth
    toml = folder / "invpbr.toml"
    # (no polish: it would take the returned start on towards the photos; this is the watch's test)
    toml.write_text(toml.read_text().replace('key = "*"', 'key = "*"\nlr = 0.2\npolish = 0'))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "invpbr", "run", str(folder), "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "diverged", proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "diverged" in proc.stdout
    assert any("best state seen is returned" in w for w in result["warnings"])
    rotation = [e["rotation_deg"] for e in result["camera_errors"].values()]
    assert max(rotation) < 1.0, rotation  # the start (the truth), not the last state


def test_run_that_renders_worse_than_its_start_is_put_back(monkeypatch, mi):
    """A run that moves edges and whose final renders' loss is more than 1 % above the
    start renders' (same samples) is put back to its start, "diverged", with a warning
    (the watch's smoothed losses missed such a run: a free shape of the robustness
    benchmark, seed 107, whose loss rose 3 % and whose Chamfer distance doubled); one
    within 1 % is left alone, and so is a resumed run (its start is not this process's);
    the loss is the step's own ([optimize] loss)."""
    from types import SimpleNamespace

    from invpbr.optimization import loop

    photos = [np.zeros((4, 5, 3)), np.zeros((4, 5, 3))]
    mask = np.ones((4, 5), bool)
    mask[0, 0] = False  # a clipped pixel: left out on both sides
    from invpbr.problem.folder import View

    views = [View(index=i, id=f"v{i}", photo_path=None, photo=photos[i], mask=mask if i else None)
             for i in range(2)]

    class Latents:
        def __init__(self):
            self.calls = []

        def restore(self, state):
            self.calls.append(("restore", state))

        def write_scene(self):
            self.calls.append(("write",))

    def make_run(end_value, resumed_from=None, loss="l1"):
        config = SimpleNamespace(optimize=SimpleNamespace(loss=loss, loss_scale=0.05),
                                 photos=SimpleNamespace(clipped="bound"),
                                 render=SimpleNamespace(spp_final=64))
        start = {v.id: np.full((4, 5, 3), 0.1) for v in views}
        start["v1"][0, 0] = 50.0  # masked: does not count
        run = SimpleNamespace(problem=SimpleNamespace(views=views, config=config, name="p",
                                                      clipped_bounds=lambda: True),
                              context=SimpleNamespace(fit=[0, 1]), start_state={"x": 1},
                              resumed_from=resumed_from, start_renders=start,
                              latents=Latents(), status="completed")
        monkeypatch.setattr(loop, "final_renders",
                            lambda r: {v.id: np.full((4, 5, 3), end_value) for v in views})
        return run

    assert loop.render_loss(make_run(0.2), make_run(0.2).start_renders) == pytest.approx(0.1)
    # the step's own loss judges the end against the start (it was L1 for every loss but l2)
    for loss, expected in (("l2", 0.01), ("relative_l2", 0.01 / 0.02), ("cauchy", np.log(5.0))):
        got = loop.render_loss(make_run(0.2, loss=loss), make_run(0.2).start_renders)
        assert got == pytest.approx(expected, rel=1e-5), loss
    run = make_run(0.2)
    with pytest.warns(UserWarning, match="render worse than the start"):
        assert loop.back_to_start(run) is None  # (finish_run renders the start again)
    assert run.status == "diverged" and run.latents.calls[0] == ("restore", {"x": 1})
    for end, resumed_from in ((0.1005, None), (0.2, 30)):
        quiet = make_run(end, resumed_from)
        kept = loop.back_to_start(quiet)
        assert quiet.status == "completed" and quiet.latents.calls == []
        # the final renders come back for finish_run to reuse; a resumed run has none
        assert (kept is None) == (resumed_from is not None)
        if kept is not None:
            assert kept["v0"][0, 0, 0] == end


def test_truth_loss_tells_the_truth_from_a_wrong_scene(tmp_path, mi, capsys):
    """benchmarks/truth_loss.py: the photos' loss is lower at the truth than at a wrong
    scene (the tiny scene's grey model) in both paired draws, and its table says so; a
    result folder without a scene.xml is named."""
    from conftest import make_tiny_scene

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import truth_loss

    folder = make_tiny_scene(tmp_path / "tiny", res=16, photo_spp=32)
    problem = invpbr.load_problem(folder)
    for seed in (1, 2):
        truth = truth_loss.losses(problem, folder / "truth.xml", 32, seed)
        model = truth_loss.losses(problem, folder / "scene.xml", 32, seed)
        assert truth[0] < 0.5 * model[0] and truth[1] < 0.5 * model[1], (truth, model)
    assert truth_loss.main([str(folder), str(folder), "--spp", "16"]) == 0
    rows = capsys.readouterr().out.splitlines()
    gaps = [float(x) for x in rows[-1].split()[-2:]]  # the model's L1 minus the truth's
    assert rows[-2].split()[-2:] == ["+0.00e+00", "+0.00e+00"] and min(gaps) > 0.01, rows
    with pytest.raises(SystemExit):
        truth_loss.main([str(folder), str(tmp_path)])
    assert f"{tmp_path / 'scene.xml'}: no such scene file" in capsys.readouterr().err


def test_benchmark_summary_separates_poses_the_photos_determine(capsys):
    """The summary names the seeds and the framing (poses: the object by default; a JSON
    saved before the default stored None, which was the scene) and counts the runs whose
    polish says their photos fix them to the goal (2 sigmas within it) apart from the
    rest: here one determined run within the goal, one loose run within it by luck, one
    loose run out and one undetermined (no sigma); its time per run is the runs' own."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import robustness

    def row(rotation, sigma):
        return {"rotation_deg": rotation, "position": 1e-4, "start_rotation_deg": 3.0,
                "start_position": 0.02, "worse": False, "ok": rotation <= 0.5,
                "sigma_rotation_deg": sigma, "sigma_position": None if sigma is None else 1e-4}

    scenes = [{"seed": seed, "run": 0, "status": "completed", "exit_code": 0, "rows": [r],
               "seconds": 100.0 + seed}
              for seed, r in zip([7, 8, 9, 30], [row(0.1, 0.2), row(0.4, 0.6), row(0.9, 0.7),
                                                 row(0.3, None)])]
    args = {"seed": 7, "size": 48, "spp": 8, "max_depth": 2, "iterations": 100}
    assert robustness.FRAMING["pose"] == "object" and robustness.FRAMING["camera"] == "scene"
    robustness.summarize("pose", args | {"framing": "object"}, scenes, [], 10.0)
    out = capsys.readouterr().out
    assert "cameras frame the object" in out and "success: 3/4 runs (75.0 %)" in out, out
    assert "4 scenes (seeds 7..9, 30)" in out, out  # (a merged JSON: seeds with a gap)
    assert "not determined by the photos (polish): 1/4" in out, out
    assert ("determined to the goal by their photos (2 polish sigmas within it): 1/4 runs, "
            "1 of them within the goal; the others: 2/3") in out, out
    # (seconds per run from the runs: a merged JSON's saved total is one part's)
    assert "time: 10 s for the command (114 s per run; runs 454 s in all)" in out, out
    robustness.summarize("pose", args | {"framing": None}, scenes, [], 10.0)
    assert "cameras frame the scene" in capsys.readouterr().out


def test_retired_reparam_integrator_is_refused_with_the_reason():
    from invpbr.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"prb_reparam.*retired.*83 %.*integrator = \"auto\""):
        parse_config({"render": {"integrator": "prb_reparam"}}, source="x/invpbr.toml")


#: The small version of benchmarks/robustness.py: three fixed random camera scenes
#: (seeds 100-102 of the benchmark, 3 cameras each, 24x24, 30 iterations).
SMALL = {"seeds": (100, 101, 102), "size": 24, "iterations": 30}
#: The small light benchmark: a seed of ``--kind light``, 3 cameras, 48x48, 30 iterations.
LIGHT = {"seeds": (100,), "size": 48, "iterations": 30}


def _small_runs(tmp_path, kind: str, spec: dict):
    """Runs the benchmark's scenes of ``kind`` for ``spec``'s seeds (3 cameras, 64-spp
    photos) through `invpbr run`; returns (scene info, result.json, exit code) per seed.
    Puts benchmarks/ on the path (its row helpers score the results)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from robustness import run_scene

    from invpbr.testing.random_scenes import make_random_scene

    runs = []
    for seed in spec["seeds"]:
        folder = tmp_path / f"{kind}_{seed}"
        info = make_random_scene(folder, kind, seed, size=spec["size"], spp=8,
                                 iterations=spec["iterations"], n_cameras=(3, 3),
                                 photo_spp=64)
        result, code, _ = run_scene(folder, tmp_path / f"out_{kind}_{seed}")
        runs.append((info, result, code))
    return runs


@pytest.mark.slow
def test_small_camera_benchmark(tmp_path, mi):
    """Cameras on random scenes end closer to the truth than they started (before the
    fixes of issue 13, seed 100's cameras ended 5-13 degrees off from 1.4), each camera
    by the stated factor, and within 1 % of the diagonal. Measured with the Gauss-Newton
    polish (38b36ac): median 0.21 deg from 1.42, worst 0.50 deg, positions 0.16-0.64 % of
    the diagonal (before it: median 0.96 deg; seed 102 never beat its start and returned it,
    "diverged", exit 1; the polish now takes it on and it completes)."""
    runs = _small_runs(tmp_path, "camera", SMALL)
    from robustness import camera_rows

    rows = []
    for info, result, code in runs:
        assert result["status"] in ("completed", "diverged"), result.get("status")
        assert code == (0 if result["status"] == "completed" else 1)
        rows += camera_rows(result, info["diagonal"])
    start = np.median([r["start_rotation_deg"] for r in rows])
    end = np.median([r["rotation_deg"] for r in rows])
    assert end < STATED["small benchmark: median rotation, fraction of start"] * start, rows
    worst = max(r["rotation_deg"] / r["start_rotation_deg"] for r in rows)
    assert worst < STATED["small benchmark: worst rotation, times its start"], rows
    position = max(r["position"] for r in rows)
    assert position < STATED["small benchmark: worst position, fraction of the diagonal"], rows


@pytest.mark.slow
def test_small_light_benchmark(tmp_path, mi):
    """An area light's pose from the shading and shadows it casts (and its silhouette
    where a camera sees it), on a random scene as `--kind light` draws it, defaults
    otherwise: it ends closer than the stated fraction of its start, in rotation and in
    position (seed 100, whose 3 cameras see the lamp from behind: 3.95 -> 0.49 deg, 3.3 ->
    0.11 % of the diagonal, 100-135 s; run seeds 1 and 2: 0.36 and 0.56 deg, so the bound
    leaves room for light runs' poor repeatability, BENCHMARKS.md; before those cameras rendered without the lamp's
    wrong edge term, the steps diverged from the start and the polish alone ended at
    1.30 deg, 0.33 of the start; at 24x24 that polish alone did better, 0.28 deg, and
    the steps now end where it does worse, 0.85 deg)."""
    runs = _small_runs(tmp_path, "light", LIGHT)
    from robustness import pose_row

    rows = []
    for info, result, code in runs:
        assert result["status"] == "completed" and code == 0, (result.get("status"), code)
        rows.append(pose_row(result, info["diagonal"]))
        # (its photos clip the lamp's hot spot: the polish left the pixels near the clip out)
        assert result["polished"]["lamp.to_world"]["near_clip"]["pixels_left_out"] > 0
    for row in rows:
        assert row["rotation_deg"] < STATED["small light benchmark: rotation, fraction of start"] \
            * row["start_rotation_deg"], rows
        assert row["position"] < STATED["small light benchmark: position, fraction of start"] \
            * row["start_position"], rows


def _noisy_pose_run(mi, seed: int, average: float, iterations: int = 100,
                    lr_decay: float = 1.0):
    """A pose latent ``[t, w]`` stepped by Dr.Jit's Adam on a quadratic whose gradient is
    mostly noise (signal 0.23 per unit of error, noise 0.03 per step: what a pose's
    rotation gradient measured at 48x48 and 8 spp, BENCHMARKS.md issue 13), with the
    loop's learning-rate decay (``lr_decay``), watched by the :class:`Watch`; (last,
    returned, truth, the watch)."""
    from types import SimpleNamespace

    import drjit as dr

    from invpbr.optimization.loop import decay_factor
    from invpbr.optimization.watch import Watch

    rng = np.random.default_rng(seed)
    truth = np.array([0.05, -0.03, 0.02, 0.03, -0.02, 0.04])  # about 3 degrees from the start
    opt = mi.ad.Adam(lr=0.02)
    opt["pose"] = mi.Float(np.zeros(6))

    class Store:  # the latent store protocol the watch uses
        def snapshot(self):
            return {"pose": dr.detach(opt["pose"])}

        def __getitem__(self, name):
            return opt[name]

        def __setitem__(self, name, value):
            opt[name] = value

        def restore(self, snapshot):
            opt["pose"] = snapshot["pose"]

        def write_scene(self):
            pass

        def names(self):
            return ["pose"]

    estimate = SimpleNamespace(key="pose", kind="pose", moves_edges=True, targets=["obj"],
                               config=SimpleNamespace(average=average))
    run = SimpleNamespace(iterations=iterations, estimates=[estimate], latents=Store(),
                          next_step=0, problem=SimpleNamespace(name="noisy"), status="completed")
    watch = Watch.start(run)
    for it in range(iterations):
        noise = mi.Float(0.03 * rng.normal(size=6))
        x = opt["pose"]
        dr.backward(dr.sum(0.5 * 0.23 * dr.square(x - mi.Float(truth)) + noise * x))
        opt.set_learning_rate(0.02 * decay_factor(lr_decay, it, iterations))
        opt.step()
        run.next_step = it + 1
        watch.record(run, 1.0 + 0.01 * rng.normal(), {})  # a flat loss: no best-state rollback
    last = np.array(opt["pose"], dtype=np.float64)
    watch.finish(run)
    return last, np.array(opt["pose"], dtype=np.float64), truth, watch


def test_iterate_average_of_a_noisy_pose_is_closer_than_its_last_step(mi):
    """``[[estimate]] average``: under a constant learning rate and a gradient that is
    mostly noise, Adam's iterates jitter around the answer; the mean of the last 75 %
    of the iterates (rotations by their chordal mean) ends closer to the truth than the
    last iterate, over 12 seeds (simulated over 300 seeds: median 1.35 deg against
    3.45), and the watch says what it returned. With ``average = 0`` the last iterate
    is returned."""
    from scipy.spatial.transform import Rotation

    def errors(x, truth):
        angle = (Rotation.from_rotvec(x[3:]).inv() * Rotation.from_rotvec(truth[3:])).magnitude()
        return np.degrees(angle), np.linalg.norm(x[:3] - truth[:3])

    last_rot, mean_rot, last_pos, mean_pos = [], [], [], []
    for seed in range(12):
        last, returned, truth, watch = _noisy_pose_run(mi, seed, 0.75)
        assert watch.averaged["pose"] == {"returned": "average", "from_step": 25, "steps": 75}
        for x, rot, pos in ((last, last_rot, last_pos), (returned, mean_rot, mean_pos)):
            r, p = errors(x, truth)
            rot.append(r)
            pos.append(p)
    assert np.mean(mean_rot) < 0.6 * np.mean(last_rot), (mean_rot, last_rot)
    assert np.mean(mean_pos) < 0.6 * np.mean(last_pos), (mean_pos, last_pos)
    last, returned, _, watch = _noisy_pose_run(mi, 0, 0.0)
    assert np.array_equal(last, returned) and watch.averaged == {} and watch.tail == {}


def test_averaged_iterates_survive_a_checkpoint(tmp_path, mi):
    """The iterates kept for averaging go into the checkpoint with the watch and come
    back from it (a resumed run averages the same steps)."""
    from invpbr.optimization.checkpoint import VERSION, read_checkpoint, write_checkpoint
    from invpbr.optimization.watch import Watch

    _, _, _, watch = _noisy_pose_run(mi, 0, 0.5, iterations=20)
    path = tmp_path / "state.npz"
    write_checkpoint(path, {"version": VERSION, "watch": watch.state()})
    run = type("Run", (), {"latents": type("Store", (), {"names": lambda self: []})()})()
    back = Watch.from_state(read_checkpoint(path)["watch"], run)
    assert back.tail_from == {"pose": 10} and len(back.tail["pose"]) == 10
    assert np.array_equal(np.stack(back.tail["pose"]), np.stack(watch.tail["pose"]))
    watch.tail["pose"] = []  # a checkpoint before the averaged steps
    write_checkpoint(path, {"version": VERSION, "watch": watch.state()})
    back = Watch.from_state(read_checkpoint(path)["watch"], run)
    assert back.tail == {"pose": []} and back.tail_from == {"pose": 10}


def test_mean_motion_averages_rotations_not_axis_angle_vectors():
    """Two rotations a turn of 40 degrees apart about an axis through a base rotation
    of 120 degrees average to the base rotation (the mean of their axis-angle vectors
    does not); translations average linearly; cameras' rows each on their own."""
    from scipy.spatial.transform import Rotation

    from invpbr.estimates.meshes import mean_motion

    base = Rotation.from_rotvec([0.0, 0.0, np.radians(120)])
    turns = [base * Rotation.from_rotvec([np.radians(a), 0.0, 0.0]) for a in (20, -20)]
    rows = np.array([[1.0, 2.0, 3.0, *turns[0].as_rotvec()], [3.0, 2.0, 1.0, *turns[1].as_rotvec()]])
    mean = mean_motion(rows, 1)
    assert mean[:3] == pytest.approx([2.0, 2.0, 2.0])
    assert (Rotation.from_rotvec(mean[3:]).inv() * base).magnitude() < 1e-6
    naive = rows[:, 3:].mean(axis=0)
    assert (Rotation.from_rotvec(naive).inv() * base).magnitude() > np.radians(0.5)
    two = mean_motion(np.hstack([rows, rows[:, ::-1] * 0.0]), 2)  # a second camera at rest
    assert two[:6] == pytest.approx(mean) and two[6:] == pytest.approx(np.zeros(6))


def test_average_is_validated():
    from invpbr.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"x.toml: estimate\[0\] \(key 'bsdf.reflectance"
                                          r".value'\)\.average applies to kind = \"pose\""):
        parse_config({"estimate": [{"key": "bsdf.reflectance.value", "average": 0.5}]},
                     source="x.toml")
    with pytest.raises(ConfigError, match=r"average"):
        parse_config({"estimate": [{"key": "*", "kind": "camera", "average": 1.0}]},
                     source="x.toml")
    config = parse_config({"estimate": [{"key": "*", "kind": "camera", "average": 0.25}]})
    assert config.estimate[0].average == 0.25


def test_polish_alone_brings_cameras_from_their_start_to_the_goal(tmp_path, mi, monkeypatch):
    """The Gauss-Newton polish (invpbr/optimization/polish.py) after a single Adam step:
    cameras 1.6 degrees and 0.9 % of the diagonal off end within the issue's goal, and
    result.json's ``polished`` gives each camera a standard deviation. The final renders
    of the check against the start are the result's (rendered once, not twice)."""
    from invpbr.optimization import loop
    from invpbr.optimization.loop import optimize
    from invpbr.problem.folder import load_problem
    from invpbr.testing.random_scenes import make_random_scene

    folder = tmp_path / "scene"
    info = make_random_scene(folder, "camera", 102, size=24, n_cameras=(3, 3), spp=8,
                             iterations=1, photo_spp=64)
    rendered, checked = [], []
    final_renders, back_to_start = loop.final_renders, loop.back_to_start
    monkeypatch.setattr(loop, "final_renders", lambda run: rendered.append(final_renders(run))
                        or rendered[-1])
    monkeypatch.setattr(loop, "back_to_start", lambda run: checked.append(back_to_start(run))
                        or checked[-1])
    result = optimize(load_problem(folder), iterations=1, progress=False)
    assert len(checked) == 1 and checked[0] is not None and len(rendered) == 1
    assert result.renders is rendered[0]
    start = result.camera_errors_initial
    report = result.polished["cameras"]
    assert set(report["motions"]) == set(start)
    assert report["spp"] == 256  # (24x24 views: the default's most per pixel)
    for sid, e in result.camera_errors.items():
        assert e["rotation_deg"] < STATED["polish alone: worst camera rotation (deg)"], (sid, e)
        assert e["rotation_deg"] < 0.5 * start[sid]["rotation_deg"], (sid, e, start[sid])
        assert e["position"] < 0.01 * info["diagonal"], (sid, e)
        sigma = report["motions"][sid]["sigma"]
        assert 0 < sigma["rotation_deg"] < 1.0 and 0 < sigma["position"], (sid, sigma)
        assert report["motions"][sid]["loss_after"] < report["motions"][sid]["loss_before"]
    from invpbr.estimates.cameras import Cameras

    line = Cameras.summary("cameras", result.estimates["cameras"], result)  # (invpbr run prints it)
    worst = max(report["motions"], key=lambda m: report["motions"][m]["sigma"]["rotation_deg"])
    assert line.startswith("3 cameras refined; polish: standard deviation up to ") and worst in line


def test_polish_uncertainty_of_known_jacobians():
    """The polish's standard deviation: with two Jacobians of the same signal and
    independent noise it matches sigma * sqrt(diag((J^T J)^-1)) of the signal; a
    direction that is only noise in both gets a standard deviation many times larger, or
    "not determined" (None) where the product of the two is not positive."""
    from invpbr.optimization.polish import Block, uncertainty

    rng = np.random.default_rng(3)
    n = 4002  # (whole pixels of 3 channels)
    signal = rng.normal(size=(n, 6)) * np.array([3.0, 2.0, 1.0, 4.0, 2.0, 1.0])
    residual = 0.05 * rng.normal(size=n)

    def block(signal):
        b = Block("cameras", 0, 6, [0], np.full(6, 0.01), "cam", unit=2.0)
        b.jacobians = [signal + 0.3 * rng.normal(size=(n, 6)) for _ in range(2)]
        b.residual, b.weights = residual, np.ones(n)
        return b

    found = uncertainty(block(signal))
    cov = 0.05**2 * np.linalg.inv(signal.T @ signal)
    expected_rotation = np.degrees(np.sqrt(np.diag(cov)[3:].sum()))
    expected_position = np.sqrt(np.diag(cov)[:3].sum()) * 2.0
    assert found["rotation_deg"] == pytest.approx(expected_rotation, rel=0.1)
    assert found["position"] == pytest.approx(expected_position, rel=0.1)
    blind = signal.copy()
    blind[:, 5] = 0.0  # the photos do not see this rotation at all
    for _ in range(4):
        rotation = uncertainty(block(blind))["rotation_deg"]
        assert rotation is None or rotation > 20 * expected_rotation, rotation
    # a pixel's channels share their noise (one Monte Carlo path, one photo's noise):
    # three copies of each pixel's residual and Jacobian row say no more than one, so
    # the standard deviation is that of the pixels alone (sqrt(3) more than of three
    # independent channels)
    pixels = signal[::3]
    tripled = np.repeat(pixels, 3, axis=0)
    b = Block("cameras", 0, 6, [0], np.full(6, 0.01), "cam", unit=2.0)
    b.jacobians = [tripled + 0.3 * rng.normal(size=tripled.shape) for _ in range(2)]
    b.residual, b.weights = np.repeat(0.05 * rng.normal(size=len(pixels)), 3), np.ones(n)
    cov = 0.05**2 * np.linalg.inv(pixels.T @ pixels)
    assert uncertainty(b)["rotation_deg"] == pytest.approx(
        np.degrees(np.sqrt(np.diag(cov)[3:].sum())), rel=0.1)
    b.residual = b.residual[:-1]  # (not whole pixels: refused, not miscounted)
    b.weights, b.jacobians = b.weights[:-1], [j[:-1] for j in b.jacobians]
    with pytest.raises(ValueError, match="not whole pixels"):
        uncertainty(b)


def test_polish_compares_losses_on_renders_quiet_enough_to_prefer_the_truth(monkeypatch):
    """One render's loss holds that render's variance, which depends on the state: on
    renders of few samples a state that renders quieter looks closer to the photos
    (pose 113 at 96x96 of the benchmark ended 1.49 deg off so). A step from the truth
    to a state a pixel off whose renders have half the noise is kept where the step's
    comparison renders the polish's 64 samples per pixel; at ``COMPARE_SAMPLES`` times
    them (the default) it is refused, and :func:`compare_loss` prefers the truth. At
    48x48 and smaller (256 samples) the comparison's samples are the polish's own."""
    from invpbr.optimization import polish as P

    class Quiet(P.Renderer):
        def __init__(self, spp: int):
            self.masks, self.spp, self.photo = {0: None}, spp, _blob(np.zeros(6))

        def residuals(self, values, views, seed, spp=None):
            t = np.asarray(values["pose"], dtype=np.float64)
            noise = 0.1 * (1 + (t[0] < 0.5)) / np.sqrt(spp or self.spp)  # (quieter off it)
            draw = np.random.default_rng(seed).standard_normal(self.photo.shape)
            return {0: self.photo - _blob(t) - noise * draw}

    off = np.array([1.0, 0, 0, 0, 0, 0])  # (a pixel aside: within the trust region)
    monkeypatch.setattr(P, "huber_step", lambda b, r, c: -off)
    assert [P.Renderer.compare_spp.fget(Quiet(n)) for n in (16, 64, 256, 1024)] == [
        64, 256, 256, 1024]
    for factor, kept in ((1, 5), (P.COMPARE_SAMPLES, 0)):
        monkeypatch.setattr(P, "COMPARE_SAMPLES", factor)
        moved = 0
        for seed in range(5):
            block = P.Block("pose", 0, 6, [0], np.full(6, 0.5), "pose", 1.0, near=np.inf)
            theta = {"pose": np.zeros(6)}
            P._iterate(Quiet(64), theta, [block], (2 * seed, 2 * seed + 1))
            moved += block.moved
            assert np.allclose(theta["pose"], off if block.moved else 0.0), theta
        assert moved == kept, (factor, moved)
        block.threshold = 0.05
        truth, aside = (P.compare_loss(Quiet(64), {"pose": x}, block, 7) for x in (0 * off, off))
        assert (truth < aside) == (factor > 1), (factor, truth, aside)


def test_polish_samples_per_pixel_default_keeps_the_samples_per_view():
    """256 per pixel up to 48x48 (where the benchmarks measured the polish), the same
    samples per view on larger images (a 256x256 view: 9 per pixel, at least 16), and
    ``[[estimate]] polish_spp`` where it is set."""
    from types import SimpleNamespace

    from invpbr.optimization.polish import polish_spp

    unset = SimpleNamespace(config=SimpleNamespace(polish_spp=None))
    assert [polish_spp(unset, w * w) for w in (16, 48, 96, 128, 256, 1024)] == [
        256, 256, 64, 36, 16, 16]
    assert polish_spp(unset, 96 * 64) == 96 and polish_spp(unset) == 256
    assert polish_spp(SimpleNamespace(config=SimpleNamespace(polish_spp=512)), 256 * 256) == 512


def test_polish_settings_apply_to_poses_and_cameras_only():
    from invpbr.config import ConfigError, parse_config

    config = parse_config({"estimate": [{"kind": "camera", "polish": 0, "polish_spp": 64,
                                         "polish_blur": 0.5}]})
    assert config.estimate[0].polish == 0 and config.estimate[0].polish_spp == 64
    assert config.estimate[0].polish_blur == 0.5
    with pytest.raises(ConfigError, match=r"x/invpbr.toml: estimate\[0\].*polish_blur"):
        parse_config({"estimate": [{"key": "a.reflectance.value", "polish_blur": 1}]},
                     source="x/invpbr.toml")
    with pytest.raises(ConfigError, match=r"x/invpbr.toml: estimate\[0\].*polish.*\"pose\""):
        parse_config({"estimate": [{"key": "a.reflectance.value", "polish": 3}]},
                     source="x/invpbr.toml")
    with pytest.raises(ConfigError, match="polish"):
        parse_config({"estimate": [{"kind": "pose", "key": "a", "polish": -1}]})


def test_polish_step_is_not_shortened_by_jacobian_noise():
    """The Gauss-Newton step's normal matrix from two Jacobians with independent noise
    (the newest and the mean of the older ones) goes the whole way to the minimum of a
    linear problem; ``J^T J`` of one noisy Jacobian carries the noise's variance on its
    diagonal and stops short (at 48x48 a pose's steps went about a fifth of the way)."""
    from invpbr.optimization.polish import normal_matrix

    rng = np.random.default_rng(5)
    n = 6000
    signal = rng.normal(size=(n, 6)) * np.array([2.0, 1.0, 1.5, 0.5, 0.4, 0.3])
    truth = np.array([0.1, -0.2, 0.05, 0.3, -0.25, 0.4])
    residual = signal @ truth + 0.01 * rng.normal(size=n)
    noise = 0.6  # per pixel: more than the rotation columns' signal, as at 48x48
    noisy = [signal + noise * rng.normal(size=(n, 6)) for _ in range(4)]
    w = np.ones(n)
    mean = np.mean(noisy, axis=0)
    step = np.linalg.solve(normal_matrix(np.mean(noisy[:3], axis=0), noisy[3], w),
                           mean.T @ residual)
    assert np.allclose(step, truth, atol=0.04), step
    one = np.linalg.solve(noisy[3].T @ noisy[3], noisy[3].T @ residual)
    assert np.all(np.abs(one[3:]) < 0.6 * np.abs(truth[3:])), one  # the old step: short
    # without older Jacobians (the first iteration) it is J^T J of the one it has
    assert np.allclose(normal_matrix(None, noisy[0], w), noisy[0].T @ noisy[0])


def test_polish_step_minimizes_the_linearized_huber_loss():
    """The polish's step is the minimum of the Huber loss of the linearized residuals
    ``r - J step`` (reweighted on the linear model), not one weighted least-squares
    solve with the weights of ``r``: those count the pixels a misaligned edge leaves
    off, which the step is to move, as outliers. Fireflies the model cannot explain
    still weigh little: the step is far closer to the truth than least squares'."""
    from scipy.optimize import minimize

    from invpbr.optimization.polish import Block, huber_loss, huber_step, huber_weight

    rng = np.random.default_rng(7)
    n = 3000
    jac = np.zeros((n, 6))
    edges = rng.choice(n, 400, replace=False)  # most pixels: flat, no change
    jac[edges] = rng.normal(size=(400, 6))
    truth = np.array([0.3, -0.2, 0.1, 0.25, -0.1, 0.2])
    r = jac @ truth + 0.01 * rng.normal(size=n)
    fireflies = rng.choice(np.setdiff1d(np.arange(n), edges), 30, replace=False)
    r[fireflies] += 2.0
    jac[fireflies] += 0.3 * rng.normal(size=(30, 6))  # (noise of the Jacobian there)
    c = 0.02
    b = Block("pose", 0, 6, [0], np.full(6, 0.01), "pose", 1.0, lam=1e-9)
    b.jacobians, b.history = [jac], [(np.zeros(6), jac, None)]
    step = huber_step(b, r, c)
    best = minimize(lambda d: huber_loss(r - jac @ d, c), np.zeros(6), method="BFGS",
                    jac=lambda d: -jac.T @ (huber_weight(r - jac @ d, c) * (r - jac @ d)))
    assert np.allclose(step, best.x, atol=2e-3), (step, best.x)
    assert np.allclose(step, truth, atol=0.01), step
    one_round = np.linalg.solve(jac.T @ (huber_weight(r, c)[:, None] * jac),
                                jac.T @ (huber_weight(r, c) * r))
    least_squares = np.linalg.lstsq(jac, r, rcond=None)[0]
    error = np.abs(step - truth).max()
    assert np.abs(least_squares - truth).max() > 5 * error
    # one round gives the edges about the fireflies' weight: they pull it further off
    assert np.abs(one_round - truth).max() > 2 * error
    assert huber_loss(r - jac @ step, c) <= huber_loss(r - jac @ one_round, c) + 1e-9


def test_polish_step_stays_within_its_trust_region():
    """A Gauss-Newton step along a flat valley is shortened, in the same direction, to
    at most ``TRUST`` finite-difference steps in any component; a short one is kept."""
    from invpbr.optimization.polish import TRUST, within_trust

    steps = np.array([0.01, 0.01, 0.01, 0.002, 0.002, 0.002])
    far = np.array([0.0, 0.05, 0.0, 0.03, 0.0, -0.001])
    short = within_trust(far, steps)
    assert np.max(np.abs(short) / steps) == pytest.approx(TRUST)
    assert np.allclose(short / np.linalg.norm(short), far / np.linalg.norm(far))
    near = 0.5 * TRUST * steps * np.array([1, -1, 1, -1, 1, 1])
    assert np.array_equal(within_trust(near, steps), near)


def _edge_image(t: float, r: float) -> np.ndarray:
    """48x48 box-filtered image (16x16 samples a pixel) of a long, slightly slanted edge,
    as a floor's horizon: ``t`` shifts it by pixels, ``r`` as much and turns it about
    x = 40 (a camera's sideways move and the turn that nearly undoes it: a valley)."""
    n, s = 48, 16
    x, y = np.meshgrid((np.arange(n * s) + 0.5) / s, (np.arange(n * s) + 0.5) / s)
    image = 0.8 - 0.5 * (y < 18 + 0.13 * x + t + r + 0.04 * r * (x - 40))
    return np.repeat(image.reshape(n, s, n, s).mean(axis=(1, 3))[..., None], 3, axis=2)


def test_polish_blur_lets_a_step_cross_a_valley():
    """The Gauss-Newton step from finite differences half a pixel wide (the polish's),
    a pixel or two down a valley from the truth: on the sharp images the columns of the
    two moves do not add up (the edge crosses pixel borders in different places) and
    the step goes well short (28-60 % of the way, as the cameras of benchmark seed 118
    went a tenth); on the images blurred as a camera's are (``POLISH_BLUR``) it goes most
    of the way."""
    from invpbr.optimization.polish import POLISH_BLUR, blurred

    def step_fraction(d: np.ndarray, blur: float) -> float:
        def flat(t, r):
            return blurred(_edge_image(t, r), None, blur).ravel()

        r = flat(0.0, 0.0) - flat(*d)
        jac = np.stack([(flat(*(d + 0.5 * e)) - flat(*(d - 0.5 * e))) for e in np.eye(2)], 1)
        step = np.linalg.lstsq(jac, r, rcond=None)[0]
        return float(-step @ d / (d @ d))

    for d in ([2.0, -1.8], [-1.5, 1.2], [1.0, -0.9], [1.5, -1.5]):
        d = np.array(d)
        sharp, smooth = step_fraction(d, 0.0), step_fraction(d, POLISH_BLUR["camera"])
        assert sharp < 0.65 and smooth > 0.65 and smooth > sharp + 0.2, (d, sharp, smooth)


def test_polish_blur_keeps_to_the_mask():
    """Blurred residuals take no value from pixels outside the view's mask (normalized
    convolution), and a blur of 0 leaves the image as it is."""
    from invpbr.optimization.polish import blurred

    rng = np.random.default_rng(2)
    image = np.full((24, 24, 3), 0.5)
    mask = np.zeros((24, 24), bool)
    mask[4:20, 6:18] = True
    image[~mask] = 1e3 * rng.random((int((~mask).sum()), 3))  # (what the mask leaves out)
    out = blurred(image, mask, 1.5)
    assert np.allclose(out[mask], 0.5)
    assert blurred(image, mask, 0.0) is image
    edge = _edge_image(0.0, 0.0)
    smooth = blurred(edge, None, 1.0)
    assert smooth.mean() == pytest.approx(edge.mean(), rel=0.01)  # (no light lost)
    assert np.abs(np.diff(smooth, axis=0)).max() < 0.6 * np.abs(np.diff(edge, axis=0)).max()


def test_polish_blurred_stage_ends_and_forgets_its_jacobians():
    """A camera's blurred iterations end after ``BLURRED`` of them, or sooner once every
    motion of the group has settled; the blocks then fit sharp images, and the blurred
    Jacobians (of other images) leave the average. Poses are never blurred."""
    from invpbr.optimization.polish import BLURRED, POLISH_BLUR, Block, sharpen

    def group(settled):
        blocks = [Block("cameras", 6 * j, 6, [j], np.full(6, 0.01), f"cam{j}", 1.0,
                        blur=POLISH_BLUR["camera"]) for j in range(2)]
        for b, s in zip(blocks, settled):
            b.history, b.settled, b.lam = [(np.zeros(6), np.ones((4, 6)), None)], s, 1e-6
        return blocks

    g = group([2, 0])  # one still moving
    assert not sharpen(g, BLURRED - 1) and all(b.blur > 0 and b.history for b in g)
    assert sharpen(g, BLURRED)
    assert all(b.blur == 0 and not b.history and b.settled == 0 and b.lam == 1e-3 for b in g)
    assert sharpen(g, BLURRED + 1)  # (stays sharp)
    g = group([2, 3])  # every motion settled: sharp before BLURRED
    assert sharpen(g, 1) and all(b.blur == 0 for b in g)
    assert POLISH_BLUR["pose"] == 0
    pose = [Block("pose", 0, 6, [0, 1], np.full(6, 0.01), "pose", 1.0)]
    assert sharpen(pose, 0)


def test_pose_runs_are_repeatable_by_default(tmp_path, mi):
    """The same inputs give the same pose (issue 13: "final errors within 2x of each
    other"): the steps and the polish of a pose (or cameras) take one Dr.Jit thread
    unless ``[optimize] deterministic = false``. With two threads the backward pass's
    atomic additions differ by 1e-8 between runs, and a pose's run turns that into other
    Monte Carlo paths: pose seed 100 at 32x32 (20 steps, the polish) ended 1.75 and 4.54
    degrees off in two runs of the same folder (before; now 2.67 and 2.67). Two `invpbr
    run`s, as a user runs a folder twice.

    One thread makes the runs equal nearly always, not always: 1 of 27 runs of 9 such
    folders here (2026-12-05, beside other work) ended 3e-9 degrees from the others, the
    steps' losses equal, the polish's last loss not; and one CI run (under the other
    tests' load) had the two end 7.12 and 5.75 degrees off. The cause is not found (not
    the hash seed, the kernel cache, checkpoints, or Embree's rebuilds: 1200 renders
    after pose changes, four processes side by side, bit-equal). So what is asserted is
    the issue's criterion, and bit-equality only of the start."""
    import re
    from types import SimpleNamespace

    from invpbr.optimization.loop import deterministic
    from invpbr.testing.random_scenes import make_random_scene

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from robustness import run_scene

    folder = tmp_path / "pose"
    make_random_scene(folder, "pose", 100, size=24, spp=4, iterations=6, photo_spp=16,
                      n_cameras=(3, 3))
    toml = folder / "invpbr.toml"
    toml.write_text(re.sub(r'(?m)^(key = .*)$', r'\1\npolish = 3\npolish_spp = 32',
                           toml.read_text(), count=1))
    results = [run_scene(folder, tmp_path / f"out{r}")[0] for r in range(2)]
    for result in results:
        assert result["status"] == "completed" and result["settings"]["deterministic"] is True
        # (an object's pose keeps the pixels near the clip, Pose.leaves_out_near_clip,
        # and counts its photos' clipped channels as censored: Renderer.censor_clipped)
        assert all("near_clip" not in p for p in result["polished"].values())
        assert all(p["censored"]["pixels_counted"] > 0 for p in result["polished"].values())
    assert results[0]["geometry_errors_initial"] == results[1]["geometry_errors_initial"]
    (key, first), = results[0]["geometry_errors"].items()
    second = results[1]["geometry_errors"][key]
    for error in ("rotation_deg", "position"):
        low, high = sorted([first[error], second[error]])
        assert high <= 2 * low, (error, first, second)
    # what decides: the setting where given, else whether an estimate asks for it
    asks = SimpleNamespace(deterministic_by_default=True)
    plain = SimpleNamespace(deterministic_by_default=False)

    def run(value, *estimates):
        config = SimpleNamespace(optimize=SimpleNamespace(deterministic=value))
        return SimpleNamespace(problem=SimpleNamespace(config=config), estimates=list(estimates))

    assert deterministic(run(None, plain, asks)) and not deterministic(run(None, plain))
    assert not deterministic(run(False, asks)) and deterministic(run(True, plain))

    # one_thread: one thread inside where deterministic, the count before restored
    # after (an error inside too); untouched where not
    import drjit as dr

    from invpbr.optimization.loop import one_thread

    before = dr.thread_count()
    assert before > 1
    with one_thread(run(None, plain)):
        assert dr.thread_count() == before
    with pytest.raises(KeyboardInterrupt):
        with one_thread(run(None, asks)):
            assert dr.thread_count() == 1
            raise KeyboardInterrupt
    assert dr.thread_count() == before


def _blob(theta: np.ndarray, size: int = 32) -> np.ndarray:
    """A (size, size, 3) image of a broad blob moved sideways by ``theta[0]`` pixels (up
    by ``theta[1]``); ``theta[2:6]`` add smooth patterns."""
    y, x = np.mgrid[0:size, 0:size] + 0.25
    u, v = (x - size / 2) / size, (y - size / 2) / size
    blob = np.exp(-((u * size - theta[0]) ** 2 + (v * size - theta[1]) ** 2) / (2 * 5.0 ** 2))
    smooth = 0.1 * (theta[2] * v + theta[3] + theta[4] * (u * u - 1 / 12) + theta[5] * u * v)
    return np.repeat((0.4 * blob + 0.2 + smooth)[..., None], 3, axis=2)


def _stripes_and_blob(theta: np.ndarray, size: int = 32) -> np.ndarray:
    """A (size, size, 3) image of fine stripes (period 2 pixels) over a broad blob, both
    moved sideways by ``theta[0]`` pixels (the blob up by ``theta[1]``); ``theta[2:6]``
    add smooth patterns that a sideways move does not resemble (so that all six
    numbers of a motion show, none standing in for another)."""
    y, x = np.mgrid[0:size, 0:size] + 0.25
    u, v = (x - size / 2) / size, (y - size / 2) / size
    blob = np.exp(-((u * size - theta[0]) ** 2 + (v * size - theta[1]) ** 2) / (2 * 5.0 ** 2))
    stripes = 0.5 * (1 + np.cos(np.pi * (x - theta[0])))
    smooth = 0.1 * (theta[2] * v + theta[3] + theta[4] * (u * u - 1 / 12) + theta[5] * u * v)
    image = 0.4 * blob + 0.3 * stripes + smooth
    return np.repeat(image[..., None], 3, axis=2)


def test_polish_second_chance_leaves_a_shallow_valley_of_the_sharp_images():
    """A pose polished on sharp images settles where the fine detail lines up, even
    where the broad shape says it is far off (the photo's blob 4 pixels aside, its
    stripes lined up again there: the stripes' period is 2). The second chance
    (``second_chance``) probes that end with a step on blurred images, which reaches
    several finite-difference steps, runs the polish again blurred first, and returns
    the second end, whose sharp loss is lower. At the truth the probe's step is small
    and the first end stays."""
    from types import SimpleNamespace

    from invpbr.estimates.cameras import polish_summary
    from invpbr.optimization.polish import (RESCUE_REACH, Block, Renderer, polish_steps,
                                            second_chance)

    class Synthetic(Renderer):
        def __init__(self, truth: np.ndarray):
            self.masks = {0: None}
            self.photo = _stripes_and_blob(truth)

        def residuals(self, values, views, seed):
            return {0: self.photo - _stripes_and_blob(values["pose"])}

    def block() -> Block:
        return Block("pose", 0, 6, [0], np.full(6, 0.5), "pose", 1.0, near=np.inf)  # (a pose's)

    infos = {}
    for truth, far in ((np.array([4.0, 0, 0, 0, 0, 0]), True), (np.zeros(6), False)):
        renderer = Synthetic(truth)
        groups = [[block()]]
        theta = {"pose": np.array([0.1, -0.1, 0.0, 0.0, 0.0, 0.0])}
        final, _, _ = polish_steps(renderer, theta, groups, 20, 0)
        assert abs(final["pose"][0]) < 0.5, final  # (the sharp images' own valley)
        chance = second_chance(renderer, final, groups, {("pose", "pose"): 0.0}, 20, 100)
        info = infos[far] = chance["pose", "pose"]
        if far:
            assert info["kept"] and info["reach"] >= RESCUE_REACH, info
            assert info["returned"] == "second" and info["loss_second"] < info["loss_first"], info
            assert abs(final["pose"][0] - 4.0) < 0.1 and abs(final["pose"][1]) < 0.1, final
            assert groups[0][0].loss_after == info["loss_second"]
        else:
            assert info["reach"] < RESCUE_REACH and info["returned"] == "first", info
            assert np.abs(final["pose"][:2]).max() < 0.05, final

    def line(info: dict) -> str:  # (invpbr run's line for the pose)
        motion = {"sigma": {"rotation_deg": 0.3, "position": 0.001}, "second_chance": info}
        return polish_summary(SimpleNamespace(polished={"obj": {"motions": {"pose": motion}}}), "obj")

    assert "standard deviation up to 0.30 deg" in line(infos[False])
    assert "shallow valley" not in line(infos[False]) and "shallow valley" in line(infos[True])


def _kinked(theta: np.ndarray, size: int = 32) -> np.ndarray:
    """A (size, size, 3) image whose left half changes with ``theta[0]`` at a kink: 30
    times faster below 0 than above (a lamp turning edge-on to a view: its bright face
    comes into sight on one side, its dark back on the other); ``theta[1:6]`` add smooth
    patterns (so that all six numbers show)."""
    y, x = np.mgrid[0:size, 0:size] + 0.25
    u, v = (x - size / 2) / size, (y - size / 2) / size
    t = theta[0]
    patch = (u < 0) * (0.3 + 0.1 * max(t, 0.0) + 3.0 * min(t, 0.0))
    smooth = 0.1 * (theta[1] * v + theta[2] + theta[3] * (u * u - 1 / 12) + theta[4] * u * v
                    + theta[5] * v * v)
    return np.repeat((0.3 + patch + smooth)[..., None], 3, axis=2)


def test_polish_takes_one_sided_differences_at_a_kink(monkeypatch):
    """At a kink of the images in a motion, the central difference is the mean of the
    two sides' slopes: on the shallow side it predicts far more change than a move
    makes, the steps go a fraction of the way and the polish settles short (lamp seed
    102 of the light benchmark: 1.4 degrees off, its truth 3.5 % lower in loss). The
    polish tells the kinked column by its forward and backward differences and steps
    with the side it moves to: from the kink it reaches a truth two finite-difference
    steps away on the shallow side; with the central differences alone it stops short."""
    from invpbr.optimization import polish as P

    class Synthetic(P.Renderer):
        def __init__(self, truth: np.ndarray):
            self.masks = {0: None}
            self.photo = _kinked(truth)

        def residuals(self, values, views, seed):
            return {0: self.photo - _kinked(values["pose"])}

    truth = np.array([1.0, 0.05, 0.0, -0.05, 0.0, 0.0])

    def polished() -> np.ndarray:
        groups = [[P.Block("pose", 0, 6, [0], np.full(6, 0.5), "pose", 1.0, near=np.inf)]]
        final, _, _ = P.polish_steps(Synthetic(truth), {"pose": np.zeros(6)}, groups, 20, 0)
        return final["pose"]

    sides = P.one_sided(np.diag([0.1, 1.0]), np.diag([3.0, 1.1]))
    assert sides is not None and list(sides[2] > P.KINK) == [True, False]
    assert P.one_sided(np.diag([0.1, 1.0]), np.diag([0.15, 1.1])) is None
    end = polished()
    assert np.allclose(end, truth, atol=0.02), end
    monkeypatch.setattr(P, "KINK", np.inf)  # (central differences only, as before)
    short = polished()
    assert short[0] < 0.6, short


def _ramp(noise: float, seed: int, size: int = 64) -> np.ndarray:
    """A bright ramp (linear 0.3 to 1.3 across, three channel scales) with Gaussian
    noise of ``noise``."""
    u = np.linspace(0.3, 1.3, size)[None, :, None] * np.array([1.0, 0.95, 0.9])
    image = np.broadcast_to(u, (size, size, 3)).copy()
    return image + noise * np.random.default_rng(seed).standard_normal(image.shape)


def _noisy_renderer(image, truth, noise: float):
    """A polish renderer of one view whose photo is ``image(truth)`` and whose render at
    latents ``values`` is ``image(values["p"])`` plus Gaussian noise of ``noise`` (its
    samples' seed the render's)."""
    from types import SimpleNamespace

    from invpbr.optimization import polish as P

    class Synthetic(P.Renderer):
        def __init__(self):
            self.masks, self.ceilings, self.censored, self.sigma = {0: None}, {0: None}, {}, 0.0
            self.photos = {0: image(np.asarray(truth, float))}
            self.run = SimpleNamespace()

        def renders(self, values, views, seed):
            image_now = image(np.asarray(values["p"], float))
            return {0: image_now + noise * np.random.default_rng(seed).standard_normal(image_now.shape)}

    return Synthetic()


def test_polish_settles_only_after_three_small_steps_past_a_jump(monkeypatch):
    """A kept step that the trust region shortened lands where the Jacobians a pose
    averages (all of them) were mostly taken elsewhere; pose draw 800 then settled after
    two small steps 4.4 degrees off, where the third went 3.2 degrees back. A pose's
    polish started 8 finite-difference steps off takes trimmed steps (jumps), the last
    landing next to the truth, and ends ``JUMP_SETTLE`` iterations after it (two without
    the rule), at the truth; a camera's block (Jacobians averaged only within ``NEAR``)
    counts no jumps."""
    from invpbr.optimization import polish as P

    u = np.arange(64.0)[None, :, None] * np.ones((6, 1, 3))

    def image(p):
        return np.exp(-((u - 32 - 8 * float(p[0])) / 10) ** 2)

    seen, iterate = [], P._iterate

    def recorded(renderer, theta, group, seeds):
        iterate(renderer, theta, group, seeds)
        seen.append((group[0].jumps, group[0].settled))

    monkeypatch.setattr(P, "_iterate", recorded)
    pose = P.Block("p", 0, 1, [0], np.array([0.05]), "pose", 1.0, near=np.inf)
    final, done, _ = P.polish_steps(_noisy_renderer(image, [0.0], 0.002),
                                    {"p": np.array([0.41])}, [[pose]], 20, 11)
    assert P.JUMP_SETTLE == 3 and pose.jumps >= 2 and done < 20, (pose.jumps, done, seen)
    last = min(i for i, (j, _) in enumerate(seen) if j == pose.jumps)  # (the last jump)
    assert seen[last][1] == 2 - P.JUMP_SETTLE and done - 1 - last == P.JUMP_SETTLE, seen
    assert abs(final["p"][0]) < 0.01, final
    seen.clear()
    camera = P.Block("p", 0, 1, [0], np.array([0.05]), "cam00", 1.0)
    P.polish_steps(_noisy_renderer(image, [0.0], 0.002), {"p": np.array([0.8])},
                   [[camera]], 20, 11)
    assert camera.jumps == 0 and min(s for _, s in seen) >= 0, seen


def test_polish_step_of_a_one_number_motion_with_a_kinked_column():
    """Holding every component of a kinked motion (one number, its column kinked: the
    step tried held still) is a step of zero, not an error (it raised on an empty
    normal matrix): a bump that moves as ``p + 6 p^3`` polished from 0.8."""
    from invpbr.optimization import polish as P

    u = np.arange(64.0)[None, :, None] * np.ones((6, 1, 3))

    def image(p):
        x = float(p[0])
        return np.exp(-((u - 32 - 8 * (x + 6 * x ** 3)) / 10) ** 2)

    block = P.Block("p", 0, 1, [0], np.array([0.05]), "pose", 1.0, near=np.inf)
    final, done, _ = P.polish_steps(_noisy_renderer(image, [0.0], 0.002),
                                    {"p": np.array([0.8])}, [[block]], 20, 11)
    assert block.kinked > 0 and np.isfinite(final["p"]).all() and done >= 1, (block, final)


def test_polish_from_the_start_replaces_an_end_in_another_basin():
    """The steps can carry a pose out of the basin it started in (pose draw 402: a
    texture finer than a pixel, 2.09 -> 2.97 degrees off, the polish settled at 2.80);
    the polish then also starts from the run's start and keeps the end that renders
    closer to the photos. A one-number motion whose image is a textured bump (texture
    period half a unit of motion: other basins at +-0.5): polished from 0.45, it stays
    in the wrong basin; from a start at 0.1 it reaches the truth (0) and is kept, from
    0.35 too (blurred first); a start in the wrong basin does not replace a right end,
    nor does an end in the first's basin (one minimum) that renders closer. Two ends
    beyond each other's noise whose losses the photos' noise could swap are two minima
    (``apart``; the run warns): stripes without the bump, whose basins 0.5 apart render
    alike; ends in the bump's two basins (one clearly lower) or in one basin are not."""
    from types import SimpleNamespace

    from invpbr.optimization import polish as P

    u = np.arange(64.0)[None, :, None] * np.ones((6, 1, 3))

    def image(p):
        v = u - 32 - 8 * float(p[0])
        return np.exp(-(v / 14) ** 2) * (1 + 0.8 * np.cos(2 * np.pi * v / 4))

    def Synthetic(picture=image):
        return _noisy_renderer(picture, [0.0], 0.002)

    def pose_block():  # (the one motion)
        return P.Block("p", 0, 1, [0], np.array([0.05]), "pose", 1.0)

    def polished(end, begun, picture=image):
        renderer = Synthetic(picture)
        block = pose_block()
        final, _, _ = P.polish_steps(renderer, {"p": np.array([end])}, [[block]], 20, 11)
        info = P.from_start(renderer, final, {"p": np.array([begun])}, [[block]],
                            {("p", "pose"): 0.0}, 20, 101)
        return float(final["p"][0]), info["p", "pose"]

    wrong, info = polished(0.45, 0.1)
    assert abs(wrong) < 0.02 and info["returned"] == "start", (wrong, info)
    assert info["loss_start"] < 0.5 * info["loss_first"], info
    from invpbr.estimates.cameras import polish_summary

    def line(info: dict) -> str:  # (invpbr run's line for the pose)
        motion = {"sigma": {"rotation_deg": 0.3, "position": 0.001}, "from_start": info}
        return polish_summary(SimpleNamespace(polished={"obj": {"motions": {"pose": motion}}}), "obj")

    assert "left the start's basin" in line(info)
    # (the two ends, 0.5 apart, lie beyond each other's noise, but the start's loss is
    # far lower than the photos' noise could make it: one minimum and an end elsewhere)
    far = info["apart"]
    assert far["beyond_noise"] and far["sigmas"] > 10 and abs(far["position"] - 0.5) < 0.1, far
    assert not far["two_minima"], (far, info)
    assert P.ambiguous({"obj": {"motions": {"pose": {"from_start": info}}}}) == []
    # a start nearer the texture's next cell (2.8 pixels off, the cells 4 apart): sharp
    # it settles there (pose draw 800's from-start polish: 3.67 deg off), blurred first
    # (FROM_START_BLUR) it reaches the truth
    sharp, _, _ = P.polish_steps(Synthetic(), {"p": np.array([0.35])},
                                 [[pose_block()]], 20, 11)
    assert abs(float(sharp["p"][0]) - 0.5) < 0.02, sharp
    nearer, info = polished(0.45, 0.35)
    assert abs(nearer) < 0.02 and info["returned"] == "start", (nearer, info)
    right, info = polished(0.05, 0.45)
    assert abs(right) < 0.02 and info["returned"] == "first", (right, info)
    assert "left the start's basin" not in line(info)
    # a start in the same basin ends where the steps' end did: not flagged
    same, info = polished(0.05, 0.1)
    assert abs(same) < 0.02 and not info["apart"]["beyond_noise"], (same, info)
    assert info["apart"]["sigmas"] < 5, info
    assert P.ambiguous({"obj": {"motions": {"pose": {"from_start": info}}}}) == []
    # and though it renders closer (these random numbers), an end within the first's
    # noise is the same minimum: the first stays
    renderer, block = Synthetic(), pose_block()
    final, _, _ = P.polish_steps(renderer, {"p": np.array([0.05])}, [[block]], 20, 11)
    kept = final["p"].copy()
    info = P.from_start(renderer, final, {"p": np.array([0.1])}, [[block]],
                        {("p", "pose"): 0.0}, 20, 134)["p", "pose"]
    assert info["loss_start"] < info["loss_first"] and info["one_minimum"], info
    assert info["returned"] == "first" and np.array_equal(final["p"], kept), info

    def stripes(p):  # (no envelope: the basins at 0 and 0.5 render alike)
        return 1 + 0.8 * np.cos(2 * np.pi * (u - 32 - 8 * float(p[0])) / 4)

    other, info = polished(0.45, 0.1, stripes)
    far = info["apart"]
    assert far["two_minima"] and abs(far["position"] - 0.5) < 0.1, (other, info)
    assert abs(info["loss_start"] - info["loss_first"]) < 2 * far["loss_noise"], info
    (warned,) = P.ambiguous({"obj": {"motions": {"pose": {"from_start": info}}}})
    assert warned.startswith("TWO MINIMA") and "obj (pose)" in warned
    assert "polished.obj.motions.pose.from_start.apart" in warned
    # and polished from 0.45 alone it stays in its basin (what the start mends)
    stays, _, _ = P.polish_steps(Synthetic(), {"p": np.array([0.45])},
                                 [[pose_block()]], 20, 11)
    assert abs(float(stays["p"][0]) - 0.5) < 0.1, stays


def test_ends_whose_losses_the_photos_do_not_tell_apart_keep_the_first():
    """Where a polish's covariance is not determined (pose 114 at 96x96), two ends whose
    losses differ by less than the photos' own noise could move that difference are
    ``tied``: the first stays though the other renders closer (these random numbers);
    an end clearly closer to the photos still replaces it. A bump whose ends at +-0.01
    render equally far from the photo but for their noise; the two Jacobians of each
    end point opposite ways (their cross product not positive: no covariance)."""
    from invpbr.optimization import polish as P

    u = np.arange(64.0)[None, :, None] * np.ones((6, 1, 3))

    def image(p):
        return np.exp(-((u - 32 - 8 * float(p[0])) / 10) ** 2)

    def undetermined():
        block = P.Block("p", 0, 1, [0], np.array([0.05]), "pose", 1.0, threshold=0.006)
        block.jacobians = [np.ones((u.size, 1)), -np.ones((u.size, 1))]
        block.residual, block.weights = np.zeros(u.size), np.ones(u.size)
        assert P.covariance(block) is None
        return block

    final = {"p": np.array([0.01])}
    info = P.adopt_lower(_noisy_renderer(image, [0.0], 0.002), final,
                         {"p": np.array([-0.01])}, undetermined(), undetermined(), "start", 100)
    far = info["apart"]
    assert far["sigmas"] is None and not info["one_minimum"], info
    assert info["loss_start"] < info["loss_first"], info  # (renders closer ...)
    assert info["loss_first"] - info["loss_start"] < far["loss_noise"], info  # (... by little)
    assert info["tied"] and info["returned"] == "first" and final["p"][0] == 0.01, info
    final = {"p": np.array([0.3])}
    info = P.adopt_lower(_noisy_renderer(image, [0.0], 0.002), final,
                         {"p": np.array([0.0])}, undetermined(), undetermined(), "start", 100)
    assert not info["tied"] and info["returned"] == "start" and final["p"][0] == 0.0, info


def test_polish_takes_a_cameras_jacobian_along_its_valley():
    """A camera far from the scene has a valley: a shift that a turn nearly undoes.
    Central differences along the latent's axes each move an edge by part of a pixel,
    and their errors (the edge's coverage is not linear over the step) differ from
    axis to axis and do not cancel in the valley's combination: the Gauss-Newton model
    sees the valley steep and the polish stops in it (camera draw 503, cam00). Taken
    along the principal axes of the newest normal matrix (a camera's blocks), the
    difference along the valley moves no edge. A two-number motion whose image is a
    sharp edge at ``a + 1.6 b`` and a faint ramp whose brightness is ``a - b``, started
    on the valley 1.3 off in ``a - b``: along the axes it stops short, along the
    principal axes it reaches the truth; each from the same start and samples."""
    from invpbr.optimization import polish as P

    u = np.arange(64.0)[None, :, None] * np.ones((8, 1, 3))

    def image(p):
        a, b = float(p[0]), float(p[1])
        edge = 1.0 / (1.0 + np.exp(-(u - 32 - 4 * (a + 1.6 * b)) / 0.6))
        return edge + 0.005 * (a - b) * (u / 64.0)

    def Synthetic():
        return _noisy_renderer(image, [0.0, 0.0], 0.001)

    def polished(principal: bool) -> tuple[float, float]:
        block = P.Block("p", 0, 2, [0], np.array([0.2, 0.2]), "cam", 1.0, principal=principal)
        final, _, _ = P.polish_steps(Synthetic(), {"p": np.array([0.8, -0.5])}, [[block]], 20, 11)
        a, b = final["p"]
        return float(a + 1.6 * b), float(a - b)

    edge, valley = polished(False)
    assert abs(edge) < 0.02 and valley > 0.5, (edge, valley)  # (1.09: stopped in the valley)
    edge, valley = polished(True)
    assert abs(edge) < 0.02 and abs(valley) < 0.05, (edge, valley)  # (-0.003)
    # and where the newest Jacobian had kinked columns, the axes (the kink rule's)
    block = P.Block("p", 0, 2, [0], np.array([0.2, 0.2]), "cam", 1.0, principal=True)
    assert np.array_equal(P.principal_basis(block), np.diag(block.steps))  # (no Jacobian yet)
    block.history, block.weights = [(None, np.eye(2), (None, None, np.ones(2)))], np.ones(2)
    assert np.array_equal(P.principal_basis(block), np.diag(block.steps))
    block.history = [(None, np.array([[1.0, 1.0], [1.0, 1.1]]), None)]
    basis = P.principal_basis(block)
    assert not np.allclose(np.abs(basis), np.diag(block.steps)), basis
    assert np.allclose(np.linalg.norm(basis, axis=0), 0.2)  # (one step long each)


def test_censored_noise_is_not_cut_at_the_clip():
    """The photos' noise scale near the clip, from the unclipped channels there and the
    clipped ones (:func:`invpbr.optimization.polish.censored_noise`): the spread of the
    unclipped ones alone is cut at the clip (the noise that crossed it is clipped) and
    comes out low; the censored likelihood's own estimate is the noise's."""
    from invpbr.optimization import polish as P

    rng = np.random.default_rng(4)
    for sigma in (0.03, 0.1):
        scene = rng.uniform(1.0 - 3 * sigma, 1.0 + 3 * sigma, 40000)  # (a bright region)
        photo = np.minimum(scene + sigma * rng.standard_normal(scene.size), 1.0)
        clipped = photo >= 1.0
        near = ~clipped & (scene < 1.0)
        r = photo[near] - scene[near]
        cut = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        assert cut < 0.92 * sigma, (cut, sigma)  # (0.89)
        found = P.censored_noise(photo[~clipped] - scene[~clipped],
                                 1.0 - scene[clipped], cut)
        assert abs(found / sigma - 1.0) < 0.03, (found, sigma)


def test_polish_counts_clipped_channels_as_censored_and_recovers_the_truth():
    """Where the loss leaves a photo's clipped channels out, the object-pose polish
    counts them as censored observations (Tobit): the photo says only that the scene
    plus its noise reached the clip. On a noisy ramp clipped at 1 whose brightness
    ``k`` is fitted by least squares of the polish's own residuals: left out, the
    clipped channels take the high draws of the noise with them and ``k`` ends low;
    as plain lower bounds it ends low too (where the scene is above the clip the
    unclipped channels are low draws, and a bound met says nothing against them);
    censored, it ends at the truth. The noise scale is measured from the channels
    near the clip, clipped or not."""
    from types import SimpleNamespace

    from scipy.optimize import minimize_scalar

    from invpbr.optimization import polish as P

    noise, render_noise = 0.05, 0.01
    truth = _ramp(0.0, 0, 128)
    photo = np.minimum(_ramp(noise, 1, 128), 1.0)  # (the camera clips the noisy scene)
    channels = photo >= 1.0

    class Synthetic(P.Renderer):
        def __init__(self, ceilings=None, photo=photo):
            channels = photo >= 1.0
            views = [SimpleNamespace(clipped=channels, clipped_channels=lambda: channels)]
            self.run = SimpleNamespace(problem=SimpleNamespace(views=views))
            self.masks = {0: ~channels.any(axis=-1)}
            self.ceilings, self.photos = {0: ceilings}, {0: photo}
            self.censored, self.sigma = {}, 0.0

        def renders(self, values, views, seed):
            rng = np.random.default_rng(seed)
            return {0: values["k"][0] * truth + render_noise * rng.standard_normal(truth.shape)}

    def fitted(renderer):
        def loss(k):
            return float(np.sum(renderer.flat(renderer.residuals({"k": [k]}, [0], 5), [0]) ** 2))
        return minimize_scalar(loss, bounds=(0.8, 1.2), method="bounded",
                               options={"xatol": 1e-6}).x

    left_out = fitted(Synthetic())
    bound = Synthetic(np.where(channels, photo, np.inf))
    bound.masks = {0: None}
    as_bounds = fitted(bound)
    censored = Synthetic()
    info = censored.censor_clipped({"k": np.array([1.0])}, 3)
    spread = float(np.hypot(noise, render_noise))
    assert 0.8 * spread < info["sigma"] < 1.2 * spread, info
    assert 0.05 < info["pixels_counted"] < 0.6, info
    assert censored.masks[0].all()  # (every pixel counts now)
    at = fitted(censored)
    assert left_out < 0.998, left_out  # (0.9963)
    assert as_bounds < 0.997, as_bounds  # (0.9939: the unclipped low draws above the clip)
    assert abs(at - 1.0) < 0.0015, (at, left_out, as_bounds)  # (0.9994)
    # far below the clip the censored residual is the bound's; far above it, none
    r = np.array([0.5, 0.2, -0.2])
    assert np.allclose(P.censored_residual(r, 0.01)[:2], r[:2], rtol=0.05)
    assert P.censored_residual(r, 0.01)[2] < 1e-6
    # bounds on the clipped channels: nothing to do
    assert Synthetic(np.where(channels, photo, np.inf)).censor_clipped({"k": [1.0]}, 3) is None
    # a photo that hardly clips (under CENSOR_SHARE of its pixels): they stay left out
    dim = np.minimum(0.7 * truth + noise * np.random.default_rng(2).standard_normal(truth.shape),
                     1.0)
    few = Synthetic(photo=dim)
    share = float((~few.masks[0]).mean())
    assert 0 < share < P.CENSOR_SHARE, share
    assert few.censor_clipped({"k": [1.0]}, 3) == {"sigma": None, "pixels_counted": 0.0}
    assert few.censored == {} and not few.masks[0].all()


def test_polish_leaves_out_pixels_near_the_clip_by_an_independent_render():
    """Where a photo's clipped pixels are left out of the loss, the pixels the clip
    leaves in a bright noisy region are those whose noise stayed below it: darker than
    the scene on average (light draws 401 and 404: lamps turned 0.7-1.1 degrees toward
    darkening them). The polish also leaves out the brightest pixels of a render of its
    own, independent of the photo, down to where fewer than ``NEAR_CLIP_RATE`` of the
    photo's pixels are clipped: the residuals it keeps are then nearly unbiased at the
    truth. Photos that hardly clip, views whose clipped channels are bounds, and views
    without clipped channels keep their pixels."""
    from types import SimpleNamespace

    from invpbr.optimization import polish as P

    saturation, noise = 0.98, 0.05
    truth = _ramp(0.0, 0)

    class Synthetic(P.Renderer):
        def __init__(self, photo: np.ndarray, ceilings: dict, clipped=True):
            channels = photo >= saturation
            views = [SimpleNamespace(clipped=channels if clipped and channels.any() else None)]
            self.run = SimpleNamespace(problem=SimpleNamespace(views=views))
            self.masks = {0: ~channels.any(axis=-1)}
            self.ceilings, self.photos = ceilings, {0: photo}

        def residuals(self, values, views, seed):  # (the render's own noise: 0.01)
            render = truth + 0.01 * np.random.default_rng(seed + 7).standard_normal(truth.shape)
            return {0: self.photos[0] - render}

    photo = np.minimum(_ramp(noise, 1), 1.0)  # (the camera clips the noisy scene)
    renderer = Synthetic(photo, {0: None})
    mask = renderer.masks[0].copy()
    bright = truth >= 0.5 * saturation
    near = (truth >= 0.8) & mask[..., None]
    before = float((photo - truth)[near].mean())
    info = renderer.leave_out_near_clip({}, 3)
    # (5 % of a channel's draws are clipped 1.64 noise deviations below the clip: 0.90;
    # a run of pixels spans several columns of the ramp, and three channels may clip)
    assert info is not None and 0.82 < info["threshold"] < 0.92, info
    assert 0.05 < info["pixels_left_out"] < 0.3, info
    after = float((photo - truth)[bright & renderer.masks[0][..., None]].mean())
    assert before < -0.0035, before  # (the clip's own bias near it: -0.0059 +- 0.0012)
    assert abs(after) < 0.0015, after  # (the kept bright pixels: +- 0.0007)
    # which pixels are left out follows the render, not the photo's noise
    top = truth.max(axis=-1)
    assert not renderer.masks[0][top >= info["threshold"] + 0.05].any()
    below = top < info["threshold"] - 0.05
    assert np.array_equal(renderer.masks[0][below], mask[below])
    # a photo with little noise clips only what is at the clip: nothing more left out
    sharp = np.minimum(_ramp(0.002, 1), 1.0)
    quiet = Synthetic(sharp, {0: None})
    kept = quiet.masks[0].copy()
    assert quiet.leave_out_near_clip({}, 3)["pixels_left_out"] < 0.02
    assert np.array_equal(quiet.masks[0][top < 0.95], kept[top < 0.95])
    # a photo that hardly clips (under NEAR_CLIP_SHARE of its pixels): nothing left out
    dim = np.minimum(0.7 * _ramp(0.0, 0) + noise * np.random.default_rng(2).standard_normal(
        truth.shape), 1.0)
    few = Synthetic(dim, {0: None})
    share = float((~few.masks[0]).mean())
    assert 0 < share < P.NEAR_CLIP_SHARE, share
    kept = few.masks[0].copy()
    assert few.leave_out_near_clip({}, 3) == {"threshold": None, "pixels_left_out": 0.0}
    assert np.array_equal(few.masks[0], kept)
    # bounds on the clipped channels, or no clipped channel: nothing to do
    for other in (Synthetic(photo, {0: np.full(photo.shape, np.inf, np.float32)}),
                  Synthetic(photo, {0: None}, clipped=False)):
        assert other.leave_out_near_clip({}, 3) is None
        assert np.array_equal(other.masks[0], mask)


def test_polish_averages_only_its_settled_iterates(monkeypatch):
    """The polish returns the mean of its last iterates, which lowers their noise where
    they scatter about the minimum; a polish that approached from far (two
    finite-difference steps an iteration at most) and settled late had its approach in
    the last half, and the mean lagged behind (light draw 505: the last half's iterates
    1.8 -> 0.13 degrees off, their mean 1.0). Of each motion only the iterates within
    its noise of its last are averaged, where it settled: a bump 16 steps from the
    photos' reaches them, its mean too; the mean of the whole last half stops short.
    Started at the minimum, every iterate of the last half is within the noise and all
    are averaged; stopped before it settled, all of the last half; iterates that go in
    and out of the noise (lamp draw 501), all of the last half."""
    from invpbr.optimization import polish as P

    u = np.arange(64.0)[None, :, None] * np.ones((6, 1, 3))

    def image(p):
        return np.exp(-((u - 32 - 8 * float(p[0])) / 10) ** 2)

    def Synthetic():
        return _noisy_renderer(image, [0.0], 0.002)

    def polished(start: float) -> tuple[float, int, int, float]:
        block = P.Block("p", 0, 1, [0], np.array([0.05]), "pose", 1.0)
        final, done, kept = P.polish_steps(Synthetic(), {"p": np.array([start])}, [[block]], 20, 11)
        return float(final["p"][0]), done, kept["p", "pose"], float(np.sqrt(P.covariance(block)[0, 0]))

    end, done, kept, sigma = polished(0.8)
    assert abs(end) < 5 * sigma and kept < done - done // 2, (end, done, kept, sigma)
    end, done, kept, sigma = polished(0.0)
    assert abs(end) < 5 * sigma and kept == done - done // 2, (end, done, kept, sigma)
    # a polish that ran out of iterations before it settled: the whole last half
    block = P.Block("p", 0, 1, [0], np.array([0.05]), "pose", 1.0)
    _, done, kept = P.polish_steps(Synthetic(), {"p": np.array([0.8])}, [[block]], 4, 11)
    assert done == 4 and block.settled < 2 and kept["p", "pose"] == 2, (done, kept)
    # iterates that go in and out of the noise of the last wander about the minimum:
    # all of the last half (a unit covariance: the limit is 10.8 on half the square)
    monkeypatch.setattr(P, "covariance", lambda b: np.eye(1))
    settled = P.Block("p", 0, 1, [0], np.array([0.05]), "pose", 1.0, settled=2)

    def mean(values):
        out, kept = P.settled_mean([{"p": np.array([v])} for v in values], [[settled]])
        return float(out["p"][0]), kept["p", "pose"]

    assert mean([9, 9, 9, 9, 6, 5, 0.1, -0.1]) == (0.0, 2)  # (an approach: left out)
    assert mean([9, 9, 9, 9, 6, 0.1, 5, 0.3]) == (pytest.approx(2.85), 4)  # (in and out: all)
    monkeypatch.undo()
    monkeypatch.setattr(P, "TAIL_LEVEL", 1.0)  # (every iterate of the last half, as before)
    end, done, kept, sigma = polished(0.8)
    assert end > 0.03 and end > 50 * sigma, (end, sigma)  # (0.060; sigma 0.00016)
