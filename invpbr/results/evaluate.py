"""Evaluation beyond parameter errors: novel views, relighting, ambiguities.

- Novel views: sensors listed in ``[evaluate] held_out`` are not fitted; their
  PSNR against the photos is reported for the estimate and for the starting
  guess ("doing nothing").
- Relighting (synthetic scenes): every environment map of the estimate and of
  truth.xml is replaced by each map in ``[evaluate] relight``; both are
  rendered from every sensor and compared (PSNR).
- Albedo x light: photos fix only their product. When both are estimated the
  result says so, and albedo errors are also given per-channel scale-invariant.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..estimates.lighting import envmap_with_halo, is_albedo_key, is_light_key, scale_invariant_error


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR (dB) of linear images clipped to [0, 1] (peak 1)."""
    mse = float(np.mean((np.clip(image, 0, 1) - np.clip(reference, 0, 1)) ** 2))
    if math.isnan(mse):
        return float("nan")
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def to_srgb(image: np.ndarray) -> np.ndarray:
    """Linear values clipped to [0, 1] and sRGB-encoded (what an 8-bit photo stores)."""
    x = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float64)), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def srgb_scores(image: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """``psnr`` and ``ssim`` of two linear RGB images compared as NeRF papers
    do: sRGB-encoded, clipped to [0, 1] (SSIM: scikit-image's, 7x7 windows,
    or the largest odd window the image allows; NaN for an image under 3
    pixels on a side, which has no SSIM window)."""
    from skimage.metrics import structural_similarity

    a, b = to_srgb(image[..., :3]), to_srgb(reference[..., :3])
    mse = float(np.mean((a - b) ** 2))
    score = 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")
    if min(a.shape[:2]) < 3:  # (a multi-scale capture's smallest photos)
        return {"psnr": score, "ssim": float("nan")}
    win = min(7, min(a.shape[:2]) - (1 - min(a.shape[:2]) % 2))
    ssim = float(structural_similarity(a, b, channel_axis=-1, data_range=1.0,
                                       win_size=max(win, 3)))
    return {"psnr": score, "ssim": ssim}


def held_out_srgb(renders: dict[str, np.ndarray], views) -> dict[str, dict[str, float]]:
    """Held-out view id -> :func:`srgb_scores` of its render against its photo
    (over the mask where it has one: pixels outside are set to the photo's),
    and ``"mean"``: the mean PSNR and SSIM over the views."""
    out = {}
    for v in views:
        render = np.asarray(renders[v.id], dtype=np.float32)[..., :3]
        if v.mask is not None:
            render = np.where(v.mask[..., None], render, v.photo)
        out[v.id] = srgb_scores(render, v.photo)
    if out:
        out["mean"] = {k: float(np.nanmean([d[k] for d in out.values()]))
                       for k in ("psnr", "ssim")}
    return out


def render_all(scene, integrator, n_views: int, *, spp: int, seed: int = 2**31 - 1) -> list[np.ndarray]:
    """Render every sensor of ``scene`` without gradients, linear RGB (H, W, 3) each."""
    import drjit as dr
    import mitsuba as mi

    out = []
    with dr.suspend_grad():
        for i in range(n_views):
            image = mi.render(scene, sensor=i, integrator=integrator, spp=int(spp), seed=seed)
            out.append(np.array(image, dtype=np.float32)[..., :3])
    return out


def envmap_keys(params) -> list[str]:
    """Keys of every environment map's data in ``params``."""
    keys = []
    for key in params.keys():
        try:
            node = params.properties[key][2]
        except (KeyError, IndexError):
            continue
        if key.endswith(".data") and node.class_name() == "EnvironmentMapEmitter":
            keys.append(key)
    return keys


def relit_renders(scene, integrator, texels: np.ndarray, *, spp: int) -> list[np.ndarray]:
    """Renders of ``scene`` with every envmap replaced by ``texels`` (H, W, 3);
    the scene's own maps are put back afterwards."""
    import mitsuba as mi

    params = mi.traverse(scene)
    keys = envmap_keys(params)
    if not keys:
        raise ValueError("relighting with an environment map needs a scene with an envmap emitter")
    saved = {k: type(params[k])(params[k]) for k in keys}
    try:
        for k in keys:
            params[k] = mi.TensorXf(envmap_with_halo(texels.astype(np.float32)))
        params.update()
        return render_all(scene, integrator, len(scene.sensors()), spp=spp)
    finally:
        for k, v in saved.items():
            params[k] = v
        params.update()


def relight_psnr(estimate: list[np.ndarray], truth: list[np.ndarray], ids: list[str]) -> dict:
    """view id -> PSNR of relit estimate against relit truth, plus ``"mean"``:
    the PSNR of all views together (of their mean squared error)."""
    values = {vid: psnr(e, t) for vid, e, t in zip(ids, estimate, truth)}
    values["mean"] = psnr(np.concatenate([e.ravel() for e in estimate]),
                          np.concatenate([t.ravel() for t in truth]))
    return values


def relit_truth(problem, name: str) -> list[np.ndarray]:
    """truth.xml relit by the envmap ``name`` of ``problem.relight_maps``, every
    sensor rendered (cached on the problem)."""
    from ..render.integrators import make_integrator

    cache = problem.relit_truth_renders
    if name not in cache:
        integrator = make_integrator(problem.config.render, [], problem.truth_scene)
        cache[name] = relit_renders(problem.truth_scene, integrator, problem.relight_maps[name],
                                    spp=problem.config.render.spp_final)
    return cache[name]


def albedo_scale_invariant_errors(estimates: dict[str, np.ndarray],
                                  truth: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-channel scale-invariant errors of the albedo-like estimates."""
    out = {}
    for key, value in estimates.items():
        if key in truth and is_albedo_key(key) and np.shape(value) == np.shape(truth[key]):
            out[key] = scale_invariant_error(value, truth[key])
    return out


def ambiguity_notes(parameters, params) -> list[str]:
    """Warnings about what photos cannot separate in this problem."""
    from ..estimates.base import node_class

    albedo = [p.key for p in parameters if is_albedo_key(p.key)]
    light = [p.key for p in parameters if is_light_key(p.key, node_class(params, p.key))]
    notes = []
    if albedo and light:
        notes.append(
            "albedo x light scale: photos determine only the product of "
            f"{', '.join(albedo)} and {', '.join(light)}; an overall factor (per colour "
            "channel for a coloured light) can move between them. Fix the gauge with a "
            "known reference (an object of known albedo, or a light that is not estimated), "
            "and compare albedos with errors_scale_invariant.")
    return notes


def evaluation_renders(problem, integrator, *, renders: dict | None = None) -> dict:
    """Renders of the held-out views and relit renders of the scene as it is now."""
    spp = problem.config.render.spp_final
    out: dict = {"held_out": {}, "relight": {}}
    for view in problem.views:
        if view.held_out:
            if renders is not None:
                out["held_out"][view.id] = renders[view.id]
                continue
            import drjit as dr

            from ..render.views import render_view

            with dr.suspend_grad():
                image = render_view(problem.scene, problem.params, integrator, view.index,
                                    spp=spp, seed=2**31 - 1)
            out["held_out"][view.id] = np.array(image, dtype=np.float32)
    if problem.relight_maps and problem.truth_scene is not None:
        for name, texels in problem.relight_maps.items():
            out["relight"][name] = relit_renders(problem.scene, integrator, texels, spp=spp)
    return out


def relight_scores(problem, renders: dict) -> dict:
    """Relighting envmap -> view id (and ``"mean"``) -> PSNR of ``renders``'
    relit views against the relit truth."""
    if not renders["relight"]:
        return {}
    ids = [v.id for v in problem.views]
    return {name: relight_psnr(images, relit_truth(problem, name), ids)
            for name, images in renders["relight"].items()}
