"""Options of a radiance field for photo collections (issue 15): per-photo
appearance and transient occluders (NeRF-W), fitted to the capture
simulator's photos (exposure within +-1 stop, white balance, person-sized
blobs in a third of the photos) and scored against the clean truth; the
options not built yet are refused by name."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import invpbr  # noqa: F401  (sets up LLVM for Dr.Jit)
from invpbr.backend import init_backend

#: The figures README's "Photo collections" table states (tests/test_readme.py).
STATED = {"above_plain_db": 3, "nearer_truth_than_blob": 0.8, "blob_error_vs_plain": 0.7}

STEPS = 250
SETTINGS = ("resolution = [12, 16]\nbatch_rays = 1024\nsh_degree = 1\noccupancy_warmup = 20\n"
            "occupancy_every = 8\n")
TAIL = f"\n[optimize]\niterations = {STEPS}\nloss = \"l2\"\n\n[report]\ngradients = false\n"


@pytest.fixture(scope="module", autouse=True)
def backend():
    init_backend()


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    from invpbr.testing.field_captures import make_capture_folder

    return make_capture_folder(tmp_path_factory.mktemp("capture") / "c", size=24, views=24,
                               held_out=3, spp=16, seed=0)


def fit(capture, settings, out):
    from invpbr.testing.field_captures import fit_with_settings

    return fit_with_settings(capture, SETTINGS + settings, out, TAIL)


@pytest.fixture(scope="module")
def fits(capture, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fits")
    plain = fit(capture, "", tmp / "plain")
    both = fit(capture, 'appearance = "affine"\ntransient = true\n', tmp / "both")
    return plain, both


def truth(capture, vid, suffix=".exr"):
    from invpbr.capture import images

    return images.load_image(capture / "truth" / f"{vid}{suffix}")


def test_appearance_and_transients_beat_a_plain_field_on_held_out_views(capture, fits):
    """Held-out renders at the neutral appearance against the clean truth
    (gain 1, no occluder): >= 3 dB above the same field without the options."""
    from invpbr.results.evaluate import psnr

    (problem, plain), (_, both) = fits
    held = [v.id for v in problem.views if v.held_out]
    score = {name: np.mean([psnr(r.renders[vid], truth(capture, vid)) for vid in held])
             for name, r in (("plain", plain), ("both", both))}
    assert score["both"] >= score["plain"] + STATED["above_plain_db"], score
    # NeRF-W's evaluation is in the result: appearance fitted on the left half, right half scored
    scores = both.novel_view_appearance
    assert set(scores) == set(held) | {"mean"} and np.isfinite(scores["mean"])
    assert plain.novel_view_appearance == {}


def test_no_transients_in_the_renders(capture, fits):
    """Where a fitted photo has a blob, the render (at the neutral appearance,
    without the transient layer) is nearer the clean truth than the blob
    (measured: 0.136 against 0.214 mean absolute error), and much nearer than
    the plain field's render, which bakes the blobs in (0.242)."""
    (problem, plain), (_, both) = fits
    doc = json.loads((capture / "transforms_truth.json").read_text())
    occluded = [f["file_path"].split("/")[-1].split(".")[0] for f in doc["frames"]
                if f["transient"]]
    assert len(occluded) == 8

    def errors(result):
        to_truth, to_blob = [], []
        for vid in occluded:
            blob = truth(capture, vid, "_transient.png")[..., 0] > 0.5
            render = np.clip(result.renders[vid], 0, 1)[blob]
            to_truth.append(np.abs(render - np.clip(truth(capture, vid), 0, 1)[blob]).mean())
            to_blob.append(np.abs(render - np.clip(result.photos[vid], 0, 1)[blob]).mean())
        return np.mean(to_truth), np.mean(to_blob)

    t_both, b_both = errors(both)
    t_plain, _ = errors(plain)
    assert t_both < STATED["nearer_truth_than_blob"] * b_both, (t_both, b_both)
    assert t_both < STATED["blob_error_vs_plain"] * t_plain, (t_both, t_plain)


def test_the_field_file_holds_each_photos_appearance(fits, tmp_path):
    from invpbr import save_result
    from invpbr.estimates.fields import load_field

    (problem, _), (_, both) = fits
    out = save_result(both, tmp_path / "out")
    data = load_field(out / "field.npz")
    fitted = [v.id for v in problem.views if not v.held_out]
    assert list(data["appearance_ids"]) == fitted
    m = data["appearance"]
    assert m.shape == (len(fitted), 3, 4)
    # the gauge: the mean log gain is 0 (the field is the neutral appearance)
    diag = np.stack([np.diagonal(x[:, :3]) for x in m])
    assert np.abs(np.log(diag).mean(0)).max() < 1e-5
    doc = json.loads((out / "result.json").read_text())
    assert set(doc["parameters"]["field"]["appearance"]) == set(fitted)
    assert "mean" in doc["novel_view_appearance"]
    # invpbr view at a fitted photo's appearance: its [M | b] on the neutral render
    from invpbr.capture import images
    from invpbr.results.view import view_result

    cams = problem.folder / "transforms.json"
    view_result(out, cams, spp=1, out=tmp_path / "neutral")
    view_result(out, cams, spp=1, out=tmp_path / "photo", appearance=fitted[1])
    a = images.load_image(tmp_path / "neutral" / f"{fitted[0]}.exr")[..., :3]
    b = images.load_image(tmp_path / "photo" / f"{fitted[0]}.exr")[..., :3]
    assert np.allclose(b, a @ m[1][:, :3].T + m[1][:, 3], atol=1e-4)
    assert np.abs(b - a).mean() > 1e-3
    with pytest.raises(ValueError, match=r"--appearance 'nobody': not a fitted photo"):
        view_result(out, cams, spp=1, out=tmp_path / "x", appearance="nobody")


def test_affine_appearance_is_relative_to_the_mean_photo():
    import drjit as dr
    import mitsuba as mi

    from invpbr.estimates.field_options import AFFINE_SIZE, AffineAppearance

    app = AffineAppearance(3, ["a", "b", "c"])
    rng = np.random.default_rng(0)
    v = rng.normal(0, 0.3, (3, AFFINE_SIZE)).astype(np.float32)
    rgb = mi.Color3f(0.2, 0.5, 0.7)
    same = np.tile(v[1], (3, 1))  # every photo alike: every transform is the identity
    out = app.apply(mi.Float(same.ravel()), mi.UInt32(2), rgb)
    assert np.allclose(np.array(out).ravel(), [0.2, 0.5, 0.7], atol=1e-6)
    # photo 0's transform as matrices() gives it
    m = app.matrices(mi.Float(v.ravel()))[0]
    out = np.array(app.apply(mi.Float(v.ravel()), mi.UInt32(0), rgb)).ravel()
    assert np.allclose(out, m[:, :3] @ [0.2, 0.5, 0.7] + m[:, 3], atol=1e-5)
    dr.eval(out)


def test_nerfw_half_score_fits_the_colour_map_on_the_left_half():
    from invpbr.estimates.field_options import fit_affine, half_psnr

    rng = np.random.default_rng(1)
    render = rng.uniform(0.1, 0.6, (8, 10, 3))
    a = np.array([[1.2, 0.1, 0.0], [0.0, 0.8, 0.05], [0.02, 0.0, 1.1]])
    photo = render @ a.T + 0.03
    x = fit_affine(render, photo)
    assert np.allclose(x[:3].T, a, atol=1e-8) and np.allclose(x[3], 0.03, atol=1e-8)
    assert half_psnr(render, photo) > 100  # exact on the right half too
    photo[:, 5:] += 0.1  # the right half differs: scored there
    assert half_psnr(render, photo) == pytest.approx(20.0, abs=0.01)


@pytest.mark.parametrize("toml, message", [
    ("[field]\ntime_slices = 1\n", r"field.time_slices"),
    ("[field]\ntime_deform = -1\n", r"field.time_deform"),
    ("[field]\nmodel = \"hash\"\ntime = true\n", r"field.time = true needs model = \"grid\""),
    ("[field]\nappearance = \"embedding\"\n", r"appearance = \"embedding\".*not available"),
    ("[field]\nmodel = \"hash\"\nappearance = \"embedding\"\n",
     r"appearance = \"embedding\".*not available"),
    ("[field]\nappearance = \"warm\"\n", r"field.appearance"),
    ("[field]\ntransient_weight = -1\n", r"field.transient_weight"),
])
def test_field_options_not_built_or_bad_are_refused_by_name(toml, message):
    from invpbr.config import ConfigError, parse_config

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    with pytest.raises(ConfigError, match=message):
        parse_config(tomllib.loads(toml), source="x/invpbr.toml")


def test_the_hash_model_takes_appearance_and_transients(capture, tmp_path):
    # (they were accepted and silently ignored by the hash model before)
    from invpbr import save_result
    from invpbr.estimates.fields import load_field

    from invpbr.testing.field_captures import fit_with_settings

    problem, result = fit_with_settings(
        capture, SETTINGS.replace("[12, 16]", "[32]") + 'model = "hash"\nappearance = "affine"\n'
        'transient = true\n', tmp_path / "hash", TAIL.replace(f"= {STEPS}", "= 40"))
    out = save_result(result, tmp_path / "out")
    data = load_field(out / "field.npz")
    fitted = [v.id for v in problem.views if not v.held_out]
    assert str(data["model"]) == "hash" and list(data["appearance_ids"]) == fitted
    m = data["appearance"]
    assert m.shape == (len(fitted), 3, 4) and np.all(np.isfinite(m))
    assert np.abs(m[:, :, :3] - np.eye(3)).max() > 1e-3  # the photos' transforms were fitted
    doc = json.loads((out / "result.json").read_text())
    assert set(doc["parameters"]["field"]["appearance"]) == set(fitted)
    assert np.isfinite(doc["novel_view_appearance"]["mean"])
