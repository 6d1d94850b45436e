"""Random scene folders with truth, for robustness benchmarks of camera and pose refinement.

:func:`make_random_scene` writes a scene folder (``scene.xml``, ``truth.xml``,
``invpbr.toml``, meshes, textures, envmaps, 8-bit PNG photos made by the capture
simulator) drawn from a seed: 1 to 3 objects (random asymmetric meshes, mesh and
analytic spheres, analytic cubes and disks) on or above a floor (an analytic rectangle
or a mesh) with diffuse or principled materials, plain, checkerboard, striped or noise
textures, lit by a constant sky, an environment map or an area light (plus a dim sky),
seen by 3 to 12 cameras at random positions around the objects.

- ``kind = "camera"``: the cameras in ``transforms.json`` are each off by a random
  0.5-3 degrees and 0.5-3 % of the scene's diagonal (one draw per scene, exact per
  camera, random directions: :func:`invpbr.render.photos.simulate_capture`); the true
  cameras are in ``transforms_truth.json``. Everything else is known.
- ``kind = "pose"``: one asymmetric mesh object starts rotated by 1-6 degrees and moved
  by 1-4 % of the diagonal from its true pose; the cameras are exact (and frame the
  whole scene, or that object with ``framing="object"``).
- ``kind = "light"``: the scene is lit by an area light (a rectangle above the objects,
  and a dim sky) that starts rotated and moved as a pose does (about its centre); its
  pose (``lamp.to_world``) is estimated from the shading and the shadows it casts; the
  cameras are exact (some may see the light itself).
- ``kind = "shape"``: one asymmetric mesh object's free vertices (``kind = "shape"``)
  start from the true mesh with 3 random smooth bumps and dents, each 4-10 % of the
  object's radius high, pushed along the rays from its centre (``meshes/obj0_start.ply``; the
  truth is ``meshes/obj0.ply``); the cameras are exact and frame that object (as an
  object is photographed to be reconstructed), other objects and the floor around it.

``truth.json`` records what was drawn. Nothing here is imported by the library.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from . import procedural

KINDS = ("camera", "pose", "light", "shape")
#: What the cameras frame: the whole scene or object 0.
FRAMINGS = ("scene", "object")

#: Ranges of the starting errors (degrees, fraction of the scene diagonal).
CAMERA_PERTURBATION = {"rotation_deg": (0.5, 3.0), "translation": (0.005, 0.03)}
POSE_PERTURBATION = {"rotation_deg": (1.0, 6.0), "translation": (0.01, 0.04)}
#: Height of each of the start shape's 3 bumps (or dents), a fraction of the object's radius.
SHAPE_PERTURBATION = (0.04, 0.10)


def start_ranges(kind: str, start_errors: dict | None) -> dict:
    """The ranges of ``kind``'s starting errors, those ``start_errors`` gives replacing
    the default's (checked: known keys, 0 <= low <= high; not for shapes)."""
    if kind == "shape" and start_errors:
        raise ValueError("make_random_scene(): start_errors apply to cameras, poses and lights")
    default = CAMERA_PERTURBATION if kind == "camera" else POSE_PERTURBATION
    ranges = dict(default)
    for key, value in (start_errors or {}).items():
        if key not in default:
            raise ValueError(f"make_random_scene(): start range {key!r}; expected one of "
                             f"{sorted(default)}")
        low, high = (float(v) for v in value)
        if not 0 <= low <= high:
            raise ValueError(f"make_random_scene(): start range {key!r} = {value!r}; expected "
                             "0 <= low <= high")
        ranges[key] = (low, high)
    return ranges


def _start_pose(rng, rotation: float, translation: float, centre) -> np.ndarray:
    """A rigid motion turning ``rotation`` degrees about a random axis through ``centre``
    and moving ``translation`` in a random direction."""
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    start = _affine(_rotation(rng.normal(size=3), rotation), translation * direction)
    start[:3, 3] += centre - start[:3, :3] @ centre  # turned about the object's centre
    return start


def _fmt(values) -> str:
    return ", ".join(f"{v:.7g}" for v in np.ravel(np.asarray(values, dtype=float)))


def _matrix_xml(m: np.ndarray) -> str:
    return f'<transform name="to_world"><matrix value="{_fmt(m)}"/></transform>'


def _rotation(axis, angle_deg: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis)
    a = math.radians(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * (k @ k)


def _affine(linear: np.ndarray, offset) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = linear
    m[:3, 3] = offset
    return m


def _texture(rng: np.random.Generator, folder: Path, name: str) -> tuple[str, str]:
    """A random texture (checkerboard, stripes or noise) written as a PNG; its bitmap XML
    and its kind."""
    kind = rng.choice(["checker", "stripes", "noise"])
    a, b = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    if kind == "checker":
        image = procedural.checker_texture(64, int(rng.integers(4, 12)), (a, b))
    elif kind == "stripes":
        n = int(rng.integers(3, 10))
        angle = rng.uniform(0, np.pi)
        y, x = np.mgrid[0:64, 0:64] / 64.0
        phase = np.floor(n * (np.cos(angle) * x + np.sin(angle) * y) * 2) % 2
        image = np.where(phase[..., None] > 0, a, b).astype(np.float32)
    else:
        p = procedural.albedo_pattern(64, seed=int(rng.integers(1 << 30)))
        image = (0.1 + 0.8 * p).astype(np.float32)
    rel = f"textures/{name}.png"
    procedural.write_png_srgb(folder / rel, image)
    xml = f"""<texture type="bitmap" name="{{name}}">
                <string name="filename" value="{rel}"/>
                <string name="filter_type" value="bilinear"/>
            </texture>"""
    return xml, str(kind)


def _bsdf(rng: np.random.Generator, folder: Path, name: str, textured: bool) -> tuple[str, str]:
    """A diffuse or principled BSDF, maybe textured; its XML and a description."""
    colour = rng.uniform(0.15, 0.85, 3)
    texture, what = None, "plain"
    if textured:
        texture, what = _texture(rng, folder, name)
    if rng.uniform() < 0.6:
        value = (texture.format(name="reflectance") if texture
                 else f'<rgb name="reflectance" value="{_fmt(colour)}"/>')
        return f'<bsdf type="diffuse">{value}</bsdf>', f"diffuse {what}"
    value = (texture.format(name="base_color") if texture
             else f'<rgb name="base_color" value="{_fmt(colour)}"/>')
    roughness = rng.uniform(0.3, 0.8)
    metallic = rng.uniform(0.0, 0.5)
    return (f'<bsdf type="principled">{value}<float name="roughness" value="{roughness:.3f}"/>'
            f'<float name="metallic" value="{metallic:.3f}"/></bsdf>',
            f"principled {what}")


def _object(rng: np.random.Generator, folder: Path, index: int, shape: str, position,
            radius: float, bsdf: str, start_shape: bool = False) -> tuple[str, np.ndarray]:
    """One object's XML (without its to_world for meshes, which are written in place)
    and the to_world matrix. ``start_shape`` (a blob): also writes the mesh a shape
    estimate starts from (:func:`dented`) as ``meshes/obj<index>_start.ply``."""
    sid = f"obj{index}"
    turn = _rotation(rng.normal(size=3), rng.uniform(0, 180))
    if shape in ("blob", "icosphere"):
        if shape == "blob":
            v, f = procedural.blob(3, seed=int(rng.integers(1 << 30)),
                                   amplitude=rng.uniform(0.15, 0.3))
            v = v * rng.uniform(0.7, 1.3, 3)  # anisotropic: no symmetry left
        else:
            v, f = procedural.icosphere(3)
        v = v / np.abs(v).max()
        procedural.write_ply(folder / "meshes" / f"{sid}.ply", v.astype(np.float32), f)
        if start_shape:
            procedural.write_ply(folder / "meshes" / f"{sid}_start.ply",
                                 dented(v, rng, SHAPE_PERTURBATION).astype(np.float32), f)
        m = _on_floor(_affine(radius * turn, position), v)
        return (f'<shape type="ply" id="{sid}"><string name="filename" value="meshes/{sid}.ply"/>'
                f'{{transform}}{bsdf}</shape>'), m
    if shape == "cube":
        m = _affine(0.7 * radius * turn, position)
    elif shape == "disk":  # a standing disk (a sign), tilted at random
        m = _affine(radius * _rotation((1, 0, 0), rng.uniform(-100, -10)) @ _rotation((0, 0, 1), 0),
                    position)
        m[:3, :3] = _rotation((0, 1, 0), rng.uniform(0, 360)) @ m[:3, :3]
    else:  # sphere
        m = _affine(radius * np.eye(3), position)
    corners = {"cube": np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T,
               "disk": np.stack([np.cos(np.linspace(0, 2 * np.pi, 64)),
                                 np.sin(np.linspace(0, 2 * np.pi, 64)), np.zeros(64)], -1),
               "sphere": np.array([[0.0, -1.0, 0.0]])}[shape]
    m = _on_floor(m, corners)
    two_sided = shape == "disk"
    inner = f'<bsdf type="twosided">{bsdf}</bsdf>' if two_sided else bsdf
    return f'<shape type="{shape}" id="{sid}">{{transform}}{inner}</shape>', m


def dented(vertices: np.ndarray, rng: np.random.Generator, amplitude: tuple[float, float],
           lobes: int = 3) -> np.ndarray:
    """``vertices`` of a mesh that is star-shaped about the origin (a blob), each moved
    along its ray from the origin by ``lobes`` smooth random bumps and dents (heights
    drawn from ``amplitude``, fractions of the vertex's distance): the same faces,
    no fold."""
    v = np.asarray(vertices, dtype=np.float64)
    directions = rng.normal(size=(lobes, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    heights = rng.uniform(*amplitude, size=lobes) * rng.choice([-1.0, 1.0], size=lobes)
    cosines = (v / np.linalg.norm(v, axis=1, keepdims=True)) @ directions.T
    return v * (1.0 + (heights * np.exp(4.0 * (cosines - 1.0))).sum(axis=1))[:, None]


def _objects(rng: np.random.Generator, folder: Path, kind: str, extent: float,
             info: dict) -> tuple[list[str], list[np.ndarray], list[float]]:
    """1 to 3 random objects (object 0 at the centre; a blob where its pose or shape is
    estimated): their XML, to_world matrices and radii; each one's description is
    appended to ``info["objects"]``."""
    n_objects = int(rng.integers(1, 4))
    choices = ["blob", "icosphere", "sphere", "cube", "disk"]
    objects, matrices, radii = [], [], []
    for i in range(n_objects):
        shape = "blob" if (kind in ("pose", "shape") and i == 0) else str(rng.choice(choices))
        radius = rng.uniform(0.3, 0.6)
        angle = rng.uniform(0, 2 * np.pi)
        r = 0.0 if i == 0 else rng.uniform(0.6, 0.9) * extent
        lift = 0.0 if rng.uniform() < 0.6 else radius * rng.uniform(0.1, 0.8)  # on / above
        position = np.array([r * math.cos(angle), lift, r * math.sin(angle)])
        bsdf, what = _bsdf(rng, folder, f"obj{i}", textured=rng.uniform() < 0.3)
        xml, m = _object(rng, folder, i, shape, position, radius, bsdf,
                         start_shape=kind == "shape" and i == 0)
        objects.append(xml)
        matrices.append(m)
        radii.append(float(radius))
        info["objects"].append({"shape": shape, "material": what,
                                "resting": bool(lift == 0.0)})
    return objects, matrices, radii


def _on_floor(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``m`` lifted so that its object's lowest point is ``m``'s translation's height above
    the floor (y = 0): position y is the gap under the object (0: resting on the floor)."""
    lowest = (np.asarray(points, dtype=float) @ m[:3, :3].T)[:, 1].min()
    out = m.copy()
    out[1, 3] = m[1, 3] - lowest + 1e-3
    return out


def _cameras(rng: np.random.Generator, n: int, target, distance: float, size: int) -> str:
    out = []
    azimuths = rng.uniform(0, 360) + np.sort(rng.uniform(0, 360, n))
    for i, az in enumerate(azimuths):
        el = math.radians(rng.uniform(12, 55))
        d = distance * rng.uniform(0.9, 1.15)
        a = math.radians(az)
        look = np.asarray(target) + rng.normal(0, 0.15, 3)
        origin = look + d * np.array([math.cos(el) * math.sin(a), math.sin(el),
                                      math.cos(el) * math.cos(a)])
        fov = rng.uniform(35, 50)
        out.append(f"""
    <sensor type="perspective" id="cam{i:02d}">
        <float name="fov" value="{fov:.3f}"/>
        <string name="fov_axis" value="x"/>
        <transform name="to_world"><lookat origin="{_fmt(origin)}" target="{_fmt(look)}" up="0, 1, 0"/></transform>
        <sampler type="independent"><integer name="sample_count" value="16"/></sampler>
        <film type="hdrfilm">
            <integer name="width" value="{size}"/><integer name="height" value="{size}"/>
            <boolean name="sample_border" value="true"/>
            <rfilter type="box"/>
        </film>
    </sensor>""")
    return "".join(out)


def _lighting(rng: np.random.Generator, folder: Path, extent: float) -> tuple[str, str]:
    kind = str(rng.choice(["constant", "envmap", "area"]))
    if kind == "constant":
        return (f'<emitter type="constant" id="sky"><rgb name="radiance" '
                f'value="{_fmt(rng.uniform(0.6, 1.2, 3))}"/></emitter>'), kind
    if kind == "envmap":
        sun = rng.normal(size=3)
        sun[1] = abs(sun[1]) + 0.5
        image = procedural.sky_envmap(64, 32, sun_direction=sun,
                                      sun_intensity=float(rng.uniform(10, 40)))
        procedural.write_exr(folder / "envmaps" / "sky.exr", image)
        return ('<emitter type="envmap" id="sky"><string name="filename" '
                'value="envmaps/sky.exr"/></emitter>'), kind
    # an area light: a rectangle mesh-free analytic emitter above the scene, and a dim sky
    m, power = _lamp(rng, extent)
    return lamp_xml(m, power) + SKY, kind


#: The dim sky beside an area light.
SKY = '<emitter type="constant" id="sky"><rgb name="radiance" value="0.2"/></emitter>'


def _lamp(rng: np.random.Generator, extent: float) -> tuple[np.ndarray, float]:
    """A rectangle area light above the scene, facing down: its to_world and radiance."""
    height = extent * rng.uniform(0.8, 1.4)
    offset = rng.uniform(-0.5, 0.5, 2) * extent
    m = _affine(0.4 * extent * _rotation((1, 0, 0), 90), (offset[0], height, offset[1]))
    return m, float(rng.uniform(6, 15))


def lamp_xml(m: np.ndarray, power: float) -> str:
    """The area light ``lamp`` (an analytic rectangle) at ``m``."""
    return (f'<shape type="rectangle" id="lamp">{_matrix_xml(m)}'
            f'<emitter type="area"><rgb name="radiance" value="{power:.3f}"/></emitter></shape>')


def _floor(rng: np.random.Generator, folder: Path, extent: float) -> tuple[str, str]:
    """A square floor at y = 0 (an analytic rectangle or a mesh); its XML and a description."""
    floor_bsdf, floor_what = _bsdf(rng, folder, "floor", textured=rng.uniform() < 0.7)
    if rng.uniform() < 0.5:
        m = _affine(extent * _rotation((1, 0, 0), -90), (0, 0, 0))
        floor = f'<shape type="rectangle" id="floor">{_matrix_xml(m)}{floor_bsdf}</shape>'
        return floor, f"rectangle, {floor_what}"
    else:
        n = 5
        u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
        verts = np.stack([(u - 0.5) * 2 * extent, np.zeros_like(u), (v - 0.5) * 2 * extent],
                         -1).reshape(-1, 3)
        faces = [(r * n + c, (r + 1) * n + c, r * n + c + 1) for r in range(n - 1)
                 for c in range(n - 1)] + [
            (r * n + c + 1, (r + 1) * n + c, (r + 1) * n + c + 1) for r in range(n - 1)
            for c in range(n - 1)]
        procedural.write_ply(folder / "meshes" / "floor.ply", verts.astype(np.float32),
                             np.array(faces, np.int32),
                             uvs=np.stack([u, v], -1).reshape(-1, 2).astype(np.float32))
        floor = (f'<shape type="ply" id="floor"><string name="filename" value="meshes/floor.ply"/>'
                 f'{floor_bsdf}</shape>')
        return floor, f"mesh, {floor_what}"


def make_random_scene(folder, kind: str, seed: int, *, size: int = 48, max_depth: int = 2,
                      spp: int = 8, iterations: int = 100, photo_spp: int = 128,
                      photo_format: str = "png", n_cameras: tuple[int, int] | None = None,
                      framing: str | None = None,
                      start_errors: dict[str, tuple[float, float]] | None = None) -> dict:
    """Write a random scene folder of ``kind`` ("camera", "pose", "light" or "shape") drawn from
    ``seed``.

    Args:
        folder: the folder to write (created; existing files are overwritten).
        kind: what ``invpbr.toml`` estimates.
        seed: the draw.
        size: photo width and height, pixels.
        max_depth, spp, iterations: written into ``invpbr.toml`` ([render], [optimize]).
        photo_spp: samples per pixel of the photos.
        photo_format: ``png`` (8-bit, clipped) or ``exr`` (linear, neither clipped nor
            quantized).
        n_cameras: (low, high) number of cameras (default 3-12 for cameras, 3-6 for poses,
            lights and shapes).
        framing: ``"scene"`` (the cameras look at the middle of the floor from far enough
            to see all of it) or ``"object"`` (they frame object 0: about half the photo's
            width). Default: ``"object"`` for shapes, ``"scene"`` otherwise (the rest of
            the draw does not depend on it).
        start_errors: ranges of the starting errors instead of the kind's default, e.g.
            ``{"rotation_deg": (12, 20)}`` (see :func:`start_ranges`; the draw otherwise the same).

    Returns:
        What was drawn (also written to ``truth.json``).
    """
    framing = framing or ("object" if kind == "shape" else "scene")
    for name, value, allowed in (("kind", kind, KINDS), ("framing", framing, FRAMINGS)):
        if value not in allowed:
            raise ValueError(f"make_random_scene(): {name} {value!r}; expected one of {allowed}")
    ranges = start_ranges(kind, start_errors)
    from ..render.photos import simulate_capture

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), KINDS.index(kind)])
    extent = rng.uniform(1.5, 2.5)                      # half-size of the floor
    info: dict = {"kind": kind, "seed": int(seed), "objects": [], "framing": framing}
    floor, info["floor"] = _floor(rng, folder, extent)

    objects, matrices, radii = _objects(rng, folder, kind, extent, info)
    # object 0 is a blob whose pose or shape is estimated (kinds "pose", "shape")
    pose_index = 0 if kind in ("pose", "shape") else None
    if kind == "light":  # the lamp is written by body(), moved to its start in scene.xml
        lamp, power = _lamp(rng, extent)
        lights, info["lighting"] = SKY, "area (estimated)"
    else:
        lights, info["lighting"] = _lighting(rng, folder, extent)
    low, high = n_cameras or ((3, 12) if kind == "camera" else (3, 6))
    n_cams = int(rng.integers(low, high + 1))
    info["cameras"] = n_cams
    if framing == "object":  # about half the photo's width
        cameras = _cameras(rng, n_cams, matrices[0][:3, 3], 3.6 * radii[0] + 0.2, size)
    else:
        cameras = _cameras(rng, n_cams, (0, 0.4, 0), 1.8 * extent + 1.2, size)

    def body(with_sensors: bool, start: np.ndarray | None) -> str:
        parts = [f'<integrator type="path"><integer name="max_depth" value="{max_depth}"/>'
                 '</integrator>']
        if with_sensors:
            parts.append(cameras)
        parts += [lights, floor]
        if kind == "light":
            parts.append(lamp_xml(lamp if start is None else start @ lamp, power))
        for i, (xml, m) in enumerate(zip(objects, matrices)):
            if start is not None and i == pose_index:
                m = start @ m
            parts.append(xml.replace("{transform}", _matrix_xml(m)))
        return ('<?xml version="1.0" encoding="utf-8"?>\n'
                '<!-- Generated by invpbr.testing.random_scenes -->\n<scene version="3.0.0">\n'
                + "\n".join(parts) + "\n</scene>\n")

    (folder / "truth.xml").write_text(body(True, None))
    diagonal = float(np.linalg.norm([2 * extent, 2 * extent, 2 * extent]))  # refined below
    if kind == "camera":
        rotation = rng.uniform(*ranges["rotation_deg"])
        translation = rng.uniform(*ranges["translation"])
        (folder / "scene.xml").write_text(body(False, None))
        made = simulate_capture(folder, spp=photo_spp, format=photo_format, noise=0.01,
                                perturb_rotation=rotation, perturb_translation=translation,
                                seed=int(seed))
        diagonal = made["scene_diagonal"]
        info["perturbation"] = {"rotation_deg": rotation, "translation": translation}
        estimate = '[cameras]\nfile = "transforms.json"\ntruth = "transforms_truth.json"\n\n' \
                   '[[estimate]]\nkind = "camera"\nkey = "*"\n'
    elif kind == "shape":
        made = simulate_capture(folder, spp=photo_spp, format=photo_format, noise=0.01,
                                seed=int(seed), write_cameras=False)
        diagonal = made["scene_diagonal"]
        (folder / "scene.xml").write_text(body(True, None).replace(
            f'value="meshes/obj{pose_index}.ply"', f'value="meshes/obj{pose_index}_start.ply"'))
        info["perturbation"] = {"bumps": list(SHAPE_PERTURBATION)}
        estimate = f'[[estimate]]\nkind = "shape"\nkey = "obj{pose_index}.vertex_positions"\n'
    else:
        made = simulate_capture(folder, spp=photo_spp, format=photo_format, noise=0.01,
                                seed=int(seed), write_cameras=False)
        diagonal = made["scene_diagonal"]
        rotation = rng.uniform(*ranges["rotation_deg"])
        translation = rng.uniform(*ranges["translation"]) * diagonal
        start = _start_pose(rng, rotation, translation,
                            (lamp if kind == "light" else matrices[pose_index])[:3, 3])
        (folder / "scene.xml").write_text(body(True, start))
        info["perturbation"] = {"rotation_deg": rotation, "translation": translation / diagonal}
        estimate = '[[estimate]]\nkind = "pose"\nkey = "lamp.to_world"\n' if kind == "light" \
            else f'[[estimate]]\nkind = "pose"\nkey = "obj{pose_index}.to_world"\n' \
            if objects[pose_index].startswith('<shape type="sphere') else \
            f'[[estimate]]\nkind = "pose"\nkey = "obj{pose_index}.vertex_positions"\n'
    info["diagonal"] = diagonal
    (folder / "invpbr.toml").write_text(
        "# Generated by invpbr.testing.random_scenes\n"
        f"[render]\nspp = {spp}\nmax_depth = {max_depth}\n"
        # as the shipped object_pose scene: silhouettes and shading carry a pose here;
        # the octree guiding for shadow edges (the default) made a 24x24 run take 10+ min
        + ('guiding = "none"\n' if kind in ("pose", "light", "shape") else "") + f"\n{estimate}\n"
        f"[optimize]\niterations = {iterations}\n")
    (folder / "truth.json").write_text(json.dumps(info, indent=1))
    return info
