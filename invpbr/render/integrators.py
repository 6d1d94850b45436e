"""Rendering the views of a problem, and the choice of integrator.

Integrators and when their gradients are valid (Mitsuba 3.9, checked against
finite differences in tests/test_gradients.py, tests/test_discontinuities.py
and tests/test_geometry.py):

- ``prb`` (path replay backpropagation): unbiased gradients for parameters that
  change shading only: BSDF parameters, textures, emitter radiance and
  environment maps. Biased for anything that moves a visibility edge
  (vertex positions, shape or light poses): it drops the boundary term, so
  derivatives of silhouettes and shadows are 30-100 % off or zero. ``auto``
  picks it for material, texture and emission keys.
- ``prb_basic``: as prb, simpler and slower; for checking.
- ``direct_projective`` (``max_depth`` <= 2: direct light only) and
  ``prb_projective`` (longer paths): add the boundary terms by projective
  sampling of visibility edges; valid for geometry on welded meshes. Not
  valid on Mitsuba 3.9.1's traps (:data:`invpbr.estimates.meshes.TRAP_SHAPES`: the
  built-in cube, analytic rectangles moved out of plane, moving analytic
  sphere emitters), where invpbr warns. Shadow edges need the guiding
  structure (``[render] guiding``, octree by default); invpbr rebuilds it
  every ``guiding_every`` renders per view instead of every render.
- ``prb_reparam`` (invpbr's own reparameterizing integrator) is retired: its
  derivatives were wrong against finite differences even on continuous
  parameters (``invpbr.config.RETIRED_INTEGRATORS``, docs/reparam.md).
- ``path``: no gradients of its own (primal only) — for renders, not estimation.

``auto`` (the default) picks ``direct_projective`` or ``prb_projective`` as
soon as an estimated parameter moves a visibility edge, ``prb`` otherwise.
"""

from __future__ import annotations

import numpy as np

from ..config import RenderConfig
from ..estimates import Estimate

#: Mitsuba's integrators with projective sampling of visibility edges.
PROJECTIVE = ("direct_projective", "prb_projective")


def choose_integrator_type(render: RenderConfig, parameters: list[Estimate]) -> str:
    """The Mitsuba integrator type ``render.integrator`` resolves to.

    ``auto``: ``prb`` when only shading parameters are estimated; a projective
    integrator (``direct_projective`` for ``max_depth`` <= 2, else
    ``prb_projective``) as soon as one parameter moves a visibility edge.
    """
    if any(getattr(p, "renders_itself", False) for p in parameters):
        return "volume"
    if render.integrator != "auto":
        return render.integrator
    if any(p.moves_edges for p in parameters):
        return "direct_projective" if 0 <= render.max_depth <= 2 else "prb_projective"
    return "prb"


def make_integrator(render: RenderConfig, parameters: list[Estimate], scene=None, *,
                    primary_edges: bool = True):
    """The integrator object a problem renders with.

    Args:
        render: render settings (``integrator``, ``max_depth``).
        parameters: what is estimated (for ``auto``).
        scene: the model scene, used when ``render.integrator == "scene"``.
        primary_edges: False: a projective integrator without its primary-visibility
            edge term (``sppp = 0``; see :func:`view_integrators`).
    """
    import mitsuba as mi

    field = next((p for p in parameters if getattr(p, "renders_itself", False)), None)
    if field is not None:  # a radiance field: volume rendering of its own
        from .volume import field_integrator

        return field_integrator(field)
    kind = choose_integrator_type(render, parameters)
    if kind == "scene":
        if scene is None or scene.integrator() is None:
            raise ValueError("make_integrator(): integrator = 'scene' but the scene has none")
        return scene.integrator()
    props = {"type": kind, "max_depth": int(render.max_depth)}
    if kind in PROJECTIVE:
        props["guiding"] = render.guiding
        movers = [p for p in parameters if p.moves_edges]
        if movers and all(p.moves_scene_rigidly for p in movers):
            # Cameras are refined by moving the whole scene rigidly (invpbr.estimates.cameras),
            # so no shadow or occlusion edge moves relative to the surfaces: the only visibility
            # edges that move are those seen from the camera. Mitsuba's indirect-edge term
            # treats shading points as fixed while occluders move; with every surface
            # moving it put spurious derivatives on every occluded surface (the image-sum
            # derivative of a forward camera motion came out 20-40 % off), so it is off.
            props["sppi"] = 0
        if not primary_edges:
            props["sppp"] = 0
    integrator = mi.load_dict(props)
    if kind in PROJECTIVE:
        integrator.proj_seed_spp = int(render.proj_seed_spp)
    if kind in PROJECTIVE and render.guiding != "none" and props.get("sppi") != 0:
        reuse_guiding(integrator, render.guiding_every, render.guiding_resolution)
    return integrator


def view_integrators(render: RenderConfig, parameters: list[Estimate], scene, views,
                     integrator_type: str) -> dict[int, object]:
    """View number -> the integrator that view renders with where it differs from the
    problem's: a projective integrator without its primary-visibility edge term for
    views in which no estimate needs that term (:meth:`Estimate.needs_primary_edges`),
    e.g. a posed area light (see :meth:`invpbr.estimates.poses.Pose.needs_primary_edges`).

    Measured (issue 13; `check_gradients` on light seed 109, 48x48, the 3 cameras that
    see the posed rectangle lamp from behind, its 6 pose components, AD at 128 spp
    against central finite differences at 512 spp): Mitsuba 3.9.1 gives the lamp's
    outline, seen from behind, a primary edge term as if its emitting side faced the
    camera. With the term, median per-pixel relative error 0.47 and image-sum error 6.0;
    without it 0.12 (the finite differences' own noise is 0.07-0.2) and 0.43 (what is
    left: the true, small term between the lamp's dark back and what lies behind it).
    """
    if integrator_type not in PROJECTIVE or not any(p.moves_edges for p in parameters):
        return {}
    off = [v for v, view in enumerate(views)
           if not any(p.needs_primary_edges(view.index) for p in parameters)]
    if not off:
        return {}
    integrator = make_integrator(render, parameters, scene, primary_edges=False)
    return {v: integrator for v in off}


def reuse_guiding(integrator, every: int, resolution: int = 0) -> None:
    """Make a projective integrator build its guiding structure for indirect
    visibility edges (shadows) cheaply: only every ``every`` renders of each
    sensor (reused in between), and from a low-resolution copy of the sensor.

    The structure is a sampling density over the space of edge samples (3D
    positions on the scene's edges), found by tracing seed rays from the
    sensor: ``proj_seed_spp`` per pixel, so its cost grows with the film
    (110 s per build for a 64x64 view on 2 CPU cores, against 7 s from a
    16x16 copy, with the same derivatives within noise). Reusing one built a
    few steps earlier, while the geometry moved little, changes which edge
    samples are drawn, not what they estimate.

    Where Mitsuba fails to build an octree (it then drops the guiding and, in
    3.9.1, the whole derivative came out zero), the sensor falls back to
    unguided edge sampling, with a warning.

    Args:
        integrator: a ``direct_projective`` or ``prb_projective`` integrator.
        every: rebuild after this many renders of a sensor.
        resolution: longest side of the sensor copy the structure is built
            from (0: the sensor itself); perspective sensors only.
    """
    import warnings

    detail = integrator.proj_detail
    build = detail.init_indirect_silhouette
    cache: dict[int, list] = {}
    small: dict[int, object] = {}

    def init_indirect_silhouette(scene, sensor, seed):
        entry = cache.get(id(sensor))
        if entry is None or entry[1] >= every:
            source = sensor
            if resolution > 0:
                if id(sensor) not in small:
                    small[id(sensor)] = low_resolution_copy(sensor, resolution)
                source = small[id(sensor)] or sensor
            build(scene, source, seed)
            if detail.guiding_distr is None and integrator.guiding != "none":
                warnings.warn(f"no {integrator.guiding} guiding for a view (Mitsuba found no "
                              "shadow edges or could not build it; see its message above): its "
                              "shadow edges are sampled without guiding", stacklevel=2)
                guiding = integrator.guiding
                integrator.guiding = "none"
                try:
                    build(scene, source, seed)
                finally:
                    integrator.guiding = guiding
            entry = cache[id(sensor)] = [detail.guiding_distr, 0]
        else:
            detail.guiding_distr = entry[0]
        entry[1] += 1

    detail.init_indirect_silhouette = init_indirect_silhouette


def low_resolution_copy(sensor, resolution: int):
    """A perspective sensor seeing what ``sensor`` sees, with a film whose
    longest side is ``resolution``; None for other sensors or when no smaller."""
    import mitsuba as mi
    import numpy as np

    if sensor.class_name() != "PerspectiveCamera":
        return None
    p = mi.traverse(sensor)
    w, h = (int(v) for v in sensor.film().size())
    if max(w, h) <= resolution:
        return None
    scale = resolution / max(w, h)

    def scalar(key):
        return float(np.ravel(np.array(p[key]))[0])

    return mi.load_dict({
        "type": "perspective", "fov": scalar("x_fov"), "fov_axis": "x",
        "principal_point_offset_x": scalar("principal_point_offset_x"),
        "principal_point_offset_y": scalar("principal_point_offset_y"),
        "near_clip": scalar("near_clip"), "far_clip": scalar("far_clip"),
        "to_world": mi.ScalarTransform4f(np.array(p["to_world"].matrix, dtype=np.float64)
                                         .reshape(4, 4)),
        "film": {"type": "hdrfilm", "width": max(1, round(w * scale)),
                 "height": max(1, round(h * scale)), "sample_border": True}})
