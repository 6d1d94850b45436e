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

from ..problem.folder import Problem
from ..render.views import render_view
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


def start_renders(problem: Problem, integrator) -> dict[str, np.ndarray]:
    """Every view of the scene as it is now (the starting guess), linear RGB
    (H, W, 3), with ``spp_final`` samples and the seed of the final renders."""
    import drjit as dr

    out = {}
    with dr.suspend_grad():
        for view in problem.views:
            image = render_view(problem.scene, problem.params, integrator, view.index,
                                spp=problem.config.render.spp_final, seed=2**31 - 1)
            out[view.id] = np.array(image, dtype=np.float32)[..., :3]
    return out


class Trajectory:
    """The values of the problem's small estimates (at most ``TRAJECTORY_MAX``
    numbers: scalars, colours) before the first step and after each step.

    A step's record keeps references to the scene's Dr.Jit values (detached),
    which the next step evaluates anyway; they are read back only at the end
    (:attr:`steps`), so recording adds no kernel launch or read-back to a step.
    """

    def __init__(self, problem: Problem):
        self.problem = problem
        self.parameters = [p for p in problem.parameters
                           if not p.is_geometry and p.kind != "camera"
                           and p.initial is not None and np.size(p.initial) <= TRAJECTORY_MAX]
        self.start = {p.key: np.asarray(p.initial, dtype=np.float64).ravel().tolist()
                      for p in self.parameters}
        self.values: dict[str, list] = {p.key: [] for p in self.parameters}

    def record(self) -> None:
        """Keep the current values (references into the scene's parameters)."""
        import drjit as dr

        params = self.problem.params
        for p in self.parameters:
            self.values[p.key].append(dr.detach(params[p.key]))

    @property
    def steps(self) -> dict[str, list[list[float]]]:
        """key -> the start and each recorded step's value (flattened)."""
        return {p.key: [self.start[p.key]] + [
            np.asarray(p.from_scene(v), dtype=np.float64).ravel().tolist()
            for v in self.values[p.key]] for p in self.parameters}

    def truth(self) -> dict[str, list[float]]:
        """key -> the true value of each recorded estimate, where known."""
        truth = self.problem.truth
        return {p.key: np.asarray(truth[p.key], dtype=np.float64).ravel().tolist()
                for p in self.parameters if p.key in truth
                and np.size(truth[p.key]) == np.size(p.initial)}


def point_previews(problem: Problem, initial: dict[str, np.ndarray],
                   estimates: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """key -> ``start``/``end``/``truth`` -> up to ``PREVIEW_POINTS`` points
    (N, 3) of each geometry estimate, the same points in each state where
    their counts agree."""
    out = {}
    truth = problem.truth
    rng = np.random.default_rng(0)
    for p in problem.parameters:
        if not p.is_geometry or p.key not in estimates:
            continue
        states = {"start": initial.get(p.key), "end": estimates.get(p.key)}
        if all(k in truth for k in p.scene_keys):
            try:
                states["truth"] = p.model.points({k: truth[k] for k in p.scene_keys})
            except (ValueError, KeyError, TypeError):
                pass
        states = {k: np.asarray(v, dtype=np.float64).reshape(-1, 3) for k, v in states.items()
                  if v is not None}
        counts = {len(v) for v in states.values()}
        pick = None
        if len(counts) == 1:
            n = counts.pop()
            pick = np.sort(rng.choice(n, size=min(n, PREVIEW_POINTS), replace=False))
        out[p.key] = {k: v[pick] if pick is not None else
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
