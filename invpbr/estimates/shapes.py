"""Free shapes (``kind = "shape"``): every vertex of a mesh, with large-steps
preconditioning (Nicolet et al. 2021, ``mi.ad.LargeSteps``: the optimizer
steps on ``u = (I + lambda L) v`` with a uniform Adam) and optional isotropic
remeshings (``remesh = n``, gpytoolbox) evenly spaced over the run. The model
and the errors are in :mod:`.meshes` (:class:`ShapeModel`, Chamfer distance).

When the gradient is valid: with a projective integrator on a welded mesh;
a coarse mesh with smooth normals has a shading terminator that moves with
the vertices and is not sampled (20 % off on one vertex), and the built-in
``cube`` (split vertices) is wrong (invpbr warns).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import register_kind
from .meshes import (ShapeModel, dr_width, geometry_errors, mean_edge_length, mesh_arrays,
                     remesh, shape_name)
from .poses import Geometry, match_geometry


class Shape(Geometry):
    """Free vertex positions of one mesh."""

    kind = "shape"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stage = 0

    @classmethod
    def from_table(cls, table, index, context) -> list["Shape"]:
        out = []
        for key in match_geometry(table, index, context):
            vertices, faces = mesh_arrays(context.params, key)
            model = ShapeModel(key, vertices, faces, table.lambda_)
            out.append(cls(key, table, model, [key], vertices))
        return out

    @property
    def truth_keys(self) -> list[str]:
        # its error is measured between surfaces: the truth's faces too
        return self.scene_keys + [k.removesuffix("vertex_positions") + "faces"
                                  for k in self.scene_keys]

    def start(self, store) -> None:
        import mitsuba as mi

        store.add(self.key, mi.Float(np.ravel(self.model.initial_latent())), lr=self.config.lr,
                  uniform=True)

    def current_stage(self) -> int:
        return self._stage

    def advance(self, store, params, iteration: int, iterations: int) -> bool:
        n = self.config.remesh
        if not n:
            return False
        stage = min(n, iteration * (n + 1) // iterations)
        if stage == self._stage:
            return False
        self.remesh(store, params, stage)
        return True

    def remesh(self, store, params, stage: int) -> None:
        """Remesh isotropically (0.75x the mean edge length) and restart the
        large-steps latent from the new mesh."""
        vertices = np.array(params[self.key], dtype=np.float32).reshape(-1, 3)
        faces = self.model.faces
        h = 0.75 * mean_edge_length(vertices, faces)
        vertices, faces = remesh(vertices, faces, h)
        name = shape_name(self.key)
        if dr_width(params.get(f"{name}.vertex_texcoords", None)) > 0:
            raise ValueError(f"{self.key}: remesh needs a mesh without texture coordinates (they "
                             "cannot follow a new triangulation)")
        self.set_mesh(store, params, vertices, faces)
        self._stage = stage

    def set_mesh(self, store, params, vertices: np.ndarray, faces: np.ndarray) -> None:
        """Put a new triangulation into the scene and the latent."""
        import mitsuba as mi

        name = shape_name(self.key)
        params[self.key] = type(params[self.key])(vertices.ravel())
        params[f"{name}.faces"] = type(params[f"{name}.faces"])(faces.astype(np.uint32).ravel())
        params.update()
        self.model = ShapeModel(self.key, vertices, faces, self.model.lambda_,
                                first_faces=self.model.first_faces)
        self.shape = vertices.shape
        store.add(self.key, mi.Float(np.ravel(self.model.initial_latent())), lr=self.config.lr,
                  uniform=True)

    def errors(self, value, problem):
        truth = self.truth_points(problem)
        if truth is None:
            return None, {}
        faces = self.model.faces_of(value)
        truth_faces = problem.truth.get(self.truth_keys[-1])
        if truth_faces is not None:
            truth_faces = truth_faces.astype(np.int64).reshape(-1, 3)
        found = geometry_errors("shape", value, truth, faces=faces, truth_faces=truth_faces)
        return found.pop("vertex"), found

    def gradcheck_writer(self, params, view_index: int, store=None):
        import mitsuba as mi

        base, _, write, restore = super().gradcheck_writer(params, view_index, store)

        def to_dr(value):
            return mi.Float(np.ravel(value))

        return base.reshape(-1, 3), to_dr, write, restore

    def gradcheck_directions(self, value, grad, view_index):
        i = int(np.argmax(np.abs(grad).reshape(-1)))
        d = np.zeros_like(value)
        d.reshape(-1)[i] = 1.0
        return [(f"vertex {i // 3} {'xyz'[i % 3]}", d)]

    def state(self) -> dict[str, Any]:
        # after a remeshing the mesh is not the scene's: the new triangulation and
        # the vertices its large-steps model started from
        return {"stage": self._stage, "faces": self.model.faces, "start": self.model.start,
                "first_faces": self.model.first_faces}

    def load_state(self, store, params, state: dict[str, Any]) -> None:
        faces = np.asarray(state["faces"])
        if not np.array_equal(faces, self.model.faces):
            self.model.first_faces = np.asarray(state["first_faces"])
            self.set_mesh(store, params, np.asarray(state["start"], np.float32), faces)
        self._stage = int(state["stage"])


register_kind(Shape)
