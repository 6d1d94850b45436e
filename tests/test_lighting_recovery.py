"""Lighting recovery: the three lighting scenes, solved by `invpbr run`.

- ``envmap_known_materials``: a 64x32 sky (sun included) from 6 views of a chrome ball, a
  diffuse ball and a ground plane of known materials; 2 more views are held out.
- ``joint_material_envmap``: a principled sphere's base colour, roughness and metallic
  together with the sky, from 8 views; a grey ball, a chrome probe ball and the ground
  (all known) fix the albedo x light scale and the sharpness of the sun.
- ``area_light``: a rectangle light's radiance, materials known.

Measured on 2 CPU cores (llvm_ad_rgb, Mitsuba 3.9.1) with `invpbr run scenes/<name>`:

| scene | quantity | measured | start | asserted |
|---|---|---|---|---|
| envmap_known_materials | sky.data error (mean abs radiance) | 0.019 | 0.464 | < 0.04 |
| | novel views PSNR (dB) | 29.1, 28.7 | 12.1, 12.4 | >= start + 10 |
| joint_material_envmap | base_color, roughness, metallic error | 0.0038, 0.0013, 0.020 | 0.29, 0.2, 0.1 | < 0.015, 0.03, 0.04 |
| | sky.data error | 0.053 | 0.585 | < 0.2 |
| | base_color scale-invariant error | 0.0013 | | < 0.01 |
| | novel views PSNR (dB) | 26.3, 27.4 | 9.5, 11.2 | >= start + 6 |
| | relighting PSNR, mean (dB) | 53.3 | 20.5 | >= start + 15 |
| area_light | radiance error | 0.0028 | 5.0 | < 0.05 |

The novel views' PSNRs are at the Monte Carlo noise of the 64-spp final renders (the truth
itself rendered so scores 29.0, 29.2 and 26.3, 31.1 dB). Runs take about 30 s, 33 s and 11 s.
The envmap limits also guard against a bug fixed here: one backward pass per view cleared
the AD graph between log-space latents and the scene after the first view (0.095 and
+8 dB with it).
"""

from __future__ import annotations

import json

import pytest

import invpbr
from invpbr.run.cli import main

from conftest import REPO

SCENES = REPO / "scenes"
RELIGHT = "envmaps/relight.exr"

# What the README's lighting table states and these tests assert (tests/test_readme.py
# checks that the two agree): errors below, novel views and relighting at least this many
# dB above the starting guess's.
STATED = {
    "envmap_known_materials": {"errors": {"sky.data": 0.04}, "novel_gain_db": 10.0},
    "joint_material_envmap": {
        "errors": {"sphere.bsdf.base_color.value": 0.015, "sphere.bsdf.roughness.value": 0.03,
                   "sphere.bsdf.metallic.value": 0.04, "sky.data": 0.2},
        "scale_invariant": 0.01, "novel_gain_db": 6.0, "relight_gain_db": 15.0},
    "area_light": {"errors": {"light.emitter.radiance.value": 0.05}},
}


def _run(scene: str, tmp_path) -> dict:
    out = tmp_path / scene
    assert main(["run", str(SCENES / scene), "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed"
    assert result["iterations"] <= 200
    assert result["integrator"] == "prb"
    assert min(result["loss"][-10:]) < 0.1 * result["loss"][0]
    return result


def _assert_errors(result: dict, limits: dict[str, float]) -> None:
    assert set(result["errors"]) == set(limits)
    for key, limit in limits.items():
        error, initial = result["errors"][key], result["initial_errors"][key]
        assert error < limit, f"{key}: error {error:.4f} >= {limit}"
        assert error < 0.25 * initial, f"{key}: barely moved ({initial:.4f} -> {error:.4f})"


def _assert_novel_views_gain(result: dict, views: set[str], gain_db: float) -> None:
    """Views never fitted must come out far better than the starting guess."""
    assert set(result["held_out"]) == views
    for view in views:
        after, before = result["novel_view_psnr"][view], result["novel_view_psnr_initial"][view]
        assert after >= before + gain_db, f"{view}: {before:.2f} -> {after:.2f} dB"


@pytest.mark.slow
def test_envmap_with_known_materials(tmp_path, capsys):
    result = _run("envmap_known_materials", tmp_path)
    stated = STATED["envmap_known_materials"]
    _assert_errors(result, stated["errors"])
    _assert_novel_views_gain(result, {"novel_high", "novel_low"}, stated["novel_gain_db"])
    # Relighting replaces the sky, the only estimated parameter, so the relit estimate
    # is the relit truth: an infinite PSNR, written as null.
    assert result["relight_psnr"][RELIGHT]["mean"] is None
    assert result["relight_psnr_initial"][RELIGHT]["mean"] is None
    assert result["notes"] == []  # materials known: no albedo x light ambiguity


@pytest.mark.slow
def test_material_and_envmap_together(tmp_path, capsys):
    result = _run("joint_material_envmap", tmp_path)
    stated = STATED["joint_material_envmap"]
    _assert_errors(result, stated["errors"])
    _assert_novel_views_gain(result, {"novel_high", "novel_low"}, stated["novel_gain_db"])
    relit, relit_start = (result[k][RELIGHT]["mean"]
                          for k in ("relight_psnr", "relight_psnr_initial"))
    assert relit >= relit_start + stated["relight_gain_db"], \
        f"relighting {relit_start:.2f} -> {relit:.2f} dB"
    assert result["errors_scale_invariant"]["sphere.bsdf.base_color.value"] \
        < stated["scale_invariant"]
    assert result["notes"] and "albedo x light" in result["notes"][0]


@pytest.mark.slow
def test_area_light_radiance(tmp_path, capsys):
    result = _run("area_light", tmp_path)
    _assert_errors(result, STATED["area_light"]["errors"])
    # space = "auto" estimates an emitter's radiance in log space.
    assert result["settings"]["estimate"][0]["space"] == "auto"
    assert [p.space for p in invpbr.load_problem(SCENES / "area_light").parameters] == ["log"]


def test_check_passes_on_the_lighting_scenes(capsys):
    for scene in ("envmap_known_materials", "joint_material_envmap", "area_light"):
        assert main(["check", str(SCENES / scene)]) == 0
        assert "ok" in capsys.readouterr().out
