"""A radiance field in time (``[field] time = true``, issue 15): a
Mitsuba-rendered moving object (a sphere moving, a box growing), one photo
per moment from cameras around it; held-out (view, time) pairs against a
static field fitted to the same photos; ``invpbr view --time``; bad times."""

from __future__ import annotations

import json

import numpy as np
import pytest

import invpbr  # noqa: F401  (sets up LLVM for Dr.Jit)
from invpbr.backend import init_backend

#: The figures README's "Radiance fields in time" table states (tests/test_readme.py).
STATED = {"above_static_db": 3.0}

SETTINGS = ("resolution = [16, 24]\nbatch_rays = 1024\nsh_degree = 1\noccupancy_warmup = 20\n"
            "occupancy_every = 8\n")
TAIL = "\n[optimize]\niterations = 300\nloss = \"l2\"\n\n[report]\ngradients = false\n"


@pytest.fixture(scope="module", autouse=True)
def backend():
    init_backend()


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    from invpbr.testing.field_captures import make_moving_folder

    return make_moving_folder(tmp_path_factory.mktemp("moving") / "m", size=24, views=30,
                              held_out=4, spp=16, distance=1.8)


def fit(folder, settings, out):
    from invpbr.testing.field_captures import fit_with_settings

    return fit_with_settings(folder, SETTINGS + settings, out, TAIL)


@pytest.fixture(scope="module")
def fits(moving, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fits")
    return fit(moving, "", tmp / "static"), fit(moving, "time = true\n", tmp / "time")


@pytest.mark.slow  # (the fits: about 50 s on 2 cores)
def test_a_field_in_time_beats_a_static_one_on_held_out_moments(fits):
    (_, static), (_, timed) = fits
    a = np.mean(list(static.novel_view_psnr.values()))
    b = np.mean(list(timed.novel_view_psnr.values()))
    assert b >= a + STATED["above_static_db"], (a, b)


@pytest.mark.slow  # (the fits: about 50 s on 2 cores)
def test_one_occupancy_grid_holds_every_moment(fits):
    """The occupancy grid (updated at random moments) keeps the moving
    sphere's cells at its first and at its last place."""
    from invpbr.testing.field_captures import moving_scene

    (_, _), (_, timed) = fits
    value = timed.estimates["field"]
    occupied = np.asarray(value["occupied"])
    lo, hi = np.asarray(value["lo"], float), np.asarray(value["hi"], float)
    nz, ny, nx = occupied.shape
    centres = (np.stack(np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij"),
                        -1)[..., ::-1] + 0.5) / [nx, ny, nz] * (hi - lo) + lo
    assert occupied.mean() < 0.7  # (it skips space)
    for t in (0.0, 1.0):
        sphere = moving_scene(t)["textured"]
        inside = np.linalg.norm(centres - sphere["center"], axis=-1) < sphere["radius"]
        assert occupied[inside].mean() > 0.5, (t, occupied[inside].mean())


@pytest.mark.slow  # (the fits: about 50 s on 2 cores)
def test_view_renders_any_moment(fits, tmp_path):
    from invpbr import save_result
    from invpbr.capture import images
    from invpbr.results.view import view_result

    (_, _), (problem, timed) = fits
    out = save_result(timed, tmp_path / "out")
    doc = json.loads((out / "result.json").read_text())
    assert doc["parameters"]["field"]["time_slices"] == 4
    assert len(doc["parameters"]["field"]["time_deform"]) == 3  # (the deformation grid's cells)
    cams = problem.folder / "transforms.json"
    held = [v.id for v in problem.views if v.held_out]
    # each frame's own time: the fit's final render of that (view, time)
    view_result(out, cams, spp=4, out=tmp_path / "own")
    own = images.load_image(tmp_path / "own" / f"{held[0]}.exr")[..., :3]
    assert np.abs(own - timed.renders[held[0]][..., :3]).mean() < 0.01
    # --time: the moving sphere is elsewhere at 0 and at 1
    view_result(out, cams, spp=1, out=tmp_path / "t0", time=0.0)
    view_result(out, cams, spp=1, out=tmp_path / "t1", time=1.0)
    t0 = images.load_image(tmp_path / "t0" / f"{held[0]}.exr")[..., :3]
    t1 = images.load_image(tmp_path / "t1" / f"{held[0]}.exr")[..., :3]
    assert np.abs(t0 - t1).mean() > 0.02


def test_frames_without_a_time_are_named(moving, tmp_path):
    from invpbr import load_problem, optimize
    from invpbr.testing.field_captures import with_field_settings

    folder = with_field_settings(moving, "time = true\n", tmp_path / "f")
    doc = json.loads((folder / "transforms.json").read_text())
    del doc["frames"][3]["time"]
    (folder / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"transforms.json: frames\[3\] \(view_03\).*\"time\" in "
                                         r"\[0, 1\]"):
        optimize(load_problem(folder), progress=False)


@pytest.mark.slow  # (the fits: about 50 s on 2 cores)
def test_time_appearance_and_transients_combine_in_one_fit(moving, tmp_path):
    """The options in one fit (with the occupancy grid): it runs, improves the
    held-out views on its start, and reports NeRF-W's half-image scores."""
    from invpbr.testing.field_captures import fit_with_settings

    _, result = fit_with_settings(moving, SETTINGS + 'time = true\nappearance = "affine"\n'
                                  "transient = true\n", tmp_path / "all", TAIL.replace("300", "80"))
    assert result.status == "completed"
    start = np.mean(list(result.novel_view_psnr_initial.values()))
    end = np.mean(list(result.novel_view_psnr.values()))
    assert end > start + 5, (start, end)
    assert np.isfinite(result.novel_view_appearance["mean"])
    value = result.estimates["field"]
    assert int(value["time_slices"]) == 4 and value["appearance"].shape[1:] == (3, 4)
    assert "occupied" in value  # (the occupancy grid was updated at random moments)


def test_a_displacement_moves_the_canonical_grid():
    """The field in time at u is the canonical grid at u moved by the
    displacement, linear in time between moments; the displacements'
    gradient agrees with central finite differences."""
    import drjit as dr
    import mitsuba as mi

    from invpbr.estimates.field_time import TimeGridField
    from invpbr.estimates.fields import GridField

    rng = np.random.default_rng(0)
    dims, ddims, slices = (6, 5, 4), (3, 3, 2), 3
    raw, sh = rng.normal(0, 1, 120).astype(np.float32), rng.normal(0, 1, 120 * 12).astype(np.float32)
    move = np.zeros((slices, 2, 3, 3, 3), np.float32)
    move[..., 0] = np.array([0.1, 0.2, 0.3])[:, None, None, None]  # x: steady motion
    move[..., 1] = 0.05
    canonical = GridField(raw=mi.Float(raw), sh=mi.Float(sh), dims=dims, degree=1, scale=1.0)
    deform = mi.Float(move.ravel())
    field = TimeGridField(raw=mi.Float(raw), sh=mi.Float(sh), dims=dims, degree=1, scale=1.0,
                          slices=slices, deform=deform, deform_dims=ddims)
    u = rng.uniform(0.15, 0.55, (64, 3)).astype(np.float32)
    at = field.at(mi.Float(np.full(64, 0.25, np.float32)))  # (halfway between moments 0 and 1)
    p = mi.Point3f(*(mi.Float(u[:, a]) for a in range(3)))
    q = mi.Point3f(*(mi.Float(u[:, a] + [0.15, 0.05, 0.0][a]) for a in range(3)))
    d = mi.Vector3f(0.0, 0.0, 1.0)
    assert np.allclose(np.array(at.density(p)), np.array(canonical.density(q)), atol=1e-5)
    assert np.allclose(np.array(at.colour(p, d)), np.array(canonical.colour(q, d)), atol=1e-5)
    # d/de sum(density) with every x displacement moved by e: AD against finite differences
    dr.enable_grad(deform)
    dr.backward(dr.sum(at.density(p)))
    ad = float(np.array(dr.grad(deform)).reshape(-1, 3)[:, 0].sum())

    def total(e):
        shifted = mi.Float((move + np.array([e, 0, 0], np.float32)).ravel())
        return float(np.array(dr.sum(TimeGridField(
            raw=mi.Float(raw), sh=mi.Float(sh), dims=dims, degree=1, scale=1.0, slices=slices,
            deform=shifted, deform_dims=ddims).at(mi.Float(0.25)).density(p)))[0])

    fd = (total(1e-3) - total(-1e-3)) / 2e-3
    assert abs(ad - fd) <= 0.02 * abs(fd) + 1e-3, (ad, fd)
