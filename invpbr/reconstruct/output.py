"""A reconstruction written as a result folder that plain Mitsuba loads::

    out/<name>/
      scene.xml              the object (principled BSDF with textures) under its envmap,
                             seen by the photos' cameras
      meshes/object.ply      the mesh with a UV atlas (xatlas)
      textures/base_color.exr, textures/roughness.exr   baked from the per-vertex material
      envmaps/light.exr      the estimated environment map
      meshes/hull.ply        the visual hull (for comparison)
      result.json            figures of the hull and of the result, stages, timings
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .fit import ObjectState
from .scene import SPECULAR


def uv_atlas(vertices: np.ndarray, faces: np.ndarray):
    """An xatlas UV atlas: (vertex index into the input per new vertex, new faces, uvs (M, 2))."""
    try:
        import xatlas
    except ImportError:
        raise ImportError("baking textures needs the xatlas package: pip install xatlas") from None
    vmap, new_faces, uvs = xatlas.parametrize(np.asarray(vertices, np.float32),
                                              np.asarray(faces, np.uint32))
    return np.asarray(vmap, np.int64), np.asarray(new_faces, np.int64), np.asarray(uvs, np.float64)


def bake(uvs: np.ndarray, faces: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Per-vertex ``values`` (M, C) interpolated over the UV triangles into a
    (size, size, C) texture (row 0 at v = 0), the empty texels filled with the
    nearest baked one (so that filtering across seams finds no black)."""
    from scipy.ndimage import distance_transform_edt

    c = values.shape[1]
    tex = np.zeros((size, size, c), np.float32)
    filled = np.zeros((size, size), bool)
    pix = uvs * size - 0.5  # texel centres at integers
    for tri in faces:
        p = pix[tri]
        x0, y0 = np.floor(p.min(axis=0)).astype(int)
        x1, y1 = np.ceil(p.max(axis=0)).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size - 1), min(y1, size - 1)
        if x1 < x0 or y1 < y0:
            continue
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
        q = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
        m = np.array([p[1] - p[0], p[2] - p[0]]).T
        det = np.linalg.det(m)
        if abs(det) < 1e-12:
            continue
        ab = np.linalg.solve(m, (q - p[0]).T).T
        w = np.column_stack([1 - ab.sum(axis=1), ab])
        inside = (w >= -1e-3).all(axis=1)
        if not inside.any():
            continue
        qi = q[inside].astype(int)
        tex[qi[:, 1], qi[:, 0]] = w[inside] @ values[tri]
        filled[qi[:, 1], qi[:, 0]] = True
    if filled.any() and not filled.all():
        _, (iy, ix) = distance_transform_edt(~filled, return_indices=True)
        tex = tex[iy, ix]
    return tex


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Mitsuba's vertex normals of a mesh (N, 3), as it shades the fitted object."""
    import mitsuba as mi

    mesh = mi.Mesh("normals", len(vertices), len(faces), has_vertex_normals=True)
    params = mi.traverse(mesh)
    params["vertex_positions"] = mi.Float(np.asarray(vertices, np.float32).ravel())
    params["faces"] = mi.UInt32(np.asarray(faces, np.uint32).ravel())
    params.update()
    return np.array(params["vertex_normals"]).reshape(-1, 3)


def _mesh_with_uvs(path: Path, vertices, faces, uvs, normals=None) -> None:
    """The mesh with UVs (and the unsplit mesh's vertex normals: no shading seam
    where the atlas cuts it) as a PLY file."""
    import mitsuba as mi

    mesh = mi.Mesh("object", len(vertices), len(faces), has_vertex_texcoords=True,
                   has_vertex_normals=normals is not None)
    params = mi.traverse(mesh)
    params["vertex_positions"] = mi.Float(np.asarray(vertices, np.float32).ravel())
    params["faces"] = mi.UInt32(np.asarray(faces, np.uint32).ravel())
    params["vertex_texcoords"] = mi.Float(np.asarray(uvs, np.float32).ravel())
    params.update()
    if normals is not None:  # (after the positions: their update recomputes normals)
        params["vertex_normals"] = mi.Float(np.asarray(normals, np.float32).ravel())
        params.update()
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.write_ply(str(path))


def scene_xml(cameras: list, *, max_depth: int) -> str:
    """The result scene's XML (files relative to the folder)."""
    from ..capture.frames import sensor_element

    root = ET.Element("scene", version="3.0.0")
    ET.SubElement(ET.SubElement(root, "integrator", type="path"), "integer",
                  name="max_depth", value=str(max_depth))
    shape = ET.SubElement(root, "shape", type="ply", id="object")
    ET.SubElement(shape, "string", name="filename", value="meshes/object.ply")
    bsdf = ET.SubElement(shape, "bsdf", type="principled", id="material")
    for name, file in (("base_color", "textures/base_color.exr"),
                       ("roughness", "textures/roughness.exr")):
        tex = ET.SubElement(bsdf, "texture", type="bitmap", name=name)
        ET.SubElement(tex, "string", name="filename", value=file)
        ET.SubElement(tex, "boolean", name="raw", value="true")
    ET.SubElement(bsdf, "float", name="specular", value=str(SPECULAR))
    light = ET.SubElement(root, "emitter", type="envmap", id="light")
    ET.SubElement(light, "string", name="filename", value="envmaps/light.exr")
    for cam in cameras:
        root.append(sensor_element(cam, None))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def write_object(folder: Path, state: ObjectState, cameras: list, *, max_depth: int,
                 texture_resolution: int) -> dict[str, str]:
    """The object as scene.xml + mesh + baked textures + envmap in ``folder``."""
    from ..capture import images

    vmap, faces, uvs = uv_atlas(state.vertices, state.faces)
    normals = vertex_normals(state.vertices, state.faces)
    _mesh_with_uvs(folder / "meshes" / "object.ply", state.vertices[vmap], faces, uvs,
                   normals[vmap])
    size = int(texture_resolution)
    base = bake(uvs, faces, state.colors[vmap], size)
    rough = bake(uvs, faces, state.roughness[vmap][:, None], size)
    images.save_image(folder / "textures" / "base_color.exr", base)
    images.save_image(folder / "textures" / "roughness.exr", rough[..., 0])
    images.save_image(folder / "envmaps" / "light.exr", state.envmap)
    (folder / "scene.xml").write_text(scene_xml(cameras, max_depth=max_depth))
    from .scene import object_mesh

    object_mesh(state.vertices, state.faces, state.colors, state.roughness).write_ply(
        str(folder / "meshes" / "object_vertex_material.ply"))  # vertex_color, vertex_roughness
    return {"scene": "scene.xml", "mesh": "meshes/object.ply",
            "base_color": "textures/base_color.exr", "roughness": "textures/roughness.exr",
            "envmap": "envmaps/light.exr"}


def save_reconstruction(rec, folder: str | Path, cameras: list, *, max_depth: int | None = None,
                        texture_resolution: int | None = None) -> Path:
    """Write a :class:`~invpbr.reconstruct.pipeline.Reconstruction` as a result folder.

    Args:
        rec: the reconstruction.
        folder: the result folder (made).
        cameras: the sensors written into scene.xml (e.g. the problem's views' cameras).
        max_depth, texture_resolution: default: the run's ``[reconstruct]`` settings.
    """
    from ..estimates.meshes import write_ply

    cfg = rec.settings.get("reconstruct") or {}
    max_depth = int(cfg.get("max_depth", 2)) if max_depth is None else max_depth
    if texture_resolution is None:
        texture_resolution = int(cfg.get("texture_resolution", 512))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = write_object(folder, rec.state, cameras, max_depth=max_depth,
                         texture_resolution=texture_resolution)
    write_ply(folder / "meshes" / "hull.ply", rec.hull.vertices, rec.hull.faces)
    files["hull"] = "meshes/hull.ply"
    doc = {"name": rec.name, "kind": "reconstruction", "status": rec.status,
           "figures": rec.figures, "held_out": rec.held_out,
           # the result's figures, also where `invpbr batch` reads a run's errors
           "errors": dict(rec.figures.get("final", {})), "stages": rec.stages,
           "seconds": rec.seconds, "files": files, "warnings": rec.warnings,
           "mesh": {"vertices": int(len(rec.state.vertices)), "faces": int(len(rec.state.faces))},
           "settings": {"render": {"max_depth": max_depth}, "problem": rec.settings}}
    (folder / "result.json").write_text(json.dumps(doc, indent=2, default=_plain))
    return folder


def _plain(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, tuple):
        return list(x)
    return str(x)
