"""The outcome of an optimization, and how it is saved.

``save_result`` writes a result folder::

    out/<name>/
      result.json          parameters, errors, loss, timing, settings
      renders/<view>.png   photo | estimate | |difference| side by side (sRGB)
      renders/<view>.exr   the estimate's render (linear)
      textures/<key>.exr   estimated textures (linear) and .png previews (sRGB)
      meshes/<shape>.ply   estimated meshes (poses and shapes)
      transforms.json      refined cameras (camera refinement), NeRF / instant-ngp form
      scene.xml            the model with every estimate written in: plain Mitsuba
                           renders it (its files are copied into assets/)
      loss.png             the loss curve
      renders/start/<view>.exr    the starting guess rendered (linear)
      renders/photos/<view>.png   the photo (sRGB), renders/masks/<view>.png its mask
      textures/start/<key>.exr    estimated textures and envmaps at the start
      gradients/           gradient images at the start and end (index.json, PNGs)
      report.html          everything above on one page (pictures in report/)

The folder appears whole: it is written beside the destination and renamed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..capture import images as io
from ..estimates import kind_class
from ..estimates.textures import file_name
from .scene_xml import write_scene
from . import plots
from .evaluate import psnr


@dataclass
class Result:
    """What an optimization produced.

    Attributes:
        name: the problem's name (scene folder name).
        status: ``completed``, ``stopped`` (by a callback), ``interrupted``
            (Ctrl-C, SIGTERM), ``diverged`` (``max_skipped_steps`` steps in a
            row with a non-finite loss or gradient; estimates are the last
            finite ones) or ``failed`` (a Mitsuba or Dr.Jit error, in ``error``).
        estimates: key -> estimated value (numpy; textures (H, W, C) linear).
        initial: key -> starting value.
        kinds: key -> the estimate's kind (``"value"``, ``"texture"``, ``"envmap"``,
            ``"pose"``, ``"shape"``, ``"camera"``, or a registered kind's name).
        loss: total loss of each step.
        iterations: steps taken.
        seconds_per_iteration: wall time of the loop per step (all steps,
            kernel compilation in the first ones included).
        step_seconds: wall time of each step.
        errors: key -> mean absolute difference from truth (if known); for
            geometry the mean distance between corresponding vertices.
        initial_errors: the same for the starting values.
        renders: view id -> the estimate rendered (linear RGB (H, W, 3)).
        photos: view id -> the photo (linear RGB (H, W, 3)).
        integrator: the integrator type used.
        variant: the Mitsuba variant used.
        settings: the problem settings used.
        held_out: ids of the views not fitted.
        novel_view_psnr: held-out view id -> PSNR of the estimate's render.
        novel_view_psnr_initial: the same for the starting guess.
        novel_view_srgb: held-out view id -> ``psnr`` and ``ssim`` on sRGB values
            clipped to [0, 1] (as NeRF papers report), and ``"mean"`` of each.
        novel_view_appearance: a field with ``appearance``: held-out view id (and
            ``"mean"``) -> PSNR of the right half after its appearance is fitted
            on the left half (NeRF-W's evaluation).
        relight_psnr: relighting envmap -> view id (and ``"mean"``) -> PSNR of
            the relit estimate against the relit truth.
        relight_psnr_initial: the same for the starting guess.
        errors_scale_invariant: albedo key -> per-channel scale-invariant error.
        notes: what the photos cannot determine in this problem (ambiguities).
        geometry_errors: geometry key -> further errors against the truth:
            ``chamfer`` (shapes; symmetric, over the truth's bounding-box
            diagonal), ``position`` and ``rotation_deg`` (poses).
        geometry_errors_initial: the same for the starting geometry.
        meshes: shape id -> (vertices (N, 3), faces (F, 3)) of each estimated mesh.
        poses: pose key -> the estimated transform (translation, rotation
            axis and angle, scale, centre).
        peak_memory_mb: the process's peak resident memory (MiB) at the end of
            the run (host memory: the CPU backend's arrays live there).
        cameras: refined view id -> camera-to-world (4, 4), OpenCV convention.
        refined_cameras: every view's camera (:class:`invpbr.capture.cameras.Camera`)
            with the refined poses, written to ``transforms.json``.
        camera_errors: view id -> ``position`` (scene units) and
            ``rotation_deg`` errors of the refined camera against the truth.
        camera_errors_initial: the same for the starting cameras.
        gains: view id -> estimated gain per colour channel (``[photos] gain``);
            the renders are saved multiplied by it, as the photos saw them.
        gain_errors: view id -> largest relative error of its gains against
            the truth (in the estimate's gauge).
        gain_errors_initial: the same for gains of 1.
        start_renders: view id -> the starting guess rendered (linear RGB
            (H, W, 3)), with ``spp_final`` samples, as the photo saw it.
        masks: view id -> the photo's mask ((H, W) bool), where it has one.
        trajectory: key -> the estimate's value (flattened) before the first
            step and after each step, for estimates of at most
            :data:`~invpbr.results.report.TRAJECTORY_MAX` numbers.
        truth: key -> the true value (flattened) of those small estimates.
        previews: key -> ``start``/``end``/``truth`` -> up to
            :data:`PREVIEW_POINTS` points (N, 3) of a geometry estimate (the same
            points in each state).
        camera_poses: ``start``/``refined``/``truth`` -> view id ->
            camera-to-world (4, 4), OpenCV convention (camera refinement).
        warnings: the warnings raised while optimizing.
        gradient_images: gradient images (:class:`~invpbr.results.gradients.GradientImage`)
            at the start and end of the run.
        timings: seconds spent ``before_loop`` (start renders, gradient
            images) and ``after_loop`` (final renders, evaluation, gradient images).
        scene_xml: the model scene's XML as loaded (the result folder's
            scene.xml writes the estimates into it).
        scene_folder: the folder its relative file names resolve against.
        skipped_steps: indices of the steps skipped (non-finite loss or gradient).
        error: what ended a ``failed`` run (or an ``interrupted`` one early).
        resumed_from: the step a resumed run went on from (None: not resumed).
        checkpoints: ``written`` (count) and ``seconds`` (spent writing them).
        averaged: estimate key -> what was returned under iterate averaging
            (``[[estimate]] average``): ``returned`` (``average``, ``best state`` or
            ``last step``), ``from_step``, ``steps``, ``best_state`` (cameras put back
            to their best state instead), and with a truth the last step's errors
            (``last_step_errors``, ``last_step_camera_errors``).
        polished: estimate key -> its Gauss-Newton polish after the steps
            (``[[estimate]] polish``, :mod:`invpbr.optimization.polish`):
            ``iterations``, ``spp``, ``seconds``, ``returned``, and per motion (a
            camera's sensor id, or ``pose``) ``loss_before``, ``loss_after``,
            ``steps_kept``, ``blur`` (of its first iterations' images, pixels),
            ``kinked`` (iterations whose Jacobian had a kinked column, stepped with
            one-sided differences: :func:`invpbr.optimization.polish.one_sided`),
            ``sigma`` (standard deviations of its rotation, degrees, and position,
            scene units; None where the photos do not determine it) and, for a pose,
            ``second_chance`` (``reach``, ``kept``, ``returned``: ``first`` or
            ``second``, and where a second polish ran its ``iterations``,
            ``loss_first`` and ``loss_second``; :func:`invpbr.optimization.polish.second_chance`),
            and ``from_start`` (a polish from the run's start: ``iterations``,
            ``loss_first``, ``loss_start``, ``returned``: ``first`` or ``start``;
            :func:`invpbr.optimization.polish.from_start`); each of the two with
            ``one_minimum`` and ``tied`` (the second end may not replace the first:
            it lies within the first's noise, or their losses are within what the
            photos' noise could move; :func:`invpbr.optimization.polish.adopt_lower`),
            ``jumps`` and ``apart`` (how far the two ends are from each other:
            ``rotation_deg``, ``position``, ``sigmas``, the Mahalanobis distance
            under their covariances, and ``beyond_noise``: two minima of the photos'
            loss, which the run warns of: :func:`invpbr.optimization.polish.apart`);
            and where pixels near the photos' clip were left out, ``near_clip``
            (``threshold``, the render's value from which pixels were left out, linear,
            or None; and ``pixels_left_out``, the fraction of the fitted
            views' pixels: :meth:`invpbr.optimization.polish.Renderer.leave_out_near_clip`);
            or where the clipped channels counted as censored, ``censored``
            (``sigma``, the photos' noise near the clip, linear, or None where they
            stayed left out: under 1 % of the pixels clipped, or too few channels near
            the clip to measure the noise; ``pixels_counted``, the
            fraction of the fitted views' pixels counted again:
            :meth:`invpbr.optimization.polish.Renderer.censor_clipped`).
    """

    name: str
    status: str
    estimates: dict[str, np.ndarray]
    initial: dict[str, np.ndarray]
    kinds: dict[str, str]
    loss: list[float]
    iterations: int
    seconds_per_iteration: float
    step_seconds: list[float] = field(default_factory=list)
    errors: dict[str, float] = field(default_factory=dict)
    initial_errors: dict[str, float] = field(default_factory=dict)
    renders: dict[str, np.ndarray] = field(default_factory=dict)
    photos: dict[str, np.ndarray] = field(default_factory=dict)
    integrator: str = ""
    variant: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    held_out: list[str] = field(default_factory=list)
    novel_view_psnr: dict[str, float] = field(default_factory=dict)
    novel_view_psnr_initial: dict[str, float] = field(default_factory=dict)
    novel_view_srgb: dict[str, dict[str, float]] = field(default_factory=dict)
    novel_view_appearance: dict[str, float] = field(default_factory=dict)
    relight_psnr: dict[str, dict[str, float]] = field(default_factory=dict)
    relight_psnr_initial: dict[str, dict[str, float]] = field(default_factory=dict)
    errors_scale_invariant: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    geometry_errors: dict[str, dict[str, float]] = field(default_factory=dict)
    geometry_errors_initial: dict[str, dict[str, float]] = field(default_factory=dict)
    meshes: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    poses: dict[str, dict[str, Any]] = field(default_factory=dict)
    peak_memory_mb: float | None = None
    cameras: dict[str, np.ndarray] = field(default_factory=dict)
    refined_cameras: list = field(default_factory=list)
    camera_errors: dict[str, dict[str, float]] = field(default_factory=dict)
    camera_errors_initial: dict[str, dict[str, float]] = field(default_factory=dict)
    gains: dict[str, np.ndarray] = field(default_factory=dict)
    gain_errors: dict[str, float] = field(default_factory=dict)
    gain_errors_initial: dict[str, float] = field(default_factory=dict)
    start_renders: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    trajectory: dict[str, list[list[float]]] = field(default_factory=dict)
    truth: dict[str, list[float]] = field(default_factory=dict)
    previews: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    camera_poses: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    gradient_images: list = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    scene_xml: str = ""
    scene_folder: str | None = None
    skipped_steps: list[int] = field(default_factory=list)
    error: str = ""
    resumed_from: int | None = None
    checkpoints: dict[str, float] = field(default_factory=dict)
    averaged: dict[str, dict[str, Any]] = field(default_factory=dict)
    polished: dict[str, dict[str, Any]] = field(default_factory=dict)

    def psnr(self) -> dict[str, float]:
        """view id -> PSNR (dB) of the final render against the photo, both
        clipped to [0, 1] linear."""
        out = {}
        for vid, render in self.renders.items():
            photo = self.photos.get(vid)
            if photo is None:
                continue
            out[vid] = psnr(render, photo)
        return out

    def psnr_initial(self) -> dict[str, float]:
        """view id -> PSNR (dB) of the starting guess's render against the photo."""
        return {vid: psnr(render, self.photos[vid]) for vid, render in self.start_renders.items()
                if vid in self.photos}


#: Points of a geometry estimate kept for the report's picture (start, end, truth).
PREVIEW_POINTS = 400


def steady_seconds_per_iteration(step_seconds: list[float], warmup: int = 3) -> float | None:
    """Mean step time after the first ``warmup`` steps (which compile kernels)."""
    steady = step_seconds[warmup:] if len(step_seconds) > warmup else step_seconds
    return float(np.mean(steady)) if steady else None


def _side_by_side(photo: np.ndarray, render: np.ndarray) -> np.ndarray:
    gap = np.ones((photo.shape[0], 2, 3), np.float32)
    diff = np.abs(render - photo)
    return np.concatenate([photo, gap, render, gap, diff], axis=1)


def result_to_json(result: Result, files: dict[str, dict] | None = None) -> dict[str, Any]:
    """The JSON document of ``result.json``.

    Args:
        result: the result.
        files: estimate key -> the files its kind wrote into the result folder
            (see :meth:`invpbr.estimates.Estimate.write_files`).
    """
    files = files or {}
    parameters: dict[str, Any] = {
        key: kind_class(result.kinds.get(key, "")).to_json(key, value, result, files.get(key, {}))
        for key, value in result.estimates.items()}

    def finite(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    return {
        "scene": result.name,
        "status": result.status,
        "parameters": parameters,
        "kinds": dict(result.kinds),
        "errors": {k: finite(v) for k, v in result.errors.items()},
        "initial_errors": {k: finite(v) for k, v in result.initial_errors.items()},
        "psnr": {k: finite(v) for k, v in result.psnr().items()},
        "held_out": result.held_out,
        "novel_view_psnr": {k: finite(v) for k, v in result.novel_view_psnr.items()},
        "novel_view_psnr_initial": {k: finite(v) for k, v in result.novel_view_psnr_initial.items()},
        "novel_view_srgb": {k: {n: finite(v) for n, v in d.items()}
                            for k, d in result.novel_view_srgb.items()},
        "novel_view_appearance": {k: finite(v) for k, v in result.novel_view_appearance.items()},
        "relight_psnr": {m: {k: finite(v) for k, v in d.items()} for m, d in result.relight_psnr.items()},
        "relight_psnr_initial": {m: {k: finite(v) for k, v in d.items()}
                                 for m, d in result.relight_psnr_initial.items()},
        "errors_scale_invariant": {k: finite(v) for k, v in result.errors_scale_invariant.items()},
        "geometry_errors": {k: {n: finite(v) for n, v in d.items()}
                            for k, d in result.geometry_errors.items()},
        "geometry_errors_initial": {k: {n: finite(v) for n, v in d.items()}
                                    for k, d in result.geometry_errors_initial.items()},
        "camera_errors": {k: {n: finite(v) for n, v in d.items()}
                          for k, d in result.camera_errors.items()},
        "camera_errors_initial": {k: {n: finite(v) for n, v in d.items()}
                                  for k, d in result.camera_errors_initial.items()},
        "gains": {k: [float(x) for x in v] for k, v in result.gains.items()},
        "gain_errors": {k: finite(v) for k, v in result.gain_errors.items()},
        "gain_errors_initial": {k: finite(v) for k, v in result.gain_errors_initial.items()},
        "notes": result.notes,
        "loss": [finite(v) for v in result.loss],
        "iterations": result.iterations,
        "seconds_per_iteration": result.seconds_per_iteration,
        "seconds_per_iteration_steady": steady_seconds_per_iteration(result.step_seconds),
        "integrator": result.integrator,
        "variant": result.variant,
        "backend": ("gpu (cuda)" if result.variant.startswith("cuda") else "cpu (llvm)"
                    if result.variant.startswith("llvm") else result.variant),
        "peak_memory_mb": result.peak_memory_mb,
        "settings": result.settings,
        "views": [{"id": vid, "held_out": vid in result.held_out} for vid in result.photos],
        "psnr_initial": {k: finite(v) for k, v in result.psnr_initial().items()},
        "step_seconds": [float(v) for v in result.step_seconds],
        "trajectory": {k: [[finite(float(x)) for x in step] for step in steps]
                       for k, steps in result.trajectory.items()},
        "truth": {k: [float(x) for x in v] for k, v in result.truth.items()},
        "previews": {k: {state: np.asarray(pts, dtype=np.float64).round(6).tolist()
                         for state, pts in states.items()}
                     for k, states in result.previews.items()},
        "camera_poses": {state: {vid: np.asarray(m, dtype=np.float64).tolist()
                                 for vid, m in poses.items()}
                         for state, poses in result.camera_poses.items()},
        "warnings": list(result.warnings),
        "timings": {k: float(v) for k, v in result.timings.items()},
        "skipped_steps": len(result.skipped_steps),
        "skipped_at": [int(i) for i in result.skipped_steps],
        "error": result.error,
        "resumed_from": result.resumed_from,
        "checkpoints": dict(result.checkpoints),
        "averaged": strict_json(result.averaged),
        "polished": strict_json(result.polished),
    }


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (and numpy scalar) replaced by None
    or a plain number, so that ``json.dumps(..., allow_nan=False)`` accepts it."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _save_view_files(result: Result, folder: Path) -> None:
    """What the report needs of each view beyond the final render: the start
    render (linear EXR), the photo (sRGB PNG) and the mask."""
    from . import pictures

    for vid, render in result.start_renders.items():
        io.save_image(folder / "renders" / "start" / f"{file_name(vid)}.exr", render)
    for vid, photo in result.photos.items():
        path = folder / "renders" / "photos" / f"{file_name(vid)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pictures.png_bytes(pictures.srgb8(photo)))
    for vid, mask in result.masks.items():
        if mask is not None:
            path = folder / "renders" / "masks" / f"{file_name(vid)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(pictures.png_bytes(np.where(np.asarray(mask, bool)[..., None],
                                                         255, 0).astype(np.uint8).repeat(3, -1)))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False
    where that is not available (other systems, some file systems)."""
    import sys

    if sys.platform != "linux":
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _keep_checkpoint(result: Result, out_dir: Path, tmp: Path) -> None:
    """Carry ``out_dir/checkpoint`` into the new folder (hard links: a kill
    leaves it in the old folder or the new), unless the run completed."""
    old = out_dir / "checkpoint"
    if result.status in ("completed", "stopped") or not old.is_dir():
        return
    (tmp / "checkpoint").mkdir(exist_ok=True)
    for f in old.iterdir():
        if f.is_file() and not f.name.startswith("."):
            try:
                os.link(f, tmp / "checkpoint" / f.name)
            except OSError:
                shutil.copy2(f, tmp / "checkpoint" / f.name)


def save_result(result: Result, out_dir: str | os.PathLike) -> Path:
    """Write ``result`` to ``out_dir`` (replacing a previous result there).

    Returns:
        The result folder.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        files = {key: kind_class(result.kinds.get(key, "")).write_files(key, value, result, tmp)
                 for key, value in result.estimates.items()}
        for key, start in result.initial.items():
            if np.ndim(start) == 3 and np.ndim(result.estimates.get(key)) == 3:  # an image
                io.save_image(tmp / "textures" / "start" / f"{file_name(key)}.exr", start)
        for vid, render in result.renders.items():
            io.save_image(tmp / "renders" / f"{file_name(vid)}.exr", render)
            photo = result.photos.get(vid)
            preview = render if photo is None else _side_by_side(photo, render)
            io.save_image(tmp / "renders" / f"{file_name(vid)}.png", preview)
        _save_view_files(result, tmp)
        plots.plot_loss(result.loss, tmp / "loss.png", title=result.name)
        if result.gradient_images:
            from .gradients import write_gradient_images

            write_gradient_images(result.gradient_images, tmp / "gradients", title=result.name)
        missing = write_scene(result, tmp, files) if result.scene_xml else None
        doc = result_to_json(result, files)
        if missing is not None:
            doc["scene_file"] = "scene.xml"
            doc["scene_file_lacks"] = missing
        with open(tmp / "result.json", "w") as f:
            json.dump(strict_json(doc), f, indent=2, allow_nan=False)
        from .report import write_report

        write_report(tmp)
        _keep_checkpoint(result, out_dir, tmp)
        if out_dir.exists():
            if _exchange(tmp, out_dir):  # one atomic swap: never a moment without out_dir
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-old-", dir=out_dir.parent))
                os.replace(out_dir, old / "x")
                os.replace(tmp, out_dir)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
