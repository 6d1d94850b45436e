"""Shared fixtures: tiny scene folders written into tmp_path.

Scenes are 16x16 to 32x32 with few spp so the suite runs on two CPU cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import invpbr

GREY_XML = "grey.png"

SCENE_XML = """<scene version="3.0.0">
  <emitter type="constant" id="env"><rgb name="radiance" value="0.6"/></emitter>
  <emitter type="point" id="lamp"><point name="position" x="2" y="3" z="4"/><rgb name="intensity" value="25"/></emitter>
  <shape type="sphere" id="ball">
    <bsdf type="principled">
      <rgb name="base_color" value="{base_color}"/>
      <float name="roughness" value="{roughness}"/>
      <float name="metallic" value="{metallic}"/>
    </bsdf>
  </shape>
  <shape type="rectangle" id="floor">
    <transform name="to_world"><scale value="4"/><rotate x="1" angle="-90"/><translate y="-1"/></transform>
    <bsdf type="diffuse"><texture type="bitmap" name="reflectance"><string name="filename" value="{texture}"/></texture></bsdf>
  </shape>
  <sensor type="perspective" id="front">
    <transform name="to_world"><lookat origin="0,1.5,5" target="0,-0.3,0" up="0,1,0"/></transform>
    <film type="hdrfilm"><integer name="width" value="{res}"/><integer name="height" value="{res}"/></film>
  </sensor>
  <sensor type="perspective" id="side">
    <transform name="to_world"><lookat origin="4,2.5,2" target="0,-0.3,0" up="0,1,0"/></transform>
    <film type="hdrfilm"><integer name="width" value="{res}"/><integer name="height" value="{res}"/></film>
  </sensor>
</scene>
"""

TOML = """[render]
spp = 8
max_depth = 3

[[estimate]]
key = "ball.bsdf.base_color.value"
bounds = [0.0, 1.0]

[optimize]
iterations = 40
lr = 0.03
"""

TRUTH = dict(base_color="0.8, 0.25, 0.1", roughness="0.3", metallic="0.0", texture="checker.png")
MODEL = dict(base_color="0.5, 0.5, 0.5", roughness="0.6", metallic="0.0", texture="grey.png")


def checker(res: int = 16, n: int = 4) -> np.ndarray:
    """A linear RGB checkerboard (res, res, 3) in [0.2, 0.9]."""
    y, x = np.mgrid[0:res, 0:res] * n // res
    v = np.where((x + y) % 2 == 0, 0.9, 0.2).astype(np.float32)
    return np.stack([v, 0.6 * v + 0.1, 0.3 * v + 0.2], axis=-1).astype(np.float32)


def make_tiny_scene(folder: Path, *, res: int = 24, toml: str = TOML, photos: bool = True,
                    photo_spp: int = 64) -> Path:
    """Write a tiny synthetic scene folder (model, truth, config, photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    invpbr.init_backend()
    invpbr.capture.images.save_image(folder / "checker.png", checker())
    invpbr.capture.images.save_image(folder / "grey.png", np.full((16, 16, 3), 0.5, np.float32))
    (folder / "scene.xml").write_text(SCENE_XML.format(res=res, **MODEL))
    (folder / "truth.xml").write_text(SCENE_XML.format(res=res, **TRUTH))
    (folder / "invpbr.toml").write_text(toml)
    if photos:
        invpbr.render_photos(folder, spp=photo_spp)
    return folder


@pytest.fixture(scope="session")
def mi():
    """Mitsuba with invpbr's variant set."""
    invpbr.init_backend()
    import mitsuba

    return mitsuba


@pytest.fixture(scope="session")
def tiny_scene_master(tmp_path_factory) -> Path:
    return make_tiny_scene(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture
def tiny_scene(tiny_scene_master, tmp_path) -> Path:
    """A fresh copy of the tiny scene folder that a test may change."""
    import shutil

    dst = tmp_path / "tiny"
    shutil.copytree(tiny_scene_master, dst)
    return dst


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker per core, at most 4 (each worker
    holds its own Mitsuba and Dr.Jit, about 1-2 GiB)."""
    return max(1, min(4, os.cpu_count() or 1))


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def sensor_ray_miss(sensor, pixel, point) -> float:
    """Distance from ``point`` to the ray a Mitsuba ``sensor`` shoots through ``pixel``
    (x right, y down, in pixels of its film's crop window)."""
    import mitsuba as mi

    size = np.array(sensor.film().crop_size(), dtype=np.float64)
    s = np.asarray(pixel, dtype=np.float64) / size
    ray, _ = sensor.sample_ray(0.0, 0.5, mi.Point2f(float(s[0]), float(s[1])), mi.Point2f(0.5, 0.5))
    o = np.array(ray.o, dtype=np.float64).ravel()
    d = np.array(ray.d, dtype=np.float64).ravel()
    v = np.asarray(point, dtype=np.float64) - o
    return float(np.linalg.norm(v - np.dot(v, d) * d))


def _rotmat_to_qvec(r: np.ndarray) -> np.ndarray:
    """(qw, qx, qy, qz) of a rotation matrix (COLMAP's order), for r with trace > -1."""
    w = 0.5 * np.sqrt(max(1e-12, 1.0 + np.trace(r)))
    return np.array([w, (r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w),
                     (r[1, 0] - r[0, 1]) / (4 * w)])


def write_colmap_text(folder: Path, cams) -> Path:
    """``cams`` (:class:`invpbr.capture.cameras.Camera`) as a COLMAP text model
    (PINHOLE cameras, world-to-camera quaternions) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    cam_lines, img_lines = [], []
    for i, c in enumerate(cams, start=1):
        cam_lines.append(f"{i} PINHOLE {c.width} {c.height} {c.fx!r} {c.fy!r} {c.cx!r} {c.cy!r}")
        w2c = np.linalg.inv(c.c2w)
        q, t = _rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3]
        name = Path(c.file_path).name if c.file_path else f"{c.id}.png"
        img_lines += [f"{i} {' '.join(repr(float(v)) for v in q)} "
                      f"{' '.join(repr(float(v)) for v in t)} {i} {name}", ""]
    (folder / "cameras.txt").write_text("\n".join(cam_lines) + "\n")
    (folder / "images.txt").write_text("\n".join(img_lines) + "\n")
    return folder
