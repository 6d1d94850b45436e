"""Mitsuba scene files as invpbr loads them: bitmaps as differentiable floats,
shapes never merged, sensors replaceable by a camera file's."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


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
