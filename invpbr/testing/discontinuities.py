"""Standard geometry and visibility discontinuity cases, and how integrators handle them.

Each case is a tiny self-contained Mitsuba scene with one scalar parameter ``theta`` that
moves geometry; ``theta = 0`` is the scene as built. The derivative of the rendered image
with respect to ``theta`` is estimated by automatic differentiation with a chosen
integrator and compared with central finite differences of a primal integrator (``path``)
rendered with many samples.

Cases (:data:`CASES`); all use ``max_depth`` 2 and area lights only:

- ``shadow``: a welded sphere mesh translating between a small sphere light and a
  diffuse plane. The occluder is *not* directly visible; only its shadow moves (a
  discontinuity of indirect visibility: shadow rays).
- ``silhouette``: a welded, smooth sphere mesh translating in front of a constant
  background, lit by an area light from the front right.
- ``area_light``: a directly visible emitting welded sphere mesh moving towards the camera
  over a dim constant background.
- ``rotation``: a tilted welded ellipsoid (convex, smooth) rotating about the vertical axis
  through its centre.
- ``vertex``: one vertex of a coarse welded, flat-shaded sphere, on its silhouette,
  displaced sideways.

Traps (:data:`TRAPS`), where Mitsuba 3.9.1's projective integrators disagree with finite
differences:

- ``rectangle_out_of_plane``: an analytic ``rectangle`` with a BSDF moved along its normal.
- ``sphere_emitter``: a directly visible analytic ``sphere`` emitter translated: some
  seeds give NaN pixels in forward mode (the finite pixels agree).
- ``cube``: the built-in ``cube`` shape (split vertices: 24 vertices, not 8) translated.
- ``vertex_smooth``: the ``vertex`` case with smooth vertex normals. On a coarse mesh,
  shadow rays from the flat triangles are blocked by neighbours near the shadow
  terminator; those edges move with the vertex and Mitsuba's guiding finds no indirect
  silhouette samples ("No valid indirect silhouette samples" warning): about 20 % bias.

Other pitfalls found while building the cases (Mitsuba 3.9.1):

- ``params.keep([key])`` before ``mi.render`` breaks forward mode when the key is
  ``vertex_positions`` of a smooth mesh: the vertex normals Mitsuba recomputes from the
  positions are no longer inputs of the render op, and their derivative is lost (the
  rotation derivative came out with the wrong sign). Reverse mode was right. The cases
  keep the whole ``mi.traverse`` result.
- Shadow edges cast by delta lights (``directional``, ``point``) are not sampled by the
  projective integrators; their derivative is missing.
- With Mitsuba's default ``proj_seed_spp`` (512) the ``shadow`` derivative was 13-16 %
  too small, also at 1024 spp; 4192 (Mitsuba's tests) agrees. :func:`compare` uses 4192.
- Face normals on a curved mesh make every triangle edge a shading discontinuity that no
  integrator here samples (a flat-shaded translating sphere: projective +115 vs FD -12).

Which integrator is right where:

- ``prb`` ignores visibility discontinuities: its derivative is that of the shading only
  (zero for a pure shadow), biased for every case here.
- ``direct_projective`` (``max_depth`` 2) and ``prb_projective`` add the boundary terms by
  projective sampling and agree with finite differences on the five standard cases.
- invpbr's own ``prb_reparam`` was retired (docs/reparam.md).

Errors follow Mitsuba's AD-integrator tests and :mod:`invpbr.optimization.gradcheck`: per pixel,
``|ad - fd| / max(|fd|, 0.1 max|fd|)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..optimization.gradcheck import relative_errors
from .procedural import torus, uv_sphere

#: Case name -> one-line description.
CASES: dict[str, str] = {
    "shadow": "occluder sphere mesh (not directly visible) translating between a sphere "
              "light and a plane: the shadow edge moves",
    "silhouette": "diffuse sphere mesh translating in front of a constant background, lit "
                  "from the side",
    "area_light": "directly visible emitting sphere mesh translating in front of the wall "
                  "it lights",
    "rotation": "tilted ellipsoid mesh rotating about the vertical axis through its "
                "centre",
    "vertex": "one silhouette vertex of a coarse, flat-shaded sphere mesh displaced sideways",
    "vertex_smooth": "the same with smooth vertex normals (trap: shadow-terminator edges on "
                     "the coarse mesh move too)",
    "rectangle_out_of_plane": "analytic rectangle with a diffuse BSDF translated along its "
                              "normal (Mitsuba 3.9.1 trap)",
    "sphere_emitter": "directly visible analytic sphere emitter translated (Mitsuba 3.9.1 "
                      "trap: NaNs in forward mode)",
    "cube": "built-in cube (split vertices) translated (Mitsuba 3.9.1 trap)",
    "rectangle_meshed": "the rectangle of rectangle_out_of_plane loaded as a PLY mesh, as "
                        "invpbr loads rectangles for camera refinement, translated along its "
                        "normal through its vertex positions",
}

#: Cases expected to fail with Mitsuba 3.9.1's projective integrators.
TRAPS: tuple[str, ...] = ("rectangle_out_of_plane", "sphere_emitter", "cube", "vertex_smooth")

#: Cases of how invpbr steps around a trap: expected to agree with finite differences
#: (a motion that prb alone may also get nearly right).
TRAP_FIXES: tuple[str, ...] = ("rectangle_meshed",)

#: Mitsuba's stored finite-difference references that :func:`make_mitsuba_case` rebuilds
#: (configs of mitsuba3 ``src/integrators/tests/test_ad_integrators.py``).
MITSUBA_REFERENCES: dict[str, str] = {
    "translate_occluder_area_light": "sphere.obj occluder translating between a sphere.obj "
                                     "light and a rectangle (128x128)",
    "translate_diffuse_sphere_constant": "sphere.obj translating under a constant emitter "
                                         "(128x128)",
}

PROJECTIVE = ("direct_projective", "prb_projective")


@dataclass
class Case:
    """A scene whose geometry moves with one scalar ``theta``.

    Attributes:
        name: the case's name (a key of :data:`CASES`, or of :data:`MITSUBA_REFERENCES`).
        scene: the Mitsuba scene.
        params: ``mi.traverse(scene)`` (all of it; see the module notes on ``keep``).
        key: the scene parameter that ``theta`` moves.
        max_depth: path depth of every render of the case (2: direct illumination).
        fd_eps: finite-difference step in ``theta``'s units (scene units or radians).
        description: one line.
        update: ``update(params, theta)`` writes ``params[key]`` as a function of
            ``theta`` (no ``params.update()``).
    """

    name: str
    scene: object
    params: object
    key: str
    max_depth: int
    fd_eps: float
    description: str
    update: Callable = field(repr=False)

    def set(self, theta) -> None:
        """Move the geometry to ``theta`` and update the scene.

        Args:
            theta: a Python float, or an ``mi.Float`` (with gradients enabled, the
                parameter becomes a differentiable function of it).
        """
        import mitsuba as mi

        if not isinstance(theta, mi.Float):
            theta = mi.Float(float(theta))
        self.update(self.params, theta)
        self.params.update()

    @property
    def trap(self) -> bool:
        """Whether Mitsuba 3.9.1's projective integrators are expected to fail here."""
        return self.name in TRAPS


# ---------------------------------------------------------------------------------------
# Meshes
# ---------------------------------------------------------------------------------------


def weld(vertices: np.ndarray, faces: np.ndarray, *, decimals: int = 5
         ) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices with equal positions and drop the triangles that collapse.

    The UV spheres and tori of :mod:`invpbr.testing.procedural` store their UV seams twice; the
    projective integrators find silhouettes through shared edges, so a mesh that moves an
    edge should be welded.

    Args:
        vertices: positions, (N, 3).
        faces: vertex indices, (M, 3).
        decimals: positions are compared after rounding to this many decimals.

    Returns:
        ``(vertices, faces)``: (N', 3) float32 and (M', 3) int32, N' <= N, M' <= M.
    """
    vertices = np.asarray(vertices, dtype=np.float32)
    _, first, inverse = np.unique(np.round(vertices, decimals), axis=0, return_index=True,
                                  return_inverse=True)
    faces = inverse.reshape(-1)[np.asarray(faces)]
    keep = ((faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2])
            & (faces[:, 0] != faces[:, 2]))
    return vertices[first], faces[keep].astype(np.int32)


def welded_sphere(radius: float = 1.0, n_theta: int = 16, n_phi: int = 32
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A closed, fully welded sphere mesh (one vertex per pole, no seam) at the origin.

    Returns:
        ``(vertices, faces)``: (N, 3) float32 and (M, 3) int32, counter-clockwise outwards.
    """
    v, f, _, _ = uv_sphere(n_theta, n_phi, radius, split_poles=False)
    return weld(v, f)


def welded_torus(major_radius: float = 1.0, minor_radius: float = 0.4, n_major: int = 32,
                 n_minor: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A closed, fully welded torus mesh around the Y axis (see :func:`procedural.torus`).

    Returns:
        ``(vertices, faces)``: (N, 3) float32 and (M, 3) int32, counter-clockwise outwards.
    """
    v, f, _, _ = torus(major_radius, minor_radius, n_major, n_minor)
    return weld(v, f)


def make_mesh(name: str, vertices: np.ndarray, faces: np.ndarray, *, bsdf: dict | None = None,
              emitter: dict | None = None, smooth: bool = True):
    """An ``mi.Mesh`` built in memory.

    Args:
        name: the mesh's name.
        vertices: positions, (N, 3), scene units.
        faces: (M, 3) vertex indices, counter-clockwise seen from outside.
        bsdf: a BSDF dict for ``mi.load_dict`` (default: Mitsuba's default diffuse).
        emitter: an area emitter dict, or None.
        smooth: vertex normals (recomputed by Mitsuba whenever the positions change);
            False: face normals (flat shading).
    """
    import mitsuba as mi

    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.uint32)
    props = mi.Properties()
    if bsdf is not None:
        props["bsdf"] = mi.load_dict(bsdf)
    if emitter is not None:
        props["emitter"] = mi.load_dict(emitter)
    mesh = mi.Mesh(name, len(vertices), len(faces), props, has_vertex_normals=bool(smooth))
    p = mi.traverse(mesh)
    p["vertex_positions"] = mi.Float(vertices.ravel())
    p["faces"] = mi.UInt32(faces.ravel())
    p.update()
    return mesh


# ---------------------------------------------------------------------------------------
# Scene pieces and parameter updates
# ---------------------------------------------------------------------------------------


def _sensor(resolution: int, origin=(0.0, 0.0, 4.0), fov: float | None = None) -> dict:
    """Mitsuba's AD-test camera: box filter, ``sample_border`` (moving shapes), RGB."""
    import mitsuba as mi

    sensor = {
        "type": "perspective",
        "to_world": mi.ScalarTransform4f().look_at(origin=list(origin), target=[0, 0, 0],
                                                   up=[0, 1, 0]),
        "film": {"type": "hdrfilm", "width": int(resolution), "height": int(resolution),
                 "rfilter": {"type": "box"}, "sample_border": True, "pixel_format": "rgb",
                 "component_format": "float32"},
    }
    if fov is not None:
        sensor["fov"] = float(fov)
    return sensor


def _diffuse(value) -> dict:
    return {"type": "diffuse", "reflectance": {"type": "rgb", "value": value}}


def _translate_vertices(key: str, direction, initial) -> Callable:
    """An update adding ``theta * direction`` to every vertex of ``initial``."""
    import drjit as dr
    import mitsuba as mi

    points = mi.Point3f(dr.unravel(mi.Point3f, mi.Float(initial)))
    dx, dy, dz = (float(c) for c in direction)

    def update(params, theta):
        params[key] = dr.ravel(points + mi.Vector3f(dx * theta, dy * theta, dz * theta))
    return update


def _move_vertex(key: str, index: int, direction, initial) -> Callable:
    """An update adding ``theta * direction`` to vertex ``index`` only."""
    import drjit as dr
    import mitsuba as mi

    base = mi.Float(initial)
    width = dr.width(base)
    offsets = np.zeros(width, dtype=np.float32)
    offsets[3 * index: 3 * index + 3] = direction
    offsets = mi.Float(offsets)

    def update(params, theta):
        params[key] = base + offsets * theta
    return update


def _rotate_vertices_y(key: str, centre, initial) -> Callable:
    """An update rotating every vertex by ``theta`` radians about the Y axis through
    ``centre``."""
    import drjit as dr
    import mitsuba as mi

    c = mi.Vector3f(*(float(x) for x in centre))
    rel = mi.Point3f(dr.unravel(mi.Point3f, mi.Float(initial))) - c

    def update(params, theta):
        s, co = dr.sin(theta), dr.cos(theta)
        rotated = mi.Point3f(co * rel.x + s * rel.z, rel.y, -s * rel.x + co * rel.z)
        params[key] = dr.ravel(rotated + c)
    return update


def _translate_transform(key: str, direction, initial) -> Callable:
    """An update pre-multiplying ``initial`` (a ``to_world``) by a translation."""
    import mitsuba as mi

    start = mi.Transform4f(initial)
    dx, dy, dz = (float(c) for c in direction)

    def update(params, theta):
        params[key] = mi.Transform4f().translate(
            mi.Vector3f(dx * theta, dy * theta, dz * theta)) @ start
    return update


# ---------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------


def _build(name: str, resolution: int):
    """(scene dict, key, update factory, max_depth, fd_eps) for a case name."""
    import mitsuba as mi

    T = mi.ScalarTransform4f
    sensor = _sensor(resolution)
    # Area lights only: Mitsuba's projective integrators do not sample the shadow edges
    # cast by delta lights (directional, point), so those would bias every integrator.
    key_light = {"type": "sphere", "center": [3.0, 1.5, 3.0], "radius": 0.3,
                 "emitter": {"type": "area", "radiance": {"type": "rgb", "value": 400.0}}}
    ambient = {"type": "constant", "radiance": {"type": "rgb", "value": 0.3}}

    if name == "shadow":
        v, f = welded_sphere(0.35)
        occluder = make_mesh("occluder", v + np.float32([2.0, 0.0, 2.0]), f,
                             bsdf=_diffuse(0.5))
        scene = {
            "type": "scene", "sensor": sensor,
            "plane": {"type": "rectangle", "bsdf": _diffuse(0.5)},
            "occluder": occluder,
            "light": {"type": "sphere", "center": [4.0, 0.0, 4.0], "radius": 0.05,
                      "emitter": {"type": "area",
                                  "radiance": {"type": "rgb", "value": 1000.0}}},
        }
        return scene, "occluder.vertex_positions", \
            lambda p, k: _translate_vertices(k, (1, 0, 0), p[k]), 2, 1e-2

    if name == "silhouette":
        v, f = welded_sphere(0.6, n_theta=24, n_phi=48)
        scene = {"type": "scene", "sensor": sensor, "ambient": ambient, "sun": key_light,
                 "ball": make_mesh("ball", v, f, bsdf=_diffuse(0.5))}
        return scene, "ball.vertex_positions", \
            lambda p, k: _translate_vertices(k, (1, 0, 0), p[k]), 2, 1e-2

    if name == "area_light":
        v, f = welded_sphere(0.35)
        lamp = make_mesh("lamp", v + np.float32([0.2, 0.1, 0.0]), f,
                         emitter={"type": "area", "radiance": {"type": "rgb", "value": 3.0}})
        scene = {"type": "scene", "sensor": sensor, "lamp": lamp,
                 "background": {"type": "constant", "radiance": {"type": "rgb", "value": 0.1}}}
        # Towards the camera: the whole outline grows, so the image sum changes.
        return scene, "lamp.vertex_positions", \
            lambda p, k: _translate_vertices(k, (0, 0, 1), p[k]), 2, 1e-2

    if name == "rotation":
        # A convex ellipsoid: rotating moves its outline; no self-shadowing edges.
        v, f = welded_sphere(1.0, n_theta=24, n_phi=48)
        v = v * np.float32([0.9, 0.4, 0.5])
        tilt = np.radians(30.0)
        rot = np.array([[np.cos(tilt), -np.sin(tilt), 0], [np.sin(tilt), np.cos(tilt), 0],
                        [0, 0, 1]], dtype=np.float32)
        v = v @ rot.T
        scene = {"type": "scene", "sensor": sensor, "ambient": ambient, "sun": key_light,
                 "egg": make_mesh("egg", v, f, bsdf=_diffuse(0.5))}
        return scene, "egg.vertex_positions", \
            lambda p, k: _rotate_vertices_y(k, (0, 0, 0), p[k]), 2, 1e-2

    if name in ("vertex", "vertex_smooth"):
        v, f = welded_sphere(0.7, n_theta=6, n_phi=8)
        # The vertex on the equator furthest along +X: on the silhouette seen from +Z.
        equator = np.abs(v[:, 1]) < 1e-4
        index = int(np.argmax(np.where(equator, v[:, 0], -np.inf)))
        ball = make_mesh("ball", v, f, bsdf=_diffuse(0.5), smooth=name == "vertex_smooth")
        scene = {"type": "scene", "sensor": sensor, "ambient": ambient, "sun": key_light,
                 "ball": ball}
        return scene, "ball.vertex_positions", \
            lambda p, k: _move_vertex(k, index, (1, 0, 0), p[k]), 2, 1e-2

    if name == "rectangle_out_of_plane":
        scene = {
            "type": "scene", "sensor": sensor, "ambient": ambient, "sun": key_light,
            "card": {"type": "rectangle", "bsdf": _diffuse(0.5),
                     "to_world": T().rotate([0, 1, 0], 50.0).scale(0.7)},
        }
        normal = (math.sin(math.radians(50.0)), 0.0, math.cos(math.radians(50.0)))
        return scene, "card.to_world", \
            lambda p, k: _translate_transform(k, normal, p[k]), 2, 1e-2

    if name == "rectangle_meshed":
        card = {"type": "rectangle", "bsdf": _diffuse(0.5),
                "to_world": T().rotate([0, 1, 0], 50.0).scale(0.7)}
        scene = {"type": "scene", "sensor": sensor, "ambient": ambient, "sun": key_light,
                 "card": _as_ply_mesh(card)}
        normal = (math.sin(math.radians(50.0)), 0.0, math.cos(math.radians(50.0)))
        return scene, "card.vertex_positions", \
            lambda p, k: _translate_vertices(k, normal, p[k]), 2, 1e-2

    if name == "sphere_emitter":
        scene = {
            "type": "scene", "sensor": sensor,
            "lamp": {"type": "sphere", "center": [0.2, 0.1, 0.0], "radius": 0.5,
                     "emitter": {"type": "area",
                                 "radiance": {"type": "rgb", "value": 1.0}}},
        }
        return scene, "lamp.to_world", \
            lambda p, k: _translate_transform(k, (1, 0, 0), p[k]), 2, 1e-2

    if name == "cube":
        scene = {
            "type": "scene", "sensor": sensor, "ambient": ambient, "sun": key_light,
            "box": {"type": "cube", "bsdf": _diffuse(0.5),
                    "to_world": T().rotate([1, 0, 0], 25.0).rotate([0, 1, 0], 35.0)
                    .scale(0.5)},
        }
        return scene, "box.vertex_positions", \
            lambda p, k: _translate_vertices(k, (1, 0, 0), p[k]), 2, 1e-2

    raise ValueError(f"make_case(): unknown case {name!r}; cases: {', '.join(CASES)}")


def _as_ply_mesh(shape: dict):
    """``shape`` (an analytic rectangle's dict) as invpbr loads it when cameras
    move (:func:`invpbr.problem.scene.mesh_analytic_shapes`)."""
    from ..problem.scene import mesh_analytic_shapes

    xml = (f'<scene version="3.0.0"><shape type="rectangle" id="card">'
           f'<transform name="to_world"><matrix value="'
           f'{" ".join(str(float(x)) for x in np.array(shape["to_world"].matrix).ravel())}"/>'
           f'</transform></shape></scene>')
    scene, _ = mesh_analytic_shapes(xml, Path("rectangle_meshed.xml"))
    mesh = scene.shapes()[0]
    return make_mesh("card", np.array(mesh.vertex_positions_buffer()).reshape(-1, 3),
                     np.array(mesh.faces_buffer()).reshape(-1, 3), bsdf=shape["bsdf"],
                     smooth=False)


def make_case(name: str, resolution: int = 16) -> Case:
    """Build one discontinuity case at ``theta = 0``.

    Args:
        name: a key of :data:`CASES`.
        resolution: film width and height, pixels.

    Returns:
        The :class:`Case`.

    Raises:
        ValueError: ``name`` is not a known case.
    """
    import mitsuba as mi

    if name not in CASES:
        raise ValueError(f"make_case(): unknown case {name!r}; cases: {', '.join(CASES)}")
    scene_dict, key, factory, max_depth, fd_eps = _build(name, resolution)
    scene = mi.load_dict(scene_dict, optimize=False)
    params = mi.traverse(scene)  # not keep([key]): see the module notes
    return Case(name=name, scene=scene, params=params, key=key, max_depth=max_depth,
                fd_eps=fd_eps, description=CASES[name], update=factory(params, key))


def make_mitsuba_case(name: str, data_dir: str | Path, resolution: int = 128) -> Case:
    """Rebuild one of Mitsuba's AD-test configurations whose FD reference is stored.

    The scenes are those of mitsuba3's ``src/integrators/tests/test_ad_integrators.py``
    (``TranslateOccluderAreaLightConfig``, ``TranslateDiffuseSphereConstantConfig``):
    camera at ``(0, 0, 4)``, box filter, ``sample_border``, ``max_depth`` 2, the mesh
    translated along +X by ``theta``. Their references, ``test_<name>_image_fwd_ref.exr``,
    are central differences of ``path`` at 12000 spp with ``eps = 1e-3``.

    Args:
        name: a key of :data:`MITSUBA_REFERENCES`.
        data_dir: folder holding ``meshes/sphere.obj`` (Mitsuba's test mesh).
        resolution: film size; the references are 128x128.

    Raises:
        ValueError: unknown name.
        FileNotFoundError: ``sphere.obj`` is missing.
    """
    import mitsuba as mi

    if name not in MITSUBA_REFERENCES:
        raise ValueError(f"make_mitsuba_case(): unknown reference {name!r}; known: "
                         f"{', '.join(MITSUBA_REFERENCES)}")
    obj = Path(data_dir) / "meshes" / "sphere.obj"
    if not obj.is_file():
        raise FileNotFoundError(f"make_mitsuba_case(): {obj} not found (Mitsuba's test mesh)")
    T = mi.ScalarTransform4f
    sensor = _sensor(resolution)
    if name == "translate_occluder_area_light":
        key = "occluder.vertex_positions"
        scene_dict = {
            "type": "scene", "sensor": sensor,
            "plane": {"type": "rectangle", "bsdf": {"type": "diffuse"}},
            "occluder": {"type": "obj", "filename": str(obj),
                         "to_world": T().translate([2.0, 0.0, 2.0]) @ T().scale(0.25)},
            "light": {"type": "obj", "filename": str(obj),
                      "emitter": {"type": "area",
                                  "radiance": {"type": "rgb", "value": 1000.0}},
                      "to_world": T().translate([4.0, 0.0, 4.0]) @ T().scale(0.05)},
        }
    else:
        key = "sphere.vertex_positions"
        scene_dict = {
            "type": "scene", "sensor": sensor,
            "sphere": {"type": "obj", "filename": str(obj),
                       "to_world": T().rotate([0, 1, 0], -90.0)},
            "light": {"type": "constant"},
        }
    scene = mi.load_dict(scene_dict, optimize=False)
    params = mi.traverse(scene)
    return Case(name=name, scene=scene, params=params, key=key, max_depth=2, fd_eps=1e-3,
                description=MITSUBA_REFERENCES[name],
                update=_translate_vertices(key, (1, 0, 0), params[key]))


# ---------------------------------------------------------------------------------------
# Derivatives
# ---------------------------------------------------------------------------------------


def registered_integrators() -> list[str]:
    """The gradient integrators compared here (invpbr's own ``prb_reparam`` was
    retired: docs/reparam.md)."""
    return ["prb", "direct_projective", "prb_projective"]


def make_integrator(case: Case, integrator, *, proj_seed_spp: int | None = None):
    """An integrator object for ``case``.

    Args:
        case: the case (gives ``max_depth``).
        integrator: a Mitsuba integrator object (returned as is) or a type string
            (``"prb"``, ``"direct_projective"``, ``"prb_projective"``, ``"path"``...), loaded with the case's ``max_depth``.
        proj_seed_spp: projective integrators only: seed rays per pixel for silhouette
            search (Mitsuba's default 512; its tests use 4192).
    """
    import mitsuba as mi

    if not isinstance(integrator, str):
        return integrator
    result = mi.load_dict({"type": integrator, "max_depth": int(case.max_depth)})
    if proj_seed_spp is not None and hasattr(result, "proj_seed_spp"):
        result.proj_seed_spp = int(proj_seed_spp)
    return result


def _render(case: Case, integrator, spp: int, seed: int):
    import mitsuba as mi

    return mi.render(case.scene, case.params, integrator=integrator, spp=int(spp),
                     seed=int(seed))


def forward_derivative(case: Case, integrator, spp: int, seed: int = 0) -> np.ndarray:
    """Forward-mode ``dI/dtheta`` at ``theta = 0``.

    Args:
        case: the case.
        integrator: integrator object or type string (see :func:`make_integrator`).
        spp: samples per pixel.
        seed: sampler seed.

    Returns:
        Linear RGB derivative image, (H, W, 3), radiance per unit of ``theta``.
    """
    import drjit as dr
    import mitsuba as mi

    integrator = make_integrator(case, integrator)
    theta = mi.Float(0.0)
    dr.enable_grad(theta)
    case.set(theta)
    image = _render(case, integrator, spp, seed)
    dr.forward(theta)
    grad = np.array(dr.grad(image), dtype=np.float64)[..., :3]
    case.set(0.0)
    return grad


def reverse_derivative(case: Case, integrator, spp: int, seed: int = 0) -> float:
    """Reverse-mode ``d(sum of I)/dtheta`` at ``theta = 0`` (what an optimizer uses).

    Args:
        case: the case.
        integrator: integrator object or type string.
        spp: samples per pixel.
        seed: sampler seed.

    Returns:
        The derivative of the sum over pixels and channels of the image.
    """
    import drjit as dr
    import mitsuba as mi

    integrator = make_integrator(case, integrator)
    theta = mi.Float(0.0)
    dr.enable_grad(theta)
    case.set(theta)
    image = _render(case, integrator, spp, seed)
    dr.backward(dr.sum(image, axis=None))
    grad = float(dr.grad(theta)[0])
    case.set(0.0)
    return grad


def finite_difference(case: Case, spp: int, eps: float | None = None, seed: int = 0,
                      integrator=None) -> np.ndarray:
    """Central difference ``(I(eps) - I(-eps)) / (2 eps)``, both sides with one seed.

    Args:
        case: the case.
        spp: samples per pixel of each render.
        eps: step in ``theta`` (default: ``case.fd_eps``).
        seed: sampler seed (the same on both sides, so that the noise mostly cancels).
        integrator: primal integrator (default: ``path`` with the case's ``max_depth``).

    Returns:
        Linear RGB derivative image, (H, W, 3).
    """
    import drjit as dr

    eps = case.fd_eps if eps is None else float(eps)
    integrator = make_integrator(case, "path" if integrator is None else integrator)
    images = []
    for t in (eps, -eps):
        case.set(t)
        with dr.suspend_grad():
            images.append(np.array(_render(case, integrator, spp, seed),
                                   dtype=np.float64)[..., :3])
    case.set(0.0)
    return (images[0] - images[1]) / (2.0 * eps)


def finite_difference_pair(case: Case, fd_spp: int = 16384, *, fd_eps: float | None = None,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two independent finite differences (seeds ``1000 + seed`` and ``2000 + seed``), the
    reference of :func:`compare`; pass it as ``reference`` to reuse it across integrators."""
    return (finite_difference(case, fd_spp, fd_eps, seed=1000 + int(seed)),
            finite_difference(case, fd_spp, fd_eps, seed=2000 + int(seed)))


def compare(case: Case, integrator, *, spp: int = 64, fd_spp: int = 16384,
            seeds: tuple[int, ...] = (0, 1), fd_eps: float | None = None,
            proj_seed_spp: int | None = 4192,
            reference: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """AD derivative of one integrator against finite differences, with noise levels.

    Args:
        case: the case.
        integrator: integrator object or type string.
        spp: samples per pixel of each AD render.
        fd_spp: samples per pixel of each finite-difference render.
        seeds: AD seeds; the AD image is their mean. Two or more give ``ad_noise``.
        fd_eps: finite-difference step (default: ``case.fd_eps``).
        proj_seed_spp: projective integrators' silhouette seed rays per pixel (see
            :func:`make_integrator`); 4192 as in Mitsuba's own tests. With Mitsuba's
            default (512) the ``shadow`` derivative came out 13-16 % too small.
        reference: ``(fd_a, fd_b)`` from :func:`finite_difference_pair` (computed if None).

    Returns:
        A dict with

        - ``error_mean``, ``error_max``: per-pixel relative error of the mean AD image
          against the mean of two FD images (Mitsuba-test-like; see module docs),
        - ``sum_error``: relative error of the image-sum derivative,
        - ``fd_noise``: ``error_mean`` between the two FD images (different seeds),
        - ``fd_sum_noise``: relative difference of their sums,
        - ``ad_noise``: ``error_mean`` between the first two AD images (nan with one seed),
        - ``ad_sum``, ``fd_sum``: image-sum derivatives,
        - ``ad_std``: standard deviation over seeds of the AD image-sum derivative
          (nan with one seed),
        - ``nan``: whether any AD image had a NaN (they are then counted as errors),
        - ``seconds``: median wall time of one AD render (forward mode),
        - ``n_seeds``,
        - ``expected_error``: the ``error_mean`` that noise alone would give,
          ``sqrt(ad_noise^2 / (2 n) + fd_noise^2 / 4)`` for ``n`` seeds.
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("compare(): seeds must not be empty")
    name = integrator if isinstance(integrator, str) else type(integrator).__name__
    integrator = make_integrator(case, integrator, proj_seed_spp=proj_seed_spp)
    ads, times = [], []
    for s in seeds:
        start = time.perf_counter()
        ads.append(forward_derivative(case, integrator, spp, seed=s))
        times.append(time.perf_counter() - start)
    if reference is None:
        reference = finite_difference_pair(case, fd_spp, fd_eps=fd_eps, seed=seeds[0])
    fd_a, fd_b = reference
    fd = 0.5 * (fd_a + fd_b)
    nan = any(bool(np.isnan(a).any()) for a in ads)
    ad = np.mean(ads, axis=0)
    ad_for_errors = np.where(np.isnan(ad), np.inf, ad)
    error_mean, error_max = relative_errors(ad_for_errors, fd)
    fd_noise, _ = relative_errors(fd_a, fd_b)
    ad_noise = relative_errors(ads[0], ads[1])[0] if len(ads) > 1 else float("nan")
    sums = [float(a.sum()) for a in ads]
    ad_sum, fd_sum = float(np.mean(sums)), float(fd.sum())
    denominator = max(abs(fd_sum), 1e-12)
    n = len(seeds)
    return {
        "case": case.name,
        "integrator": name,
        "error_mean": error_mean,
        "error_max": error_max,
        "sum_error": abs(ad_sum - fd_sum) / denominator,
        "fd_noise": fd_noise,
        "fd_sum_noise": abs(float(fd_a.sum()) - float(fd_b.sum())) / denominator,
        "ad_noise": ad_noise,
        "ad_sum": ad_sum,
        "fd_sum": fd_sum,
        "ad_std": float(np.std(sums, ddof=1)) if n > 1 else float("nan"),
        "nan": nan,
        "seconds": float(np.median(times)),
        "n_seeds": n,
        "expected_error": math.sqrt((ad_noise ** 2 / (2 * n) if n > 1 else 0.0)
                                    + fd_noise ** 2 / 4),
    }


def tolerances(result: dict) -> tuple[float, float]:
    """Tolerances on ``error_mean`` and ``sum_error`` that noise alone explains.

    ``error_mean <= 2 expected_error + 0.01``; for the sum, three standard deviations of
    the relative noise of the AD mean (``ad_std / sqrt(n)``) and of the FD mean
    (``fd_sum_noise / 2``), plus 0.05. Derived from the measured noise, not tuned per case.

    Args:
        result: from :func:`compare` with at least two seeds.

    Returns:
        ``(error_tol, sum_tol)``.
    """
    error_tol = 2.0 * result["expected_error"] + 0.01
    rel_ad = result["ad_std"] / math.sqrt(result["n_seeds"]) / max(abs(result["fd_sum"]), 1e-12)
    sum_noise = math.sqrt(rel_ad ** 2 + (result["fd_sum_noise"] / 2) ** 2)
    return error_tol, 3.0 * sum_noise + 0.05


def agrees(result: dict) -> bool:
    """Whether an AD derivative matches finite differences within :func:`tolerances`."""
    if result["nan"]:
        return False
    error_tol, sum_tol = tolerances(result)
    return result["error_mean"] <= error_tol and result["sum_error"] <= sum_tol
