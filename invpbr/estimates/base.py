"""The protocol every estimated kind follows, and the registry of kinds.

An :class:`Estimate` is one unknown of a problem: a colour, a texture, an
environment map, the pose of some meshes, a free shape, the cameras, the
photos' gains, or a kind defined elsewhere and registered with
:func:`register_kind`. It owns everything about itself:

- which ``[[estimate]]`` tables it answers (:meth:`Estimate.from_table`),
  its latent variables with their initial values and learning rates
  (:meth:`Estimate.start`), how they become scene values
  (:meth:`Estimate.scene_values`, per view with :meth:`Estimate.view_values`,
  on the rendered image with :meth:`Estimate.apply_to_image`), bounds after a
  step (:meth:`Estimate.project`), coarse-to-fine stages
  (:meth:`Estimate.advance`), regularizers (:meth:`Estimate.regularizer`);
- what the optimizer may do with it: whether it moves visibility edges
  (:attr:`Estimate.moves_edges`: projective integrators), whether a step with
  it can be recorded once by ``dr.freeze`` (:attr:`Estimate.freezable`),
  whether the scene differs per view (:attr:`Estimate.per_view`), whether it
  changes each view's image (:attr:`Estimate.transforms_images`), whether it
  is stepped by finite differences (:attr:`Estimate.finite_differences`),
  whether a view's derivatives need the edges that view sees directly
  (:meth:`Estimate.needs_primary_edges`);
- its errors against the truth and what it adds to the result
  (:meth:`Estimate.errors`, :meth:`Estimate.result_fields`) and to the result
  folder (class methods :meth:`Estimate.to_json`, :meth:`Estimate.write_files`,
  :meth:`Estimate.summary`, which work from a saved result alone);
- the directions :func:`invpbr.optimization.gradcheck.check_gradients` checks
  (:meth:`Estimate.gradcheck_directions`, :meth:`Estimate.gradcheck_writer`);
- its state for a checkpoint (:meth:`Estimate.state`, :meth:`Estimate.load_state`).

Two optional hooks, looked up by name: ``make_strategy(context)`` for a kind
that steps in its own way (a radiance field draws random rays, not whole
images; see :func:`invpbr.optimization.strategies.choose_strategy`), and a
class method ``render_views(folder, cameras, *, spp, envmap, out)`` for a kind
that renders a result folder itself (``invpbr view``, see
:mod:`invpbr.results.view`).

The optimizer keeps the latents in a store (:class:`LatentStore`: named
Dr.Jit variables with per-name learning rates); the loop, result writing,
gradient checks and the command line iterate over estimates without naming
their kinds.

A new kind is one module with one :class:`Estimate` subclass, registered::

    from invpbr.estimates import Estimate, register_kind

    @register_kind
    class Roughness(Estimate):
        kind = "my_roughness"
        ...

and used from invpbr.toml with ``kind = "my_roughness"``.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from ..config import EstimateConfig, register_estimate_kind


class LatentStore(Protocol):
    """Where an estimate's latent variables live during a run (the optimizer).

    ``store[name]`` is the current value (a differentiable Dr.Jit array);
    :meth:`add` registers or replaces one (a new shape resets its optimizer
    state).
    """

    half: bool
    """Half precision (``[optimize] precision = "half"``): textures in float16."""

    def __getitem__(self, name: str) -> Any: ...

    def __setitem__(self, name: str, value: Any) -> None: ...

    def add(self, name: str, value: Any, *, lr: float | None = None,
            uniform: bool = False, groups: tuple[int, ...] | None = None) -> None: ...


@dataclass
class ResolveContext:
    """What resolving ``[[estimate]]`` tables needs to know of the problem.

    Attributes:
        params: ``mi.traverse`` of the model scene.
        source: the file named in error messages (invpbr.toml).
        sensor_ids: the scene's sensor ids (for camera estimates).
        claimed: scene keys already estimated by an earlier table.
    """

    params: Any
    source: str | Path = "invpbr.toml"
    sensor_ids: list[str] = field(default_factory=list)
    claimed: set[str] = field(default_factory=set)

    def where(self, index: int, table: EstimateConfig) -> str:
        return f"{self.source}: estimate[{index}].key {table.key!r}"


class Estimate:
    """One estimated unknown; subclasses are the kinds (see the module docs).

    Attributes:
        key: the estimate's name in results (usually a ``mi.traverse`` key).
        config: its ``[[estimate]]`` table.
        initial: the starting value as numpy (what :meth:`value` returns for
            the starting latents).
    """

    #: The kind's name: ``kind = ...`` in invpbr.toml and ``kinds`` in result.json.
    kind: ClassVar[str] = ""
    #: A step with this estimate can be recorded once by ``dr.freeze`` and replayed.
    freezable: ClassVar[bool] = True
    #: The scene is moved differently for each view (cameras): views are rendered
    #: and back-propagated one at a time.
    per_view: ClassVar[bool] = False
    #: It changes each view's rendered image (gains): the step needs the view's index.
    transforms_images: ClassVar[bool] = False
    #: It moves the whole scene rigidly (cameras): no edge moves relative to the
    #: surfaces but those seen from the camera (the integrator leaves out its
    #: indirect-visibility term).
    moves_scene_rigidly: ClassVar[bool] = False
    #: Its value is a parameter of the result (``estimates``, result.json's
    #: ``parameters``); gains report elsewhere.
    reported: ClassVar[bool] = True
    #: ``kind = "auto"`` kinds: lower numbers are asked first whether they claim a key.
    auto_priority: ClassVar[int] = 100
    #: Its runs are chaotic (rigid motions: a difference of 1e-8 in one step's gradient
    #: grows into a different Monte Carlo path and a result degrees apart), so a run
    #: with it takes its steps and polish with one Dr.Jit thread unless ``[optimize]
    #: deterministic = false``: the same inputs give the same result.
    deterministic_by_default: ClassVar[bool] = False
    #: Options of its ``[[estimate]]`` table beyond the common ones (name -> default),
    #: for kinds defined outside invpbr; they arrive in ``config.options``.
    options: ClassVar[dict[str, Any]] = {}

    key: str
    config: EstimateConfig
    initial: np.ndarray
    #: Estimating it moves visibility edges (the integrator must be projective).
    moves_edges: bool = False
    #: Its gradient comes from finite differences of the loss (Python work in each step).
    finite_differences: bool = False

    # -- building ------------------------------------------------------------------------

    @classmethod
    def from_table(cls, table: EstimateConfig, index: int,
                   context: ResolveContext) -> list["Estimate"]:
        """The estimates one ``[[estimate]]`` table of this kind makes.

        Raises:
            ValueError: the table does not fit the scene (the message names the
                file, the table and the key).
        """
        raise NotImplementedError(f"{cls.__name__}.from_table()")

    @classmethod
    def from_config(cls, config, context: ResolveContext) -> list["Estimate"]:
        """Estimates implied by other tables of the problem than ``[[estimate]]``
        (``[photos] gain``...); none by default."""
        return []

    def setup(self, problem) -> None:
        """Finish building once the problem's views are known (which views a
        camera or gain estimate covers); by default nothing."""

    @property
    def scene_keys(self) -> list[str]:
        """The scene keys this estimate writes."""
        return [self.key]

    @property
    def truth_keys(self) -> list[str]:
        """The keys read from truth.xml to score this estimate."""
        return self.scene_keys

    # -- latents -------------------------------------------------------------------------

    def start(self, store: LatentStore) -> None:
        """Register the latent variables at their initial values."""
        raise NotImplementedError(f"{type(self).__name__}.start()")

    def latent_names(self) -> list[str]:
        """The names of its latents in the store."""
        return [self.key]

    def scene_values(self, store: LatentStore, params) -> dict[str, Any]:
        """key -> scene value, differentiable in the latents; empty for
        estimates that do not live in the scene."""
        return {}

    def view_values(self, store: LatentStore, values: dict[str, Any],
                    view_index: int | None) -> dict[str, Any]:
        """Further scene values for rendering sensor ``view_index`` (None: the
        scene at rest), given every estimate's ``values``; per-view kinds only."""
        return {}

    def apply_to_image(self, store: LatentStore, image, view: int):
        """The rendered ``image`` of view number ``view`` as the photo saw it."""
        return image

    def project(self, store: LatentStore) -> None:
        """Bring the latents back inside their bounds after a step."""

    def regularizer(self, store: LatentStore):
        """A Dr.Jit scalar added to the loss, or None."""
        return None

    def advance(self, store: LatentStore, params, iteration: int, iterations: int) -> bool:
        """Move to the coarse-to-fine stage (or remeshing) due at ``iteration``;
        whether anything changed."""
        return False

    def current_stage(self) -> Any:
        """The current stage (what a frozen step's recording depends on)."""
        return 0

    def finish(self, store: LatentStore) -> bool:
        """Bring the latents to their final form (last stage) when the run
        stopped early; whether anything changed."""
        return False

    def value(self, store: LatentStore, params) -> np.ndarray:
        """The current estimate as numpy (scene space)."""
        raise NotImplementedError(f"{type(self).__name__}.value()")

    # -- results -------------------------------------------------------------------------

    def errors(self, value: np.ndarray, problem) -> tuple[float | None, dict[str, float]]:
        """Error of ``value`` against the problem's truth (None when unknown),
        and further named errors."""
        return None, {}

    def result_fields(self, store: LatentStore, problem, estimates: dict[str, np.ndarray]
                      ) -> dict[str, Any]:
        """Fields of :class:`~invpbr.results.result.Result` this estimate fills
        (``poses``, ``cameras``, ``gains``...), at the end of a run."""
        return {}

    def clipped_as_bounds(self, problem) -> bool | None:
        """Whether clipped channels of the photos should count as lower bounds for this
        estimate (True), must not (False), or it was not measured (None, the default):
        ``[photos] clipped = "auto"`` counts them as bounds where an estimate says
        True and none says False (see :meth:`Problem.clipped_bounds
        <invpbr.problem.folder.Problem.clipped_bounds>`)."""
        return None

    def leaves_out_near_clip(self) -> bool:
        """Whether the Gauss-Newton polish of this estimate also leaves out the pixels
        near the photos' clip, chosen by a render of its own, where the clipped ones
        are left out (:meth:`invpbr.optimization.polish.Renderer.leave_out_near_clip`).
        No by default."""
        return False

    def needs_primary_edges(self, view_index: int) -> bool:
        """Whether the derivatives of sensor ``view_index``'s image in this estimate need
        the projective integrator's primary-visibility edge term (edges the camera sees
        directly). By default, estimates that move edges do; where every estimate says
        no, the view renders with that term off (``sppp = 0``; its image is unchanged)."""
        return self.moves_edges

    def restore_scene(self, store: LatentStore, params) -> dict[str, Any]:
        """Scene values that put the scene at rest after a run (per-view
        kinds); empty for others."""
        return {}

    @classmethod
    def to_json(cls, key: str, value: np.ndarray, result, files: dict[str, str]) -> Any:
        """The estimate's entry in result.json's ``parameters``."""
        return [float(v) for v in np.asarray(value).ravel()]

    @classmethod
    def write_files(cls, key: str, value: np.ndarray, result, folder: Path) -> dict[str, str]:
        """Write the estimate's files into a result folder; name -> path relative to it."""
        return {}

    @classmethod
    def write_xml(cls, scene, key: str, value: np.ndarray, result, files: dict[str, Any]) -> bool:
        """Write the estimate into the result's scene XML (``scene``: an
        :class:`invpbr.results.scene_xml.SceneXML`, ``files``: what
        :meth:`write_files` wrote); whether it could. By default it cannot:
        the result's scene.xml then lacks it, and result.json says so."""
        return False

    @classmethod
    def summary(cls, key: str, value: np.ndarray, result) -> str:
        """One line for the printed summary of a run."""
        return ", ".join(f"{v:.4f}" for v in np.asarray(value).ravel())

    # -- gradient checks -----------------------------------------------------------------

    def gradcheck_writer(self, params, view_index: int, store=None):
        """How a gradient check moves this estimate: ``(base, to_dr, write,
        restore)``: its base value (numpy), a function making the Dr.Jit value
        of a numpy one, one writing a Dr.Jit value into the scene and one
        putting the original back.

        ``store``: a run's latents (gradient images at the end of a run):
        kinds whose base is a latent start from its value there rather than
        from the starting latent; this default starts from the scene as it is
        and ignores it."""
        key = self.scene_keys[0]
        kind = type(params[key])
        # a copy: ``params[key]`` is the scene's live field, which writes change
        original = kind(params[key])

        def write(value):
            params[key] = value
            params.update()

        def restore():
            params[key] = original
            params.update()

        base = np.array(original, dtype=np.float32)

        def to_dr(value):
            return kind(np.asarray(value).reshape(base.shape))

        return base, to_dr, write, restore

    def gradcheck_directions(self, value: np.ndarray, grad: np.ndarray,
                             view_index: int) -> list[tuple[str, np.ndarray]]:
        """The (label, direction) pairs checked: by default each of the first
        three components."""
        flat = value.reshape(-1)
        out = []
        for i in range(min(flat.size, 3)):
            d = np.zeros_like(flat)
            d[i] = 1.0
            out.append((f"[{i}]" if flat.size > 1 else "", d.reshape(value.shape)))
        return out

    def gradcheck_applies(self, view_index: int) -> bool:
        """Whether the estimate can be checked on sensor ``view_index``."""
        return True

    # -- checkpoints ---------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the estimate besides its latents and their
        optimizer state (numpy arrays and plain values)."""
        return {"stage": self.current_stage()}

    def load_state(self, store: LatentStore, params, state: dict[str, Any]) -> None:
        """Come back to a :meth:`state` (before its latents are put back)."""


#: Registered kinds by name.
KINDS: dict[str, type[Estimate]] = {}
#: Kinds that ``kind = "auto"`` chooses between by the key, in order of preference.
AUTO_KINDS: list[type[Estimate]] = []


def register_kind(cls: type[Estimate], *, auto: bool = False) -> type[Estimate]:
    """Register an :class:`Estimate` subclass under ``cls.kind`` (usable as a
    class decorator), so that ``kind = "<name>"`` in invpbr.toml makes one
    (when it defines :meth:`Estimate.from_table`).

    Args:
        cls: the kind.
        auto: ``kind = "auto"`` tables may resolve to it (it then needs the
            class methods ``claims(params, key)`` and ``from_key(table, index,
            key, context)``).

    Raises:
        TypeError: ``cls`` is not an Estimate subclass or has no ``kind`` name.
        ValueError: another class is registered under that name.
    """
    if not (isinstance(cls, type) and issubclass(cls, Estimate)) or not cls.kind:
        raise TypeError(f"register_kind(): {cls!r} must be an Estimate subclass with a kind name")
    if cls.kind in KINDS and KINDS[cls.kind] is not cls:
        raise ValueError(f"register_kind(): kind {cls.kind!r} is already registered "
                         f"({KINDS[cls.kind].__module__}.{KINDS[cls.kind].__name__})")
    KINDS[cls.kind] = cls
    takes_table = cls.from_table.__func__ is not Estimate.from_table.__func__
    register_estimate_kind(cls.kind, dict(cls.options), table=takes_table)
    if auto and cls not in AUTO_KINDS:
        AUTO_KINDS.append(cls)
        AUTO_KINDS.sort(key=lambda c: c.auto_priority)
    return cls


def kind_class(name: str) -> type[Estimate]:
    """The class registered as kind ``name`` (the base class for unknown names:
    a result written by a kind that is not loaded is still read and saved)."""
    return KINDS.get(name, Estimate)


# -- helpers shared by the kinds -----------------------------------------------------------


def node_class(params, key: str) -> str | None:
    """Class name of the scene object that owns ``key`` (e.g. ``RoughPlastic``)."""
    try:
        return params.properties[key][2].class_name()
    except (KeyError, IndexError, AttributeError, TypeError):
        return None


def is_differentiable(value, flags) -> bool:
    """Whether a scene value can carry gradients (a float Dr.Jit array Mitsuba
    does not mark non-differentiable)."""
    import drjit as dr
    import mitsuba as mi

    if flags & int(mi.ParamFlags.NonDifferentiable):
        return False
    if not dr.is_array_v(value):
        return False
    return dr.is_float_v(value) and dr.is_diff_v(value)


def match_keys(keys: list[str], pattern: str) -> list[str]:
    """``pattern`` itself when it is a key, else the keys its glob matches."""
    return [pattern] if pattern in keys else [k for k in keys if fnmatch.fnmatchcase(k, pattern)]


def close_match_hint(pattern: str, keys: list[str], cutoff: float = 0.5) -> str:
    """``"; did you mean 'a', 'b'?"`` for keys close to ``pattern`` (empty if none)."""
    close = difflib.get_close_matches(pattern, keys, n=3, cutoff=cutoff)
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""


def resolve_estimates(params, tables: list[EstimateConfig], *,
                      source: str | Path = "invpbr.toml",
                      sensor_ids: list[str] | None = None) -> list[Estimate]:
    """Match each ``[[estimate]]`` table against the scene: one or more
    :class:`Estimate` per table, in the order of the tables.

    Args:
        params: ``mi.SceneParameters`` of the model scene.
        tables: the estimate tables of the problem.
        source: the file named in error messages.
        sensor_ids: the scene's sensor ids (for camera estimates).

    Raises:
        ValueError: a key matches nothing (the message suggests close keys), a
            matched key is not differentiable, two tables claim one key, or a
            kind is not registered.
    """
    context = ResolveContext(params=params, source=source, sensor_ids=list(sensor_ids or []))
    found: dict[str, Estimate] = {}
    for i, table in enumerate(tables):
        if table.kind == "auto":
            made = resolve_auto(table, i, context)
        elif table.kind in KINDS:
            made = KINDS[table.kind].from_table(table, i, context)
        else:
            raise ValueError(f"{source}: estimate[{i}].kind {table.kind!r} is not a registered "
                             f"kind; known: {', '.join(sorted(KINDS))}")
        for estimate in made:
            found[estimate.key] = estimate
    return list(found.values())


def implied_estimates(config, params, *, source: str | Path = "invpbr.toml",
                      sensor_ids: list[str] | None = None) -> list[Estimate]:
    """The estimates that tables other than ``[[estimate]]`` imply, from every
    registered kind's :meth:`Estimate.from_config`."""
    context = ResolveContext(params=params, source=source, sensor_ids=list(sensor_ids or []))
    return [e for cls in KINDS.values() for e in cls.from_config(config, context)]


def resolve_auto(table: EstimateConfig, index: int, context: ResolveContext) -> list[Estimate]:
    """A ``kind = "auto"`` table: every key its glob matches, each estimated by
    the first auto kind that claims it (environment map, texture, value)."""
    keys = list(context.params.keys())
    matched = match_keys(keys, table.key)
    if not matched:
        raise ValueError(f"{context.where(index, table)} matches no parameter of the scene"
                         f"{close_match_hint(table.key, keys)} (list them with `invpbr check`)")
    out = []
    for key in matched:
        if key in context.claimed:
            raise ValueError(f"{context.source}: estimate[{index}].key {table.key!r} matches "
                             f"{key!r}, which an earlier [[estimate]] already estimates")
        value = context.params[key]
        if not is_differentiable(value, context.params.flags(key)):
            kind = type(value).__name__
            raise ValueError(f"{context.source}: estimate[{index}].key {key!r} is not "
                             f"differentiable (a {kind} that Mitsuba marks non-differentiable "
                             "or stores as integers); choose a BSDF, texture or emitter parameter")
        if key.endswith((".vertex_positions", ".to_world")):
            raise ValueError(f"{context.source}: estimate[{index}].key {key!r}: geometry is "
                             "estimated with kind = \"pose\" (a rigid transform) or kind = "
                             "\"shape\" (free vertices, meshes only)")
        cls = next(c for c in AUTO_KINDS if c.claims(context.params, key))
        out.append(cls.from_key(table, index, key, context))
        context.claimed.add(key)
    return out
