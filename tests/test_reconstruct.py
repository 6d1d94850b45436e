"""[reconstruct]: visual hull, figures, bad input and a tiny run end to end.

The hull tests carve analytic silhouettes of a sphere (no rendering); the end to
end test makes a tiny synthetic capture (invpbr.testing.objects), runs
``invpbr run`` and ``invpbr view`` on it and loads the result in plain Mitsuba.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import invpbr  # noqa: F401  (sets up LLVM for Dr.Jit)
from invpbr.reconstruct.hull import HullError, Silhouettes, hull_mesh, object_bounds
from invpbr.reconstruct.metrics import mask_iou, psnr_srgb, scale_invariant, surface_errors
from invpbr.testing import procedural
from invpbr.testing.objects import ring_cameras


def sphere_masks(cams, centre, radius) -> list[np.ndarray]:
    """Exact silhouettes of a sphere: pixels whose centre ray meets it."""
    masks = []
    for cam in cams:
        ys, xs = np.mgrid[0:cam.height, 0:cam.width] + 0.5
        d = np.stack([(xs - cam.cx) / cam.fx, (ys - cam.cy) / cam.fy, np.ones_like(xs)], -1)
        d = d @ cam.c2w[:3, :3].T
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        oc = cam.c2w[:3, 3] - centre
        b = d @ oc
        disc = b * b - (oc @ oc - radius * radius)
        masks.append((disc > 0).astype(np.float32))
    return masks


def sphere_silhouettes(n=12, size=48, centre=(0.0, 0.0, 0.0), radius=1.0):
    centre = np.asarray(centre, float)
    cams = [replace(c, c2w=_moved(c.c2w, centre, radius)) for c in ring_cameras(n, size)]
    return Silhouettes(cams, sphere_masks(cams, centre, radius), [c.id for c in cams]), centre


def _moved(c2w, centre, scale):
    out = c2w.copy()
    out[:3, 3] = c2w[:3, 3] * scale + centre
    return out


def test_hull_of_a_sphere_is_close_and_contains_it():
    sil, centre = sphere_silhouettes()
    lo, hi = object_bounds(sil)
    assert np.all(lo < centre - 0.95) and np.all(hi > centre + 0.95)
    assert np.all(hi - lo < 2.6)  # the box is the object's, not the cameras'
    v, f = hull_mesh(sil, lo, hi, resolution=48, faces=1500)
    r = np.linalg.norm(v - centre, axis=1)
    # a hull of 12 views contains the sphere and is not much larger
    assert r.min() > 0.97, r.min()
    assert r.mean() < 1.08, r.mean()
    tv, tf = procedural.icosphere(4)
    err = surface_errors(v, f, tv, tf, samples=4000)
    assert err["chamfer_over_diagonal"] < 0.012
    assert err["normal_angle_deg"] < 8.0  # faces point outwards


def test_bounds_follow_the_object_at_any_size_and_place():
    sil, centre = sphere_silhouettes(n=8, size=40, centre=(30.0, -12.0, 5.0), radius=0.05)
    lo, hi = object_bounds(sil)
    assert np.all(lo < centre - 0.045) and np.all(hi > centre + 0.045)
    assert np.all(hi - lo < 0.2)


def test_bad_input_is_refused_naming_the_photos():
    sil, _ = sphere_silhouettes(n=6, size=32)
    with pytest.raises(HullError, match="at least two photos"):
        object_bounds(Silhouettes(sil.cameras[:1], sil.masks[:1], sil.names[:1]))
    empty = list(sil.masks)
    empty[2] = np.zeros_like(empty[2])
    with pytest.raises(HullError, match=f"mask of {sil.names[2]} has no object pixel"):
        object_bounds(Silhouettes(sil.cameras, empty, sil.names))
    wrong = list(sil.masks)
    wrong[3] = np.zeros_like(wrong[3])
    wrong[3][:4, :4] = 1.0  # another photo's mask: the object in a corner
    with pytest.raises(HullError, match=f"masks disagree.*{sil.names[3]}"):
        object_bounds(Silhouettes(sil.cameras, wrong, sil.names))
    away = list(sil.cameras)
    away[1] = replace(away[1], c2w=away[1].c2w @ np.diag([-1.0, 1.0, -1.0, 1.0]))
    with pytest.raises(HullError, match=f"without the photo\\(s\\) {sil.names[1]} the others"):
        object_bounds(Silhouettes(away, sil.masks, sil.names))


def test_figures_on_known_cases():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.05, 0.9, size=(8, 8, 3)).astype(np.float32)
    assert psnr_srgb(ref, ref) == float("inf")
    from invpbr.reconstruct.metrics import linear_to_srgb

    off = ref.copy()
    mask = np.zeros((8, 8), bool)
    mask[:4] = True
    off[~mask] = 0.0
    d = linear_to_srgb(ref[~mask])
    expected_full = 10 * np.log10(1 / (np.sum(d ** 2) / ref.size))
    assert psnr_srgb(off, ref) == pytest.approx(expected_full, rel=1e-6)
    assert psnr_srgb(off, ref, mask) == float("inf")
    assert psnr_srgb(2.0 + ref, 1.5 + ref) == float("inf")  # clipped to [0, 1]
    a = np.zeros((10, 10))
    b = np.zeros((10, 10))
    a[:5] = 1
    b[:, :5] = 1
    assert mask_iou(a, b) == pytest.approx(25 / 75)
    assert np.allclose(scale_invariant(ref * [2.0, 0.5, 1.0], ref, mask)[mask], ref[mask], atol=1e-6)
    v, f = procedural.icosphere(3)
    same = surface_errors(v, f, v, f, samples=3000)
    assert same["chamfer_over_diagonal"] < 0.003 and same["normal_angle_deg"] < 2.0
    big = surface_errors(v * 1.02, f, v, f, samples=3000)
    assert big["chamfer_over_diagonal"] == pytest.approx(0.02 / (2 * np.sqrt(3)) + 0.0012, abs=0.0015)


TINY = """
[cameras]
file = "transforms.json"

[reconstruct]
hull_resolution = 32
faces = 500
material_iterations = 4
polish_iterations = 2
iterations = 3
remesh = 1
views_per_step = 2
spp = 2
envmap_height = 8
texture_resolution = 64

[evaluate]
held_out = ["test_00"]
truth_mesh = "truth_mesh.ply"
relight = ["relight_sky.exr"]
"""


@pytest.fixture(scope="module")
def tiny_capture(tmp_path_factory):
    from invpbr.backend import init_backend
    from invpbr.testing.objects import write_object_capture

    init_backend(None)
    folder = write_object_capture(tmp_path_factory.mktemp("capture") / "obj", views=8,
                                  held_out=1, size=32, spp=16, subdivisions=3)
    (folder / "invpbr.toml").write_text(TINY)
    return folder


def test_run_and_view_end_to_end(tiny_capture, tmp_path, capsys):
    import mitsuba as mi

    from invpbr.capture import images
    from invpbr.run.cli import main

    out = tmp_path / "out"
    assert main(["run", str(tiny_capture), "--out", str(out)]) in (0, 1)
    printed = capsys.readouterr().out
    assert "visual hull of 8 masks" in printed and "hull:" in printed and "final:" in printed
    doc = json.loads((out / "result.json").read_text())
    for part in ("hull", "final"):
        figures = doc["figures"][part]
        assert figures["iou"] > 0.8
        assert figures["chamfer_over_diagonal"] < 0.03
        assert np.isfinite(figures["psnr_mask"]) and np.isfinite(figures["psnr"])
        assert "relight_psnr_mask[relight_sky.exr]" in figures
    # plain Mitsuba renders the folder; textures baked from the vertex material agree with it
    scene = mi.load_file(str(out / "scene.xml"))
    baked = np.array(mi.render(scene, sensor=0, spp=64))
    truthlike = mi.load_dict({"type": "scene", "integrator": {"type": "path", "max_depth": 2},
                              "light": {"type": "envmap", "filename": str(out / "envmaps/light.exr")},
                              "object": {"type": "ply",
                                         "filename": str(out / "meshes/object_vertex_material.ply"),
                                         "bsdf": {"type": "principled", "specular": 0.5,
                                                  "base_color": {"type": "mesh_attribute",
                                                                 "name": "vertex_color"},
                                                  "roughness": {"type": "mesh_attribute",
                                                                "name": "vertex_roughness"}}},
                              "sensor": scene.sensors()[0]})
    vertex = np.array(mi.render(truthlike, sensor=0, spp=64))
    assert psnr_srgb(baked, vertex) > 28
    # invpbr view: RGBA, alpha = coverage, relit by another envmap
    assert main(["view", str(out), "--cameras", str(tiny_capture / "transforms.json"),
                 "--envmap", str(tiny_capture / "relight_sky.exr"), "--out",
                 str(tmp_path / "views")]) == 0
    rgba = np.array(mi.Bitmap(str(tmp_path / "views" / "test_00.exr")))
    assert rgba.shape[-1] == 4
    mask = images.load_mask(tiny_capture / "masks" / "test_00.png")
    assert mask_iou(rgba[..., 3], mask) > 0.8
    assert 0.05 < mask.mean() < 0.9  # the object and some background in view


def test_missing_masks_and_a_single_photo_are_clear_errors(tiny_capture, tmp_path, capsys):
    import shutil

    from invpbr.run.cli import main

    folder = tmp_path / "nomask"
    shutil.copytree(tiny_capture, folder)
    shutil.rmtree(folder / "masks")
    assert main(["run", str(folder), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "needs a mask for every photo" in err and "view_00" in err
    assert not (tmp_path / "o").exists()


def test_reconstruct_table_defaults_and_errors():
    from invpbr.config import ConfigError, parse_config

    assert parse_config({}).reconstruct is None
    cfg = parse_config({"cameras": {"file": "transforms.json"}, "reconstruct": {}}).reconstruct
    assert cfg is not None and cfg.iterations > 0 and cfg.background == "envmap"
    assert parse_config({"reconstruct": {"lambda": 5.0}}).reconstruct.lambda_ == 5.0
    with pytest.raises(ConfigError, match=r"unknown key reconstruct\.iteratons.*did you mean iterations"):
        parse_config({"reconstruct": {"iteratons": 3}})
    with pytest.raises(ConfigError, match=r"reconstruct\.background = 'wall'; expected one of envmap, ignore"):
        parse_config({"reconstruct": {"background": "wall"}})


def test_check_names_photos_without_masks(tiny_capture, tmp_path):
    import shutil

    from invpbr.problem.folder import check_folder

    assert check_folder(tiny_capture) == []
    folder = tmp_path / "partial"
    shutil.copytree(tiny_capture, folder)
    (folder / "masks" / "view_03.png").unlink()
    problems = check_folder(folder)
    assert len(problems) == 1 and "needs a mask for every photo" in problems[0]
    assert "view_03.png" in problems[0] and "view_02" not in problems[0]


def _tiny_problem(folder):
    from invpbr.problem.folder import load_problem

    return load_problem(folder)


def test_non_finite_steps_are_skipped_and_the_state_stays_finite(tiny_capture):
    import warnings

    from invpbr.reconstruct.fit import FitLog, ObjectState, fit_object, initial_envmap
    from invpbr.reconstruct.pipeline import photos_of

    problem = _tiny_problem(tiny_capture)
    photos = photos_of(problem.views, held_out=False)
    photos.images[0] = photos.images[0].copy()
    photos.images[0][10:14, 10:14] = np.nan  # a broken photo: its steps' loss is NaN
    sil = Silhouettes(photos.cameras, photos.masks, photos.ids)
    v, f = hull_mesh(sil, *object_bounds(sil), resolution=24, faces=300)
    state = ObjectState(v, f, np.full((len(v), 3), 0.5, np.float32),
                        np.full(len(v), 0.5, np.float32), initial_envmap(photos, 8))
    cfg = replace(problem.config.reconstruct, material_iterations=6, iterations=0,
                  views_per_step=2)
    log = FitLog()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fit_object(state, photos, cfg, progress=False, log=log)
    assert 0 < log.skipped < 6  # photo 0 is drawn in some steps (4 of 8 per step), not all
    assert any("non-finite" in str(w.message) for w in caught)
    assert log.stages[0]["skipped_steps"] == log.skipped
    for a in (out.colors, out.roughness, out.envmap):
        assert np.all(np.isfinite(a))
    assert not np.allclose(out.colors, 0.5)  # the finite steps moved the material


def test_a_stop_request_ends_the_run_with_the_state_so_far(tiny_capture, tmp_path, monkeypatch,
                                                           capsys):
    import os
    import signal

    from invpbr.reconstruct import fit
    from invpbr.run.cli import main

    decay, calls = fit._decay, []

    def interrupting(iteration, iterations):  # SIGINT arrives during the third step
        calls.append(iteration)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return decay(iteration, iterations)

    monkeypatch.setattr(fit, "_decay", interrupting)
    out = tmp_path / "out"
    assert main(["run", str(tiny_capture), "--out", str(out)]) == 130
    assert len(calls) == 3  # the step finished, no later one started
    doc = json.loads((out / "result.json").read_text())
    assert doc["status"] == "interrupted"
    assert [s["iterations"] for s in doc["stages"]] == [3]
    assert doc["figures"]["final"] == {}
    assert (out / "meshes" / "object.ply").is_file() and (out / "envmaps" / "light.exr").is_file()
    assert "interrupted" in capsys.readouterr().out
    assert not (out / "checkpoint").exists()  # the hull's fit had not ended: nothing to resume


def test_an_interrupted_reconstruction_resumes_after_its_last_stage(tiny_capture, tmp_path,
                                                                   monkeypatch, capsys):
    import os
    import signal

    from invpbr.reconstruct import fit
    from invpbr.reconstruct.checkpoint import ReconstructCheckpoints
    from invpbr.run.cli import main

    decay, calls = fit._decay, []
    interrupt_at = [6]  # steps: material 4 (the hull's), joint 1/2: 1, joint 2/2: 2, polish 2

    def counting(iteration, iterations):
        calls.append(iteration)
        if len(calls) == interrupt_at[0]:
            os.kill(os.getpid(), signal.SIGINT)
        return decay(iteration, iterations)

    monkeypatch.setattr(fit, "_decay", counting)
    out = tmp_path / "out"
    assert main(["run", str(tiny_capture), "--out", str(out)]) == 130
    printed = capsys.readouterr().out
    assert f"invpbr run {tiny_capture} --out {out} --resume" in printed
    checkpoints = ReconstructCheckpoints.for_out(out)
    problem = _tiny_problem(tiny_capture)
    saved = checkpoints.load(problem.config)
    assert saved.next_stage == 1  # joint 1/2 ended; joint 2/2 was cut short
    assert [s["stage"] for s in saved.log.stages] == ["material", "joint 1/2"]
    assert np.all(np.isfinite(saved.state.vertices)) and saved.hull_figures["iou"] > 0.8
    problem.config.reconstruct.spp = 3  # other settings: refused, naming the key
    with pytest.raises(ValueError, match=r"other settings \(\[reconstruct\] spp\)"):
        checkpoints.load(problem.config)

    calls.clear()
    interrupt_at[0] = 0
    assert main(["run", str(tiny_capture), "--out", str(out), "--resume"]) in (0, 1)
    assert "resuming before stage 2 of the joint fit" in capsys.readouterr().out
    assert len(calls) == 4  # joint 2/2 again from its start, then the polish: nothing else
    doc = json.loads((out / "result.json").read_text())
    assert doc["status"] in ("completed", "worse than the hull")
    assert [s["stage"] for s in doc["stages"]] == ["material", "joint 1/2", "joint 2/2", "polish"]
    assert doc["figures"]["final"]["iou"] > 0.8
    assert not (out / "checkpoint").exists()  # a finished run drops its checkpoint
    assert main(["run", str(tiny_capture), "--out", str(out), "--resume"]) == 0
    assert f"already {'completed' if doc['status'] == 'completed' else 'finished'} in" \
        in capsys.readouterr().out


def test_the_polish_stage_refits_the_material_and_leaves_the_light(tiny_capture):
    from invpbr.reconstruct import fit
    from invpbr.reconstruct.pipeline import photos_of

    problem = _tiny_problem(tiny_capture)
    photos = photos_of(problem.views, held_out=False)
    sil = Silhouettes(photos.cameras, photos.masks, photos.ids)
    v, f = hull_mesh(sil, *object_bounds(sil), resolution=24, faces=300)
    state = fit.ObjectState(v, f, np.full((len(v), 3), 0.5, np.float32),
                            np.full(len(v), 0.5, np.float32), fit.initial_envmap(photos, 8))
    cfg = replace(problem.config.reconstruct, views_per_step=2)
    assert [s[0] for s in fit._stage_plan(cfg)][-1] == "polish"
    rng = np.random.default_rng(0)
    for light in (False, True):
        out, losses, _ = fit._run_stage(state, photos, cfg, 3, False, rng, 2.0, 0, light=light)
        assert len(losses) == 3 and not np.allclose(out.colors, 0.5)
        if light:
            assert not np.allclose(out.envmap, state.envmap, rtol=1e-3)
        else:
            assert np.array_equal(out.envmap, state.envmap)
