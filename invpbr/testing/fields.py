"""Synthetic radiance-field folders: an object rendered by Mitsuba from views
around it, 8-bit photos, a transforms.json and an invpbr.toml with
``[field]`` (tests, scenes/make_scenes.py, benchmarks/fields.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def look_at_camera(cam_id: str, origin, target, *, size: int, fov_deg: float):
    """An OpenCV pinhole :class:`~invpbr.capture.cameras.Camera` at ``origin``
    looking at ``target`` (+Y up)."""
    from invpbr.capture.cameras import Camera

    origin, target = np.asarray(origin, float), np.asarray(target, float)
    f = target - origin
    f /= np.linalg.norm(f)
    right = np.cross(f, [0.0, 1.0, 0.0])
    if np.linalg.norm(right) < 1e-6:
        right = np.cross(f, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, f, origin
    focal = 0.5 * size / np.tan(np.radians(fov_deg) / 2)
    return Camera(id=cam_id, width=size, height=size, fx=focal, fy=focal, cx=size / 2,
                  cy=size / 2, c2w=c2w, file_path=Path("photos") / f"{cam_id}.png")


def sphere_views(n: int, *, distance: float, seed: int = 0, min_elevation: float = -20.0):
    """``n`` camera positions spread over a sphere (Fibonacci lattice, elevations
    above ``min_elevation`` degrees), shuffled with ``seed``."""
    k = np.arange(n) + 0.5
    lo = np.sin(np.radians(min_elevation))
    y = lo + (1 - lo) * k / n
    phi = k * np.pi * (3 - np.sqrt(5))
    r = np.sqrt(1 - y * y)
    pts = np.stack([r * np.sin(phi), y, r * np.cos(phi)], -1) * distance
    return pts[np.random.default_rng(seed).permutation(n)]


def sky_bitmap(height: int = 32):
    """A sky: a blue-white gradient over a brown ground (linear RGB, lat-long)."""
    import mitsuba as mi

    v = (np.arange(height) + 0.5) / height
    horizon = np.clip((0.5 - v) * 2, 0, 1)[:, None]
    sky = (1 - horizon) * np.array([0.9, 0.9, 0.85]) + horizon * np.array([0.35, 0.55, 0.95])
    ground = np.array([0.25, 0.2, 0.15])
    rows = np.where((v < 0.5)[:, None], sky, ground)
    img = np.repeat(rows[:, None, :], 2 * height, axis=1).astype(np.float32)
    return mi.Bitmap(img)


def checker(size: int = 64, tiles: int = 8):
    import mitsuba as mi

    ij = (np.arange(size) * tiles // size)
    board = ((ij[:, None] + ij[None, :]) % 2).astype(np.float32)
    img = np.stack([0.15 + 0.7 * board, 0.2 + 0.3 * board, 0.6 - 0.4 * board], -1)
    return mi.Bitmap(img.astype(np.float32))


def object_scene(kind: str = "object", sky: float | None = None) -> dict:
    """The Mitsuba scene of the synthetic object (without sensors): a
    textured diffuse sphere, a glossy metal sphere and a plastic cube on a
    small diffuse base, under a sky and an area light; ``kind = "simple"``:
    one diffuse textured sphere under the sky. ``sky``: a constant sky of
    that linear value instead of the gradient (its horizon is sharper than a
    learned background can follow)."""
    import mitsuba as mi

    T = mi.ScalarTransform4f
    scene = {"type": "scene",
             "sky": ({"type": "envmap", "bitmap": sky_bitmap(), "scale": 1.0} if sky is None
                     else {"type": "constant", "radiance": {"type": "rgb", "value": sky}}),
             "textured": {"type": "sphere", "center": [-0.35, 0.0, 0.1], "radius": 0.4,
                          "bsdf": {"type": "diffuse", "reflectance": {
                              "type": "bitmap", "bitmap": checker(), "filter_type": "bilinear"}}}}
    if kind == "simple":
        return scene
    scene |= {
        "metal": {"type": "sphere", "center": [0.4, -0.1, -0.25], "radius": 0.3,
                  "bsdf": {"type": "roughconductor", "material": "Au", "alpha": 0.15}},
        "plastic": {"type": "cube", "to_world": T().translate([0.35, -0.15, 0.45])
                    .rotate([0, 1, 0], 30).scale(0.2),
                    "bsdf": {"type": "roughplastic", "alpha": 0.1,
                             "diffuse_reflectance": {"type": "rgb", "value": [0.8, 0.15, 0.1]}}},
        "base": {"type": "cylinder", "p0": [0, -0.45, 0], "p1": [0, -0.35, 0], "radius": 0.75,
                 "bsdf": {"type": "diffuse", "reflectance": {"type": "rgb",
                                                             "value": [0.6, 0.6, 0.55]}}},
        "lamp": {"type": "rectangle", "to_world": T().look_at(origin=[1.0, 2.0, 1.0],
                                                              target=[0, 0, 0], up=[0, 1, 0])
                 .scale(0.5),
                 "emitter": {"type": "area", "radiance": {"type": "rgb", "value": [6, 6, 5]}}},
    }
    return scene


def make_field_folder(folder: str | Path, *, size: int = 64, views: int = 40, held_out: int = 8,
                      spp: int = 256, kind: str = "object", distance: float = 3.2,
                      fov_deg: float = 40.0, seed: int = 0, toml_extra: str = "",
                      sky: float | None = None) -> Path:
    """Render the synthetic object into ``folder``: photos/<id>.png (8-bit
    sRGB), transforms.json, invpbr.toml (``[field]``, the last ``held_out``
    views held out), and truth/<id>.exr (the noise-free linear renders are
    not made; the photos are Mitsuba's with ``spp`` samples)."""
    import mitsuba as mi

    from invpbr.capture import images
    from invpbr.capture.cameras import to_mitsuba_sensor, write_transforms

    folder = Path(folder)
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    scene = mi.load_dict(object_scene(kind, sky))
    integrator = mi.load_dict({"type": "path", "max_depth": 6})
    cams = [look_at_camera(f"view_{i:02d}", p, [0.0, 0.0, 0.0], size=size, fov_deg=fov_deg)
            for i, p in enumerate(sphere_views(views + held_out, distance=distance, seed=seed))]
    for i, cam in enumerate(cams):
        sensor = mi.load_dict(to_mitsuba_sensor(cam) | {
            "sampler": {"type": "independent", "sample_count": spp}})
        image = np.array(mi.render(scene, sensor=sensor, integrator=integrator, spp=spp,
                                   seed=i), np.float32)
        images.save_image(folder / "photos" / f"{cam.id}.png", image)
    from dataclasses import replace

    cams = [replace(c, file_path=folder / "photos" / f"{c.id}.png") for c in cams]
    write_transforms(folder / "transforms.json", cams)
    ids = ", ".join(f'"{c.id}"' for c in cams[views:])
    (folder / "invpbr.toml").write_text(
        '[cameras]\nfile = "transforms.json"\n\n[field]\n' + toml_extra
        + f"\n[evaluate]\nheld_out = [{ids}]\n")
    return folder
