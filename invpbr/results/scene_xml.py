"""A result folder as a Mitsuba scene: the model's scene.xml with every estimate
written in, which plain ``mitsuba.load_file`` loads and renders.

The model's XML (as invpbr loaded it: sensors of a camera file included) is
kept in the result (:attr:`~invpbr.results.result.Result.scene_xml`). Saving
copies every file it refers to into ``assets/`` and asks each estimate's kind
to write itself in (:meth:`invpbr.estimates.Estimate.write_xml`).

Which XML element a ``mi.traverse`` key belongs to is found by Mitsuba
itself, not by guessing its naming rules (``brdf_0`` inside ``twosided``,
``bsdf_1`` inside ``blendbsdf``, a nested emitter named ``emitter`` whatever
its id): every nested object element gets a temporary id, the scene is
loaded once more, and a key's owner is the nearest object up Mitsuba's
hierarchy of the key's node that carries an id.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

#: Tags of XML elements that are Mitsuba objects (others hold plain values).
OBJECT_TAGS = ("bsdf", "emitter", "shape", "texture", "medium", "volume", "phase", "sensor",
               "film", "rfilter", "sampler", "integrator", "spectrum")

#: Prefix of the temporary ids given to nested objects.
TAG = "__invpbr_"


class SceneXML:
    """The model scene's XML tree, with the owner element of any key.

    Args:
        text: the scene XML.
        folder: the folder its relative file names resolve against.
    """

    def __init__(self, text: str, folder: Path | None = None):
        self.root = ET.fromstring(text)
        self.folder = folder
        self.by_id: dict[str, ET.Element] = {}
        n = 0
        for parent in self.root.iter():
            for child in parent:
                if child.tag not in OBJECT_TAGS or (child.tag == "spectrum" and child.get("value")):
                    continue
                if child.get("id") is None and parent is not self.root:
                    child.set("id", f"{TAG}{n}")
                    n += 1
                if child.get("id") is not None:
                    self.by_id.setdefault(child.get("id"), child)
        self._params = None

    def load(self):
        """``mi.traverse`` of the tagged scene (loaded on first use)."""
        if self._params is None:
            import mitsuba as mi

            from ..problem.scene import load_scene_text

            where = (self.folder or Path(".")) / "scene.xml"
            scene = load_scene_text(ET.tostring(self.root, encoding="unicode"), where)
            self._params = (scene, mi.traverse(scene))
        return self._params[1]

    def find_id(self, object_id: str) -> ET.Element | None:
        return self.by_id.get(object_id)

    def owner(self, key: str) -> tuple[ET.Element, str] | None:
        """The XML element of the object that owns ``key`` and the rest of the
        key below it (``"base_color.value"``, ``"data"``, ``"to_world"``), or None."""
        params = self.load()
        if key not in params:
            return None
        node = params.properties[key][2]
        parts = key.split(".")
        levels = 0
        while node is not None and levels < len(parts) - 1:
            element = self.by_id.get(node.id()) if node.id() else None
            if element is not None:
                return self.descend(element, parts[len(parts) - levels - 1:])
            node = params.hierarchy.get(node, (None, 0))[0]
            levels += 1
        return None

    @staticmethod
    def descend(element: ET.Element, parts: list[str]) -> tuple[ET.Element, str]:
        """Follow named object children (``reflectance`` -> its ``<texture>``)
        down ``parts`` as far as they go; the element reached and the rest."""
        while len(parts) > 1:
            child = next((c for c in element if c.tag in OBJECT_TAGS
                          and c.get("name") == parts[0]), None)
            if child is None:
                break
            element, parts = child, parts[1:]
        return element, ".".join(parts)

    def set_value(self, key: str, value: np.ndarray) -> bool:
        """Write a scalar or colour (``<...>.<name>.value`` or ``<...>.<name>``)
        into the scene; whether the key was found."""
        found = self.owner(key)
        if found is None:
            return False
        element, rest = found
        name = rest.removesuffix(".value")
        if "." in name:
            return False
        v = np.asarray(value, dtype=np.float64).ravel()
        for child in list(element):
            if child.get("name") == name:
                element.remove(child)
        if name in ("position", "target", "origin") and v.size == 3:
            ET.SubElement(element, "point", {"name": name, "x": repr(v[0]), "y": repr(v[1]),
                                             "z": repr(v[2])})
        elif v.size == 1:
            ET.SubElement(element, "float", {"name": name, "value": repr(float(v[0]))})
        elif v.size == 3:
            ET.SubElement(element, "rgb", {"name": name,
                                           "value": " ".join(repr(float(x)) for x in v)})
        else:
            return False
        return True

    def set_string(self, element: ET.Element, name: str, value: str) -> None:
        for child in list(element):
            if child.get("name") == name:
                element.remove(child)
        ET.SubElement(element, "string", {"name": name, "value": value})

    def set_transform(self, element: ET.Element, matrix: np.ndarray, *, compose: bool) -> None:
        """Set ``element``'s ``to_world`` to ``matrix`` (4x4), or compose
        ``matrix`` after the one it has (``compose``)."""
        transform = next((c for c in element if c.tag == "transform"
                          and c.get("name") == "to_world"), None)
        if transform is None or not compose:
            if transform is not None:
                element.remove(transform)
            transform = ET.SubElement(element, "transform", {"name": "to_world"})
        ET.SubElement(transform, "matrix", {"value": " ".join(repr(float(x)) for x in
                                                              np.asarray(matrix).ravel())})

    def copy_files(self, source: Path | None, dest: Path) -> None:
        """Copy every file the scene names (``<string name="filename">``) into
        ``dest / "assets"`` and point the scene there."""
        for element in self.root.iter("string"):
            if element.get("name") != "filename":
                continue
            path = Path(element.get("value", ""))
            if not path.is_absolute() and source is not None:
                path = source / path
            if not path.is_file():
                continue
            target = dest / "assets" / path.name
            n = 1
            while target.exists() and not _same_file(target, path):
                target = dest / "assets" / f"{path.stem}_{n}{path.suffix}"
                n += 1
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                shutil.copy2(path, target)
            element.set("value", target.relative_to(dest).as_posix())

    def text(self) -> str:
        """The XML, without the temporary ids."""
        for element in self.root.iter():
            if element.get("id", "").startswith(TAG):
                del element.attrib["id"]
        ET.indent(self.root)
        return ET.tostring(self.root, encoding="unicode") + "\n"


def _same_file(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def write_scene(result, folder: Path, files: dict[str, dict]) -> list[str]:
    """Write ``folder / "scene.xml"``: the model with every estimate of
    ``result`` written in. Returns the keys that could not be written (their
    kind does not write itself into a scene, or the key was not found)."""
    from ..estimates import kind_class

    if not result.scene_xml:
        return list(result.estimates)
    source = Path(result.scene_folder) if result.scene_folder else None
    scene = SceneXML(result.scene_xml, source)
    scene.load()  # (while its file names still resolve against the source folder)
    scene.copy_files(source, folder)
    missing = []
    for key, value in result.estimates.items():
        cls = kind_class(result.kinds.get(key, ""))
        if not cls.write_xml(scene, key, value, result, files.get(key, {})):
            missing.append(key)
    (folder / "scene.xml").write_text(scene.text())
    return missing
