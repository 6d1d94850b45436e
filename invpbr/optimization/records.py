"""What a run records for people to look at afterwards (report.html) and
while it goes (a live view): the starting renders, small estimates at every
step, point previews of geometry, the cameras at start, end and in the truth,
and the warnings raised.

Everything here is cheap next to a step: the start renders are one render per
view (like the final renders), a trajectory point is a read-back of at most
:data:`~invpbr.results.report.TRAJECTORY_MAX` numbers per small estimate.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import numpy as np

from ..results.report import TRAJECTORY_MAX
from ..results.result import PREVIEW_POINTS


@contextlib.contextmanager
def record_warnings() -> Iterator[list[str]]:
    """Collect the text of every warning shown inside the block, while still
    showing it as before (filters, ``pytest.warns`` and ``-W error`` behave as
    without this)."""
    caught: list[str] = []
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        caught.append(f"{category.__name__}: {message}")
        return shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield caught
    finally:
        if warnings.showwarning is show:
            warnings.showwarning = shown


def start_renders(run) -> dict[str, np.ndarray]:
    """Every view of the scene as it is now (the starting guess), linear RGB
    (H, W, 3), with ``spp_final`` samples and the seed of the final renders."""
    import drjit as dr

    from ..render.views import render_view

    problem = run.problem
    out = {}
    with dr.suspend_grad():
        for view in problem.views:
            image = render_view(problem.scene, problem.params, run.integrator, view.index,
                                spp=problem.config.render.spp_final, seed=2**31 - 1)
            out[view.id] = np.array(image, dtype=np.float32)[..., :3]
    return out


class Recorded:
    """Values kept from one moment of a run, read like a latent store or the
    scene's parameters (``recorded[name]``), so that an estimate's ``value``
    can be computed from them later."""

    def __init__(self, values: dict[str, Any], half: bool = False):
        self.values = values
        self.half = half

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def keys(self):
        return self.values.keys()


class Trajectory:
    """The values of a run's small estimates (at most ``TRAJECTORY_MAX``
    numbers: scalars, colours, a camera or two) before the first step and
    after each step.

    A step's record keeps references to the estimate's latents and scene
    values (detached Dr.Jit arrays, which the next step evaluates anyway);
    each estimate's ``value`` is computed from them only at the end
    (:attr:`steps`), so recording adds no kernel launch or read-back to a step.
    """

    def __init__(self, problem, estimates: list):
        self.problem = problem
        self.estimates = [e for e in estimates if e.reported and e.initial is not None
                          and np.size(e.initial) <= TRAJECTORY_MAX]
        self.start = {e.key: np.asarray(e.initial, dtype=np.float64).ravel().tolist()
                      for e in self.estimates}
        self.records: dict[str, list[tuple[dict, dict]]] = {e.key: [] for e in self.estimates}
        #: key -> values of steps already computed (:meth:`settle`, a checkpoint's)
        self.done: dict[str, list[list[float]]] = {e.key: [] for e in self.estimates}
        self.half = False

    def record(self, store) -> None:
        """Keep the current latents and scene values of each estimate."""
        import drjit as dr

        params = self.problem.params
        self.half = getattr(store, "half", False)
        for e in self.estimates:
            self.records[e.key].append(({n: dr.detach(store[n]) for n in e.latent_names()},
                                        {k: dr.detach(params[k]) for k in e.scene_keys}))

    @property
    def steps(self) -> dict[str, list[list[float]]]:
        """key -> the start and each recorded step's value (flattened); an
        estimate whose value cannot be computed from its records is left out."""
        out = {}
        for e in self.estimates:
            try:
                out[e.key] = [self.start[e.key]] + self.done.get(e.key, []) + [
                    np.asarray(e.value(Recorded(latents, self.half), Recorded(scene)),
                               dtype=np.float64).ravel().tolist()
                    for latents, scene in self.records[e.key]]
            except (KeyError, TypeError, AttributeError, ValueError):
                continue
        return out

    def settle(self) -> dict[str, list[list[float]]]:
        """Compute the values of the records so far and keep only those (for a
        checkpoint); key -> every step's value."""
        steps = self.steps
        self.done = {key: values[1:] for key, values in steps.items()}
        self.records = {e.key: [] for e in self.estimates}
        return self.done

    def truth(self) -> dict[str, list[float]]:
        """key -> the true value of each recorded estimate, where known."""
        truth = self.problem.truth
        return {e.key: np.asarray(truth[e.key], dtype=np.float64).ravel().tolist()
                for e in self.estimates if e.key in truth
                and np.size(truth[e.key]) == np.size(e.initial)}


def point_previews(problem, estimates: list, initial: dict[str, np.ndarray],
                   values: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """key -> ``start``/``end``/``truth`` -> up to ``PREVIEW_POINTS`` points
    (N, 3) of each estimate whose value is a point set (geometry), the same
    points in each state where their counts agree; the truth where the
    estimate can say it (``truth_points``)."""
    out = {}
    rng = np.random.default_rng(0)
    for e in estimates:
        value = values.get(e.key)
        if value is None or np.ndim(value) != 2 or np.shape(value)[1] != 3 \
                or np.size(value) <= TRAJECTORY_MAX:
            continue
        states = {"start": initial.get(e.key), "end": value}
        truth_points = getattr(e, "truth_points", None)
        if truth_points is not None:
            try:
                states["truth"] = truth_points(problem)
            except (ValueError, KeyError, TypeError):
                pass
        states = {k: np.asarray(v, dtype=np.float64).reshape(-1, 3) for k, v in states.items()
                  if v is not None}
        counts = {len(v) for v in states.values()}
        pick = None
        if len(counts) == 1:
            n = counts.pop()
            pick = np.sort(rng.choice(n, size=min(n, PREVIEW_POINTS), replace=False))
        out[e.key] = {k: v[pick] if pick is not None else
                      v[np.sort(rng.choice(len(v), size=min(len(v), PREVIEW_POINTS),
                                           replace=False))]
                      for k, v in states.items()}
    return out


def camera_poses(start: dict[str, np.ndarray], refined: dict[str, np.ndarray],
                 truth: dict[str, Any] | None) -> dict[str, dict[str, np.ndarray]]:
    """``start``/``refined``/``truth`` -> view id -> camera-to-world of the
    refined cameras (truth only for those it knows)."""
    out = {"start": dict(start), "refined": dict(refined)}
    if truth:
        out["truth"] = {vid: np.asarray(truth[vid]) for vid in refined if vid in truth}
    return out
