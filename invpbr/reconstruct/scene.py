"""The Mitsuba scene of a reconstructed object: one mesh with per-vertex
principled material (base colour and roughness as mesh attributes), lit by an
environment map, seen by the photos' cameras with RGBA films (alpha: coverage).
"""

from __future__ import annotations

import numpy as np

from ..capture.cameras import Camera, to_mitsuba_sensor

#: The mesh's id in the scene (keys ``object.vertex_positions``, ``object.vertex_color``...).
OBJECT = "object"
#: The environment map's id (key ``light.data``).
LIGHT = "light"
#: The principled BSDF's specular (Fresnel at normal incidence 4 %), not estimated.
SPECULAR = 0.5


def object_mesh(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray,
                roughness: np.ndarray, *, emitter: bool = False, smooth: bool = True):
    """A ``mi.Mesh`` with the principled BSDF reading its vertex attributes
    ``vertex_color`` (linear RGB, (N, 3)) and ``vertex_roughness`` ((N,)); with
    ``emitter`` instead a white area light and no BSDF response (a silhouette).

    ``smooth``: shading normals interpolated from vertex normals (Mitsuba
    recomputes them, differentiably, whenever the vertices change); without,
    each triangle is shaded flat, and a glossy object of a few thousand
    triangles shows its facets in every highlight."""
    import mitsuba as mi

    v = np.ascontiguousarray(vertices, np.float32).reshape(-1, 3)
    f = np.ascontiguousarray(faces, np.uint32).reshape(-1, 3)
    props = mi.Properties()
    if emitter:
        props["bsdf"] = mi.load_dict({"type": "diffuse", "reflectance": 0.0})
        props["emitter"] = mi.load_dict({"type": "area", "radiance": 1.0})
    else:
        props["bsdf"] = mi.load_dict({
            "type": "principled", "specular": SPECULAR,
            "base_color": {"type": "mesh_attribute", "name": "vertex_color"},
            "roughness": {"type": "mesh_attribute", "name": "vertex_roughness"}})
    mesh = mi.Mesh(OBJECT, len(v), len(f), props=props, has_vertex_normals=smooth and not emitter)
    params = mi.traverse(mesh)
    params["vertex_positions"] = mi.Float(v.ravel())
    params["faces"] = mi.UInt32(f.ravel())
    params.update()
    mesh.add_attribute("vertex_color", 3, mi.Float(np.ascontiguousarray(colors, np.float32).ravel()))
    mesh.add_attribute("vertex_roughness", 1,
                       mi.Float(np.ascontiguousarray(roughness, np.float32).ravel()))
    return mesh


def camera_sensor(camera: Camera, *, sample_border: bool = True) -> dict:
    """A perspective sensor of ``camera`` with an RGBA film (alpha: coverage)."""
    sensor = to_mitsuba_sensor(camera, allow_distortion=True)
    sensor["film"].update(pixel_format="rgba", sample_border=sample_border,
                          rfilter={"type": "box"})
    return sensor


def envmap_emitter(texels: np.ndarray) -> dict:
    """An ``envmap`` emitter dict of linear RGB texels (H, W, 3)."""
    import mitsuba as mi

    return {"type": "envmap", "id": LIGHT,
            "bitmap": mi.Bitmap(np.ascontiguousarray(texels, np.float32))}


def object_scene(mesh, cameras: list[Camera], envmap: np.ndarray | None, *, max_depth: int = 2):
    """A scene of ``mesh`` seen by ``cameras``, lit by ``envmap`` texels (None:
    no light), with a path integrator of ``max_depth``."""
    import mitsuba as mi

    scene = {"type": "scene", OBJECT: mesh,
             "integrator": {"type": "path", "max_depth": int(max_depth)}}
    for i, cam in enumerate(cameras):
        scene[f"sensor_{i}"] = camera_sensor(cam)
    if envmap is not None:
        scene[LIGHT] = envmap_emitter(envmap)
    return mi.load_dict(scene, optimize=False)
