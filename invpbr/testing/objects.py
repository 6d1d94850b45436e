"""A synthetic object capture for ``[reconstruct]``: a procedural non-convex,
textured, somewhat glossy object under a procedural sky, photographed from
cameras around it, with masks, a transforms.json and a truth (mesh, truth.xml,
a second sky for relighting).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import procedural


def dented_object(subdivisions: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A closed, smooth, non-convex mesh (radius about 1): an icosphere with
    two bumps and three dents (concavities a visual hull cannot see)."""
    v, f = procedural.icosphere(subdivisions)
    d = np.array([[0.3, 1.0, 0.2], [-0.8, -0.3, 0.5], [0.9, -0.2, -0.4],
                  [-0.2, 0.1, -1.0], [0.1, -1.0, 0.3]], np.float64)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    w = np.array([0.35, 0.25, -0.22, -0.25, -0.2])
    sharp = np.array([4.0, 5.0, 9.0, 8.0, 9.0])
    cos = v.astype(np.float64) @ d.T
    radius = 1.0 + (w * np.exp(sharp * (cos - 1.0))).sum(axis=1)
    v = v * radius[:, None] * np.array([1.0, 0.85, 1.0])  # a little squashed
    return v.astype(np.float32), f.astype(np.int64)


def object_material(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Base colour (N, 3) and roughness (N,) of the object: smooth colour
    patches and stripes, roughness varying between 0.25 and 0.55."""
    x, y, z = (v[:, i].astype(np.float64) for i in range(3))
    a = 0.5 + 0.5 * np.sin(3.0 * x + 1.0) * np.cos(2.0 * z)
    stripes = 0.5 + 0.5 * np.tanh(4.0 * np.sin(5.0 * y))
    c0, c1, c2 = np.array([0.75, 0.25, 0.1]), np.array([0.15, 0.45, 0.7]), np.array([0.85, 0.8, 0.6])
    col = (a[:, None] * c0 + (1 - a[:, None]) * c1) * (1 - 0.5 * stripes[:, None]) \
        + 0.5 * stripes[:, None] * c2
    rough = 0.4 + 0.15 * np.sin(2.0 * x + 3.0 * z)
    return col.astype(np.float32), rough.astype(np.float32)


def ring_cameras(n: int, size: int, *, distance: float = 4.2, fov: float = 42.0,
                 seed: int = 0, prefix: str = "view"):
    """``n`` cameras on a sphere around the origin (elevations -25..65 degrees,
    Fibonacci-spread azimuths), looking at it."""
    from ..capture.cameras import Camera

    cams = []
    golden = np.pi * (3 - np.sqrt(5))
    for i in range(n):
        t = (i + 0.5) / n
        elev = np.radians(-25 + 90 * t)
        az = i * golden + seed
        eye = distance * np.array([np.cos(elev) * np.cos(az), np.sin(elev), np.cos(elev) * np.sin(az)])
        z = -eye / np.linalg.norm(eye)
        x = np.cross(z, [0.0, 1.0, 0.0])
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
        fx = 0.5 * size / np.tan(np.radians(fov) / 2)
        cams.append(Camera(id=f"{prefix}_{i:02d}", width=size, height=size, fx=fx, fy=fx,
                           cx=size / 2, cy=size / 2, c2w=c2w,
                           file_path=Path(f"photos/{prefix}_{i:02d}.png")))
    return cams


def truth_xml(max_depth: int = 2) -> str:
    return f"""<scene version="3.0.0">
  <integrator type="path"><integer name="max_depth" value="{max_depth}"/></integrator>
  <shape type="ply" id="object">
    <string name="filename" value="truth_mesh.ply"/>
    <bsdf type="principled">
      <texture type="mesh_attribute" name="base_color"><string name="name" value="vertex_color"/></texture>
      <texture type="mesh_attribute" name="roughness"><string name="name" value="vertex_roughness"/></texture>
      <float name="specular" value="0.5"/>
    </bsdf>
  </shape>
  <emitter type="envmap" id="light"><string name="filename" value="truth_sky.exr"/></emitter>
</scene>
"""


def write_object_capture(folder: str | Path, *, views: int = 24, held_out: int = 4,
                         size: int = 96, spp: int = 128, subdivisions: int = 5,
                         iterations: int | None = None) -> Path:
    """Write a ``[reconstruct]`` scene folder: photos/ (sRGB PNG), masks/ (PNG),
    transforms.json, invpbr.toml, truth_mesh.ply, truth.xml, truth_sky.exr and
    relight_sky.exr; ``views`` fitted photos plus ``held_out`` ones."""
    import drjit as dr
    import mitsuba as mi

    from ..capture import images
    from ..capture.cameras import write_transforms
    from ..reconstruct.scene import object_mesh, object_scene

    folder = Path(folder)
    v, f = dented_object(subdivisions)
    col, rough = object_material(v)
    sky = procedural.sky_envmap(128, 64, sun_direction=(0.5, 0.8, 0.3), sun_intensity=15.0,
                                sun_radius_deg=8.0)
    relight = procedural.sky_envmap(128, 64, sun_direction=(-0.6, 0.4, -0.5), sun_intensity=12.0,
                                    sun_radius_deg=10.0, zenith_color=(0.5, 0.35, 0.3),
                                    horizon_color=(0.9, 0.7, 0.5), ground_color=(0.2, 0.25, 0.3))
    cams = ring_cameras(views, size) + ring_cameras(held_out, size, seed=1, prefix="test")
    mesh = object_mesh(v, f, col, rough, smooth=False)  # (as the shipped photos were made)
    scene = object_scene(mesh, cams, sky, max_depth=2)
    sil = object_scene(object_mesh(v, f, col, rough, emitter=True), cams, None)
    with dr.suspend_grad():
        for i, cam in enumerate(cams):
            img = np.array(mi.render(scene, sensor=i, spp=spp, seed=i))[..., :3]
            cover = np.array(mi.render(sil, sensor=i, spp=spp, seed=i))[..., 0]
            images.save_image(folder / "photos" / f"{cam.id}.png", img)
            images.save_image(folder / "masks" / f"{cam.id}.png",
                              (cover > 0.5).astype(np.float32))
    from dataclasses import replace

    write_transforms(folder / "transforms.json",
                     [replace(c, file_path=folder / "photos" / f"{c.id}.png") for c in cams])
    mesh.write_ply(str(folder / "truth_mesh.ply"))
    procedural.write_exr(folder / "truth_sky.exr", sky)
    procedural.write_exr(folder / "relight_sky.exr", relight)
    (folder / "truth.xml").write_text(truth_xml())
    held = ", ".join(f'"{c.id}"' for c in cams[views:])
    extra = f"iterations = {iterations}\n" if iterations is not None else ""
    (folder / "invpbr.toml").write_text(
        "# A synthetic object capture (scenes/make_scenes.py): reconstruct mesh, material and\n"
        "# light from the photos, masks and cameras alone; truth_mesh.ply and truth.xml score it.\n"
        f'[cameras]\nfile = "transforms.json"\n\n[reconstruct]\n{extra}\n'
        f'[evaluate]\nheld_out = [{held}]\ntruth_mesh = "truth_mesh.ply"\n'
        'relight = ["relight_sky.exr"]\n')
    return folder
