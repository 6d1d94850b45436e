"""Geometry estimates: rigid poses and free-form shapes of triangle meshes.

Two kinds of ``[[estimate]]`` act on ``<shape>.vertex_positions``:

- ``kind = "pose"``: a rigid transform (translation and rotation, optionally a
  uniform scale) of one mesh, or of several meshes moved together (``key``
  a list or a glob), about the centre of their bounding box. The latent is
  ``[tx, ty, tz, wx, wy, wz(, log s)]``: the translation in units of the
  meshes' bounding radius, the rotation as an axis-angle vector (radians), so
  one learning rate suits all components. An area light's mesh is estimated
  the same way (its position and orientation).
- ``kind = "shape"``: free vertex positions with large-steps preconditioning
  (Nicolet et al. 2021, ``mi.ad.LargeSteps``): the optimizer steps on
  ``u = (I + lambda L) v``, which spreads each step smoothly over the surface,
  and uses Adam with one step size for all coordinates (``uniform``).
  Optional isotropic remeshing (Botsch and Kobbelt, via gpytoolbox) between
  stages keeps the triangles well shaped as the surface deforms.

Errors against a truth mesh: the mean distance between corresponding vertices
(scene units); for shapes also a symmetric Chamfer distance normalized by the
truth's bounding-box diagonal; for poses, the translation and rotation of the
estimate relative to the truth (a least-squares rigid fit).
"""

from __future__ import annotations

import warnings

import numpy as np

#: Key ending of the meshes' vertex positions.
VERTICES = "vertex_positions"
#: Key ending of an analytic shape's transform.
TO_WORLD = "to_world"

#: Mitsuba 3.9.1 shapes whose boundary derivatives disagree with finite
#: differences (tests/test_discontinuities.py), by plugin class.
TRAP_SHAPES = {
    "Cube": ("the built-in 'cube' has split vertices (a separate copy per face), and Mitsuba "
             "3.9.1's projective integrators give wrong boundary terms for its open edges; use a "
             "welded mesh (a PLY whose faces share vertices)"),
    "Rectangle": ("Mitsuba 3.9.1's boundary derivatives of an analytic 'rectangle' moved out of "
                  "its plane disagree with finite differences; use a welded mesh"),
    "Sphere": ("Mitsuba 3.9.1 gives NaNs in forward mode for a directly visible analytic 'sphere' "
               "emitter that moves; use a mesh sphere"),
}


def shape_name(key: str) -> str:
    """The shape id of a ``<shape>.vertex_positions`` key."""
    return key.removesuffix("." + VERTICES)


def trap_warning(params, key: str) -> str | None:
    """Why Mitsuba 3.9.1's geometry gradients for ``key``'s shape are not to be
    trusted, or None."""
    try:
        cls = params.properties[key][2].class_name()
    except (KeyError, IndexError, AttributeError, TypeError):
        return None
    return TRAP_SHAPES.get(cls)


def dr_width(value) -> int:
    """Width of a Dr.Jit array (0 for anything else, e.g. a missing parameter)."""
    import drjit as dr

    return dr.width(value) if dr.is_array_v(value) else 0


def scene_numpy(params, key: str) -> np.ndarray:
    """A scene parameter as numpy: a transform (``*.to_world``) as its 4x4
    matrix, anything else as float32."""
    value = params[key]
    if key.endswith("." + TO_WORLD):
        return np.array(value.matrix, dtype=np.float64).reshape(4, 4)
    return np.array(value, dtype=np.float32)


def write_ply(path, vertices: np.ndarray, faces: np.ndarray):
    """Write a triangle mesh (vertices (N, 3), faces (F, 3)) as a binary PLY with
    Mitsuba's own writer (``mi.Mesh.write_ply``); returns the path."""
    from pathlib import Path

    import mitsuba as mi

    v = np.ascontiguousarray(vertices, dtype=np.float32).reshape(-1, 3)
    f = np.ascontiguousarray(faces, dtype=np.uint32).reshape(-1, 3)
    mesh = mi.Mesh(Path(path).stem, len(v), len(f))
    params = mi.traverse(mesh)
    params["vertex_positions"] = mi.Float(v.ravel())
    params["faces"] = mi.UInt32(f.ravel())
    params.update()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    mesh.write_ply(str(path))
    return Path(path)


def mesh_arrays(params, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N, 3) and faces (F, 3) of the mesh owning ``key``."""
    vertices = np.array(params[key], dtype=np.float32).reshape(-1, 3)
    faces_key = shape_name(key) + ".faces"
    faces = np.array(params[faces_key], dtype=np.int64).reshape(-1, 3) if faces_key in params \
        else np.zeros((0, 3), np.int64)
    return vertices, faces


def motion_groups(adam: str, motions: int, *, scale: bool = False,
                  auto: str = "component") -> tuple[int, ...] | None:
    """Adam's groups (see :meth:`invpbr.optimization.latents.Latents.add`) for the
    latent of ``motions`` rigid motions of 6 components ``[t, w]`` each (then a log
    scale when ``scale``): None for ``adam = "component"`` (plain Adam), a group per
    translation and per rotation for ``"group"``, a group per motion for ``"motion"``
    and ``"hybrid"`` (whose estimate moves to plain Adam half-way: :func:`plain_adam_from`);
    ``"auto"`` is the estimate's ``auto``."""
    adam = auto if adam == "auto" else adam
    if adam == "component":
        return None
    per = (3, 3) if adam == "group" else (6,)
    return per * motions + ((1,) if scale else ())


def plain_adam_from(adam: str, iterations: int) -> int | None:
    """The step from which an estimate with ``adam = "hybrid"`` steps with plain
    Adam (the end of the coarse-to-fine blur, :func:`invpbr.optimization.coarse.blur_radius`:
    half the run); None for the other settings."""
    return max(iterations // 2, 1) if adam == "hybrid" else None


def to_plain_adam(store, key: str, iteration: int, iterations: int, adam: str) -> bool:
    """Move latent ``key`` to plain Adam once ``iteration`` reaches
    :func:`plain_adam_from` (its moments start again; a resumed run moves it at
    its first step); whether it moved now."""
    start = plain_adam_from(adam, iterations)
    if start is None or iteration < start:
        return False
    value = store[key]
    store.add(key, type(value)(value))
    return True


class HybridAdam:
    """For estimates of rigid motions (a latent ``key``, ``config.adam``):
    with ``adam = "hybrid"``, move the latent to plain Adam at
    :func:`plain_adam_from` (``start`` sets ``plain_adam = False``)."""

    def advance(self, store, params, iteration: int, iterations: int) -> bool:
        if getattr(self, "plain_adam", True):
            return False
        self.plain_adam = to_plain_adam(store, self.key, iteration, iterations, self.config.adam)
        return self.plain_adam

    def current_stage(self):
        return int(getattr(self, "plain_adam", False))


def mean_motion(samples: np.ndarray, motions: int) -> np.ndarray:
    """The mean of latents of ``motions`` rigid motions ``[t, w]`` (then any further
    components, e.g. a log scale), one row of ``samples`` per iterate: translations
    and further components averaged linearly, each motion's rotation by the
    chordal L2 mean of its rotations (``scipy.spatial.transform.Rotation.mean``),
    not of the axis-angle vectors."""
    from scipy.spatial.transform import Rotation

    samples = np.asarray(samples, dtype=np.float64)
    out = samples.mean(axis=0)
    for m in range(motions):
        w = samples[:, 6 * m + 3: 6 * m + 6]
        out[6 * m + 3: 6 * m + 6] = Rotation.from_rotvec(w).mean().as_rotvec()
    return out


def rotation_matrix(w):
    """Rotation matrix (``mi.Matrix3f``) of the axis-angle vector ``w``
    (Rodrigues' formula, differentiable also at ``w = 0``)."""
    import drjit as dr
    import mitsuba as mi

    theta2 = dr.squared_norm(w)
    theta = dr.sqrt(theta2 + 1e-30)
    small = theta2 < 1e-6
    a = dr.select(small, 1.0 - theta2 / 6.0, dr.sin(theta) / theta)
    b = dr.select(small, 0.5 - theta2 / 24.0, (1.0 - dr.cos(theta)) / dr.maximum(theta2, 1e-30))
    k = mi.Matrix3f(0.0, -w.z, w.y,
                    w.z, 0.0, -w.x,
                    -w.y, w.x, 0.0)
    return mi.Matrix3f(1.0) + a * k + b * (k @ k)


def rotation_numpy(w: np.ndarray) -> np.ndarray:
    """Numpy rotation matrix of an axis-angle vector."""
    w = np.asarray(w, dtype=np.float64)
    theta = float(np.linalg.norm(w))
    if theta < 1e-12:
        return np.eye(3)
    k = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]]) / theta
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)


def _unit_box_corners(to_world: np.ndarray) -> np.ndarray:
    """The corners of the box [-1, 1]^3 under a 4x4 transform: the extent of an
    analytic shape (sphere, rectangle, disk...) in its object space."""
    corners = np.array([[x, y, z, 1.0] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])
    return (corners @ np.asarray(to_world, np.float64).reshape(4, 4).T)[:, :3]


class PoseModel:
    """A rigid transform (optionally scaled) of one or more meshes.

    Args:
        keys: the ``<shape>.vertex_positions`` keys moved together.
        rest: key -> the meshes' vertices (N, 3) at the identity pose.
        scale: also estimate a uniform scale.
    """

    kind = "pose"

    def __init__(self, keys: list[str], rest: dict[str, np.ndarray], *, scale: bool = False):
        self.keys = list(keys)
        self.rest = {}
        extents = []
        for k in self.keys:
            if k.endswith(TO_WORLD):  # an analytic shape: its 4x4 matrix
                self.rest[k] = np.asarray(rest[k], dtype=np.float64).reshape(4, 4)
                extents.append(_unit_box_corners(self.rest[k]))
            else:
                self.rest[k] = np.asarray(rest[k], dtype=np.float32).reshape(-1, 3)
                extents.append(self.rest[k])
        points = np.concatenate(extents)
        self.centre = 0.5 * (points.min(axis=0) + points.max(axis=0))
        self.size = float(max(np.linalg.norm(points - self.centre, axis=1).max(), 1e-6))
        self.scale = scale

    @property
    def latent_size(self) -> int:
        return 7 if self.scale else 6

    def initial_latent(self) -> np.ndarray:
        return np.zeros(self.latent_size, np.float32)

    def scene_values(self, latent) -> dict:
        """key -> the scene value for ``latent``, differentiably: flat vertex
        positions (``mi.Float``) or an ``mi.AffineTransform4f``."""
        import drjit as dr
        import mitsuba as mi

        def at(i):
            return dr.gather(mi.Float, latent, i)

        t = mi.Vector3f(at(0), at(1), at(2)) * self.size
        rotation = rotation_matrix(mi.Vector3f(at(3), at(4), at(5)))
        s = dr.exp(at(6)) if self.scale else mi.Float(1.0)
        c = mi.Vector3f(*[float(x) for x in self.centre])
        out = {}
        for key in self.keys:
            if key.endswith(TO_WORLD):
                linear = s * rotation
                offset = c + t - linear @ c
                a = mi.Matrix4f(1.0)
                for i in range(3):
                    for j in range(3):
                        a[i][j] = linear[i][j]
                    a[i][3] = offset[i]
                rest = mi.Matrix4f(*[float(v) for v in self.rest[key].ravel()])
                out[key] = mi.AffineTransform4f(a @ rest)
                continue
            p = dr.unravel(mi.Vector3f, mi.Float(self.rest[key].ravel()))
            out[key] = dr.ravel(c + t + s * (rotation @ (p - c)))
        return out

    def points(self, values: dict) -> np.ndarray:
        """The points errors are measured on, from scene values (key -> numpy):
        mesh vertices, and an analytic shape's transformed unit-cube corners."""
        out = []
        for key in self.keys:
            v = np.asarray(values[key], dtype=np.float64)
            if key.endswith(TO_WORLD):
                out.append(_unit_box_corners(v))
            else:
                out.append(v.reshape(-1, 3))
        return np.concatenate(out).astype(np.float32)

    def describe(self, latent: np.ndarray) -> dict:
        """The pose in scene units: translation, rotation axis and angle, scale."""
        latent = np.asarray(latent, dtype=np.float64)
        w = latent[3:6]
        angle = float(np.linalg.norm(w))
        return {"translation": (latent[:3] * self.size).tolist(),
                "rotation_deg": float(np.degrees(angle)),
                "rotation_axis": (w / angle if angle > 0 else np.array([0.0, 0.0, 1.0])).tolist(),
                "scale": float(np.exp(latent[6])) if self.scale else 1.0,
                "centre": self.centre.tolist()}


class ShapeModel:
    """Free vertex positions of one mesh under large-steps preconditioning.

    Args:
        key: the ``<shape>.vertex_positions`` key.
        vertices: the starting vertices (N, 3).
        faces: the triangles (F, 3).
        lambda_: smoothness of the steps (larger: smoother, slower detail).
        first_faces: after a remeshing, the faces of the original mesh.
    """

    kind = "shape"

    def __init__(self, key: str, vertices: np.ndarray, faces: np.ndarray, lambda_: float, *,
                 first_faces: np.ndarray | None = None):
        import mitsuba as mi

        if faces.size == 0:
            raise ValueError(f"{key}: kind = \"shape\" needs a triangle mesh with faces")
        self.keys = [key]
        self.faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
        #: The faces of the mesh before any remeshing (the starting guess's).
        self.first_faces = self.faces if first_faces is None else first_faces
        self.lambda_ = float(lambda_)
        self.start = np.asarray(vertices, dtype=np.float32).reshape(-1, 3)
        self.steps = mi.ad.LargeSteps(mi.Float(self.start.ravel()),
                                      mi.UInt(self.faces.astype(np.uint32).ravel()), self.lambda_)

    @property
    def latent_size(self) -> int:
        return self.start.size

    def initial_latent(self) -> np.ndarray:
        import mitsuba as mi

        return np.array(self.steps.to_differential(mi.Float(self.start.ravel())), np.float32)

    def scene_values(self, latent) -> dict:
        return {self.keys[0]: self.steps.from_differential(latent)}

    def points(self, values: dict) -> np.ndarray:
        return np.asarray(values[self.keys[0]], dtype=np.float32).reshape(-1, 3)

    def faces_of(self, points: np.ndarray) -> np.ndarray:
        """The faces that go with ``points``: the current mesh's, or the
        original mesh's for points from before a remeshing."""
        return self.faces if len(points) == len(self.start) else self.first_faces


def remesh(vertices: np.ndarray, faces: np.ndarray, edge_length: float,
           iterations: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic remeshing to ``edge_length`` (Botsch and Kobbelt), via gpytoolbox."""
    try:
        from gpytoolbox import remesh_botsch
    except ImportError:
        raise ImportError("remesh needs the gpytoolbox package: pip install 'invpbr[remesh]' "
                          "(or pip install gpytoolbox)") from None
    v, f = remesh_botsch(np.asarray(vertices, np.float64), np.asarray(faces, np.int32),
                         i=iterations, h=float(edge_length), project=True)
    return np.asarray(v, np.float32), np.asarray(f, np.int64)


def mean_edge_length(vertices: np.ndarray, faces: np.ndarray) -> float:
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces)
    edges = np.concatenate([v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 1]],
                            v[f[:, 0]] - v[f[:, 2]]])
    return float(np.linalg.norm(edges, axis=1).mean())


def vertex_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Mean distance between corresponding vertices; where the vertex counts
    differ (after remeshing), the mean symmetric nearest-vertex distance."""
    a = np.asarray(estimate, np.float64).reshape(-1, 3)
    b = np.asarray(truth, np.float64).reshape(-1, 3)
    if a.shape == b.shape:
        return float(np.linalg.norm(a - b, axis=1).mean())
    return chamfer_distance(a, b)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int = 20000,
                   seed: int = 0) -> np.ndarray:
    """``n`` points distributed uniformly by area over a triangle mesh."""
    v = np.asarray(vertices, np.float64).reshape(-1, 3)
    f = np.asarray(faces).reshape(-1, 3)
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(f), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)
    return (tri[chosen] * w[:, :, None]).sum(axis=1)


def chamfer_distance(a: np.ndarray, b: np.ndarray, *, normalize: bool = False,
                     faces_a: np.ndarray | None = None,
                     faces_b: np.ndarray | None = None) -> float:
    """Symmetric Chamfer distance (mean of both directions' mean nearest
    distances) between two point sets, or between two surfaces when their
    faces are given (20 000 area-uniform samples of each surface, each
    against 200 000 samples of the other, so that the mesh resolution does
    not set a floor: two samplings of one unit sphere measure 0.004); normalized by ``b``'s bounding-box diagonal when
    ``normalize``."""
    from scipy.spatial import cKDTree

    a = np.asarray(a, np.float64).reshape(-1, 3)
    b = np.asarray(b, np.float64).reshape(-1, 3)
    diagonal = float(np.linalg.norm(b.max(axis=0) - b.min(axis=0)))
    a_ref, b_ref = a, b
    if faces_a is not None and faces_b is not None and len(faces_a) and len(faces_b):
        # Query points against a ten times denser sampling of the other surface.
        a, b = sample_surface(a_ref, faces_a, seed=1), sample_surface(b_ref, faces_b, seed=2)
        a_ref = sample_surface(a_ref, faces_a, n=10 * len(a), seed=3)
        b_ref = sample_surface(b_ref, faces_b, n=10 * len(b), seed=4)
    d_ab = cKDTree(b_ref).query(a)[0].mean()
    d_ba = cKDTree(a_ref).query(b)[0].mean()
    d = 0.5 * (d_ab + d_ba)
    if normalize:
        d /= max(diagonal, 1e-12)
    return float(d)


def rigid_fit(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rotation R and translation t with ``R @ source + t ~ target``
    (Kabsch), for corresponding points (N, 3)."""
    a = np.asarray(source, np.float64).reshape(-1, 3)
    b = np.asarray(target, np.float64).reshape(-1, 3)
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    u, _, vt = np.linalg.svd((a - ca).T @ (b - cb))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, cb - r @ ca


def pose_error(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """How far an estimated pose is from the truth: the translation of the
    centroid (scene units) and the angle of the relative rotation (degrees)."""
    a = np.asarray(estimate, np.float64).reshape(-1, 3)
    b = np.asarray(truth, np.float64).reshape(-1, 3)
    r, _ = rigid_fit(a, b)
    angle = np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1)))
    return {"position": float(np.linalg.norm(a.mean(axis=0) - b.mean(axis=0))),
            "rotation_deg": float(angle)}


def geometry_errors(kind: str, estimate: np.ndarray, truth: np.ndarray, *,
                    faces: np.ndarray | None = None,
                    truth_faces: np.ndarray | None = None) -> dict[str, float]:
    """Errors of a geometry estimate: ``vertex`` (mean vertex distance), and
    ``chamfer`` (between surfaces where faces are given, normalized by the
    truth's bounding-box diagonal) for shapes or ``position``/``rotation_deg``
    for poses."""
    out = {"vertex": vertex_error(estimate, truth)}
    if kind == "shape":
        out["chamfer"] = chamfer_distance(estimate, truth, normalize=True, faces_a=faces,
                                          faces_b=truth_faces)
    elif np.asarray(estimate).size == np.asarray(truth).size:
        out.update(pose_error(estimate, truth))
    return out


def warn_traps(params, keys: list[str], where: str) -> None:
    """Warn when an estimate moves a shape on which Mitsuba 3.9.1's boundary
    derivatives are known to be wrong."""
    for key in keys:
        reason = trap_warning(params, key)
        if reason:
            warnings.warn(f"{where}: {key!r}: gradients may be wrong: {reason}", stacklevel=3)


#: Emitters whose shadows Mitsuba 3.9.1's projective integrators do not
#: differentiate (no boundary term for shadow edges of delta lights).
DELTA_EMITTERS = ("PointLight", "SpotLight", "DirectionalEmitter")


def delta_light_warning(scene) -> str | None:
    """A warning when ``scene`` has point, spot or directional lights, whose
    moving shadow edges no projective integrator differentiates."""
    names = sorted({e.class_name() for e in scene.emitters()} & set(DELTA_EMITTERS))
    if not names:
        return None
    return (f"the scene has {', '.join(names)} emitters: Mitsuba 3.9.1's projective integrators "
            "do not differentiate the shadow edges they cast, so geometry gradients miss those "
            "(silhouettes and shading are fine); use area lights where shadows matter")
