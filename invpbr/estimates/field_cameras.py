"""Camera refinement with a radiance field: ``[[estimate]] kind = "camera"``
beside ``[field]``.

For a field the camera rays themselves are differentiable: each step's
random rays (:class:`.fields.RayTable`) are moved by the cameras' latents
through Dr.Jit, so the loss reaches them directly (no scene to move, no
edge sampling: the volume renderer is continuous in the rays). The latents
and their meaning are those of :class:`.cameras.Cameras` (per camera
``[t / size, w]``: a translation in units of the field box's diagonal and
an axis-angle rotation, in the camera's own Mitsuba frame, x left, y up, z
forward); the refined camera-to-world is ``C D`` (``C`` the starting one,
``D`` the rigid motion of the latent), written to the result as for any
camera estimate.

Gauge: a field and all its cameras can move together without changing a
photo, so refine some cameras and keep others (a key glob that leaves them
out), or compare refined cameras with the truth up to such a motion.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .meshes import rotation_matrix, rotation_numpy

#: Cameras stay as they are for this fraction of the steps (their latents get no
#: gradient), while the field takes shape: moved against an empty or blurry field,
#: measured on a tiny folder, they wandered from 1.5 to 6 degrees off.
CAMERA_START = 0.3

#: OpenCV camera frame (x right, y down) <-> Mitsuba's (x left, y up).
FLIP = np.diag([-1.0, -1.0, 1.0])


class CameraRays:
    """Moves rays of a :class:`~.fields.RayTable` by camera latents.

    Args:
        estimate: the :class:`~.cameras.Cameras` estimate (already set up).
        cameras: the table's cameras, in table order.
        size: the length that a latent's translation is in units of.
    """

    def __init__(self, estimate, cameras: list, size: float):
        import mitsuba as mi

        self.estimate = estimate
        self.size = float(size)
        slot = {sid: j for j, sid in enumerate(estimate.targets)}
        slots = [slot.get(c.id, -1) for c in cameras]
        self.refined = mi.Bool(np.array([s >= 0 for s in slots]))
        self.slots = mi.UInt32(np.array([max(s, 0) for s in slots], np.uint32))
        self.rot = mi.Float(np.concatenate([c.c2w[:3, :3].ravel() for c in cameras]))
        self.slot_of = slot

    def latent(self, store, iteration: int, iterations: int):
        """The cameras' latent for step ``iteration`` (detached before CAMERA_START)."""
        import drjit as dr

        value = store[self.estimate.key]
        return dr.detach(value) if iteration < CAMERA_START * iterations else value

    def apply(self, latent, view, o, d):
        """Rays (o, d) of table views ``view`` (UInt32 per ray), moved by the
        refined cameras' latents (differentiably); others as they were."""
        import drjit as dr
        import mitsuba as mi

        slot = dr.gather(mi.UInt32, self.slots, view)
        on = dr.gather(mi.Bool, self.refined, view)
        x = [dr.gather(mi.Float, latent, slot * 6 + i, on) for i in range(6)]
        c = [dr.gather(mi.Float, self.rot, view * 9 + i) for i in range(9)]
        # OpenCV rotation R_cv = F R F and translation t_cv = F t (Mitsuba camera frame)
        r = rotation_matrix(mi.Vector3f(x[3], x[4], x[5]))
        flip = (-1.0, -1.0, 1.0)
        t = mi.Vector3f(*[flip[a] * x[a] * self.size for a in range(3)])
        # the direction in the camera's OpenCV frame, turned, back to the world
        local = mi.Vector3f(*[c[a] * d.x + c[3 + a] * d.y + c[6 + a] * d.z for a in range(3)])
        local = mi.Vector3f(*[flip[a] * local[a] for a in range(3)])
        turned = r @ local
        turned = mi.Vector3f(*[flip[a] * turned[a] for a in range(3)])

        def to_world(v):
            return mi.Vector3f(*[c[3 * a] * v.x + c[3 * a + 1] * v.y + c[3 * a + 2] * v.z
                                 for a in range(3)])
        return o + to_world(t), dr.normalize(to_world(turned))

    def camera(self, latent: np.ndarray, cam):
        """``cam`` (numpy, OpenCV) moved by its latent row (itself if not refined)."""
        j = self.slot_of.get(cam.id)
        if j is None:
            return cam
        return replace(cam, c2w=moved_c2w(cam.c2w, np.asarray(latent, np.float64).reshape(-1, 6)[j],
                                          self.size))


def moved_c2w(c2w: np.ndarray, row: np.ndarray, size: float) -> np.ndarray:
    """An OpenCV camera-to-world (4, 4) moved by a camera latent row
    ``[t / size, w]`` (Mitsuba camera frame): ``C F D F``."""
    d = np.eye(4)
    d[:3, :3] = FLIP @ rotation_numpy(row[3:]) @ FLIP
    d[:3, 3] = FLIP @ (np.asarray(row[:3], np.float64) * size)
    return np.asarray(c2w, np.float64) @ d
