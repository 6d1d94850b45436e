"""Unit tests of invpbr.toml parsing and validation (pure Python, no rendering)."""

from __future__ import annotations

import re

import pytest

from invpbr.config import (
    INTEGRATORS, LOSSES, ConfigError, EstimateConfig, OptimizeConfig, PhotosConfig,
    ProblemConfig, RenderConfig, load_config, parse_config,
)


def write_toml(tmp_path, text: str):
    path = tmp_path / "invpbr.toml"
    path.write_text(text)
    return path


def error_for(tmp_path, text: str) -> str:
    """The ConfigError message of loading ``text`` as an invpbr.toml."""
    path = write_toml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_defaults_of_an_empty_file(tmp_path):
    cfg = load_config(write_toml(tmp_path, ""))
    assert cfg == ProblemConfig()
    assert cfg.render == RenderConfig(spp=16, max_depth=4, integrator="auto", spp_final=64)
    assert cfg.optimize == OptimizeConfig(iterations=200, lr=0.02, loss="l1", views_per_step=0, seed=0)
    assert cfg.photos == PhotosConfig(resize=False)
    assert cfg.estimate == []


def test_full_file_is_read(tmp_path):
    cfg = load_config(write_toml(tmp_path, """
[render]
spp = 4
max_depth = -1
integrator = "prb_projective"
spp_final = 8

[[estimate]]
key = "ball.bsdf.base_color.value"
bounds = [0, 1]
lr = 0.1

[[estimate]]
key = "floor.bsdf.reflectance.data"
resolution = [8, 16]
tv = 0.5

[optimize]
iterations = 0
lr = 1
loss = "relative_l2"
views_per_step = 2
seed = 7

[photos]
resize = true
"""))
    assert cfg.render == RenderConfig(spp=4, max_depth=-1, integrator="prb_projective", spp_final=8)
    assert cfg.optimize == OptimizeConfig(iterations=0, lr=1, loss="relative_l2", views_per_step=2, seed=7)
    assert cfg.photos.resize is True
    assert cfg.estimate == [
        EstimateConfig(key="ball.bsdf.base_color.value", bounds=(0.0, 1.0), lr=0.1),
        EstimateConfig(key="floor.bsdf.reflectance.data", resolution=[8, 16], tv=0.5),
    ]
    # bounds become a tuple of floats whatever TOML type they were written in
    assert isinstance(cfg.estimate[0].bounds, tuple)
    assert all(type(v) is float for v in cfg.estimate[0].bounds)
    assert cfg.to_dict()["estimate"][1]["resolution"] == [8, 16]


def test_estimate_as_a_single_table(tmp_path):
    cfg = load_config(write_toml(tmp_path, '[estimate]\nkey = "a.b"\nbounds = [0.5, 2]\n'))
    assert cfg.estimate == [EstimateConfig(key="a.b", bounds=(0.5, 2.0))]


def test_resolution_as_one_integer_becomes_a_list():
    cfg = parse_config({"estimate": [{"key": "t.data", "resolution": 32}]})
    assert cfg.estimate[0].resolution == [32]


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_name_is_accepted(name):
    assert parse_config({"optimize": {"loss": name}}).optimize.loss == name


@pytest.mark.parametrize("name", INTEGRATORS)
def test_every_integrator_name_is_accepted(name):
    assert parse_config({"render": {"integrator": name}}).render.integrator == name


# (TOML text, what the message must name besides the file)
AB = r"estimate\[0\] \(key 'a\.b'\)"
TEX = r"estimate\[0\] \(key 't\.data'\)"
BAD = {
    "unknown table": ("[rendr]\nspp = 4\n", r"unknown table \[rendr\]"),
    "unknown render key": ("[render]\nspp = 4\nsamples = 3\n", r"unknown key render\.samples"),
    "unknown optimize key": ("[optimize]\nlearning_rate = 0.1\n", r"unknown key optimize\.learning_rate"),
    "unknown photos key": ("[photos]\nrescale = true\n", r"unknown key photos\.rescale"),
    "unknown estimate key": ('[[estimate]]\nkey = "a"\nbound = [0, 1]\n',
                             r"unknown key estimate\[0\]\.bound"),
    "render not a table": ("render = 3\n", r"\[render\] must be a table"),
    "estimate not tables": ("estimate = 3\n", r"\[\[estimate\]\] must be an array of tables"),
    "estimate item not a table": ("estimate = [1]\n", r"\[estimate\[0\]\] must be a table"),
    "spp float": ("[render]\nspp = 1.5\n", r"render\.spp must be an integer, found 1\.5"),
    "spp string": ('[render]\nspp = "16"\n', r"render\.spp must be an integer, found '16'"),
    "spp bool": ("[render]\nspp = true\n", r"render\.spp must be an integer, found True"),
    "spp zero": ("[render]\nspp = 0\n", r"render\.spp must be >= 1, found 0"),
    "spp_final zero": ("[render]\nspp_final = 0\n", r"render\.spp_final must be >= 1"),
    "max_depth": ("[render]\nmax_depth = -2\n", r"render\.max_depth must be >= -1, found -2"),
    "integrator": ('[render]\nintegrator = "volpath_magic"\n',
                   r"render\.integrator = 'volpath_magic'; expected one of auto, prb"),
    "iterations negative": ("[optimize]\niterations = -1\n", r"optimize\.iterations must be >= 0"),
    "iterations float": ("[optimize]\niterations = 10.0\n", r"optimize\.iterations must be an integer"),
    "lr string": ('[optimize]\nlr = "fast"\n', r"optimize\.lr must be a finite number, found 'fast'"),
    "lr negative": ("[optimize]\nlr = -0.1\n", r"optimize\.lr must be >= 0"),
    "lr nan": ("[optimize]\nlr = nan\n", r"optimize\.lr must be a finite number, found nan"),
    "lr inf": ("[optimize]\nlr = inf\n", r"optimize\.lr must be a finite number, found inf"),
    "views_per_step": ("[optimize]\nviews_per_step = -3\n", r"optimize\.views_per_step must be >= 0"),
    "seed": ("[optimize]\nseed = 0.5\n", r"optimize\.seed must be an integer"),
    "loss": ('[optimize]\nloss = "l3"\n', r"optimize\.loss = 'l3'; expected one of l1, l2, relative_l2"),
    "resize": ('[photos]\nresize = "yes"\n', r"photos\.resize must be true or false, found 'yes'"),
    "key missing": ("[[estimate]]\nbounds = [0, 1]\n", r"estimate\[0\]\.key is missing"),
    "key empty": ('[[estimate]]\nkey = ""\n', r"estimate\[0\]\.key is missing"),
    "key not a string": ("[[estimate]]\nkey = 3\n", r"estimate\[0\]\.key is missing"),
    "bounds lo > hi": ('[[estimate]]\nkey = "a.b"\nbounds = [1, 0]\n',
                       AB + r"\.bounds must have lo < hi, found \[1, 0\]"),
    "bounds lo == hi": ('[[estimate]]\nkey = "a.b"\nbounds = [0.5, 0.5]\n',
                        AB + r"\.bounds must have lo < hi"),
    "bounds nan": ('[[estimate]]\nkey = "a.b"\nbounds = [nan, 1]\n', AB + r"\.bounds must have lo < hi"),
    "bounds length": ('[[estimate]]\nkey = "a.b"\nbounds = [0, 1, 2]\n',
                      AB + r"\.bounds must be \[lo, hi\]"),
    "bounds scalar": ('[[estimate]]\nkey = "a.b"\nbounds = 1\n',
                      AB + r"\.bounds must be \[lo, hi\], found 1"),
    "bounds strings": ('[[estimate]]\nkey = "a.b"\nbounds = ["0", "1"]\n',
                       AB + r"\.bounds must be \[lo, hi\]"),
    "bounds bool": ('[[estimate]]\nkey = "a.b"\nbounds = [false, true]\n',
                    AB + r"\.bounds must be \[lo, hi\]"),
    "estimate lr": ('[[estimate]]\nkey = "a.b"\nlr = -1\n', AB + r"\.lr must be >= 0"),
    "estimate tv": ('[[estimate]]\nkey = "a.b"\ntv = "x"\n', AB + r"\.tv must be a finite number"),
    "second estimate": ('[[estimate]]\nkey = "a.b"\n[[estimate]]\nkey = "c.d"\ntv = -1\n',
                        r"estimate\[1\] \(key 'c\.d'\)\.tv must be >= 0"),
    "resolution empty": ('[[estimate]]\nkey = "t.data"\nresolution = []\n',
                         TEX + r"\.resolution must be a positive integer or a list of them, found \[\]"),
    "resolution zero": ('[[estimate]]\nkey = "t.data"\nresolution = [16, 0]\n',
                        TEX + r"\.resolution must be a positive integer or a list"),
    "resolution negative int": ('[[estimate]]\nkey = "t.data"\nresolution = -8\n',
                                TEX + r"\.resolution must be a positive integer"),
    "resolution floats": ('[[estimate]]\nkey = "t.data"\nresolution = [16.0, 32.0]\n',
                          TEX + r"\.resolution must be a positive integer"),
    "resolution string": ('[[estimate]]\nkey = "t.data"\nresolution = "64"\n',
                          TEX + r"\.resolution must be a positive integer"),
    "resolution bool": ('[[estimate]]\nkey = "t.data"\nresolution = [true]\n',
                        TEX + r"\.resolution must be a positive integer"),
}


@pytest.mark.parametrize("text, expected", list(BAD.values()), ids=list(BAD))
def test_invalid_values_name_file_and_key(tmp_path, text, expected):
    path = tmp_path / "invpbr.toml"
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": " + expected):
        load_config(write_toml(tmp_path, text))


def test_unknown_key_lists_the_known_ones(tmp_path):
    message = error_for(tmp_path, "[render]\nmaxdepth = 3\n")
    assert "unknown key render.maxdepth" in message
    assert "expected one of spp, spp_grad, max_depth, integrator, spp_final, guiding" in message


def test_parse_config_names_its_source():
    with pytest.raises(ConfigError, match=r"^scenes/x/invpbr\.toml: unknown table \[camera\]"):
        parse_config({"camera": {}}, source="scenes/x/invpbr.toml")


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("text", [
    "[render\nspp = 4\n",           # unclosed table header
    "[render]\nspp = \n",            # missing value
    "[render]\nspp = 4\nspp = 5\n",  # duplicate key
    "not toml at all",
])
def test_malformed_toml_names_the_file(tmp_path, text):
    path = write_toml(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": malformed TOML: "):
        load_config(path)


def test_file_not_in_utf8_is_malformed_toml(tmp_path):
    path = tmp_path / "invpbr.toml"
    path.write_bytes("[render]\nspp = 4\n".encode("utf-16"))
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": malformed TOML: .*utf-8"):
        load_config(path)


def test_missing_file(tmp_path):
    path = tmp_path / "invpbr.toml"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path)) + ": no such file"):
        load_config(path)


def test_spp_schedule_splits_the_iterations_evenly():
    from invpbr.config import spp_at

    cfg = parse_config({"render": {"spp": [4, 16, 64], "spp_grad": 8}})
    assert [spp_at(cfg.render, i, 9) for i in range(9)] == [4, 4, 4, 16, 16, 16, 64, 64, 64]
    assert cfg.render.spp_grad == 8
    assert spp_at(parse_config({}).render, 5, 10) == 16


@pytest.mark.parametrize("render, message", [
    ({"spp": []}, "render.spp must be a positive integer or a non-empty list"),
    ({"spp": [4, 0]}, "render.spp[1] must be >= 1"),
    ({"spp_grad": -1}, "render.spp_grad must be >= 0"),
    ({"guiding": "bvh"}, "render.guiding = 'bvh'"),
    ({"guiding_every": 0}, "render.guiding_every must be >= 1"),
])
def test_render_schedule_errors(render, message):
    with pytest.raises(ConfigError, match="x.toml") as e:
        parse_config({"render": render}, source="x.toml")
    assert message in str(e.value)
