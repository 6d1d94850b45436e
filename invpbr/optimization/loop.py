"""The optimization loop: a :class:`~invpbr.problem.folder.Problem` in, a
:class:`~invpbr.results.result.Result` out.

Each step moves estimates to their coarse-to-fine stage, renders the chosen
views with gradients and back-propagates their image loss (the step
strategy, :mod:`.strategies`), adds the estimates' regularizers, takes one
Adam step, keeps every latent inside its bounds and writes the estimates
back into the scene (:mod:`.latents`). Nothing here names a kind of
estimate: each one says what it needs (see :class:`invpbr.estimates.Estimate`).
"""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..config import spp_at
from ..render.integrators import choose_integrator_type, make_integrator, view_integrators
from ..results import evaluate
from ..results.result import Result
from . import records
from .gradient_images import run_gradient_images
from .latents import Latents
from .losses import image_loss
from .polish import lowered_everywhere, polish
from .strategies import StepContext, Strategy, can_freeze, choose_strategy
from .coarse import CoarseToFine, blur_radius
from .coarse import applies as coarse_applies
from .watch import Watch, averaged_report, default_lr_decay, watched_losses


@dataclass
class StepInfo:
    """What a callback sees after each step.

    Attributes:
        iteration: index of the step just taken (0-based).
        loss: the step's total loss (image losses averaged over views, plus
            regularizers).
        views: ids of the views rendered in this step.
        estimates: key -> current value (numpy; textures (H, W, C)); read
            from the latents when first looked at (a step whose callback
            does not look pays no copy).
        render: renders a view of the current estimate (see below).
        errors: the current errors against the truth (see below).
        held_out: scores the held-out views of the current estimate (see below).
    """

    iteration: int
    loss: float
    views: list[str]
    estimates: Mapping[str, np.ndarray]
    render: Callable[[str], np.ndarray] | None = None
    """``render(view_id)``: that view of the current estimate, linear RGB
    (H, W, 3), as its photo saw it (one render at ``spp_final // 4``, at least
    4 samples, without gradients; costs a render per call, nothing if unused)."""
    errors: Callable[[], dict[str, float]] | None = None
    """``errors()``: key -> current error against the truth (empty without one)."""
    held_out: Callable[[], dict[str, dict[str, float]]] | None = None
    """``held_out()``: what result.json's ``novel_view_srgb`` would say of the
    current estimate: held-out view id and ``"mean"`` -> sRGB ``psnr`` and
    ``ssim`` (renders at ``spp_final``, without gradients; costs a final
    render per held-out view, nothing if unused; empty without held-out views)."""


class LazyValues(Mapping):
    """The estimates' current values, read from the latents on first use."""

    def __init__(self, read: Callable[[], dict[str, np.ndarray]]):
        self._read, self._values = read, None

    def _get(self) -> dict[str, np.ndarray]:
        if self._values is None:
            self._values = self._read()
        return self._values

    def __getitem__(self, key: str) -> np.ndarray:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def peak_memory_mb() -> float | None:
    """Peak resident memory of this process so far, in MiB (None where unknown)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def decay_factor(lr_decay: float, iteration: int, iterations: int) -> float:
    """Learning-rate factor of step ``iteration``: 1 for the first half of the
    run, then geometric down to ``lr_decay`` at the last step (an estimate gets
    there at full speed, then settles)."""
    half = iterations // 2
    if iteration < half or iterations - 1 <= half:
        return 1.0
    return lr_decay ** ((iteration - half) / (iterations - 1 - half))


@dataclass
class Run:
    """One optimization in progress: what :func:`optimize` sets up, steps and
    turns into a result."""

    problem: Any
    estimates: list
    iterations: int
    integrator: Any
    integrator_type: str
    context: StepContext
    strategy: Strategy
    frozen: bool
    initial: dict[str, np.ndarray]
    before: dict
    latents: Latents | None = None
    step_fn: Any = None
    history: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    status: str = "completed"
    elapsed: float = 0.0
    # what the report shows (see :mod:`.records`)
    start_renders: dict[str, np.ndarray] = field(default_factory=dict)
    #: the latents at the start (references: the optimizer never changes them in place)
    start_state: dict | None = None
    gradient_images: list = field(default_factory=list)
    trajectory: records.Trajectory | None = None
    timings: dict[str, float] = field(default_factory=dict)
    watch: Watch | None = None  # smoothed losses and best states (see :mod:`.watch`)
    # surviving (see :mod:`.checkpoint`): where the steps go on, what was skipped
    next_step: int = 0
    skipped: list[int] = field(default_factory=list)
    rng_state: dict | None = None
    resumed_from: int | None = None
    error: str = ""
    checkpoints: Any = None
    started: float | None = None
    updating: bool = False  # inside the optimizer's update (Adam's state may be half-changed)

    def elapsed_now(self) -> float:
        """Seconds of steps so far (before a resume included)."""
        return self.elapsed if self.started is None else time.perf_counter() - self.started


def start_run(problem, iterations: int | None = None) -> Run:
    """Check ``problem``, set up its estimates, integrator, step strategy and
    latents, and render what "doing nothing" scores (held-out views, relit)."""
    import drjit as dr

    estimates = problem.estimates
    if not estimates:
        raise ValueError(f"optimize(): {problem.name}: nothing to estimate (no [[estimate]] table)")
    if not problem.views:
        raise ValueError(f"optimize(): {problem.name}: no photos")
    # An earlier run left unfinished (its steps taken, never finish_run, which releases
    # the latents' AD graph) keeps that graph until the cycle collector frees it; until
    # then this run's forward-mode gradient images failed in Dr.Jit's ad_traverse()
    # ("... outside of the current dr.isolate_grad() scope"). Collect it now.
    gc.collect()
    cfg = problem.config
    iterations = cfg.optimize.iterations if iterations is None else int(iterations)
    fit = [i for i, v in enumerate(problem.views) if not v.held_out]
    if not fit:
        raise ValueError(f"optimize(): {problem.name}: every view is held out; none is left to fit")
    integrator_type = choose_integrator_type(cfg.render, estimates)
    integrator = make_integrator(cfg.render, estimates, problem.scene)
    for e in estimates:
        e.setup(problem)
    context = StepContext(problem=problem, latents=None, integrator=integrator,
                          integrator_type=integrator_type,
                          loss_fn=image_loss(cfg.optimize.loss, scale=cfg.optimize.loss_scale),
                          fit=fit, per_step=min(cfg.optimize.views_per_step or len(fit), len(fit)),
                          view_integrators=view_integrators(cfg.render, estimates, problem.scene,
                                                            problem.views, integrator_type))
    if coarse_applies(estimates):  # rigid motions: blurred images first (see .coarse)
        context.loss_fn = CoarseToFine(context.loss_fn)
    strategy, fixed_views = choose_strategy(context, estimates)
    frozen = can_freeze(problem, integrator_type, fixed_views, estimates, strategy)
    run = Run(problem=problem, estimates=estimates, iterations=iterations, integrator=integrator,
              integrator_type=integrator_type, context=context, strategy=strategy,
              frozen=frozen, initial={e.key: e.initial for e in estimates if e.reported},
              # "doing nothing": the starting guess's held-out views and relit renders
              before=evaluate.evaluation_renders(problem, integrator))
    before_start = time.perf_counter()
    run.start_renders = records.start_renders(run)
    run.gradient_images = run_gradient_images(run, "start")  # (before the latents' AD graph)
    run.timings["before_loop"] = time.perf_counter() - before_start
    run.trajectory = records.Trajectory(problem, estimates)
    run.latents = context.latents = Latents(problem, estimates, iterations, lr=cfg.optimize.lr,
                                            half=cfg.optimize.precision == "half")
    run.start_state = run.latents.snapshot()
    if frozen:
        # (dr.freeze reads the step's closure, latents included, so only now.) A
        # coarse-to-fine stage changes the size of a texture: each stage (and each spp
        # of a schedule, an argument) gets its own recording, never a replay of
        # another's kernels.
        # dr.freeze finds a step's inputs by traversing its arguments (and closure):
        # PyTrees and Mitsuba objects, not the attributes of other Python objects such
        # as the strategy. What the step reads is therefore passed in explicitly.
        def step(seed, which, spp, inputs):
            return strategy(seed, which, spp)

        run.step_fn = dr.freeze(step, state_fn=lambda *_: run.latents.stage_key(),
                                warn_after=100)
        # The recording checks Mitsuba's registry of scene objects on every replay:
        # collect other scenes' garbage now, not in the middle of the run.
        gc.collect()
    return run


def render_and_backward(run: Run, base_seed: int, chosen: list[int], spp: int):
    """The step's renders, losses and backward pass (frozen where it applies); the loss."""
    import mitsuba as mi

    which = run.strategy.inputs(chosen)
    seed = mi.UInt32(base_seed)
    if not run.frozen:
        return run.strategy(seed, which, spp)
    try:
        return run.step_fn(seed, which, spp, run.strategy.frozen_inputs())
    except RuntimeError as e:
        # dr.freeze refuses to replay when, e.g., scene objects were created or
        # freed since the recording; trace this and later steps instead.
        warnings.warn(f"optimize(): {run.problem.name}: frozen step could not be replayed "
                      f"({str(e).splitlines()[0]}); continuing without dr.freeze", stacklevel=3)
        run.frozen = False
        run.latents.clear_gradients()
        return run.strategy(seed, which, spp)


def take_step(run: Run, it: int, rng: np.random.Generator) -> tuple[float, list[int]] | None:
    """Step ``it``: its loss and views, or None when the loss or a gradient is
    not finite (the step is skipped: latents and Adam's state are left as they were)."""
    import drjit as dr

    cfg, latents, context = run.problem.config, run.latents, run.context
    latents.advance(it)
    fit = context.fit
    chosen = (fit if context.per_step == len(fit)
              else sorted(int(i) for i in rng.choice(fit, size=context.per_step, replace=False)))
    spp = spp_at(cfg.render, it, run.iterations)
    if isinstance(context.loss_fn, CoarseToFine):
        width = run.problem.views[fit[0]].photo.shape[1]
        context.loss_fn.radius = blur_radius(it, run.iterations, width)
        context.loss_fn.watch_radius = blur_radius(0, run.iterations, width)
        context.loss_fn.plain = []
    n_views = len(run.problem.views)
    base_seed = (cfg.optimize.seed * 1_000_003 + it * n_views) % (2**32 - n_views)
    total = render_and_backward(run, base_seed, chosen, spp)
    reg = latents.regularizer()
    if reg is not None:
        latents.backward(reg)
        total = total + dr.detach(reg)
    total = float(np.asarray(dr.detach(total)).ravel()[0])  # the step's one read-back
    run.strategy.after_backward(chosen, base_seed, spp)
    if not (np.isfinite(total) and latents.gradients_finite()):
        latents.skip_step()
        return None
    run.updating = True
    lr_decay = default_lr_decay(cfg.optimize.lr_decay, run.estimates)
    if lr_decay != 1.0:
        latents.decay(decay_factor(lr_decay, it, run.iterations))
    latents.step()
    run.updating = False
    return total, chosen


def deterministic(run: Run) -> bool:
    """``[optimize] deterministic``, or where it is not set, whether one of the run's
    estimates asks for it (``Estimate.deterministic_by_default``: poses, cameras)."""
    value = run.problem.config.optimize.deterministic
    if value is None:
        return any(e.deterministic_by_default for e in run.estimates)
    return bool(value)


@contextmanager
def one_thread(run: Run) -> Iterator[None]:
    """Dr.Jit's pool at one thread inside, where the run is :func:`deterministic`
    (its count before restored after); otherwise nothing changes."""
    if not deterministic(run):
        yield
        return
    import drjit as dr

    before = dr.thread_count()
    dr.set_thread_count(1)
    try:
        yield
    finally:
        dr.set_thread_count(before)


def run_steps(run: Run, callback: Callable | None, progress: bool, *,
              stop: Callable[[], bool] | None = None) -> None:
    """Take the run's steps (from ``run.next_step``, after a resume). A step
    whose loss or gradient is not finite is skipped (``run.skipped``);
    ``max_skipped_steps`` in a row end the run (``"diverged"``). Ctrl-C, a
    callback returning True, ``stop()`` returning True (a signal) or a Mitsuba
    or Dr.Jit error (``"failed"``, kept in ``run.error``) end it early. Writes
    checkpoints (``run.checkpoints``, see :mod:`.checkpoint`) when due and at the end."""
    cfg = run.problem.config.optimize
    rng = np.random.default_rng(cfg.seed)
    if run.rng_state is not None:
        rng.bit_generator.state = run.rng_state
    last_good = run.latents.snapshot()
    if run.watch is None:  # (a resumed run's comes from its checkpoint)
        run.watch = Watch.start(run)
    in_a_row = 0  # skipped steps in a row just before run.next_step (after a resume too)
    while run.next_step - 1 - in_a_row in run.skipped:
        in_a_row += 1
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.iterations, initial=run.next_step, desc=run.problem.name, unit="it",
                   leave=True)
    run.started = time.perf_counter() - run.elapsed
    consistent = True  # the latents and Adam's state belong to run.next_step
    with one_thread(run):
        try:
            while run.next_step < run.iterations:
                if stop is not None and stop():
                    run.status = "interrupted"
                    break
                it = run.next_step
                step_start = time.perf_counter()
                consistent, rng_before = False, rng.bit_generator.state
                try:
                    taken = take_step(run, it, rng)
                except RuntimeError as e:  # Mitsuba's and Dr.Jit's errors
                    run.status = "failed"
                    text = str(e).strip()
                    run.error = f"step {it}: {text.splitlines()[0] if text else type(e).__name__}"
                    run.latents.restore(last_good)
                    # before Adam's update, the state is that of step ``it`` not taken
                    consistent, rng.bit_generator.state = not run.updating, rng_before
                    break
                run.next_step = it + 1
                consistent = True
                if taken is None:
                    run.skipped.append(it)
                    in_a_row += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(skipped=len(run.skipped))
                    if in_a_row >= cfg.max_skipped_steps:
                        run.status = "diverged"
                        break
                else:
                    in_a_row = 0
                    total, chosen = taken
                    last_good = run.latents.snapshot()
                    run.history.append(total)
                    run.watch.record(run, *watched_losses(run, total, chosen))
                    run.trajectory.record(run.latents)
                    run.step_seconds.append(time.perf_counter() - step_start)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{total:.4g}")
                    if callback is not None:
                        info = StepInfo(iteration=it, loss=total,
                                        views=[run.problem.views[v].id for v in chosen],
                                        estimates=LazyValues(run.latents.values),
                                        render=lambda view_id: render_current(run, view_id),
                                        errors=lambda: errors_against_truth(
                                            run.problem, run.estimates, run.latents.values())[0],
                                        held_out=lambda: held_out_scores(run))
                        if callback(info):
                            run.status = "stopped"
                            break
                if run.checkpoints is not None and run.next_step < run.iterations \
                        and run.checkpoints.due(run.next_step):
                    run.checkpoints.save(run, rng)
        except KeyboardInterrupt:
            run.status = "interrupted"
            run.latents.restore(last_good)
            if not consistent and not run.updating:
                consistent, rng.bit_generator.state = True, rng_before
        finally:
            if bar is not None:
                bar.close()
            run.elapsed = run.elapsed_now()
            run.started = None
    if run.skipped and not run.history and run.status == "completed":
        run.status = "diverged"  # not one step could be taken
    if run.checkpoints is not None and consistent:
        # (the last one: a run killed in its final renders resumes there)
        run.checkpoints.save(run, rng)


def render_current(run: Run, view_id: str, *, spp: int | None = None,
                   seed: int = 2**31 - 2) -> np.ndarray:
    """View ``view_id`` of the current estimate without gradients, as its photo
    saw it (per-view estimates moved for it, gains applied), at ``spp``
    (default ``spp_final // 4``, at least 4); for callbacks."""
    import drjit as dr

    views = run.problem.views
    v = next((i for i, view in enumerate(views) if view.id == view_id), None)
    if v is None:
        raise ValueError(f"StepInfo.render(): unknown view {view_id!r}; views: "
                         f"{', '.join(view.id for view in views)}")
    if spp is None:
        spp = max(4, run.problem.config.render.spp_final // 4)
    per_view = any(e.per_view for e in run.estimates)
    if per_view:  # (outside suspend_grad: the scene keeps its AD graph for the next step)
        run.latents.write_scene(views[v].index)
    with dr.suspend_grad():
        image = run.context.render_view(v, spp, seed)
        out = np.array(run.latents.apply_to_image(image, v), dtype=np.float32)[..., :3]
    if per_view:
        run.latents.write_scene()
    return out


def held_out_scores(run: Run) -> dict[str, dict[str, float]]:
    """The held-out views of the current estimate scored as result.json's
    ``novel_view_srgb`` (rendered as :func:`final_renders` does); for callbacks."""
    held = [v for v in run.problem.views if v.held_out]
    spp = run.problem.config.render.spp_final
    renders = {v.id: render_current(run, v.id, spp=spp, seed=2**31 - 1) for v in held}
    return evaluate.held_out_srgb(renders, held)


def errors_against_truth(problem, estimates, values: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """key -> error of each estimate against the truth, and key -> its further
    named errors (geometry: Chamfer, pose position and angle)."""
    errors, extra = {}, {}
    for e in estimates:
        if e.key not in values:
            continue
        error, more = e.errors(values[e.key], problem)
        if error is not None:
            errors[e.key] = error
        if more:
            extra[e.key] = more
    return errors, extra


def final_renders(run: Run) -> dict[str, np.ndarray]:
    """Every view rendered from the estimates at ``spp_final``, as its photo
    saw it (per-view estimates moved for it, gains applied)."""
    import drjit as dr

    problem, latents = run.problem, run.latents
    renders = {}
    with dr.suspend_grad():
        for v, view in enumerate(problem.views):
            latents.move_for_view(view.index)
            image = run.context.render_view(v, problem.config.render.spp_final, 2**31 - 1)
            renders[view.id] = np.array(latents.apply_to_image(image, v), dtype=np.float32)
        latents.move_for_view(None)
    return renders


#: A run that moves edges ends worse than its start when the loss of its final renders
#: is this much (relative) above that of the start's renders (the same samples).
WORSE_THAN_START = 0.01


def render_loss(run: Run, renders: dict[str, np.ndarray]) -> float:
    """Mean over the fitted views of the step's image loss (``[optimize] loss`` and
    ``loss_scale``: :func:`~invpbr.optimization.losses.image_loss`) between ``renders`` and
    the photos, on the pixels the step's loss compares (clipped ones as bounds where it
    counts them so: :meth:`View.loss_pixels`). (It was the mean absolute difference for
    every loss but ``l2``: a robust ``cauchy`` run was judged against its start by a loss
    that its outliers dominate.)"""
    import drjit as dr
    import mitsuba as mi

    opt = run.problem.config.optimize
    loss_fn = image_loss(opt.loss, scale=opt.loss_scale)
    bound = run.problem.clipped_bounds()
    losses = []
    for v in run.context.fit:
        view = run.problem.views[v]
        mask, ceiling = view.loss_pixels(bound)
        render = np.asarray(renders[view.id], np.float32)[..., :3]
        render = render if ceiling is None else np.minimum(render, ceiling)
        photo = np.asarray(view.photo, np.float32)[..., :3]
        if mask is not None:
            render, photo = render[mask], photo[mask]
        render, photo = (np.ascontiguousarray(a.reshape(-1, 3), np.float32) for a in (render, photo))
        losses.append(float(dr.ravel(loss_fn(mi.TensorXf(render), mi.TensorXf(photo)))[0]))
    return float(np.mean(losses))


def back_to_start(run: Run) -> dict[str, np.ndarray] | None:
    """A run that moves edges and whose estimates render worse than its start (the final
    renders' loss more than ``WORSE_THAN_START`` above the start renders', both at
    ``spp_final`` with the same seed) is put back to its start, ``"diverged"``, with a
    warning. The watch's smoothed losses miss a run that got worse within their noise
    (a free shape from 3 views, robustness benchmark seed 107: its loss rose 3 % in the
    first 5 steps and stayed there, while its Chamfer distance doubled).

    Returns the final renders where the estimates are kept (:func:`finish_run` reuses
    them), None where the check did not run or the start was put back."""
    if run.start_state is None or run.resumed_from is not None or not run.start_renders:
        return None
    start = render_loss(run, run.start_renders)
    renders = final_renders(run)
    end = render_loss(run, renders)
    if not end > start * (1.0 + WORSE_THAN_START):
        return renders
    run.latents.restore(run.start_state)
    run.latents.write_scene()
    run.status = "diverged"
    warnings.warn(f"optimize(): {run.problem.name}: diverged: the estimates render worse than "
                  f"the start (loss {end:.4g} against {start:.4g}, {run.problem.config.render.spp_final} "
                  "spp, the same samples); the start is returned", stacklevel=3)
    return None


def finish_run(run: Run) -> Result:
    """The :class:`Result` of a run whose steps are done."""
    import drjit as dr
    import mitsuba as mi

    problem, latents, cfg = run.problem, run.latents, run.problem.config
    after_start = time.perf_counter()
    last = latents.values() if run.watch is not None and run.watch.tail else None
    if run.watch is not None and run.status == "completed":
        run.watch.finish(run)  # the best state seen where the end is clearly worse
    averaged = averaged_report(run, last)
    polished, renders = {}, None
    if run.status in ("completed", "diverged") and run.history:  # (not after Ctrl-C or a failure)
        diverged = run.status == "diverged"
        with one_thread(run):  # (chaotic as the steps are: one thread where they had one)
            polished = polish(run)
        if diverged and lowered_everywhere(polished):
            run.status = "completed"
            warnings.warn(f"optimize(): {problem.name}: the steps did not get better than the "
                          "start, but the Gauss-Newton polish after them lowered the loss of "
                          "every pose and camera (result.json: polished); status: completed",
                          stacklevel=2)
        if run.watch is not None and run.watch.active:
            renders = back_to_start(run)  # (the final renders, where nothing changes after it)
    if latents.finish():
        renders = None
    estimates = latents.values()
    latents.release()
    fields: dict[str, Any] = {}
    for e in run.estimates:
        for name, value in e.result_fields(latents, problem, estimates).items():
            if isinstance(value, dict) and isinstance(fields.get(name), dict):
                fields[name] = fields[name] | value
            else:
                fields[name] = value
    field_notes = list(fields.pop("notes", []))  # (an estimate's notes: NaN, occupancy, ...)
    errors, extra = errors_against_truth(problem, run.estimates, estimates)
    initial_errors, extra_initial = errors_against_truth(problem, run.estimates, run.initial)
    if renders is None:
        renders = final_renders(run)
    after = evaluate.evaluation_renders(problem, run.integrator, renders=renders)
    held_out = [v for v in problem.views if v.held_out]
    batched = getattr(run.strategy, "batched", False)
    run.gradient_images += run_gradient_images(run, "end")
    run.timings["after_loop"] = time.perf_counter() - after_start
    return Result(
        name=problem.name, status=run.status, estimates=estimates, initial=run.initial,
        kinds={e.key: e.kind for e in run.estimates if e.reported}, loss=run.history,
        iterations=len(run.history),
        seconds_per_iteration=run.elapsed / max(len(run.history), 1),
        step_seconds=run.step_seconds, errors=errors, initial_errors=initial_errors,
        geometry_errors=extra, geometry_errors_initial=extra_initial,
        peak_memory_mb=peak_memory_mb(), renders=renders,
        photos={v.id: v.photo for v in problem.views}, integrator=run.integrator_type,
        variant=mi.variant(),
        settings=cfg.to_dict() | {"iterations_run": len(run.history), "frozen": run.frozen,
                                  "threads": dr.thread_count(),
                                  "deterministic": deterministic(run),
                                  "recordings": run.step_fn.n_recordings if run.frozen else 0,
                                  "batched": batched},
        held_out=[v.id for v in held_out],
        novel_view_psnr={v.id: evaluate.psnr(renders[v.id], v.photo) for v in held_out},
        novel_view_psnr_initial={v.id: evaluate.psnr(run.before["held_out"][v.id], v.photo)
                                 for v in held_out},
        novel_view_srgb=evaluate.held_out_srgb(renders, held_out),
        relight_psnr=evaluate.relight_scores(problem, after),
        relight_psnr_initial=evaluate.relight_scores(problem, run.before),
        errors_scale_invariant=evaluate.albedo_scale_invariant_errors(estimates, problem.truth),
        notes=evaluate.ambiguity_notes(run.estimates, problem.params) + field_notes,
        scene_xml=problem.scene_xml,
        scene_folder=str(problem.folder.resolve()) if problem.folder is not None else None,
        start_renders=run.start_renders,
        masks={v.id: v.mask for v in problem.views if v.mask is not None},
        trajectory=run.trajectory.steps, truth=run.trajectory.truth(),
        previews=records.point_previews(problem, run.estimates, run.initial, estimates),
        gradient_images=run.gradient_images, timings=dict(run.timings),
        skipped_steps=list(run.skipped), error=run.error, resumed_from=run.resumed_from,
        checkpoints=({} if run.checkpoints is None else
                     {"written": run.checkpoints.written, "seconds": run.checkpoints.write_seconds}),
        averaged=averaged, polished=polished, **fields)


def resume_run(run: Run, out, *, resume: bool = True) -> bool:
    """Write ``run``'s checkpoints into result folder ``out`` and (``resume``)
    continue from the one there, if any (see :mod:`.checkpoint`); whether it resumed."""
    from .checkpoint import Checkpoints, restore_run

    run.checkpoints = Checkpoints.for_run(out, run.problem.config)
    if not resume:  # a fresh run: an earlier run's checkpoint there is not this one's
        run.checkpoints.path.unlink(missing_ok=True)
        return False
    state = run.checkpoints.load()
    if state is None:
        return False
    restore_run(run, state, run.checkpoints.path)
    return True


def bare_result(run: Run) -> Result:
    """The result of ``run`` without final renders or evaluation (what is
    saved when a second signal stops the final renders)."""
    import mitsuba as mi

    estimates = run.latents.values()
    return Result(
        name=run.problem.name, status=run.status, estimates=estimates, initial=run.initial,
        kinds={e.key: e.kind for e in run.estimates if e.reported}, loss=run.history,
        iterations=len(run.history), seconds_per_iteration=run.elapsed / max(len(run.history), 1),
        step_seconds=run.step_seconds, variant=mi.variant(), integrator=run.integrator_type,
        settings=run.problem.config.to_dict() | {"iterations_run": len(run.history)},
        photos={v.id: v.photo for v in run.problem.views},
        skipped_steps=list(run.skipped), error=run.error, resumed_from=run.resumed_from)


def optimize(problem, *, iterations: int | None = None,
             callback: Callable[[StepInfo], bool | None] | None = None,
             progress: bool = True, out=None, resume: bool = False) -> Result:
    """Estimate the problem's unknowns from its photos.

    Args:
        problem: the loaded problem (its scene is modified in place: at the
            end it holds the estimates).
        iterations: steps to take (default: ``problem.config.optimize.iterations``).
        callback: called after every step with a :class:`StepInfo`; return
            True to stop early.
        progress: show a tqdm progress bar.
        out: write checkpoints into ``out/checkpoint/`` (``[optimize]
            checkpoint_every``, ``checkpoint_seconds``).
        resume: continue from the checkpoint in ``out`` when there is one.

    Returns:
        A :class:`~invpbr.results.result.Result`. Ctrl-C stops the loop and
        still returns what was estimated so far (status ``"interrupted"``); a
        non-finite loss stops it at the last finite estimate (``"diverged"``).
    """
    with records.record_warnings() as caught:
        run = start_run(problem, iterations)
        if out is not None:
            resume_run(run, out, resume=resume)
        run_steps(run, callback, progress)
        result = finish_run(run)
    result.warnings = caught + result.warnings
    return result
