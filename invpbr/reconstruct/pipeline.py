"""Photos, masks and cameras to a relightable object: the ``[reconstruct]`` pipeline.

1. bounds of the object from the cameras and masks, the visual hull carved in
   a voxel grid, marching cubes, its main component, isotropic remeshing
   (:mod:`.hull`);
2. material (per-vertex principled base colour and roughness) and lighting (an
   environment map) fitted on the hull, then shape, material and lighting
   together (:mod:`.fit`), held-out figures printed after each stage;
3. the result: a folder that plain Mitsuba loads (:mod:`.output`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .fit import FitLog, ObjectState, Photos, fit_object, initial_envmap
from .hull import HullError, Silhouettes, hull_mesh, object_bounds, sample_masks
from .metrics import image_figures, psnr_srgb, scale_invariant, surface_errors
from .scene import OBJECT, object_mesh, object_scene

#: Samples per pixel of the held-out renders scored in result.json. Their Monte Carlo
#: noise caps the PSNR: the truth scene of scenes/object_capture rendered at 64 spp
#: scores 31.4 dB in the mask against its own photos, at 256 spp 35.4, at 1024 spp 37.5.
EVAL_SPP = 512
#: Samples per pixel of the relit truth (its noise counts against the result too).
TRUTH_SPP = 1024
#: Samples per pixel of the coverage renders (mask IoU thresholds them at 0.5).
COVER_SPP = 64
#: Samples per pixel of the held-out renders printed after each stage.
STAGE_SPP = 64


@dataclass
class Reconstruction:
    """What :func:`reconstruct` returns.

    Attributes:
        name: the scene folder's name.
        state: the reconstructed object (mesh, per-vertex material, envmap).
        hull: the visual hull with the material and light fitted on it.
        figures: ``{"hull": {...}, "final": {...}}``: held-out PSNR (full frame,
            in mask), IoU, and with truths Chamfer / diagonal, normal angle,
            relighting PSNR.
        stages: per-stage log (steps, seconds, loss, held-out figures).
        seconds: wall time of the whole pipeline and of the hull; CPU time (all
            threads) of both and of the scoring renders (``*_cpu``).
        status: ``completed``, or ``worse than the hull`` when the optimization
            lost held-out accuracy (the hull is then kept as the result).
        settings: the problem's configuration.
    """

    name: str
    state: ObjectState
    hull: ObjectState
    figures: dict = field(default_factory=dict)
    stages: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    status: str = "completed"
    settings: dict = field(default_factory=dict)
    held_out: list = field(default_factory=list)
    warnings: list = field(default_factory=list)


def photos_of(views, *, held_out: bool, source: str = "") -> Photos:
    """The fitted (or held-out) views of a problem as :class:`Photos`.

    Raises:
        HullError: a view without a camera from a camera file, or without a mask.
    """
    chosen = [v for v in views if v.held_out == held_out]
    no_camera = [v.id for v in chosen if v.camera is None]
    if no_camera:
        raise HullError(f"{source}: [reconstruct] needs [cameras] file (a camera file); "
                        f"photos without one: {', '.join(no_camera)}")
    no_mask = [str(v.photo_path or v.id) for v in chosen if v.mask is None]
    if no_mask:
        raise HullError(f"{source}: [reconstruct] needs a mask for every photo (masks/<photo "
                        f"stem>.png, white = object, or the photo's alpha); none for "
                        f"{', '.join(no_mask)}")
    return Photos([v.camera for v in chosen], [v.photo.astype(np.float32) for v in chosen],
                  [v.mask.astype(np.float32) for v in chosen], [v.id for v in chosen])


def check_visibility(sil: Silhouettes, vertices: np.ndarray) -> list[str]:
    """Warnings for photos whose camera does not see the hull (outside the
    frame or behind the camera), naming them."""
    _, inside = sample_masks(sil, vertices)
    blind = [n for n, s in zip(sil.names, inside.mean(axis=1)) if s < 0.05]
    if blind:
        return [f"reconstruct: the cameras of {', '.join(blind)} do not see the object the other "
                "photos agree on (wrong pose in the camera file?); their masks carve nothing"]
    return []


def render_object(state: ObjectState, photos: Photos, *, max_depth: int, spp: int = EVAL_SPP,
                  envmap: np.ndarray | None = None, coverage: bool = True
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Renders (linear RGB) and coverages (``COVER_SPP``; none without
    ``coverage``) of ``state`` from the photos' cameras."""
    import drjit as dr
    import mitsuba as mi

    light = state.envmap if envmap is None else envmap
    scene = object_scene(object_mesh(state.vertices, state.faces, state.colors, state.roughness),
                         photos.cameras, light, max_depth=max_depth)
    sil = object_scene(object_mesh(state.vertices, state.faces, state.colors, state.roughness,
                                   emitter=True), photos.cameras, None, max_depth=2)
    renders, cover = [], []
    with dr.suspend_grad():
        for i in range(len(photos.ids)):
            renders.append(np.array(mi.render(scene, sensor=i, spp=spp, seed=i))[..., :3])
            if coverage:
                cover.append(np.array(mi.render(sil, sensor=i, spp=min(spp, COVER_SPP),
                                                seed=i))[..., 0])
    return renders, cover


def evaluator(max_depth: int):
    def evaluate(state: ObjectState, photos: Photos) -> dict:
        renders, cover = render_object(state, photos, max_depth=max_depth, spp=STAGE_SPP)
        return image_figures(renders, cover, photos.images, photos.masks)

    return evaluate


def _load_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import mitsuba as mi

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (named in invpbr.toml evaluate.truth_mesh)")
    kind = {".ply": "ply", ".obj": "obj"}.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: evaluate.truth_mesh must be a .ply or .obj file")
    mesh = mi.load_dict({"type": kind, "filename": str(path)})
    params = mi.traverse(mesh)
    return (np.array(params["vertex_positions"]).reshape(-1, 3),
            np.array(params["faces"]).reshape(-1, 3).astype(np.int64))


def relit_truth(problem, photos: Photos, texels: np.ndarray) -> list[np.ndarray] | None:
    """truth.xml relit by ``texels``, rendered from the held-out photos' sensors."""
    import drjit as dr
    import mitsuba as mi

    from ..results.evaluate import envmap_keys
    from ..estimates.lighting import envmap_with_halo

    scene = problem.truth_scene
    if scene is None:
        return None
    params = mi.traverse(scene)
    keys = envmap_keys(params)
    if not keys:
        return None
    for k in keys:
        params[k] = mi.TensorXf(envmap_with_halo(texels.astype(np.float32)))
    params.update()
    index = {v.id: v.index for v in problem.views}
    out = []
    with dr.suspend_grad():
        for vid in photos.ids:
            out.append(np.array(mi.render(scene, sensor=index[vid], spp=TRUTH_SPP,
                                          seed=7))[..., :3])
    return out


def score(problem, state: ObjectState, held: Photos, max_depth: int,
          truth_mesh: tuple | None, relit: dict) -> dict:
    """Held-out image figures, surface errors against the truth mesh and
    relighting PSNRs of one object."""
    out: dict = {}
    if held.ids:
        renders, cover = render_object(state, held, max_depth=max_depth)
        out.update(image_figures(renders, cover, held.images, held.masks))
    if truth_mesh is not None:
        out.update(surface_errors(state.vertices, state.faces, *truth_mesh))
    for name, (texels, truth) in relit.items():
        renders, _ = render_object(state, held, max_depth=max_depth, envmap=texels,
                                   coverage=False)
        values = [psnr_srgb(scale_invariant(r, t, m > 0.5), t, m > 0.5)
                  for r, t, m in zip(renders, truth, held.masks)]
        out[f"relight_psnr_mask[{name}]"] = float(np.mean(values))
    return out


def reconstruct(problem, *, progress: bool = True, stop=None, checkpoints=None,
                resume: bool = False) -> Reconstruction:
    """Reconstruct the object of a problem with a ``[reconstruct]`` table.

    Args:
        problem: from :func:`invpbr.load_problem` of a folder with photos/,
            masks/ (or photos with alpha), a camera file and ``[reconstruct]``.
        progress: print each stage with its held-out figures.
        stop: ``stop() -> bool``, asked after every step (e.g. a SIGINT
            handler): true ends the optimization there; the result is then the
            state reached, unscored, with status ``interrupted``.
        checkpoints: a :class:`~.checkpoint.ReconstructCheckpoints`: written
            after the hull's fit and after every later stage (None: none).
        resume: go on from ``checkpoints``' file where there is one.

    Raises:
        HullError (a ValueError): masks and cameras that give no object; the
            message names the photos concerned.
        ValueError: a checkpoint to resume from that was written with other settings.
    """
    cfg = problem.config.reconstruct
    if cfg is None:
        raise ValueError(f"reconstruct(): {problem.source} has no [reconstruct] table")
    t_start, c_start = time.time(), time.process_time()
    fitted = photos_of(problem.views, held_out=False, source=str(problem.source))
    held = photos_of(problem.views, held_out=True, source=str(problem.source))
    say = print if progress else (lambda *a, **k: None)
    saved = checkpoints.load(problem.config) if checkpoints is not None and resume else None
    truth_mesh = None
    if problem.config.evaluate.truth_mesh:
        truth_mesh = _load_mesh(problem.folder / problem.config.evaluate.truth_mesh)
    relit = {}
    for name, texels in problem.relight_maps.items():
        truth = relit_truth(problem, held, texels) if held.ids else None
        if truth is not None:
            relit[name] = (texels, truth)
    evaluate = evaluator(cfg.max_depth)
    if saved is None:
        state, notes, seconds = _hull_start(problem, fitted, say)
        log = FitLog()
        hull_state = fit_object(state, fitted, _replace(cfg, iterations=0), held_out=held,
                                progress=progress, log=log, evaluate=evaluate,
                                seed=problem.config.optimize.seed, stop=stop)
        c_score = time.process_time()
        hull_figures = {} if log.interrupted else score(problem, hull_state, held, cfg.max_depth,
                                                        truth_mesh, relit)
        seconds["scoring_cpu"] = time.process_time() - c_score
        start = 0
    else:
        say(f"{problem.name}: resuming before stage {saved.next_stage + 1} of the joint fit "
            f"from {checkpoints.path}", flush=True)
        hull_state, hull_figures, log, notes = saved.hull, saved.hull_figures, saved.log, saved.notes
        seconds, start = saved.seconds, saved.next_stage
    final, final_figures = hull_state, {}
    if not log.interrupted:
        say(f"  hull: {_show(hull_figures)}", flush=True)
        spent = _spent(seconds, t_start, c_start)

        def on_stage(next_stage, state, log, rng):
            if checkpoints is not None:
                checkpoints.save(problem.config, next_stage=next_stage, state=state, hull=hull_state,
                                 hull_figures=hull_figures, log=log, rng=rng.bit_generator.state,
                                 notes=notes, seconds=spent())

        if saved is None:
            on_stage(0, hull_state, log, np.random.default_rng(problem.config.optimize.seed + 1))
        diag = float(np.linalg.norm(hull_state.vertices.max(0) - hull_state.vertices.min(0)))
        final = fit_object(saved.state if saved else hull_state, fitted,
                           _replace(cfg, material_iterations=0), held_out=held, progress=progress,
                           log=log, evaluate=evaluate, seed=problem.config.optimize.seed + 1,
                           stop=stop, start_stage=start, rng_state=saved.rng if saved else None,
                           diag=diag, on_stage=on_stage)
    if not log.interrupted:
        c_final = time.process_time()
        final_figures = score(problem, final, held, cfg.max_depth, truth_mesh, relit)
        seconds["scoring_cpu"] = seconds.get("scoring_cpu", 0.0) + time.process_time() - c_final
        say(f"  final: {_show(final_figures)}", flush=True)
    status, final, final_figures = _status(log, notes, held, cfg, hull_state, hull_figures,
                                           final, final_figures)
    seconds = _spent(seconds, t_start, c_start)()
    return Reconstruction(
        name=problem.name, state=final, hull=hull_state,
        figures={"hull": hull_figures, "final": final_figures}, stages=log.stages,
        seconds={k: round(v, 2) for k, v in seconds.items()}, status=status,
        settings=problem.config.to_dict(), held_out=held.ids, warnings=notes)


def _hull_start(problem, fitted: Photos, say) -> tuple[ObjectState, list, dict]:
    """The visual hull of the fitted photos' masks with a grey material and the
    first envmap; the visibility warnings; the seconds it took."""
    cfg = problem.config.reconstruct
    t0, c0 = time.time(), time.process_time()
    names = [str(v.photo_path.name if v.photo_path else v.id) for v in problem.views
             if not v.held_out]
    sil = Silhouettes(fitted.cameras, fitted.masks, names)
    lo, hi = object_bounds(sil)
    vertices, faces = hull_mesh(sil, lo, hi, resolution=cfg.hull_resolution, faces=cfg.faces)
    notes = check_visibility(sil, vertices)
    for n in notes:
        warnings.warn(n, stacklevel=3)
    seconds = {"hull": time.time() - t0, "hull_cpu": time.process_time() - c0}
    say(f"{problem.name}: visual hull of {len(fitted.ids)} masks: {len(vertices)} vertices, "
        f"{len(faces)} faces, box {np.round(lo, 3).tolist()} .. {np.round(hi, 3).tolist()} "
        f"({seconds['hull']:.1f} s)", flush=True)
    grey = np.full((len(vertices), 3), 0.5, np.float32)
    state = ObjectState(vertices, faces, grey, np.full(len(vertices), 0.5, np.float32),
                        initial_envmap(fitted, cfg.envmap_height))
    return state, notes, seconds


def _spent(seconds: dict, t_start: float, c_start: float):
    """``() -> seconds`` with ``total`` / ``total_cpu`` counting this process's
    time since ``t_start`` / ``c_start`` on top of what ``seconds`` held (a
    resumed run's earlier time)."""
    total, cpu = seconds.get("total", 0.0), seconds.get("total_cpu", 0.0)

    def now() -> dict:
        return {**seconds, "total": total + time.time() - t_start,
                "total_cpu": cpu + time.process_time() - c_start}

    return now


def _status(log: FitLog, notes: list, held: Photos, cfg, hull_state, hull_figures: dict,
            final, final_figures: dict):
    """The status, and the result: the hull's when the joint fit lost accuracy."""
    if log.skipped:
        notes.append(f"reconstruct: {log.skipped} steps had a non-finite loss or gradient "
                     "and were skipped")
    if log.interrupted:
        return "interrupted", final, final_figures
    if held.ids and cfg.iterations and final_figures["iou"] < hull_figures["iou"] - 0.01 \
            and final_figures["psnr_mask"] < hull_figures["psnr_mask"]:
        notes.append("reconstruct: the joint optimization lowered the held-out IoU and PSNR; "
                     "the result is the hull with its fitted material and light")
        warnings.warn(notes[-1], stacklevel=3)
        return "worse than the hull", hull_state, dict(hull_figures)
    return "completed", final, final_figures


def _replace(cfg, **changes):
    from dataclasses import replace

    return replace(cfg, **changes)


def _show(figures: dict) -> str:
    shown = ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if isinstance(v, float))
    return shown or "no figures (no [evaluate] held_out photos, no truth_mesh)"
