"""``invpbr view``: render a result folder from the cameras of any camera file.

A result folder whose estimates live in a Mitsuba scene (materials, textures,
lighting, meshes, cameras) is rendered from its ``scene.xml`` with the camera
file's frames as sensors; a kind that renders itself (a radiance field) does
so through its class method ``render_views(folder, cameras, *, spp, envmap,
width, height)``, found through result.json's ``kinds``.

Each frame gives ``DIR/<frame stem>.exr`` (linear RGBA: the alpha channel is
coverage, or a field's accumulated opacity) and ``DIR/<frame stem>.png``
(sRGB, with alpha).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..capture import images
from ..capture.frames import read_camera_file, sensor_element
from ..estimates import kind_class
from ..problem.scene import load_scene_text


def read_result(folder: Path) -> dict:
    """The result.json of a result folder.

    Raises:
        FileNotFoundError: no result.json there.
        ValueError: it is not valid JSON.
    """
    path = folder / "result.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; `invpbr view` renders a result folder "
                                "written by `invpbr run`")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


def resized_cameras(cameras: list, width: int | None, height: int | None) -> list:
    """The cameras at ``width`` x ``height`` pixels (one of them: the other
    keeps the aspect ratio)."""
    if width is None and height is None:
        return cameras
    out = []
    for cam in cameras:
        w = width if width is not None else round(height * cam.width / cam.height)
        h = height if height is not None else round(width * cam.height / cam.width)
        if w < 1 or h < 1:
            raise ValueError(f"invpbr view: --width/--height must be positive, found {w}x{h}")
        out.append(cam.rescaled(w, h))
    return out


def scene_from_cameras(text: str, cameras: list, *, envmap: Path | None = None) -> str:
    """The result scene's XML with ``cameras`` as its sensors (each an RGBA
    film, the scene's first sensor as template), lit by ``envmap`` instead
    of its own environment lighting when given."""
    root = ET.fromstring(text)
    template = root.find("sensor")
    for sensor in root.findall("sensor"):
        root.remove(sensor)
    for cam in cameras:
        sensor = sensor_element(replace(cam, id=cam.id), template)
        film = sensor.find("film")
        for child in list(film):
            if child.get("name") == "pixel_format":
                film.remove(child)
        ET.SubElement(film, "string", {"name": "pixel_format", "value": "rgba"})
        root.append(sensor)
    if envmap is not None:
        for emitter in root.findall("emitter"):
            if emitter.get("type") in ("envmap", "constant"):
                root.remove(emitter)
        light = ET.SubElement(root, "emitter", {"type": "envmap"})
        ET.SubElement(light, "string", {"name": "filename", "value": str(envmap.resolve())})
    return ET.tostring(root, encoding="unicode")


def view_result(folder: str | Path, cameras_file: str | Path, *, spp: int = 64,
                envmap: str | Path | None = None, width: int | None = None,
                height: int | None = None, out: str | Path | None = None,
                max_depth: int | None = None, variant: str | None = None,
                appearance: str | None = None, time: float | None = None) -> list[Path]:
    """Render a result folder from every frame of ``cameras_file``.

    Args:
        folder: the result folder (from ``invpbr run`` / :func:`save_result`).
        cameras_file: a transforms.json, COLMAP model folder or LLFF
            poses_bounds.npy; its photos need not exist.
        spp: samples per pixel.
        envmap: an environment map that replaces the result's environment
            lighting (relighting).
        width, height: render size (default: the camera file's).
        out: where the images go (default ``folder / "views"``).
        max_depth: longest light path (default: the run's ``[render] max_depth``).
        variant: Mitsuba variant (default: automatic, see ``init_backend``).
        appearance: a radiance field fitted with ``appearance``: render at this
            fitted photo's appearance (default: the neutral one).
        time: a radiance field in time: render this moment (in [0, 1]; default:
            each frame's ``time`` in the camera file, else 0.5).

    Returns:
        The files written (EXR and PNG per frame).

    Raises:
        FileNotFoundError: the result, the camera file or the envmap is missing.
        ValueError: a result folder without a scene.xml and no kind that
            renders itself, or a camera file the readers reject.
    """
    from ..backend import init_backend

    init_backend(variant)  # (a variant is needed to read camera files into sensors)
    folder = Path(folder)
    doc = read_result(folder)
    cameras = resized_cameras(read_camera_file(cameras_file, skip_missing=True,
                                               need_images=False), width, height)
    envmap = None if envmap is None else Path(envmap)
    if envmap is not None and not envmap.is_file():
        raise FileNotFoundError(f"{envmap}: no such environment map")
    out = folder / "views" if out is None else Path(out)
    for kind in dict.fromkeys(doc.get("kinds", {}).values()):
        render_views = getattr(kind_class(kind), "render_views", None)
        if render_views is not None:
            from ..estimates.field_time import frame_times

            extra = {"appearance": appearance} if appearance else {}
            if time is not None or frame_times(cameras_file):
                extra |= {"time": time, "times": frame_times(cameras_file)}
            return render_views(folder, cameras, spp=spp, envmap=envmap, out=out, **extra)
    scene_file = folder / "scene.xml"
    if appearance:
        raise ValueError(f"{folder}: --appearance applies to a radiance field fitted with "
                         "[field] appearance; this result is not one")
    if not scene_file.is_file():
        raise ValueError(f"{folder}: no scene.xml (a result folder written before invpbr "
                         "wrote scenes); run the scene folder again to get one")
    import drjit as dr
    import mitsuba as mi

    text = scene_from_cameras(scene_file.read_text(), cameras, envmap=envmap)
    scene = load_scene_text(text, scene_file)
    depth = max_depth if max_depth is not None else \
        doc.get("settings", {}).get("render", {}).get("max_depth", -1)
    integrator = mi.load_dict({"type": "path", "max_depth": int(depth)})
    # An environment seen in the background makes Mitsuba's alpha 1 everywhere; the
    # coverage comes from a second render with the emitters hidden.
    hidden = mi.load_dict({"type": "path", "max_depth": 1, "hide_emitters": True}) \
        if scene.environment() is not None else None
    written = []
    with dr.suspend_grad():
        for i, cam in enumerate(cameras):
            image = np.array(mi.render(scene, sensor=i, integrator=integrator, spp=int(spp),
                                       seed=i), dtype=np.float32)
            if hidden is not None:
                image[..., 3] = np.array(mi.render(scene, sensor=i, integrator=hidden,
                                                   spp=int(spp), seed=i))[..., 3]
            written.append(images.save_image(out / f"{cam.id}.exr", image))
            written.append(images.save_image(out / f"{cam.id}.png", image))
    return written
