"""Synthetic radiance-field folders of imperfect captures (issue 15): the
object of :mod:`invpbr.testing.fields` photographed with a different exposure
and white balance per photo and with transient occluders (person-sized
blobs) in some photos, as NeRF-W's photo collections are; the clean truth of
the held-out views is kept beside them (tests/test_field_options.py)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from .fields import look_at_camera, object_scene, sphere_views

#: Exposure changes are drawn uniformly within +- this many stops.
EXPOSURE_STOPS = 1.0
#: Std of each channel's log gain (white balance), natural log.
WHITE_BALANCE = 0.15


def render_clean(cameras, *, kind: str = "simple", spp: int = 16) -> list[np.ndarray]:
    """Mitsuba's linear renders of the synthetic object from ``cameras``."""
    import mitsuba as mi

    from invpbr.capture.cameras import to_mitsuba_sensor

    scene = mi.load_dict(object_scene(kind))
    integrator = mi.load_dict({"type": "path", "max_depth": 6})
    out = []
    for i, cam in enumerate(cameras):
        sensor = mi.load_dict(to_mitsuba_sensor(cam) | {
            "sampler": {"type": "independent", "sample_count": spp}})
        out.append(np.array(mi.render(scene, sensor=sensor, integrator=integrator, spp=spp,
                                      seed=i), np.float32))
    return out


def capture_gains(n: int, fitted: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) linear gains: an exposure uniform within +- EXPOSURE_STOPS and a
    white balance (log-normal, WHITE_BALANCE) per photo, with geometric mean 1
    over the first ``fitted`` photos per channel (the gauge a fit with
    per-photo appearance keeps: its neutral appearance is their mean)."""
    log_gain = (rng.uniform(-EXPOSURE_STOPS, EXPOSURE_STOPS, (n, 1)) * math.log(2.0)
                + rng.normal(0.0, WHITE_BALANCE, (n, 3)))
    log_gain -= log_gain[:fitted].mean(axis=0, keepdims=True)
    return np.exp(log_gain)


def add_blob(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A person-sized occluder: an opaque ellipse about a quarter of the
    image wide and half of it high, of a random colour, at a random place;
    the image with it and its mask."""
    h, w = image.shape[:2]
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.3, 0.8) * h
    rx, ry = rng.uniform(0.1, 0.15) * w, rng.uniform(0.2, 0.3) * h
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 < 1.0
    out = image.copy()
    out[inside] = rng.uniform(0.0, 1.0, 3)
    return out, inside


def make_capture_folder(folder: str | Path, *, size: int = 24, views: int = 24,
                        held_out: int = 3, spp: int = 16, kind: str = "simple",
                        distance: float = 2.2, fov_deg: float = 40.0, transients: float = 1 / 3,
                        appearance: bool = True, seed: int = 0, toml_extra: str = "") -> Path:
    """A field folder of the synthetic object whose photos have per-photo
    gains (``appearance``: exposure and white balance, see
    :func:`capture_gains`) and transient blobs (in a ``transients`` fraction
    of the fitted photos; none in the held-out ones), as 8-bit PNGs;
    ``truth/<id>.exr`` holds each view's clean linear render (gain 1, no
    blob), ``truth/<id>_transient.png`` the mask of its blob, and
    ``transforms_truth.json`` each frame's ``gain`` and whether it has a
    ``transient``."""
    from invpbr.capture import images
    from invpbr.capture.cameras import write_transforms

    folder = Path(folder)
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    (folder / "truth").mkdir(parents=True, exist_ok=True)
    n = views + held_out
    cams = [look_at_camera(f"view_{i:02d}", p, [0.0, 0.0, 0.0], size=size, fov_deg=fov_deg)
            for i, p in enumerate(sphere_views(n, distance=distance, seed=seed))]
    cams = [replace(c, file_path=folder / "photos" / f"{c.id}.png") for c in cams]
    rng = np.random.default_rng(seed + 1)
    gains = capture_gains(n, views, rng) if appearance else np.ones((n, 3))
    occluded = set(rng.choice(views, int(round(transients * views)), replace=False).tolist())
    extra = {}
    for i, (cam, clean) in enumerate(zip(cams, render_clean(cams, kind=kind, spp=spp))):
        photo = clean * gains[i].astype(np.float32)
        if i in occluded:
            photo, blob = add_blob(photo, rng)
            images.save_image(folder / "truth" / f"{cam.id}_transient.png",
                              np.repeat(blob[..., None], 3, -1).astype(np.float32))
        images.save_image(folder / "photos" / f"{cam.id}.png", photo)
        images.save_image(folder / "truth" / f"{cam.id}.exr", clean)
        extra[cam.id] = {"gain": gains[i].tolist(), "transient": i in occluded}
    write_transforms(folder / "transforms.json", cams)
    write_transforms(folder / "transforms_truth.json", cams, extra=extra)
    ids = ", ".join(f'"{c.id}"' for c in cams[views:])
    (folder / "invpbr.toml").write_text(
        '[cameras]\nfile = "transforms.json"\n\n[field]\n' + toml_extra
        + f"\n[evaluate]\nheld_out = [{ids}]\n")
    return folder


def with_field_settings(folder: Path, settings: str, out: Path, tail: str = "") -> Path:
    """A copy of ``folder``'s invpbr.toml with ``settings`` added to its
    ``[field]`` table (and ``tail``, further tables, at its end), in a new
    folder ``out`` that links to the photos."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("photos", "truth"):
        if (out / name).is_symlink():
            (out / name).unlink()
        if (Path(folder) / name).exists():
            (out / name).symlink_to(Path(folder).resolve() / name)
    for name in ("transforms.json", "transforms_truth.json"):
        if not (Path(folder) / name).is_file():
            continue
        data = json.loads((Path(folder) / name).read_text())
        (out / name).write_text(json.dumps(data))
    text = (Path(folder) / "invpbr.toml").read_text().replace("[field]\n", "[field]\n" + settings,
                                                               1)
    (out / "invpbr.toml").write_text(text + tail)
    return out


def fit_with_settings(folder: Path, settings: str, out: Path, tail: str = ""):
    """(problem, result) of fitting :func:`with_field_settings`' folder."""
    from .. import load_problem, optimize

    problem = load_problem(with_field_settings(folder, settings, out, tail))
    return problem, optimize(problem, progress=False)


# -- a moving object (field.time) ----------------------------------------------------------------


def moving_scene(t: float) -> dict:
    """The Mitsuba scene at time ``t`` in [0, 1]: the textured sphere of
    :func:`~invpbr.testing.fields.object_scene` moving along x (rigid), and a
    red box growing in height (deformation), under the sky."""
    import mitsuba as mi

    T = mi.ScalarTransform4f
    scene = object_scene("simple")
    scene["textured"] = scene["textured"] | {"center": [-0.45 + 0.7 * t, 0.0, 0.1],
                                             "radius": 0.35}
    scene["box"] = {"type": "cube", "to_world": T().translate([0.3, -0.4 + 0.3 * t, -0.35])
                    .scale([0.2, 0.1 + 0.3 * t, 0.2]),
                    "bsdf": {"type": "diffuse", "reflectance": {"type": "rgb",
                                                                "value": [0.8, 0.15, 0.1]}}}
    return scene


def make_moving_folder(folder: str | Path, *, size: int = 24, views: int = 30, held_out: int = 4,
                       spp: int = 16, distance: float = 2.4, fov_deg: float = 45.0,
                       seed: int = 0, toml_extra: str = "") -> Path:
    """A field folder of a moving object (:func:`moving_scene`): photo i at
    time i / (n - 1) from camera positions spread around it (one photo per
    moment, D-NeRF style); every ``n // held_out``-th photo from the second
    on is held out; transforms.json frames carry ``time``."""
    import mitsuba as mi

    from invpbr.capture import images
    from invpbr.capture.cameras import to_mitsuba_sensor, write_transforms

    folder = Path(folder)
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    n = views + held_out
    cams = [look_at_camera(f"view_{i:02d}", p, [0.0, 0.0, 0.0], size=size, fov_deg=fov_deg)
            for i, p in enumerate(sphere_views(n, distance=distance, seed=seed,
                                               min_elevation=0.0))]
    cams = [replace(c, file_path=folder / "photos" / f"{c.id}.png") for c in cams]
    integrator = mi.load_dict({"type": "path", "max_depth": 4})
    times = {}
    for i, cam in enumerate(cams):
        t = i / (n - 1)
        sensor = mi.load_dict(to_mitsuba_sensor(cam) | {
            "sampler": {"type": "independent", "sample_count": spp}})
        image = np.array(mi.render(mi.load_dict(moving_scene(t)), sensor=sensor,
                                   integrator=integrator, spp=spp, seed=i), np.float32)
        images.save_image(folder / "photos" / f"{cam.id}.png", image)
        times[cam.id] = {"time": t}
    write_transforms(folder / "transforms.json", cams, extra=times)
    step = n // held_out
    ids = ", ".join(f'"{c.id}"' for c in cams[1::step][:held_out])
    (folder / "invpbr.toml").write_text(
        '[cameras]\nfile = "transforms.json"\n\n[field]\n' + toml_extra
        + f"\n[evaluate]\nheld_out = [{ids}]\n")
    return folder
