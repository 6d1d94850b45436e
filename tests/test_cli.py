"""The command line (``invpbr run | render | check | batch``) on the tiny scene:
few iterations, few samples. ``batch`` runs each scene in a child process."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from invpbr.capture import images as io
from invpbr.run.cli import build_parser, main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "render", "check", "batch"):
        assert command in out


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([])
    assert info.value.code == 2


def test_check_through_python_m(tiny_scene):
    proc = subprocess.run([sys.executable, "-m", "invpbr", "check", str(tiny_scene)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{tiny_scene}: ok"


def test_check_reports_problems(tiny_scene, capsys):
    (tiny_scene / "photos" / "side.exr").unlink()
    assert main(["check", str(tiny_scene)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{tiny_scene}: 1 problem(s)")
    assert "no photo for sensor(s) 'side'" in out


def test_render_without_truth(tiny_scene, capsys):
    (tiny_scene / "truth.xml").unlink()
    assert main(["render", str(tiny_scene)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"invpbr render: error: {tiny_scene / 'truth.xml'}: no such file")
    assert "synthetic scenes" in err


def test_render_writes_photos(tiny_scene, capsys):
    shutil.rmtree(tiny_scene / "photos")
    assert main(["render", str(tiny_scene), "--spp", "4", "--format", "png"]) == 0
    out = capsys.readouterr().out
    photos = sorted((tiny_scene / "photos").iterdir())
    assert [p.name for p in photos] == ["front.png", "side.png"]
    assert f"wrote {tiny_scene / 'photos' / 'front.png'}" in out
    img = io.load_image(photos[0])
    assert img.shape == (24, 24, 3) and img.max() > 0.05


def test_unknown_variant(tiny_scene, capsys):
    assert main(["--variant", "llvm_ad_rbg", "check", str(tiny_scene)]) == 2
    assert "invpbr check: error: init_backend(): variant 'llvm_ad_rbg' is not available" \
        in capsys.readouterr().err


def test_run_writes_a_result_folder(tiny_scene, tmp_path, capsys):
    out = tmp_path / "result"
    assert main(["run", str(tiny_scene), "--out", str(out), "--iterations", "3", "--spp", "2",
                 "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("tiny: completed after 3 iterations")
    assert "ball.bsdf.base_color.value = " in stdout
    assert f"wrote {out / 'result.json'}" in stdout

    result = json.loads((out / "result.json").read_text())
    key = "ball.bsdf.base_color.value"
    assert result["scene"] == "tiny" and result["status"] == "completed"
    assert result["iterations"] == 3
    assert list(result["parameters"]) == [key]
    assert len(result["parameters"][key]) == 3
    assert all(0.0 <= v <= 1.0 for v in result["parameters"][key])  # bounds [0, 1]
    assert list(result["errors"]) == [key] and result["errors"][key] >= 0
    assert result["initial_errors"][key] == pytest.approx((0.3 + 0.25 + 0.4) / 3, rel=1e-5)
    assert len(result["loss"]) == 3
    assert all(isinstance(v, float) and v > 0 for v in result["loss"])
    assert result["seconds_per_iteration"] > 0
    assert result["integrator"] == "prb" and result["variant"].endswith("_ad_rgb")
    assert result["backend"] in ("cpu (llvm)", "gpu (cuda)")
    assert result["peak_memory_mb"] > 50  # Mitsuba alone takes more
    assert set(result["psnr"]) == {"front", "side"}
    settings = result["settings"]
    assert settings["render"]["spp"] == 2 and settings["render"]["max_depth"] == 3
    assert settings["optimize"]["iterations"] == 3  # the override, as run
    assert settings["iterations_run"] == 3
    assert settings["estimate"][0]["key"] == key and settings["estimate"][0]["bounds"] == [0.0, 1.0]

    for name in ("front", "side"):
        preview = io.load_image(out / "renders" / f"{name}.png")
        assert preview.shape == (24, 3 * 24 + 2 * 2, 3)  # photo | render | difference
        render = io.load_image(out / "renders" / f"{name}.exr")
        assert render.shape == (24, 24, 3) and np.isfinite(render).all()
    assert io.load_image(out / "loss.png").shape[0] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result", "tiny"]  # nothing left beside


def test_run_texture_writes_texture_files(tiny_scene, tmp_path, capsys):
    (tiny_scene / "invpbr.toml").write_text('[render]\nspp_final = 2\nmax_depth = 2\n'
                                            '[[estimate]]\nkey = "floor.bsdf.reflectance.data"\n'
                                            'resolution = [4, 16]\ntv = 0.01\nbounds = [0, 1]\n')
    out = tmp_path / "result"
    assert main(["run", str(tiny_scene), "--out", str(out), "--iterations", "2", "--spp", "1",
                 "--no-progress"]) == 0
    assert "floor.bsdf.reflectance.data = texture 16x16x3" in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    rel = result["parameters"]["floor.bsdf.reflectance.data"]
    assert rel == "textures/floor.bsdf.reflectance.data.exr"
    texture = io.load_image(out / rel)
    assert texture.shape == (16, 16, 3) and texture.min() >= 0 and texture.max() <= 1
    assert (out / "textures" / "floor.bsdf.reflectance.data.png").is_file()


def test_run_broken_folder_exit_code(tiny_scene, tmp_path, capsys):
    (tiny_scene / "invpbr.toml").write_text("[optimize]\nloss = 'l3'\n")
    out = tmp_path / "result"
    assert main(["run", str(tiny_scene), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"invpbr run: error: {tiny_scene / 'invpbr.toml'}: optimize.loss = 'l3'")
    assert not out.exists()


def test_batch_reports_good_and_broken_scenes(tiny_scene, tmp_path, capsys):
    root = tmp_path / "scenes"
    root.mkdir()
    shutil.move(tiny_scene, root / "good")
    shutil.copytree(root / "good", root / "broken")
    shutil.rmtree(root / "broken" / "photos")
    (root / "notes").mkdir()  # neither invpbr.toml nor scene.xml: not a scene
    out = tmp_path / "out"

    code = main(["batch", str(root), "--out", str(out), "--iterations", "2", "--spp", "1", "--jobs", "2"])
    assert code == 1  # one scene failed
    stdout = capsys.readouterr().out
    assert f"wrote {out / 'summary.csv'} and {out / 'summary.json'}" in stdout

    rows = {r["scene"]: r for r in json.loads((out / "summary.json").read_text())}
    assert set(rows) == {"good", "broken"}
    good, broken = rows["good"], rows["broken"]
    assert good["status"] == "completed" and good["message"] == ""
    assert set(good["errors"]) == {"ball.bsdf.base_color.value"}
    assert good["seconds_per_iteration"] > 0
    assert broken["status"] == "failed"
    assert broken["message"].startswith("invpbr run: error: ")
    assert "no photos folder" in broken["message"] and "broken" in broken["message"]
    assert broken["errors"] == {}

    assert (out / "good" / "result.json").is_file()
    assert not (out / "broken").exists()

    with open(out / "summary.csv", newline="") as f:
        table = {r["scene"]: r for r in csv.DictReader(f)}
    assert set(table) == {"good", "broken"}
    assert table["good"]["status"] == "completed"
    assert float(table["good"]["error:ball.bsdf.base_color.value"]) == pytest.approx(
        good["errors"]["ball.bsdf.base_color.value"])
    assert table["broken"]["status"] == "failed"
    assert "no photos folder" in table["broken"]["message"]
    assert table["broken"]["error:ball.bsdf.base_color.value"] == ""

    index = (out / "index.html").read_text()  # one row per scene, the good one linked
    assert 'href="good/report.html"' in index and (out / "good" / "report.html").is_file()
    assert "broken" in index and "no photos folder" in index


def test_batch_of_a_missing_folder(tmp_path, capsys):
    assert main(["batch", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_backend_flag(tiny_scene, capsys):
    import drjit as dr

    assert main(["--backend", "cpu", "--variant", "cuda_ad_rgb", "check", str(tiny_scene)]) == 2
    assert "--backend cpu contradicts --variant cuda_ad_rgb" in capsys.readouterr().err
    if not dr.has_backend(dr.JitBackend.CUDA):
        assert main(["--backend", "gpu", "check", str(tiny_scene)]) == 2
        assert "needs a working CUDA GPU" in capsys.readouterr().err
