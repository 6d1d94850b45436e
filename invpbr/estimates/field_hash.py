"""The hash-grid model of a radiance field (``[field] model = "hash"``):
Instant-NGP's multiresolution hash encoding of the position and a small MLP,
in Dr.Jit (``drjit.nn``; FP32 on the CPU, no PyTorch).

- ``drjit.nn.HashGridEncoding``: :data:`LEVELS` levels of :data:`FEATURES`
  features, from :data:`BASE_RESOLUTION` cells along the box to
  ``[field] resolution``'s last entry (the levels grow geometrically), at
  most ``2^`` :data:`LOG2_TABLE` vertices per level (hashed above that);
- a density network ``Linear(16, 32) - ReLU - Linear(32, 16)``: its first
  output is the raw density (``sigma = softplus(raw + RAW_START) *
  DENSITY_SCALE / box size``, as the grid's), the other 15 are features;
- a colour network ``Linear(15 + K, 32) - ReLU - Linear(32, 32) - ReLU -
  Linear(32, 3)`` on those features and the ``K = (sh_degree + 1)^2``
  spherical harmonics of the view direction, then a sigmoid.

The latents are the encoding's table (``field.hash``) and each network's
weights in ``drjit.nn``'s training layout (``field.mlp_density``,
``field.mlp_colour``; ``drjit.nn.pack``), all stepped by the run's Adam.
Everything else (random rays, occupancy grid, background, results,
``invpbr view``) is the field's (:mod:`.fields`): :class:`HashFieldEstimate`
only swaps the model. ``field.npz`` holds the latents with the settings
that made them, and the raw density sampled at the cell centres of the finest
level (``resolution``'s last entry along the box) for the marching-cubes mesh.

The networks' packed layout is that of the backend that wrote them; a
result folder is read back on the same kind of backend (LLVM or CUDA).

Gradients: plain Dr.Jit AD through the encoding's gathers, the networks'
matrix-vector products and the volume renderer; tests/test_fields.py
checks a few table entries and weights against finite differences.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from . import field_multiscale, field_options
from .fields import (DENSITY_SCALE, ENVMAP_HEIGHT, FIELD_MODELS, RAW_START, FieldEstimate,
                     grid_dims, saved_background_occupancy)
from .volume import sh_basis, softplus

#: Hash-grid levels and features per level (16 features in all).
LEVELS = 8
FEATURES = 2
#: Cells along the box at the coarsest level.
BASE_RESOLUTION = 16
#: At most 2^LOG2_TABLE vertices per level (finer levels are hashed into that).
LOG2_TABLE = 15
#: Width of the hidden layers, and the features passed from density to colour.
HIDDEN = 32
GEO_FEATURES = 15
#: Initial table entries are uniform in [-INIT_SCALE, INIT_SCALE] (Instant-NGP: 1e-4).
INIT_SCALE = 1e-4
#: Learning rate of the hash model's latents relative to ``[field] lr`` (the grid's
#: default, 0.1, is ten times Instant-NGP's 0.01).
LR_FACTOR = 0.1


def per_level_scale(finest: int) -> float:
    """The growth of the resolution from one level to the next."""
    return max(1.0, finest / BASE_RESOLUTION) ** (1.0 / (LEVELS - 1))


def level_cells(finest: int, level: int) -> float:
    """Cells along the box at hash ``level`` (``drjit.nn``'s level scale)."""
    return BASE_RESOLUTION * per_level_scale(finest) ** level - 1.0


def make_encoding(finest: int, seed: int = 0):
    """The ``drjit.nn.HashGridEncoding`` of a field (randomly initialized)."""
    import drjit as dr
    import drjit.nn as nn
    import mitsuba as mi

    return nn.HashGridEncoding(mi.Float, 3, n_levels=LEVELS, n_features_per_level=FEATURES,
                               hashmap_size=2 ** LOG2_TABLE, base_resolution=BASE_RESOLUTION,
                               per_level_scale=per_level_scale(finest), init_scale=INIT_SCALE,
                               rng=dr.rng(seed=seed))


def make_networks(degree: int, seed: int = 0):
    """The density and colour networks (allocated, packed for training)."""
    import drjit as dr
    import drjit.nn as nn
    import mitsuba as mi

    tensor = mi.TensorXf
    density = nn.Sequential(nn.Linear(-1, HIDDEN), nn.ReLU(), nn.Linear(-1, 1 + GEO_FEATURES))
    colour = nn.Sequential(nn.Linear(-1, HIDDEN), nn.ReLU(), nn.Linear(-1, HIDDEN), nn.ReLU(),
                           nn.Linear(-1, 3))
    density = density.alloc(tensor, LEVELS * FEATURES, rng=dr.rng(seed=seed + 1))
    colour = colour.alloc(tensor, GEO_FEATURES + (degree + 1) ** 2, rng=dr.rng(seed=seed + 2))
    return nn.pack(density, layout="training"), nn.pack(colour, layout="training")


class HashField:
    """A hash-grid field evaluated from its latents (see the module): has
    ``density(u)`` and ``colour(u, d)`` as :func:`.volume.render_rays` wants.

    Args:
        table, density_weights, colour_weights: the latents (Dr.Jit Float).
        finest: cells along the box at the finest level.
        degree: spherical-harmonic degree of the view direction.
        scale: DENSITY_SCALE / box size.
    """

    #: (a multi-scale field: each sample's footprint down-weights the levels finer than it)
    width = None

    def __init__(self, table, density_weights, colour_weights, *, finest: int, degree: int,
                 scale: float, multiscale: bool = False):
        self.multiscale = multiscale
        self.finest = finest
        self.encoding = make_encoding(finest)
        self.encoding.data = table
        self.density_net, self.colour_net = make_networks(degree)
        self.density_net["weights"] = density_weights
        self.colour_net["weights"] = colour_weights
        self.degree = degree
        self.scale = scale
        self._last = None  # (u, outputs of the density network): colour reuses them

    def _outputs(self, u) -> list:
        import drjit.nn as nn

        if self._last is not None and self._last[0] is u:
            return self._last[1]
        features = self.encoding([u.x, u.y, u.z])
        if self.width is not None:
            features = field_multiscale.weighted_hash_features(
                features, self.width / self.box, [level_cells(self.finest, i)
                                                  for i in range(LEVELS)], FEATURES)
        out = list(self.density_net(nn.CoopVec(*[features[i] for i in range(len(features))])))
        self._last = (u, out)
        return out

    def with_footprint(self, width) -> "HashField":
        """The field seen by samples ``width`` wide (world units, per lane;
        Zip-NeRF's down-weighting of the finer levels), or itself when not
        multi-scale."""
        if not self.multiscale:
            return self
        out = copy.copy(self)
        out.width, out._last = width, None
        return out

    @property
    def box(self) -> float:
        """The box's longest side (world units)."""
        return DENSITY_SCALE / self.scale

    def density(self, u):
        """Density (1 / world units) at ``u`` (unit cube, Array3f)."""
        return softplus(self._outputs(u)[0] + RAW_START) * self.scale

    def raw_density(self, u):
        """The raw density (before softplus and scale) at ``u``."""
        return self._outputs(u)[0] + RAW_START

    def colour(self, u, d):
        """Linear RGB (Color3f) seen at ``u`` along unit directions ``d``."""
        import drjit as dr
        import drjit.nn as nn
        import mitsuba as mi

        h = self._outputs(u)[1:]
        rgb = list(self.colour_net(nn.CoopVec(*h, *sh_basis(d, self.degree))))
        return mi.Color3f(*[dr.rcp(1.0 + dr.exp(-x)) for x in rgb])


def sample_raw_density(field: HashField, lo, hi, resolution: int) -> np.ndarray:
    """The raw density at the centres of a (z, y, x) grid over the box with
    ``resolution`` cells along its longest side (for the mesh, whose level
    follows the cell size as the grid model's does)."""
    import drjit as dr
    import mitsuba as mi

    nx, ny, nz = grid_dims(lo, hi, resolution)
    z, y, x = np.meshgrid((np.arange(nz) + 0.5) / nz, (np.arange(ny) + 0.5) / ny,
                          (np.arange(nx) + 0.5) / nx, indexing="ij")
    with dr.suspend_grad():
        u = mi.Point3f(*(mi.Float(a.ravel().astype(np.float32)) for a in (x, y, z)))
        raw = np.array(field.raw_density(u), np.float32)
    return raw.reshape(nz, ny, nx)


class HashFieldEstimate(FieldEstimate):
    """A radiance field with the hash-grid model (see the module); the rest
    is :class:`~.fields.FieldEstimate`'s."""

    def setup(self, problem) -> None:
        super().setup(problem)
        self.dims = self.sample_dims()
        self.stage = len(self.config.resolution) - 1  # (one stage: no coarse to fine)

    def sample_dims(self) -> tuple[int, int, int]:
        """The finest level's cells along x, y, z (what ``dt`` follows)."""
        return grid_dims(self.lo, self.hi, self.config.resolution[-1])

    def latent_names(self) -> list[str]:
        names = ["field.hash", "field.mlp_density", "field.mlp_colour"]
        names += [field_options.APPEARANCE_KEY] if self.appearance is not None else []
        names += [field_options.TRANSIENT_KEY] if self.transient is not None else []
        return names + (["field.background"] if self.fixed_background is None else [])

    def initial_latents(self) -> dict[str, Any]:
        import drjit as dr
        import mitsuba as mi

        seed = int(self.problem.config.optimize.seed) if self.problem is not None else 0
        enc = make_encoding(self.config.resolution[-1], seed)
        density, colour = make_networks(self.config.sh_degree, seed)
        out = {"field.hash": mi.Float(dr.detach(enc.data)),
               "field.mlp_density": mi.Float(dr.detach(density["weights"])),
               "field.mlp_colour": mi.Float(dr.detach(colour["weights"]))}
        if self.appearance is not None:  # (per-photo colour transforms, as the grid's)
            out[field_options.APPEARANCE_KEY] = self.appearance.initial()
        if self.transient is not None:
            out[field_options.TRANSIENT_KEY] = self.transient.initial()
        if self.fixed_background is not None:
            return out
        size = 3 if self.background_kind == "learned" else ENVMAP_HEIGHT * 2 * ENVMAP_HEIGHT * 3
        return out | {"field.background": mi.Float(np.zeros(size, np.float32))}

    def start(self, store) -> None:
        lr = self.config.lr * LR_FACTOR
        for name, value in self.initial_latents().items():
            own = field_options.LEARNING_RATES.get(name, self.config.lr)  # (appearance's own)
            store.add(name, value, lr=lr if name.startswith(("field.hash", "field.mlp")) else own)
        self.store = store

    def model(self, store) -> HashField:
        return HashField(store["field.hash"], store["field.mlp_density"], store["field.mlp_colour"],
                         finest=self.config.resolution[-1], degree=self.config.sh_degree,
                         scale=DENSITY_SCALE / float((self.hi - self.lo).max()),
                         multiscale=self.config.multiscale)

    def upsample(self, store, stage: int) -> None:
        self.stage = stage  # (the hash grid has all its levels from the start)

    def load_state(self, store, params, state: dict[str, Any]) -> None:
        super().load_state(store, params, state)
        self.dims = self.sample_dims()

    def regularizer(self, store):
        return None  # (total variation is the grid's; the hash grid's levels smooth it)

    def value(self, store, params) -> dict[str, Any]:
        bg = (self.fixed_background if self.fixed_background is not None
              else np.array(store["field.background"], np.float32))
        model = self.model(store)
        out = {"model": np.str_("hash"), "table": np.array(store["field.hash"], np.float32),
               "mlp_density": np.array(store["field.mlp_density"], np.float32),
               "mlp_colour": np.array(store["field.mlp_colour"], np.float32),
               "finest": np.int32(self.config.resolution[-1]),
               "density": sample_raw_density(model, self.lo, self.hi, self.config.resolution[-1]),
               "lo": np.asarray(self.lo, np.float32), "hi": np.asarray(self.hi, np.float32),
               "degree": np.int32(self.config.sh_degree),
               "background_kind": np.str_(self.background_kind), "background": bg,
               "dt": np.float32(self.dt), "levels": np.int32(LEVELS),
               "features": np.int32(FEATURES), "base_resolution": np.int32(BASE_RESOLUTION),
               "log2_table": np.int32(LOG2_TABLE), "hidden": np.int32(HIDDEN)}
        if self.occupancy is not None and self.occupancy.updates:
            out["occupied"] = self.occupancy.occupied
        if self.config.multiscale:
            out["multiscale"] = np.bool_(True)
        return out | self.appearance_value(store)

    def result_fields(self, store, problem, estimates) -> dict[str, Any]:
        notes = []
        value = estimates.get(self.key)
        if value is not None and not all(np.all(np.isfinite(value[k]))
                                         for k in ("table", "mlp_density", "mlp_colour")):
            notes.append("field: NaN or infinite values in the fitted field")
        if self.occupancy is not None and self.occupancy.emptied:
            notes.append(f"field: the occupancy grid came out empty {self.occupancy.emptied} "
                         "time(s) (see the warnings)")
        return ({"notes": notes} if notes else {}) | self.appearance_result(store, problem)

    # -- a saved field (the class methods FieldEstimate hands a hash field to) -----------------

    @classmethod
    def required_keys(cls) -> tuple[str, ...]:
        return ("table", "mlp_density", "mlp_colour", "finest", "lo", "hi", "degree",
                "background_kind", "levels", "features", "base_resolution", "log2_table",
                "hidden")

    @classmethod
    def model_from_data(cls, data: dict[str, Any]):
        """(model, lo, hi, dt, background function, occupancy) of a loaded hash field.

        Raises:
            ValueError: written with other hash-grid settings than this version's.
        """
        import mitsuba as mi

        mine = {"levels": LEVELS, "features": FEATURES, "base_resolution": BASE_RESOLUTION,
                "log2_table": LOG2_TABLE, "hidden": HIDDEN}
        other = {k: int(data[k]) for k in mine if int(data[k]) != mine[k]}
        if other:
            raise ValueError(f"field.npz: a hash field with other settings ({other}) than this "
                             f"version of invpbr reads ({ {k: mine[k] for k in other} })")
        lo, hi = data["lo"].astype(float), data["hi"].astype(float)
        model = HashField(mi.Float(data["table"].astype(np.float32)),
                          mi.Float(data["mlp_density"].astype(np.float32)),
                          mi.Float(data["mlp_colour"].astype(np.float32)),
                          finest=int(data["finest"]), degree=int(data["degree"]),
                          scale=DENSITY_SCALE / float((hi - lo).max()),
                          multiscale=bool(data.get("multiscale", False)))
        return (model, lo, hi, float(data["dt"])) + saved_background_occupancy(data)

    @classmethod
    def to_json(cls, key, value, result, files) -> Any:
        doc = {"model": "hash", "levels": int(value["levels"]),
               "features_per_level": int(value["features"]),
               "resolution": [int(value["base_resolution"]), int(value["finest"])],
               "table_size": int(np.asarray(value["table"]).size),
               "network_weights": int(np.asarray(value["mlp_density"]).size
                                      + np.asarray(value["mlp_colour"]).size),
               "bounds": [np.asarray(value["lo"]).tolist(), np.asarray(value["hi"]).tolist()],
               "sh_degree": int(value["degree"]), "background": str(value["background_kind"]),
               "files": dict(files)}
        if "occupied" in value:
            doc["occupied_fraction"] = float(np.mean(value["occupied"]))
        if bool(value.get("multiscale", False)):
            doc["multiscale"] = True
        if "appearance" in value:  # (renders are at the neutral appearance)
            doc["appearance"] = {str(i): np.round(m, 5).tolist()
                                 for i, m in zip(value["appearance_ids"], value["appearance"])}
        return doc

    @classmethod
    def summary(cls, key, value, result) -> str:
        lo, hi = (np.round(np.asarray(value[k], np.float64), 3).tolist() for k in ("lo", "hi"))
        occ = (f", {100 * float(np.mean(value['occupied'])):.1f}% occupied"
               if "occupied" in value else "")
        return (f"hash grid {int(value['levels'])} levels {int(value['base_resolution'])}-"
                f"{int(value['finest'])} + MLP in {lo} - {hi}{occ}")


FIELD_MODELS["hash"] = HashFieldEstimate
