"""An estimate kind defined outside invpbr, for tests/test_kinds.py: it proves
that a new kind is one module plus a registration.

``kind = "grey"`` estimates one number for a colour parameter of the scene
whose three channels are held equal (an unknown grey albedo), starting from
the table's own option ``start``.
"""

from __future__ import annotations

import numpy as np

from invpbr.estimates import Estimate, register_kind


@register_kind
class Grey(Estimate):
    """One grey level for a colour key (the three channels together)."""

    kind = "grey"
    options = {"start": 0.5}

    def __init__(self, key, config):
        self.key = key
        self.config = config
        self.initial = np.array([float(config.options["start"])])

    @classmethod
    def from_table(cls, table, index, context):
        if table.key not in context.params.keys():
            raise ValueError(f"{context.where(index, table)} matches no parameter of the scene")
        context.claimed.add(table.key)
        return [cls(table.key, table)]

    def start(self, store):
        import mitsuba as mi

        store.add(self.key, mi.Float(self.initial.astype(np.float32)), lr=self.config.lr)

    def scene_values(self, store, params):
        import mitsuba as mi

        g = store[self.key]
        return {self.key: mi.Color3f(g, g, g)}

    def project(self, store):
        import drjit as dr

        store[self.key] = dr.clip(store[self.key], 0.0, 1.0)

    def value(self, store, params):
        return np.array(store[self.key], dtype=np.float64).reshape(1)

    def errors(self, value, problem):
        truth = problem.truth.get(self.key)
        if truth is None:
            return None, {}
        return float(abs(value[0] - np.mean(truth))), {}

    @classmethod
    def write_xml(cls, scene, key, value, result, files):
        return scene.set_value(key, np.repeat(np.asarray(value, np.float64).ravel()[:1], 3))

    @classmethod
    def summary(cls, key, value, result):
        return f"grey {float(np.ravel(value)[0]):.4f}"
