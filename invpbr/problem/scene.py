"""Mitsuba scene files as invpbr loads them: bitmaps as differentiable floats,
shapes never merged, sensors replaceable by a camera file's."""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

#: Analytic shapes that invpbr can load as plain meshes of the same geometry,
#: normals and texture coordinates (see :func:`mesh_analytic_shapes`).
MESHABLE = ("rectangle",)


def parse_xml(path: Path) -> ET.ElementTree:
    """The XML tree of ``path``; malformed XML is a ValueError naming the file."""
    try:
        return ET.parse(path)
    except ET.ParseError as e:
        raise ValueError(f"{path}: malformed XML: {e}") from None


def scene_text(path: Path, sensors: list[ET.Element] | None = None,
                       bitmap_format: str = "variant") -> str:
    """scene XML text with every bitmap texture stored in the variant's float
    format (or ``bitmap_format``, e.g. ``float16``), so that 8-bit PNG/JPEG
    textures are differentiable; with ``sensors``, those replace the file's
    sensors."""
    tree = parse_xml(path)
    if sensors is not None:
        root = tree.getroot()
        for old in root.findall("sensor"):
            root.remove(old)
        for new in sensors:
            root.append(new)
    for tex in tree.getroot().iter("texture"):
        if tex.get("type") != "bitmap":
            continue
        if not any(child.get("name") == "format" for child in tex):
            ET.SubElement(tex, "string", {"name": "format", "value": bitmap_format})
    return ET.tostring(tree.getroot(), encoding="unicode")


def load_scene(path: str | Path, *, sensors: list[ET.Element] | None = None,
               bitmap_format: str = "variant"):
    """Load a Mitsuba scene file, bitmap textures as differentiable floats.

    Relative file names in the XML resolve against the file's folder. Shapes
    are never merged, so every shape keeps its own ``mi.traverse`` keys.
    ``sensors`` (XML ``<sensor>`` elements, see
    :func:`invpbr.capture.frames.sensor_element`) replace the file's sensors;
    ``bitmap_format`` is the storage of bitmaps that do not set their own
    (``variant``: float32 here; ``float16``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: malformed XML or a scene Mitsuba rejects (its message is kept).
    """
    import mitsuba as mi

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scene file")
    return load_scene_text(scene_text(path, sensors, bitmap_format), path)


def load_scene_text(text: str, path: Path):
    """Load scene XML ``text`` as the file ``path`` (relative file names resolve
    against its folder; Mitsuba's errors name it)."""
    import mitsuba as mi

    resolver = mi.file_resolver()
    saved = [resolver[i] for i in range(len(resolver))]
    resolver.prepend(str(path.parent.resolve()))
    try:
        # optimize=False: Mitsuba would otherwise merge shapes whose BSDFs have
        # equal values into one mesh, and their parameter keys would vanish.
        return mi.load_string(text, optimize=False)
    except Exception as e:
        raise ValueError(f"{path}: Mitsuba cannot load this scene: {e}") from None
    finally:
        resolver.clear()
        for p in saved:
            resolver.append(p)


def scene_of_sensors(sensors: list[ET.Element]):
    """A Mitsuba scene holding only ``sensors`` (XML ``<sensor>`` elements), for
    problems without a scene.xml."""
    import mitsuba as mi

    return mi.load_string(sensors_text(sensors), optimize=False)


def sensors_text(sensors: list[ET.Element]) -> str:
    """The XML of a scene of ``sensors`` alone."""
    root = ET.Element("scene", {"version": "3.0.0"})
    for sensor in sensors:
        root.append(sensor)
    return ET.tostring(root, encoding="unicode")


def mesh_analytic_shapes(text: str, path: Path) -> tuple[object, list[str]]:
    """Load scene XML ``text`` (as the file ``path``) with every analytic
    ``rectangle`` replaced by a PLY mesh of the same vertices, normals, texture
    coordinates, transform, BSDF and emitter; the scene and the ids of the
    shapes replaced.

    Why: when geometry moves (camera refinement moves every shape), Mitsuba
    3.9.1's projective integrators differentiate an analytic rectangle moved out
    of its plane wrongly (its ``to_world`` derivative: image-sum 91 by AD vs 65
    by finite differences in ``invpbr.testing.discontinuities``'
    ``rectangle_out_of_plane``), and the same mesh moved through its
    ``vertex_positions`` rightly (65.1 vs 65.4; tests/test_discontinuities.py).
    Its parameters become ``<id>.vertex_positions`` (and ``faces``, ...)
    instead of ``<id>.to_world``.
    """
    import mitsuba as mi

    root = ET.fromstring(text)
    found = [(parent, child) for parent in root.iter() for child in parent
             if child.tag == "shape" and child.get("type") in MESHABLE]
    if not found:
        return load_scene_text(text, path), []
    with tempfile.TemporaryDirectory(prefix="invpbr_meshed_") as tmp:
        ply = Path(tmp) / "rectangle.ply"
        mi.load_dict({"type": "rectangle"}).write_ply(str(ply))
        names = []
        for n, (_, shape) in enumerate(found):
            names.append(shape.get("id") or f"rectangle #{n + 1}")
            shape.set("type", "ply")
            ET.SubElement(shape, "string", {"name": "filename", "value": str(ply)})
        return load_scene_text(ET.tostring(root, encoding="unicode"), path), names
