"""Best-state keeping: a run returns the best state it saw, not merely the last.

A Monte Carlo loss is noisy, so "best" is judged on smoothed losses: the loss of the
state before step ``t`` is estimated by the mean of the losses of steps ``t - h`` to
``t + h`` (a centred window, ``h`` about a twentieth of the run, at least 2, cut at the
ends; centred so that it does not lag: the starting state is a candidate like any
other). The noise of one loss is estimated from successive differences (which a trend
does not inflate). The watch keeps

- the whole run's state at its lowest smoothed loss;
- for estimates that hold one part per view (cameras: each camera's latent changes
  only its own view's render), each view's smoothed loss and that part's state at
  its lowest.

At the end (:meth:`Watch.finish`), a smoothed loss is "clearly above" its minimum when
it exceeds it by more than 2.5 standard errors of the difference and by more than 2 %,
or by more than 50 % whatever the noise:

- a camera whose own view's loss ends clearly above its minimum is put back to its best
  state, with a warning naming the cameras;
- a run whose loss ends clearly above its minimum is put back to its best state whole,
  with a warning ("best state kept"); when that minimum is not clearly below the
  starting loss either (the run never got better than its start), its status becomes
  ``"diverged"`` (``invpbr run`` exits 1).

Iterate averaging (``[[estimate]] average``, poses and cameras): the watch also keeps
each such estimate's latents after every step of the run's last ``average`` fraction;
unless the run is put back whole, :meth:`Watch.finish` returns their mean (rotations by
their chordal mean, :func:`~invpbr.estimates.meshes.mean_motion`) instead of the last
step's state, then puts back cameras as above (a camera put back gets its best state,
not the mean). Why: at a few dozen pixels and a few samples, one step's rotation
gradient is mostly Monte Carlo noise, and Adam's steps make the latent jitter around
its answer; the mean of the jitter is closer to it than any one iterate (Polyak and
Juditsky 1992). The mean is not scored by a render of its own: the watch judges the
losses of the states it averages. :attr:`Watch.averaged` says what was returned.

The state that goes with a loss is the one before the step that measured it; the watch
keeps references to the last ``h + 1`` steps' starting latents (free: the optimizer
never changes a Dr.Jit array in place). Only runs that move visibility edges (cameras,
poses, shapes, lights) are put back: material and texture runs, whose losses can step
up at a coarse-to-fine stage, keep their last state as before.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: A smoothed loss this much above its minimum (relative) may be "clearly above",
#: when also above the noise.
RISE = 0.02
#: Standard errors of the difference that make a rise "clear".
SIGMAS = 2.5
#: ``[[estimate]] average`` where a table does not set it, by kind (0: the last step's
#: state is returned). Off: on 6 random pose scenes (48x48) and 11 cameras (24x24) no
#: window beat the last step on most scenes, the poses' error being set by a walk away
#: in the blurred first half, not by the last steps' jitter (BENCHMARKS.md, issue 13,
#: "Iterate averaging").
AVERAGE = {"pose": 0.0, "camera": 0.0}


def average_fraction(estimate) -> float:
    """The fraction of the run whose iterates ``estimate`` returns the mean of."""
    config = getattr(estimate, "config", None)
    value = getattr(config, "average", None)
    if value is None:
        return AVERAGE.get(getattr(estimate, "kind", ""), 0.0)
    return float(value)


def motions_of(estimate) -> int:
    """How many rigid motions ``[t, w]`` lead ``estimate``'s latent (a pose: 1; cameras:
    one per camera)."""
    return len(estimate.targets) if estimate.kind == "camera" else 1


@dataclass
class Series:
    """One noisy loss series: its samples, the lowest centred-window mean seen so far
    and the step it belongs to."""

    half: int
    samples: list[float] = field(default_factory=list)
    best: float = math.inf
    best_step: int = -1
    best_count: int = 1

    def add(self, x: float) -> int | None:
        """Add the loss of the newest step; the step whose centred window just
        completed if its mean is a new minimum, else None."""
        self.samples.append(float(x))
        n = len(self.samples)
        t = n - 1 - self.half  # the step whose window [t - h, t + h] is now complete
        found = None
        # the first steps' windows are cut at the start: they complete together at t = 0
        for step in ([0] if t == 0 else []) + ([t] if t > 0 else []):
            window = self.samples[max(0, step - self.half): step + self.half + 1]
            m = float(np.mean(window))
            if m < self.best:
                self.best, self.best_step, self.best_count = m, step, len(window)
                found = step
        return found

    def noise(self) -> float:
        """Standard deviation of one sample, from successive differences (robust)."""
        if len(self.samples) < 3:
            return 0.0
        d = np.abs(np.diff(self.samples))
        return float(1.4826 * np.median(d) / math.sqrt(2.0))

    def final(self) -> tuple[float, int]:
        """Mean of the last ``half + 1`` samples and how many."""
        tail = self.samples[-(self.half + 1):]
        return float(np.mean(tail)), len(tail)

    def clearly_above_best(self) -> bool:
        if self.best_step < 0 or len(self.samples) < 2 * self.half + 2:
            return False
        value, count = self.final()
        sigma = self.noise() * math.sqrt(1.0 / count + 1.0 / self.best_count)
        return value > self.best + _margin(SIGMAS * sigma, abs(self.best))

    def clearly_below_start(self) -> bool:
        """Whether the minimum is clearly below the starting state's loss."""
        if self.best_step <= 0:
            return False
        start = self.samples[: self.half + 1]
        sigma = self.noise() * math.sqrt(1.0 / len(start) + 1.0 / self.best_count)
        return self.best < float(np.mean(start)) - _margin(SIGMAS * sigma, abs(self.best))


def _margin(noise: float, best: float) -> float:
    """How far above ``best`` is "clearly": more than the noise and 2 % of it, but never
    more than half of it (a run that swings wildly inflates the noise estimate, which is
    taken from successive differences; 1.5x the best is clear whatever the noise)."""
    return min(max(noise, RISE * best), 0.5 * best)


@dataclass
class Watch:
    """Smoothed losses and best states of one run (see the module)."""

    half: int
    total: Series
    recent: deque = field(default_factory=deque)   # (step, state before it)
    best: dict | None = None
    views: dict[int, Series] = field(default_factory=dict)
    view_best: dict[int, np.ndarray] = field(default_factory=dict)
    step: int = 0
    #: Whether the run moves edges: only then does :meth:`finish` act, so only then
    #: are states kept (a field's grid, kept for every step of a window, would cost GBs).
    active: bool = True
    #: estimate key -> the first step whose resulting state is averaged (iterate averaging)
    tail_from: dict[str, int] = field(default_factory=dict)
    #: estimate key -> its latents after each step from ``tail_from`` on
    tail: dict[str, list] = field(default_factory=dict)
    #: estimate key -> what :meth:`finish` returned for it (result.json's ``averaged``)
    averaged: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def start(cls, run) -> "Watch":
        half = max(2, run.iterations // 20)
        watch = cls(half=half, total=Series(half),
                    active=any(getattr(e, "moves_edges", False) for e in run.estimates))
        if watch.active:
            watch.best = run.latents.snapshot()
            watch.recent = deque([(0, watch.best)], maxlen=half + 2)
            for e in run.estimates:
                fraction = average_fraction(e)
                if fraction > 0 and e.kind in ("pose", "camera"):
                    steps = max(2, int(round(fraction * run.iterations)))
                    watch.tail_from[e.key] = max(0, run.iterations - steps)
                    watch.tail[e.key] = []
        return watch

    def state(self) -> dict[str, Any]:
        """Everything needed to go on after a resume (numpy arrays and numbers, for a
        checkpoint: :mod:`.checkpoint`)."""
        def series(s: Series) -> dict[str, Any]:
            return {"samples": list(s.samples), "best": s.best, "best_step": s.best_step,
                    "best_count": s.best_count}

        def plain(snapshot: dict | None) -> dict | None:
            return None if snapshot is None else {k: np.array(v) for k, v in snapshot.items()}

        return {"half": self.half, "step": self.step, "active": self.active,
                "total": series(self.total),
                "views": {v: series(s) for v, s in self.views.items()},
                "view_best": dict(self.view_best), "best": plain(self.best),
                "recent": [[t, plain(state)] for t, state in self.recent],
                "tail_from": dict(self.tail_from),
                "tail": {k: np.array(v, dtype=np.float64) if v else np.zeros((0, 0))
                         for k, v in self.tail.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any], run) -> "Watch":
        """A :meth:`state` back (the run's latents registered, at the checkpoint's stage)."""
        half = int(state["half"])

        def series(d: dict[str, Any]) -> Series:
            return Series(half, [float(x) for x in d["samples"]], float(d["best"]),
                          int(d["best_step"]), int(d["best_count"]))

        def latents(snapshot: dict | None) -> dict | None:
            if snapshot is None:
                return None
            out = {}
            for name, value in snapshot.items():
                if name in run.latents.names():
                    current = run.latents[name]
                    if value.size == np.prod(current.shape):
                        out[name] = type(current)(np.asarray(value).reshape(current.shape))
            return out

        watch = cls(half=half, total=series(state["total"]), step=int(state["step"]),
                    active=bool(state["active"]), best=latents(state["best"]),
                    views={int(v): series(d) for v, d in state["views"].items()},
                    view_best={int(v): np.asarray(a) for v, a in state["view_best"].items()})
        watch.recent = deque([(int(t), latents(s)) for t, s in state["recent"]],
                             maxlen=half + 2)
        watch.tail_from = {k: int(v) for k, v in state.get("tail_from", {}).items()}
        watch.tail = {k: list(np.asarray(state.get("tail", {}).get(k, np.zeros((0, 0)))))
                      for k in watch.tail_from}
        return watch

    def _state(self, step: int) -> dict | None:
        for t, state in self.recent:
            if t == step:
                return state
        return None

    def record(self, run, total: float, view_losses: dict[int, float]) -> None:
        """After a step whose loss was ``total`` (and ``view_losses``: view number ->
        that view's loss, where the strategy reports them)."""
        if not self.active:
            self.step += 1
            return
        found = self.total.add(total)
        if found is not None and self._state(found) is not None:
            self.best = self._state(found)
        parts = per_view_parts(run)
        if parts is not None and view_losses:
            estimate, slot_of_view = parts
            for v, loss in view_losses.items():
                slot = slot_of_view.get(v)
                if slot is None:
                    continue
                found = self.views.setdefault(v, Series(self.half)).add(loss)
                state = self._state(found) if found is not None else None
                if state is not None:
                    rows = np.array(state[estimate.key], dtype=np.float64).reshape(
                        len(estimate.targets), -1)
                    self.view_best[v] = rows[slot].copy()
        self.step += 1
        self.recent.append((self.step, run.latents.snapshot()))
        for key, first in self.tail_from.items():
            if run.next_step - 1 >= first:  # the state after step next_step - 1
                self.tail[key].append(np.array(run.latents[key], dtype=np.float64).ravel())

    def finish(self, run) -> None:
        """Put back the best state where the end is clearly worse (see the module);
        warnings name what was put back."""
        import mitsuba as mi

        latents = run.latents
        if not self.active:
            return  # measured on moving geometry and cameras only (issue 13)
        if self.total.clearly_above_best() and self.best is not None:
            latents.restore(self.best)
            for key, samples in self.tail.items():
                self.averaged[key] = {"returned": "best state", "from_step": self.tail_from[key],
                                      "steps": len(samples)}
            value = self.total.final()[0]
            if self.total.clearly_below_start():
                warnings.warn(
                    f"optimize(): {run.problem.name}: best state kept: the loss ended at "
                    f"{value:.4g} (smoothed), clearly above its minimum {self.total.best:.4g} "
                    f"(step {self.total.best_step}); the best state seen is returned",
                    stacklevel=2)
            else:  # it never clearly got better than where it started
                run.status = "diverged"
                warnings.warn(
                    f"optimize(): {run.problem.name}: diverged: the loss ended at {value:.4g} "
                    f"(smoothed), clearly above its minimum {self.total.best:.4g} (step "
                    f"{self.total.best_step}), which is not clearly below the start; the best "
                    "state seen is returned", stacklevel=2)
            return
        self.average(run)
        parts = per_view_parts(run)
        if parts is None:
            return
        estimate, slot_of_view = parts
        back = [v for v, s in self.views.items() if s.clearly_above_best() and v in self.view_best]
        if not back:
            return
        if estimate.key in self.averaged:
            self.averaged[estimate.key]["best_state"] = [run.problem.views[v].id for v in back]
        rows = np.array(latents[estimate.key], dtype=np.float64).reshape(len(estimate.targets), -1)
        for v in back:
            rows[slot_of_view[v]] = self.view_best[v]
        latents[estimate.key] = mi.Float(rows.ravel().astype(np.float32))
        latents.write_scene()
        names = [run.problem.views[v].id for v in back]
        warnings.warn(
            f"optimize(): {run.problem.name}: best state kept for {len(names)} "
            f"{estimate.kind}(s) whose own view's loss rose clearly above its minimum: "
            + ", ".join(f"{n} ({self.views[v].final()[0]:.4g} > {self.views[v].best:.4g})"
                        for n, v in zip(names, back)), stacklevel=2)


    def average(self, run) -> None:
        """Put each averaged estimate's mean iterate into the latents (see the module)."""
        import mitsuba as mi

        from ..estimates.meshes import mean_motion

        by_key = {e.key: e for e in run.estimates}
        for key, samples in self.tail.items():
            info = {"returned": "last step", "from_step": self.tail_from[key],
                    "steps": len(samples)}
            if len(samples) >= 2:
                mean = mean_motion(np.stack(samples), motions_of(by_key[key]))
                run.latents[key] = mi.Float(mean.astype(np.float32))
                info["returned"] = "average"
            self.averaged[key] = info
        if self.tail:
            run.latents.write_scene()


def averaged_report(run, last: dict | None) -> dict[str, dict]:
    """result.json's ``averaged``: estimate key -> what :meth:`Watch.finish` returned
    (``"average"``, ``"best state"`` or ``"last step"``), the steps averaged, the
    cameras put back to their best state, and where the truth is known the errors of
    the last step's state (``last``: the estimates' values before :meth:`Watch.finish`),
    so that what averaging changed can be measured on the same run."""
    out: dict[str, dict] = {}
    watch = run.watch
    for e in run.estimates:
        info = dict(watch.averaged.get(e.key, {})) if watch is not None else {}
        if not info:
            continue
        if last is not None and e.key in last:
            _, more = e.errors(last[e.key], run.problem)
            if more:
                info["last_step_errors"] = more
            if e.kind == "camera":
                cameras = e.result_fields(run.latents, run.problem, last).get("camera_errors")
                if cameras:
                    info["last_step_camera_errors"] = cameras
        out[e.key] = info
    return out


def per_view_parts(run):
    """(the estimate with one latent row per view, view number -> its row), or None."""
    for e in run.estimates:
        model = getattr(e, "model", None)
        if getattr(e, "per_view", False) and model is not None and hasattr(model, "slot"):
            views = run.problem.views
            slot = {v: model.slot[views[v].index] for v in range(len(views))
                    if views[v].index in model.slot}
            return e, slot
    return None


def watched_losses(run, total: float, chosen: list[int]) -> tuple[float, dict[int, float]]:
    """The step's loss and its views' losses as the watch compares them: at one fixed
    blur where the loss is coarse to fine (:class:`~invpbr.optimization.coarse.CoarseToFine`
    keeps them), else the step's own."""
    import numpy as np

    plain = getattr(run.context.loss_fn, "plain", None)
    if plain and len(plain) == len(chosen):
        values = [float(np.asarray(x).ravel()[0]) for x in plain]
        return float(np.mean(values)), dict(zip(chosen, values))
    per_view = getattr(run.strategy, "view_losses", {})
    return total, {v: float(np.asarray(x).ravel()[0]) for v, x in per_view.items()}


def default_lr_decay(configured: float | None, estimates) -> float:
    """``[optimize] lr_decay``, or where it is not set: 0.1 when an estimate is
    a rigid motion (cameras, poses) or a free shape, whose Adam steps otherwise keep
    wandering by about the learning rate around the answer (free shapes on 10 scenes of
    the robustness benchmark, ``--kind shape``: Chamfer distance lower on 9, success 7/10
    against 5/10; BENCHMARKS.md); else 1 (constant)."""
    if configured is not None:
        return float(configured)
    if any(e.kind in ("camera", "pose", "shape") for e in estimates):
        return 0.1
    return 1.0
