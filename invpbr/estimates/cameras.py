"""Camera pose refinement by moving the scene relative to each camera.

Mitsuba 3.9 does not differentiate sensor parameters, and a camera's silhouettes
would need edge sampling of their own. But a photo taken by the camera ``C D``
(its starting camera-to-world ``C`` corrected by a small rigid motion ``D`` in
the camera's own frame) is the photo that ``C`` takes of the scene moved by

    M = C D^-1 C^-1.

So for each view invpbr writes ``M`` applied to everything in the scene (mesh
vertices and normals, analytic shapes' and emitters' ``to_world``, point
lights' positions) and renders with the sensor as it is; the projective
integrators then differentiate silhouettes and shading with respect to ``D``
like any other geometry (``invpbr gradcheck`` checks it).

The latent of a camera is ``[t / size, w]``: its translation in units of the
scene's bounding-box diagonal and an axis-angle rotation, both in the camera's
own Mitsuba frame (x left, y up, z forward: "camera tx" in a gradient check
moves the camera to the left of its image), so one learning rate fits both.

Checked (tests/test_camera.py): the moved scene seen by the fixed sensor renders
like the fixed scene seen by the moved camera (mean difference 2.6e-4 with the
same samples, against 0.03 for no motion); with objects floating under a
constant sky the six derivatives of a view agree with finite differences within
their noise (tz image sum 2 % off), while prb, without edge terms, is 96 % off.

Limits: with every surface moving, Mitsuba's indirect-visibility term (meant
for occluders moving past fixed shading points) gave derivatives of the wrong
size on every occluded surface (blob interior on real_capture: -266 against
-11 by finite differences), so :func:`invpbr.render.integrators.make_integrator` turns it
off (``sppi = 0``) when only cameras are estimated. What is then missing is how
occlusion changes as a camera ray slides over a surface: on real_capture, whose
ground the objects occlude, image-sum derivatives are 5-40 % off while per-pixel
errors stay within ~2x the finite differences' noise. The optimum is the same
(a wrong Jacobian times a zero residual is zero); the way there is slower.
Meshes that intersect each other make visibility edges along the intersection
curve, which no edge sampling sees.

Mitsuba also marks an environment map's ``to_world`` and a point light's
``position`` non-differentiable; they are moved (the images are right) but
carry no derivative, so a camera's gradient misses how such lighting turns
with it (nothing is missed under a constant background, or area lights on
meshes, which move with their mesh).
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import replace
from typing import Any

import numpy as np

from ..capture.cameras import OPENCV_TO_MITSUBA, camera_from_sensor, write_transforms
from .base import Estimate, register_kind
from .meshes import (TRAP_SHAPES, VERTICES, dr_width, motion_groups, rotation_matrix,
                     rotation_numpy, HybridAdam)

#: Default learning rate of camera latents (per step: about 0.3 degree of
#: rotation and 0.5 % of the scene size of translation).
CAMERA_LR = 0.005

_NORMALS = "vertex_normals"


def scene_movers(params) -> dict[str, str]:
    """key -> how it moves with the world: ``points`` (mesh vertices),
    ``normals`` (mesh vertex normals), ``transform`` (an analytic shape's or
    emitter's ``to_world``) or ``position`` (a point light's)."""
    import mitsuba as mi

    out = {}
    for key in params.keys():
        node = params.properties[key][2]
        if isinstance(node, (mi.Shape, mi.Emitter)) and key.endswith(".to_world"):
            # (analytic shapes such as the rectangle may present as mi.Mesh)
            out[key] = "transform"
        elif isinstance(node, mi.Mesh):
            if key.endswith("." + VERTICES):
                out[key] = "points"
            elif key.endswith("." + _NORMALS) and dr_width(params[key]) > 0:
                out[key] = "normals"
        elif isinstance(node, mi.Emitter) and key.endswith(".position"):
            out[key] = "position"
    return out


def _matrix_numpy(value) -> np.ndarray:
    m = value.matrix if hasattr(value, "matrix") else value
    return np.array(m, dtype=np.float64).reshape(4, 4)


def _constant_matrix(m: np.ndarray):
    import mitsuba as mi

    return mi.Matrix4f(*[float(v) for v in np.asarray(m, dtype=np.float64).ravel()])


class CameraModel:
    """Rigid corrections of some cameras, applied by moving the scene.

    Args:
        params: ``mi.traverse`` of the scene (its current values are the rest state).
        scene: the scene (for its bounding box and sensors).
        ids: sensor ids of the cameras to refine.
        indices: their indices in ``scene.sensors()``.
    """

    kind = "camera"

    def __init__(self, params, scene, ids: list[str], indices: list[int]):
        import mitsuba as mi

        self.ids = list(ids)
        self.indices = list(indices)
        self.slot = {index: j for j, index in enumerate(self.indices)}
        bbox = scene.bbox()
        lo, hi = np.array(bbox.min, dtype=np.float64), np.array(bbox.max, dtype=np.float64)
        self.size = float(np.linalg.norm(hi - lo)) if np.all(np.isfinite(lo)) else 1.0
        # Mitsuba camera-to-world of each camera, as loaded.
        self.c2w = [_matrix_numpy(scene.sensors()[i].world_transform()) for i in self.indices]
        self.movers = scene_movers(params)
        self.rest = {key: _detached_copy(params[key]) for key in self.movers}
        # per camera: emitters whose back it sees lose their boundary term (see
        # back_facing_emitters)
        self.hidden = back_facing_emitters(params, scene, [c[:3, 3] for c in self.c2w])
        for key in {k for keys in self.hidden for k in keys}:
            self.rest[key] = float(params[key])
        self.fixed = {key for key in self.movers
                      if params.flags(key) & int(mi.ParamFlags.NonDifferentiable)}
        kinds = {params.properties[k][2].class_name() for k in params.keys()}
        traps = sorted(kinds & set(TRAP_SHAPES))
        if traps:
            warnings.warn("camera refinement moves every shape, and the scene has "
                          + "; ".join(f"{k}: {TRAP_SHAPES[k]}" for k in traps), stacklevel=2)
        if any("Medium" in k or "Volume" in k for k in kinds):
            warnings.warn("camera refinement moves shapes and emitters but not media or "
                          "volumes; a scene with them renders wrongly while cameras move",
                          stacklevel=2)

    @property
    def latent_size(self) -> int:
        return 6 * len(self.ids)

    def initial_latent(self) -> np.ndarray:
        return np.zeros(self.latent_size, np.float32)

    def world_motion(self, latent, view_index: int):
        """``M = C D^-1 C^-1`` (``mi.Matrix4f``) of the camera of sensor
        ``view_index``, differentiable in ``latent``; None for a camera that
        is not refined."""
        import drjit as dr
        import mitsuba as mi

        j = self.slot.get(view_index)
        if j is None:
            return None

        def at(i):
            return dr.gather(mi.Float, latent, 6 * j + i)

        t = mi.Vector3f(at(0), at(1), at(2)) * self.size
        r_t = rotation_matrix(mi.Vector3f(at(3), at(4), at(5))).T
        back = -(r_t @ t)
        d_inv = mi.Matrix4f(1.0)
        for a in range(3):
            for b in range(3):
                d_inv[a][b] = r_t[a][b]
            d_inv[a][3] = back[a]
        c = self.c2w[j]
        return _constant_matrix(c) @ d_inv @ _constant_matrix(np.linalg.inv(c))

    def scene_values(self, latent, view_index: int, values: dict | None = None) -> dict:
        """key -> the moved scene value of every mover, for the camera of
        sensor ``view_index``. ``values`` holds current values of keys that
        other estimates write (their rest state this step); other keys move
        from their loaded values."""
        import drjit as dr
        import mitsuba as mi

        values = values or {}
        m = self.world_motion(latent, view_index)
        j = self.slot.get(view_index)
        out = {key: (0.0 if j is not None and key in self.hidden[j] else self.rest[key])
               for key in {k for keys in self.hidden for k in keys}}
        for key, how in self.movers.items():
            base = values.get(key, self.rest[key])
            if m is None:
                out[key] = base
                continue
            motion = dr.detach(m) if key in self.fixed else m
            linear = mi.Matrix3f(*[motion[a][b] for a in range(3) for b in range(3)])
            offset = mi.Vector3f(motion[0][3], motion[1][3], motion[2][3])
            if how in ("points", "normals"):
                p = dr.unravel(mi.Vector3f, mi.Float(base))
                out[key] = dr.ravel(linear @ p + offset if how == "points" else linear @ p)
            elif how == "position":
                out[key] = type(base)(linear @ mi.Vector3f(base) + offset)
            else:
                moved = motion @ mi.Matrix4f(base.matrix)
                out[key] = type(base)(dr.detach(moved) if key in self.fixed else moved)
        return out

    def move_scene(self, params, latent, view_index: int | None) -> None:
        """Write the scene moved for the camera of sensor ``view_index`` (None:
        the rest state) into ``params``, for renders outside the optimizer."""
        for key, value in self.scene_values(latent, view_index).items():
            params[key] = value
        params.update()

    def camera_to_world(self, latent: np.ndarray) -> dict[str, np.ndarray]:
        """Sensor id -> the refined camera-to-world (4, 4), OpenCV convention
        (see :mod:`invpbr.capture.cameras`)."""
        latent = np.asarray(latent, dtype=np.float64).reshape(-1, 6)
        out = {}
        for sid, c, x in zip(self.ids, self.c2w, latent):
            d = np.eye(4)
            d[:3, :3] = rotation_numpy(x[3:])
            d[:3, 3] = x[:3] * self.size
            out[sid] = c @ d @ OPENCV_TO_MITSUBA
        return out

    def start_camera_to_world(self) -> dict[str, np.ndarray]:
        """Sensor id -> the starting camera-to-world, OpenCV convention."""
        return {sid: c @ OPENCV_TO_MITSUBA for sid, c in zip(self.ids, self.c2w)}


def back_facing_emitters(params, scene, centres: list[np.ndarray]) -> list[set[str]]:
    """For each camera centre, the ``<shape>.silhouette_sampling_weight`` keys of
    the area-emitting shapes of which it sees only the back (every face turned
    away, e.g. a ceiling lamp seen from above).

    Measured (a rectangle lamp moved with the scene, direct_projective, 48x48):
    Mitsuba 3.9.1's projective integrators give such an emitter's silhouette a
    boundary term as if its emitting side faced the camera: image-sum
    derivatives 25800 where finite differences give -340, the loss rising from
    the first step and cameras ending 8 degrees off from 1.4. Its true boundary
    term (between its dark back and what lies behind) is small, so the camera
    that sees its back is better without it: the moved-scene renders of that
    camera give the emitter no silhouette samples (weight 0).
    """
    import mitsuba as mi

    out = [set() for _ in centres]
    for shape in scene.shapes():
        key = f"{shape.id()}.silhouette_sampling_weight"
        if not shape.is_emitter() or key not in params:
            continue
        for j, c in enumerate(centres):
            if _sees_only_back(shape, c):
                out[j].add(key)
    return out


def seen_only_from_behind(scene, shape_ids: set[str], sensor) -> bool:
    """Whether the shapes ``shape_ids`` of ``scene`` are all area emitters of which
    ``sensor`` (as loaded) sees only the back (every face turned away); False where one
    is not an emitter or its faces are unknown (an analytic sphere, cylinder...)."""
    centre = _matrix_numpy(sensor.world_transform())[:3, 3]
    shapes = [s for s in scene.shapes() if s.id() in shape_ids]
    if not shapes:
        return False
    return all(shape.is_emitter() and _sees_only_back(shape, centre) for shape in shapes)


def _sees_only_back(shape, centre) -> bool:
    """Whether a point ``centre`` sees every face of ``shape`` from behind; False where
    its faces are unknown (see :func:`_emitter_faces`)."""
    points, normals = _emitter_faces(shape)
    if points is None:
        return False
    return bool(np.all(np.einsum("ij,ij->i", np.asarray(centre, np.float64)[None] - points,
                                 normals) <= 0.0))


def _emitter_faces(shape):
    """Face centres and normals (F, 3) of a mesh, a disk or a rectangle (None, None for
    others)."""
    import mitsuba as mi

    if isinstance(shape, mi.Mesh) and shape.face_count() > 0:
        v = np.array(shape.vertex_positions_buffer(), dtype=np.float64).reshape(-1, 3)
        f = np.array(shape.faces_buffer(), dtype=np.int64).reshape(-1, 3)
        a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
        n = np.cross(b - a, c - a)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)
        if shape.has_flipped_normals() if hasattr(shape, "has_flipped_normals") else False:
            n = -n
        return (a + b + c) / 3.0, n
    if shape.class_name() in ("Disk", "Rectangle"):
        m = _matrix_numpy(mi.traverse(shape)["to_world"])
        n = np.linalg.inv(m[:3, :3]).T @ np.array([0.0, 0.0, 1.0])  # (normals: inverse transpose)
        return m[None, :3, 3], (n / np.linalg.norm(n))[None]
    return None, None


def _detached_copy(value):
    """A copy of a scene value that later writes into the scene cannot change:
    Mitsuba writes a transform into the object it holds, so a transform is
    copied from its matrix."""
    import drjit as dr

    if "Transform" in type(value).__name__:
        entries = np.array(value.matrix, dtype=np.float64).reshape(4, 4)
        return type(value)(type(value.matrix)(*[float(v) for v in entries.ravel()]))
    return dr.detach(value) if dr.is_array_v(value) else value


def camera_errors(estimated: dict[str, np.ndarray],
                  truth: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Sensor id -> {"position": distance of the camera centres (scene units),
    "rotation_deg": angle between the orientations} for ids in both."""
    out = {}
    for sid, c2w in estimated.items():
        if sid not in truth:
            continue
        t = np.asarray(truth[sid], dtype=np.float64)
        r = c2w[:3, :3].T @ t[:3, :3]
        # atan2 of sine and cosine: arccos alone loses small angles (float32 rotations
        # are orthonormal to ~1e-7, which arccos turns into ~0.01 degree)
        sin = 0.5 * np.linalg.norm([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
        cos = 0.5 * (np.trace(r) - 1.0)
        out[sid] = {"position": float(np.linalg.norm(c2w[:3, 3] - t[:3, 3])),
                    "rotation_deg": float(np.degrees(np.arctan2(sin, cos)))}
    return out


class Cameras(HybridAdam, Estimate):
    """The camera poses of the fitted photos whose sensor ids match ``key``
    (a glob, default ``*``), refined by moving the scene (see the module)."""

    kind = "camera"
    freezable = False
    per_view = True
    moves_scene_rigidly = True
    moves_edges = True
    deterministic_by_default = True

    def clipped_as_bounds(self, problem) -> bool:
        """Yes: left out, the clipped pixels of a bright noisy region leave those whose
        noise stayed below the clip, and a camera moves toward where its view looks
        darker (camera benchmark: 78/83 cameras within the goal, one worse than its
        start, with them left out; 80/83 and none as bounds)."""
        return True

    def __init__(self, config, ids: list[str]):
        self.key = "cameras"
        self.config = config
        self.targets = ids
        self.shape = (len(ids), 6)
        self.initial = np.zeros(self.shape)
        self.model: CameraModel | None = None

    @classmethod
    def from_table(cls, table, index, context) -> list["Cameras"]:
        ids = [k for k in context.sensor_ids if fnmatch.fnmatchcase(k, table.key)]
        if not ids:
            raise ValueError(f"{context.source}: estimate[{index}].key {table.key!r} (kind = "
                             f"\"camera\") matches no sensor id; sensors: "
                             f"{', '.join(context.sensor_ids)}")
        return [cls(table, ids)]

    @property
    def scene_keys(self) -> list[str]:
        return []

    @property
    def truth_keys(self) -> list[str]:
        return []  # true cameras come from [cameras] truth or truth.xml's sensors

    def setup(self, problem) -> None:
        """Build the :class:`CameraModel` for the fitted views the glob matches
        (the scene's current state is the rest state)."""
        views = [v for v in problem.views if not v.held_out
                 and fnmatch.fnmatchcase(v.id, self.config.key)]
        if not views:
            raise ValueError(f"optimize(): {problem.name}: the camera estimate's key "
                             f"{self.config.key!r} matches no fitted view")
        if any(e.finite_differences for e in problem.estimates):
            raise ValueError(f"optimize(): {problem.name}: finite-difference gradients "
                             "(gradient = \"fd\") cannot be combined with camera refinement")
        self.targets = [v.id for v in views]
        self.shape = (len(views), 6)
        self.initial = np.zeros(self.shape)
        self.model = CameraModel(problem.params, problem.scene, self.targets,
                                 [v.index for v in views])

    def start(self, store) -> None:
        import mitsuba as mi

        store.add(self.key, mi.Float(np.ravel(self.model.initial_latent())),
                  lr=CAMERA_LR if self.config.lr is None else self.config.lr,
                  groups=motion_groups(self.config.adam, len(self.model.ids)))
        self.plain_adam = False

    def view_values(self, store, values, view_index):
        return self.model.scene_values(store[self.key], view_index, values)

    def restore_scene(self, store, params) -> dict[str, Any]:
        return dict(self.model.rest)

    def value(self, store, params) -> np.ndarray:
        return np.array(store[self.key], dtype=np.float64).reshape(-1, 6)

    def result_fields(self, store, problem, estimates) -> dict[str, Any]:
        cameras = self.model.camera_to_world(estimates[self.key])
        start = self.model.start_camera_to_world()
        truth = problem.true_cameras or {}
        return {"cameras": cameras,
                "refined_cameras": refined_cameras(problem, cameras),
                "camera_errors": camera_errors(cameras, problem.true_cameras),
                "camera_errors_initial": camera_errors(start, problem.true_cameras),
                # for the report's picture: the refined cameras at start, refined and true
                "camera_poses": {"start": start, "refined": cameras,
                                 "truth": {v: np.asarray(truth[v]) for v in cameras if v in truth}}}

    @classmethod
    def to_json(cls, key, value, result, files):
        return {sid: np.asarray(c2w).tolist() for sid, c2w in result.cameras.items()}

    @classmethod
    def write_files(cls, key, value, result, folder) -> dict[str, str]:
        if not result.refined_cameras:
            return {}
        # Photo paths come out relative to the folder written (a temporary sibling of
        # the result folder while saving): the same as relative to the result folder.
        write_transforms(folder / "transforms.json", result.refined_cameras,
                         top={"invpbr_refined": True})
        return {"transforms": "transforms.json"}

    @classmethod
    def summary(cls, key, value, result) -> str:
        return f"{len(value)} cameras refined" + polish_summary(result, key)

    @classmethod
    def write_xml(cls, scene, key, value, result, files) -> bool:
        """Each refined camera's sensor gets its refined ``to_world``."""
        written = True
        for sid, c2w in result.cameras.items():
            element = scene.find_id(sid)
            if element is None or element.tag != "sensor":
                written = False
                continue
            scene.set_transform(element, np.asarray(c2w) @ OPENCV_TO_MITSUBA, compose=False)
        return written

    def gradcheck_applies(self, view_index: int) -> bool:
        return view_index in self.model.slot

    def gradcheck_writer(self, params, view_index: int, store=None):
        import mitsuba as mi

        model = self.model
        base = (model.initial_latent() if store is None
                else np.array(store[self.key], dtype=np.float64).ravel())

        def write(value):
            model.move_scene(params, value, view_index)

        def restore():
            model.move_scene(params, model.initial_latent(), None)

        def to_dr(value):
            return mi.Float(np.ravel(value))

        return np.asarray(base, dtype=np.float64), to_dr, write, restore

    def gradcheck_directions(self, value, grad, view_index):
        slot = self.model.slot[view_index]
        flat = value.reshape(-1)
        out = []
        for i, name in enumerate(["tx", "ty", "tz", "rx", "ry", "rz"]):
            d = np.zeros_like(flat)
            d[6 * slot + i] = 1.0
            out.append((f"camera {name}", d))
        return out


register_kind(Cameras)


def polish_summary(result, key: str) -> str:
    """What the Gauss-Newton polish says of how well the photos determine the motions of
    estimate ``key`` (result.json ``polished``): the largest standard deviations, named."""
    report = (getattr(result, "polished", None) or {}).get(key)
    if not report:
        return ""
    motions = report["motions"]
    blind = [m for m, r in motions.items() if r["sigma"]["rotation_deg"] is None]
    known = {m: r["sigma"] for m, r in motions.items() if r["sigma"]["rotation_deg"] is not None}
    parts = []
    if known:
        worst = max(known, key=lambda m: known[m]["rotation_deg"])
        label = "" if len(motions) == 1 else f" ({worst})"
        parts.append(f"standard deviation up to {known[worst]['rotation_deg']:.2f} deg, "
                     f"{known[worst]['position']:.3g} in position{label}")
    if blind:
        parts.append("not determined by the photos: " + ", ".join(blind))
    # (invpbr.optimization.polish.second_chance and from_start)
    for entry, returned, text in (
            ("second_chance", "second", "its end left a shallow valley (a second polish, "
             "blurred first: closer to the photos)"),
            ("from_start", "start", "the steps had left the start's basin (polished from "
             "the start: closer to the photos)")):
        named = [m for m, r in motions.items() if (r.get(entry) or {}).get("returned") == returned]
        if named:
            parts.append(text + ("" if len(motions) == 1 else ": " + ", ".join(named)))
    return "; polish: " + "; ".join(parts) if parts else ""


def refined_cameras(problem, c2w: dict[str, np.ndarray]) -> list:
    """Every view's :class:`~invpbr.capture.cameras.Camera` with its refined
    pose (the others as they were), for writing as a transforms.json."""
    out = []
    for view in problem.views:
        cam = view.camera
        if cam is None:
            try:
                cam = camera_from_sensor(problem.scene.sensors()[view.index], view.id,
                                         file_path=view.photo_path)
            except ValueError:
                continue  # not a perspective sensor
        out.append(replace(cam, c2w=c2w[view.id]) if view.id in c2w else cam)
    return out
