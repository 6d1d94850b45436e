"""Fuzzed scene folders (hypothesis): every bad input gets a clear error that
names the file, from ``invpbr check`` and from ``invpbr run``, never a traceback,
and a failed run writes nothing (an earlier result stays as it was).

Each test changes one file of a good folder: invpbr.toml (values replaced by
junk, keys renamed, truncated), the camera files (transforms.json, COLMAP
text and binary, poses_bounds.npy: numbers replaced, truncated, bytes
flipped), photos and masks (truncated or corrupt files, wrong channel counts
and bit depths, NaN / inf EXRs, huge sizes, masks that select nothing), and
scene.xml. :data:`EXAMPLES` says how many inputs each test tries (README:
"Runs that survive"); hypothesis derandomized, so each run tries the same.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

import hypothesis  # noqa: E402,F401  (the test extra installs it: missing is a failure, not a skip)
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import make_tiny_scene  # noqa: E402
from invpbr.run.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: Inputs tried per test (the README's figure is their sum).
EXAMPLES = {"toml": 25, "transforms": 15, "colmap_text": 12, "colmap_binary": 12, "llff": 10,
            "photos": 20, "masks": 12, "scene_xml": 20}
STATED = EXAMPLES | {"total": sum(EXAMPLES.values())}

TOML = """[render]
spp = 1
max_depth = 2
spp_final = 1

[[estimate]]
key = "ball.bsdf.base_color.value"
bounds = [0.0, 1.0]

[optimize]
iterations = 1
lr = 0.03

[report]
gradients = false
"""

JUNK = ["nan", "inf", "-inf", "-1", "0", "1e309", "\"\"", "\"x\"", "[]", "{}", "true",
        "[1, 2", "9999999999999999999999", "-0.5", "\"../../etc\"", "null", "[[1]]"]

# (no shrinking: a failing input is reported as found, without minutes of searching)
FUZZ = dict(deadline=None, derandomize=True, print_blob=True, report_multiple_bugs=False,
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
            suppress_health_check=[HealthCheck.function_scoped_fixture,
                                   HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_scene(tmp_path_factory.mktemp("fuzz") / "tiny", res=16, toml=TOML,
                           photo_spp=8)


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    """The shipped real_capture scene (a transforms.json, JPEG photos) with its
    cameras also as COLMAP text (sparse/), binary (sparse_bin/) and LLFF
    (poses_bounds.npy with images/), and a cheap invpbr.toml."""
    from invpbr.capture.cameras import read_transforms

    folder = tmp_path_factory.mktemp("capture") / "capture"
    shutil.copytree(REPO / "scenes" / "real_capture", folder)
    text = (folder / "invpbr.toml").read_text()
    text = re.sub(r"iterations = \d+", "iterations = 1", text)
    text = re.sub(r"spp = \d+", "spp = 1", text)
    (folder / "invpbr.toml").write_text(text + "\n[report]\ngradients = false\n")
    cams = read_transforms(folder / "transforms.json")
    shutil.copytree(folder / "photos", folder / "images")
    write_colmap(folder / "sparse", cams, binary=False)
    write_colmap(folder / "sparse_bin", cams, binary=True)
    rows = []
    for c in cams:
        r, t = c.c2w[:3, :3], c.c2w[:3, 3]
        m = np.stack([r[:, 1], r[:, 0], -r[:, 2], t, [c.height, c.width, c.fx]], axis=1)
        rows.append(np.append(m.ravel(), [0.1, 20.0]))
    np.save(folder / "poses_bounds.npy", np.array(rows))
    return folder


def quaternion(r: np.ndarray) -> np.ndarray:
    """COLMAP's (w, x, y, z) of rotation matrix ``r``."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(r).as_quat()
    return np.array([w, x, y, z])


def write_colmap(folder: Path, cams, *, binary: bool) -> None:
    folder.mkdir(parents=True)
    poses = []
    for c in cams:
        w2c = np.linalg.inv(c.c2w)
        poses.append((quaternion(w2c[:3, :3]), w2c[:3, 3], Path(c.file_path).name))
    if not binary:
        (folder / "cameras.txt").write_text("".join(
            f"{i + 1} PINHOLE {c.width} {c.height} {c.fx!r} {c.fy!r} {c.cx!r} {c.cy!r}\n"
            for i, c in enumerate(cams)))
        (folder / "images.txt").write_text("".join(
            f"{i + 1} {' '.join(map(repr, map(float, q)))} {' '.join(map(repr, map(float, t)))} "
            f"{i + 1} {name}\n\n" for i, (q, t, name) in enumerate(poses)))
        return
    data = struct.pack("<Q", len(cams))
    for i, c in enumerate(cams):
        data += struct.pack("<iiQQ4d", i + 1, 1, c.width, c.height, c.fx, c.fy, c.cx, c.cy)
    (folder / "cameras.bin").write_bytes(data)
    data = struct.pack("<Q", len(poses))
    for i, (q, t, name) in enumerate(poses):
        data += struct.pack("<i7di", i + 1, *q, *t, i + 1) + name.encode() + b"\0"
        data += struct.pack("<Q", 0)
    (folder / "images.bin").write_bytes(data)


def with_camera_file(folder: Path, name: str) -> None:
    toml = folder / "invpbr.toml"
    toml.write_text(toml.read_text().replace('file = "transforms.json"', f'file = "{name}"'))


def test_the_good_folders_are_good(tiny, capture, tmp_path, capsys):
    assert main(["check", str(tiny)]) == 0
    for name in ("transforms.json", "sparse", "sparse_bin", "poses_bounds.npy"):
        folder = tmp_path / name
        shutil.copytree(capture, folder)
        with_camera_file(folder, name)
        assert main(["check", str(folder)]) == 0, capsys.readouterr()


# --- the check ------------------------------------------------------------------------------


def assert_clean(base: Path, change, names: tuple[str, ...], capsys) -> None:
    """Copy ``base``, apply ``change(folder)``, then ``check`` and (when it finds
    a problem) ``run``: neither raises; both name one of ``names``; the run
    writes nothing and leaves an earlier result as it was."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / base.name
        shutil.copytree(base, folder)
        change(folder)
        capsys.readouterr()
        code = main(["check", str(folder)])
        out = capsys.readouterr().out
        assert code in (0, 1), out
        if code == 0:
            return  # still a good folder (the change made sense)
        assert any(name in out for name in names), out
        result = Path(tmp) / "out"
        result.mkdir()
        (result / "result.json").write_text("{\"kept\": true}")
        code = main(["run", str(folder), "--out", str(result), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith("invpbr run: error: ") and "Traceback" not in err, err
        assert any(name in err for name in names), err
        assert (result / "result.json").read_text() == "{\"kept\": true}"


def mutate_text(text: str, data, pattern: str = r"-?\d+(\.\d+)?(e-?\d+)?") -> str:
    """Replace one number (or truncate the text, or rename a word)."""
    how = data.draw(st.sampled_from(["number", "truncate", "word"]))
    if how == "truncate":
        return text[:data.draw(st.integers(0, max(0, len(text) - 1)))]
    matches = list(re.finditer(pattern if how == "number" else r"[a-z_]{3,}", text))
    if not matches:
        return text + "\n\x00junk"
    m = matches[data.draw(st.integers(0, len(matches) - 1))]
    new = data.draw(st.sampled_from(JUNK) if how == "number" else st.text(
        alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
    return text[:m.start()] + new + text[m.end():]


def mutate_bytes(data_bytes: bytes, data) -> bytes:
    how = data.draw(st.sampled_from(["truncate", "flip", "random", "empty"]))
    if how == "empty":
        return b""
    if how == "random":
        return data.draw(st.binary(min_size=1, max_size=256))
    if how == "truncate":
        return data_bytes[:data.draw(st.integers(0, max(0, len(data_bytes) - 1)))]
    out = bytearray(data_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(out) - 1))
        out[i] = data.draw(st.integers(0, 255))
    return bytes(out)


@settings(max_examples=EXAMPLES["toml"], **FUZZ)
@given(data=st.data())
def test_fuzzed_invpbr_toml(tiny, data, capsys):
    def change(folder):
        path = folder / "invpbr.toml"
        path.write_text(mutate_text(path.read_text(), data))

    assert_clean(tiny, change, ("invpbr.toml",), capsys)


@settings(max_examples=EXAMPLES["transforms"], **FUZZ)
@given(data=st.data())
def test_fuzzed_transforms_json(capture, data, capsys):
    def change(folder):
        path = folder / "transforms.json"
        if data.draw(st.booleans()):
            path.write_text(mutate_text(path.read_text(), data))
        else:
            path.write_bytes(mutate_bytes(path.read_bytes(), data))

    assert_clean(capture, change, ("transforms.json", "photos"), capsys)


@settings(max_examples=EXAMPLES["colmap_text"], **FUZZ)
@given(data=st.data(), name=st.sampled_from(["cameras.txt", "images.txt"]))
def test_fuzzed_colmap_text(capture, data, name, capsys):
    def change(folder):
        with_camera_file(folder, "sparse")
        path = folder / "sparse" / name
        path.write_text(mutate_text(path.read_text(), data))

    assert_clean(capture, change, (name, "sparse", "images"), capsys)


@settings(max_examples=EXAMPLES["colmap_binary"], **FUZZ)
@given(data=st.data(), name=st.sampled_from(["cameras.bin", "images.bin"]))
def test_fuzzed_colmap_binary(capture, data, name, capsys):
    def change(folder):
        with_camera_file(folder, "sparse_bin")
        path = folder / "sparse_bin" / name
        path.write_bytes(mutate_bytes(path.read_bytes(), data))

    assert_clean(capture, change, (name, "sparse_bin", "images"), capsys)


@settings(max_examples=EXAMPLES["llff"], **FUZZ)
@given(data=st.data())
def test_fuzzed_poses_bounds(capture, data, capsys):
    def change(folder):
        with_camera_file(folder, "poses_bounds.npy")
        path = folder / "poses_bounds.npy"
        how = data.draw(st.sampled_from(["bytes", "nan", "shape"]))
        if how == "bytes":
            path.write_bytes(mutate_bytes(path.read_bytes(), data))
        else:
            arr = np.load(path)
            if how == "nan":
                arr.flat[data.draw(st.integers(0, arr.size - 1))] = \
                    data.draw(st.sampled_from([np.nan, np.inf, -1.0, 0.0, 1e30]))
            else:
                arr = arr[:, :data.draw(st.integers(1, 16))]
            np.save(path, arr)

    assert_clean(capture, change, ("poses_bounds.npy", "images"), capsys)


def image_bytes(data, suffix: str, size: int) -> bytes:
    """An image file's bytes that is wrong in some way (or odd but readable)."""
    from PIL import Image

    kind = data.draw(st.sampled_from(["channels", "16bit", "huge", "nan"] if suffix == ".exr"
                                     else ["channels", "16bit", "huge"]))
    if suffix == ".exr":
        import mitsuba as mi

        if kind == "nan":
            img = np.full((size, size, 3), 0.5, np.float32)
            img[data.draw(st.integers(0, size - 1)), 0, data.draw(st.integers(0, 2))] = \
                data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        elif kind == "huge":
            img = np.full((2048, 2048, 3), 0.5, np.float32)
        else:
            c = data.draw(st.sampled_from([1, 2, 4]))
            img = np.full((size, size, c), 0.5, np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            mi.Bitmap(img).write(str(Path(tmp) / "x.exr"))
            return (Path(tmp) / "x.exr").read_bytes()
    if kind == "huge":
        image = Image.new("RGB", (2048, 2048), (128, 128, 128))
    elif kind == "16bit":
        image = Image.fromarray(np.full((size, size), 30000, np.uint16))
    else:
        image = Image.new(data.draw(st.sampled_from(["L", "LA", "RGBA", "1", "P"])), (size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if suffix == ".png" else "JPEG"
               if image.mode in ("RGB", "L") else "PNG")
    return buffer.getvalue()


@settings(max_examples=EXAMPLES["photos"], **FUZZ)
@given(data=st.data())
def test_fuzzed_photos(tiny, data, capsys):
    def change(folder):
        path = folder / "photos" / "front.exr"
        if data.draw(st.booleans()):
            path.write_bytes(mutate_bytes(path.read_bytes(), data))
        else:
            path.write_bytes(image_bytes(data, ".exr", 16))

    assert_clean(tiny, change, ("front.exr",), capsys)


@settings(max_examples=EXAMPLES["masks"], **FUZZ)
@given(data=st.data())
def test_fuzzed_masks(capture, data, capsys):
    from PIL import Image

    def change(folder):
        (folder / "masks").mkdir()
        path = folder / "masks" / "IMG_0002.png"
        good = io.BytesIO()
        Image.new("L", (64, 48), 255).save(good, format="PNG")
        how = data.draw(st.sampled_from(["bytes", "image", "empty_mask"]))
        if how == "bytes":
            path.write_bytes(mutate_bytes(good.getvalue(), data))
        elif how == "image":
            path.write_bytes(image_bytes(data, ".png", 48))
        else:
            Image.new("L", (64, 48), 0).save(path)

    assert_clean(capture, change, ("IMG_0002.png",), capsys)


@settings(max_examples=EXAMPLES["scene_xml"], **FUZZ)
@given(data=st.data())
def test_fuzzed_scene_xml(tiny, data, capsys):
    def change(folder):
        path = folder / "scene.xml"
        if data.draw(st.integers(0, 3)) == 0:
            path.write_bytes(mutate_bytes(path.read_bytes(), data))
        else:
            path.write_text(mutate_text(path.read_text(), data,
                                        pattern=r'(?<=value=")[^"]*(?=")'))

    assert_clean(tiny, change, ("scene.xml",), capsys)
