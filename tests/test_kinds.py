"""Estimate kinds as plug-ins: the registry, and a kind defined outside the
package (tests/plugin_kind.py) running end to end through ``invpbr run``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import invpbr
from invpbr.config import ConfigError, parse_config
from invpbr.estimates import KINDS, Estimate, register_kind

from conftest import SCENE_XML, TRUTH, make_tiny_scene

HERE = Path(__file__).resolve().parent
PLUGIN = HERE / "plugin_kind.py"

GREY_TOML = """[render]
spp = 8
max_depth = 3

[[estimate]]
kind = "grey"
key = "ball.bsdf.base_color.value"
start = 0.7
lr = 0.03

[optimize]
iterations = {iterations}
"""


def grey_folder(folder: Path, iterations: int = 40) -> Path:
    """The tiny scene with a grey ball (0.3) to find, starting at 0.7."""
    make_tiny_scene(folder, toml=GREY_TOML.format(iterations=iterations), photos=False)
    (folder / "truth.xml").write_text(SCENE_XML.format(res=24, **(TRUTH | {"base_color": "0.3"})))
    invpbr.render_photos(folder, spp=64)
    return folder


def test_built_in_kinds_are_registered():
    assert {"value", "texture", "envmap", "pose", "shape", "camera", "gains"} <= set(KINDS)
    assert all(issubclass(cls, Estimate) for cls in KINDS.values())


def test_register_kind_refuses_what_is_not_a_kind():
    with pytest.raises(TypeError, match="must be an Estimate subclass with a kind name"):
        register_kind(dict)

    class Nameless(Estimate):
        pass

    with pytest.raises(TypeError, match="kind name"):
        register_kind(Nameless)

    class Impostor(Estimate):
        kind = "pose"

    with pytest.raises(ValueError, match="kind 'pose' is already registered"):
        register_kind(Impostor)


def test_unknown_kind_and_unknown_option_are_config_errors():
    with pytest.raises(ConfigError, match=r"x.toml: estimate\[0\] \(key 'a.b'\)\.kind = 'gray'; "
                                          r"expected one of auto, "):
        parse_config({"estimate": [{"key": "a.b", "kind": "gray"}]}, source="x.toml")
    import plugin_kind  # noqa: F401  (registers "grey")

    table = parse_config({"estimate": [{"key": "a.b", "kind": "grey", "start": 0.25}]}).estimate[0]
    assert table.options == {"start": 0.25}
    assert parse_config({"estimate": [{"key": "a.b", "kind": "grey"}]}).estimate[0].options \
        == {"start": 0.5}
    with pytest.raises(ConfigError, match=r"unknown key estimate\[0\]\.start"):
        parse_config({"estimate": [{"key": "a.b", "start": 0.25}]}, source="x.toml")


def test_a_kind_from_outside_runs_through_invpbr_run_in_process(tmp_path, capsys):
    import plugin_kind  # noqa: F401  (registers "grey")
    from invpbr.run.cli import main

    folder = grey_folder(tmp_path / "grey")
    assert main(["run", str(folder), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert re.search(r"ball\.bsdf\.base_color\.value = grey 0\.\d+   error 0\.0",
                     capsys.readouterr().out)
    doc = json.loads((tmp_path / "out" / "result.json").read_text())
    key = "ball.bsdf.base_color.value"
    assert doc["kinds"] == {key: "grey"} and doc["status"] == "completed"
    assert doc["initial_errors"][key] == pytest.approx(0.4, abs=1e-6)
    assert doc["errors"][key] < 0.03   # 0.7 -> 0.3
    assert doc["scene_file_lacks"] == []   # the kind wrote itself into scene.xml
    value = doc["parameters"][key][0]
    text = (tmp_path / "out" / "scene.xml").read_text()
    assert f'value="{value!r} {value!r} {value!r}"' in text


def test_a_kind_from_outside_runs_through_the_command_line(tmp_path):
    folder = grey_folder(tmp_path / "grey", iterations=3)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE.parent)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    cmd = [sys.executable, "-m", "invpbr", "--plugin", str(PLUGIN), "run", str(folder),
           "--out", str(tmp_path / "out"), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "ball.bsdf.base_color.value = grey 0." in proc.stdout
    doc = json.loads((tmp_path / "out" / "result.json").read_text())
    assert doc["kinds"] == {"ball.bsdf.base_color.value": "grey"}
    # without the plug-in, the same folder is refused with a message naming the kind
    proc = subprocess.run(cmd[:3] + cmd[5:], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "estimate[0] (key 'ball.bsdf.base_color.value').kind = 'grey'" in proc.stderr


def test_missing_plugin_file_is_named(tmp_path, capsys):
    from invpbr.run.cli import main

    assert main(["--plugin", str(tmp_path / "nope.py"), "check", str(tmp_path)]) == 2
    assert "nope.py: no such plug-in file (--plugin)" in capsys.readouterr().err


def test_every_estimate_of_the_shipped_scenes_writes_itself_into_the_scene():
    """No built-in kind is left without a scene.xml writer (gains are not a
    parameter of the scene and report elsewhere)."""
    for name, cls in KINDS.items():
        if cls.reported and name in ("value", "texture", "envmap", "pose", "shape", "camera"):
            assert cls.write_xml.__func__ is not Estimate.write_xml.__func__, name
