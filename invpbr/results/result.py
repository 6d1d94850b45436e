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
from .evaluate import psnr


@dataclass
class Result:
    """What an optimization produced.

    Attributes:
        name: the problem's name (scene folder name).
        status: ``completed``, ``stopped`` (by a callback), ``interrupted``
            (Ctrl-C) or ``diverged`` (non-finite loss; estimates are the last finite ones).
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
        scene_xml: the model scene's XML as loaded (the result folder's
            scene.xml writes the estimates into it).
        scene_folder: the folder its relative file names resolve against.
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
    scene_xml: str = ""
    scene_folder: str | None = None

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


def steady_seconds_per_iteration(step_seconds: list[float], warmup: int = 3) -> float | None:
    """Mean step time after the first ``warmup`` steps (which compile kernels)."""
    steady = step_seconds[warmup:] if len(step_seconds) > warmup else step_seconds
    return float(np.mean(steady)) if steady else None


def _side_by_side(photo: np.ndarray, render: np.ndarray) -> np.ndarray:
    gap = np.ones((photo.shape[0], 2, 3), np.float32)
    diff = np.abs(render - photo)
    return np.concatenate([photo, gap, render, gap, diff], axis=1)


def plot_loss(loss: list[float], path: str | os.PathLike, *, title: str = "") -> None:
    """Save the loss curve (log scale) as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    if loss:
        ax.plot(np.arange(1, len(loss) + 1), loss, lw=1.2)
        if min(loss) > 0:
            ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
    }


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
        for vid, render in result.renders.items():
            io.save_image(tmp / "renders" / f"{file_name(vid)}.exr", render)
            photo = result.photos.get(vid)
            preview = render if photo is None else _side_by_side(photo, render)
            io.save_image(tmp / "renders" / f"{file_name(vid)}.png", preview)
        plot_loss(result.loss, tmp / "loss.png", title=result.name)
        missing = write_scene(result, tmp, files) if result.scene_xml else None
        doc = result_to_json(result, files)
        if missing is not None:
            doc["scene_file"] = "scene.xml"
            doc["scene_file_lacks"] = missing
        with open(tmp / "result.json", "w") as f:
            json.dump(doc, f, indent=2)
        if out_dir.exists():
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
