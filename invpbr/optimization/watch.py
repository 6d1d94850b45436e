"""Best-state keeping: a run returns the best state it saw, not merely the last.

A Monte Carlo loss is noisy, so "best" is judged on a smoothed loss: an exponential
moving average (EMA) over about a tenth of the run (at least 5 steps). The watch keeps

- the whole run's state at its lowest smoothed loss (:attr:`Watch.best`);
- for estimates that hold one part per view (cameras: each camera's latent changes
  only its own view's render), each view's smoothed loss and that part's state at
  its lowest.

At the end (:meth:`Watch.finish`):

- a camera whose own view's smoothed loss ends clearly above its minimum (by more
  than the noise of the smoothed loss, and more than 2 %) is put back to its best
  state, with a warning naming the cameras;
- a run whose smoothed loss ends clearly above its minimum is put back to its best
  state whole, with a warning ("best state kept"); when that minimum is not clearly
  below the starting loss either (the run never got better than its start), its
  status becomes ``"diverged"`` (``invpbr run`` exits 1).

The state that goes with a loss is the one before the step that measured it, so the
watch keeps a reference to each step's starting latents (free: the optimizer never
changes a Dr.Jit array in place). Only runs that move visibility edges (cameras, poses,
shapes, lights) are put back: material and texture runs, whose losses can step up at a
coarse-to-fine stage, keep their last state as before.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

#: A smoothed loss this much above its minimum (relative) is "clearly above",
#: when also above the smoothed loss's noise.
RISE = 0.02


@dataclass
class Smoothed:
    """An EMA of a noisy series with its noise (EMA of squared deviations) and minimum."""

    alpha: float
    value: float = math.nan
    variance: float = 0.0
    best: float = math.inf
    count: int = 0
    first: float = math.nan

    def add(self, x: float) -> bool:
        """Add a sample; whether the smoothed value reached a new minimum (only
        once it has seen a few samples, so one lucky draw is not "best")."""
        self.count += 1
        if self.count == 1:
            self.value, self.first = x, x
        else:
            d = x - self.value
            self.value += self.alpha * d
            self.variance = (1 - self.alpha) * (self.variance + self.alpha * d * d)
        if self.value < self.best and (self.count >= min(3, 1 / self.alpha)):
            self.best = self.value
            return True
        return False

    def noise(self) -> float:
        """Standard deviation of the smoothed value (of a sample times sqrt(alpha / (2 - alpha)))."""
        return math.sqrt(max(self.variance, 0.0) * self.alpha / (2 - self.alpha))

    def clearly_above_best(self) -> bool:
        if not math.isfinite(self.best) or self.count < 2:
            return False
        margin = max(3.0 * self.noise(), RISE * abs(self.best))
        return self.value > self.best + margin


@dataclass
class Watch:
    """Smoothed losses and best states of one run (see the module)."""

    alpha: float
    total: Smoothed
    best: dict | None = None
    before_step: dict | None = None
    views: dict[int, Smoothed] = field(default_factory=dict)
    view_best: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def start(cls, run) -> "Watch":
        window = max(5, run.iterations // 10)
        alpha = 2.0 / (window + 1)
        watch = cls(alpha=alpha, total=Smoothed(alpha))
        watch.before_step = run.latents.snapshot()
        watch.best = watch.before_step
        return watch

    def record(self, run, total: float, view_losses: dict[int, float]) -> None:
        """After a step whose loss was ``total`` (and ``view_losses``: view number ->
        that view's loss, where the strategy reports them)."""
        state = self.before_step
        if self.total.add(total):
            self.best = state
        parts = per_view_parts(run)
        if parts is not None and view_losses:
            estimate, slot_of_view = parts
            rows = None
            for v, loss in view_losses.items():
                slot = slot_of_view.get(v)
                if slot is None:
                    continue
                smoothed = self.views.setdefault(v, Smoothed(self.alpha))
                if smoothed.add(loss):
                    if rows is None:
                        rows = np.array(state[estimate.key], dtype=np.float64).reshape(
                            len(estimate.targets), -1)
                    self.view_best[v] = rows[slot].copy()
                elif v not in self.view_best and smoothed.count == 1:
                    if rows is None:
                        rows = np.array(state[estimate.key], dtype=np.float64).reshape(
                            len(estimate.targets), -1)
                    self.view_best[v] = rows[slot].copy()
        self.before_step = run.latents.snapshot()

    def finish(self, run) -> None:
        """Put back the best state where the end is clearly worse (see the module);
        warnings name what was put back."""
        import mitsuba as mi

        latents = run.latents
        if not any(getattr(e, "moves_edges", False) for e in run.estimates):
            return  # measured on moving geometry and cameras only (issue 13)
        if self.total.clearly_above_best() and self.best is not None:
            latents.restore(self.best)
            margin = max(3.0 * self.total.noise(), RISE * abs(self.total.first))
            if self.total.best < self.total.first - margin:
                warnings.warn(
                    f"optimize(): {run.problem.name}: best state kept: the loss ended at "
                    f"{self.total.value:.4g} (smoothed), clearly above its minimum "
                    f"{self.total.best:.4g}; the best state seen is returned", stacklevel=2)
            else:  # it never clearly got better than where it started
                run.status = "diverged"
                warnings.warn(
                    f"optimize(): {run.problem.name}: diverged: the loss ended at "
                    f"{self.total.value:.4g} (smoothed), clearly above its minimum "
                    f"{self.total.best:.4g}, which is not clearly below the start "
                    f"({self.total.first:.4g}); the best state seen is returned", stacklevel=2)
            return
        parts = per_view_parts(run)
        if parts is None:
            return
        estimate, slot_of_view = parts
        back = [v for v, s in self.views.items() if s.clearly_above_best() and v in self.view_best]
        if not back:
            return
        rows = np.array(latents[estimate.key], dtype=np.float64).reshape(len(estimate.targets), -1)
        for v in back:
            rows[slot_of_view[v]] = self.view_best[v]
        latents[estimate.key] = mi.Float(rows.ravel().astype(np.float32))
        latents.write_scene()
        names = [run.problem.views[v].id for v in back]
        warnings.warn(
            f"optimize(): {run.problem.name}: best state kept for {len(names)} "
            f"{estimate.kind}(s) whose own view's loss rose clearly above its minimum: "
            + ", ".join(f"{n} ({self.views[v].value:.4g} > {self.views[v].best:.4g})"
                        for n, v in zip(names, back)), stacklevel=2)


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
    """The step's loss and its views' losses as the watch compares them: unblurred
    where the loss is coarse to fine (:class:`~invpbr.optimization.coarse.CoarseToFine`
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
    a rigid motion (cameras, poses), whose Adam steps otherwise keep wandering
    by about the learning rate around the answer; else 1 (constant)."""
    if configured is not None:
        return float(configured)
    if any(e.kind in ("camera", "pose") for e in estimates):
        return 0.1
    return 1.0
