"""Rendering a problem's views: one sensor, many sensors in one batch call,
and view slots (sensors re-aimed each step at a subset of the views)."""

from __future__ import annotations

import numpy as np


def render_view(scene, params, integrator, view_index: int, *, spp: int, seed, spp_grad: int = 0):
    """Render one sensor of ``scene`` with gradients tracked for ``params``.

    Args:
        scene: the Mitsuba scene.
        params: ``mi.SceneParameters`` whose differentiable entries gradients reach.
        integrator: from :func:`make_integrator`.
        view_index: index into ``scene.sensors()``.
        spp: samples per pixel.
        seed: sampler seed (int or ``mi.UInt32``).
        spp_grad: samples per pixel of the gradient pass (0: ``spp``).

    Returns:
        Linear RGB tensor (H, W, 3).
    """
    import mitsuba as mi

    image = mi.render(scene, params, sensor=int(view_index), integrator=integrator, spp=int(spp),
                      seed=seed, spp_grad=int(spp_grad))
    if image.shape[-1] > 3:  # films with alpha/extra channels
        image = image[:, :, :3]
    return image


def make_batch_sensor(scene, indices: list[int]):
    """One Mitsuba ``batch`` sensor holding the sensors ``indices`` of
    ``scene`` side by side, so that one render call (one kernel) covers all
    those views; None where they cannot be batched (films of different sizes
    or types, crop windows, fewer than two views).

    Its image is the views' images concatenated along the width, each
    rendered as by its own sensor (same film, filter and sampling; only the
    random numbers differ).
    """
    sensors = [scene.sensors()[i] for i in indices]
    film = _common_film(sensors) if len(sensors) > 1 else None
    return None if film is None else _batch(sensors, film)


def _batch(sensors: list, film):
    """A Mitsuba ``batch`` sensor of ``sensors`` side by side, each with a film
    like ``film``; None where Mitsuba refuses it."""
    import mitsuba as mi

    w, h = (int(v) for v in film.size())
    props = {"type": "batch",
             "film": {"type": "hdrfilm", "width": w * len(sensors), "height": h,
                      "pixel_format": "rgb", "rfilter": film.rfilter(),
                      "sample_border": bool(film.sample_border())}}
    for i, sensor in enumerate(sensors):
        props[f"view_{i}"] = sensor
    ids = [sensor.id() for sensor in sensors]
    try:
        return mi.load_dict(props)
    except RuntimeError:
        return None
    finally:
        # load_dict renames its child objects after their keys: give the sensors back
        # their own ids (sensor_ids() of the scene, scene.xml of a result)
        for sensor, sid in zip(sensors, ids):
            sensor.set_id(sid)


def _common_film(sensors):
    """The film all ``sensors`` share in size, type and filter (one of them),
    or None (different films, crop windows, not an ``hdrfilm``)."""
    films = [s.film() for s in sensors]
    sizes = {tuple(int(v) for v in f.size()) for f in films}
    crops = {tuple(int(v) for v in f.crop_size()) for f in films}
    offsets = {tuple(int(v) for v in f.crop_offset()) for f in films}
    kinds = {f.class_name() for f in films}
    filters = {(f.rfilter().class_name(), float(f.rfilter().radius())) for f in films}
    if len(sizes) != 1 or crops != sizes or offsets != {(0, 0)} or kinds != {"HDRFilm"} \
            or len(filters) != 1:
        return None
    return films[0]


def render_batch(scene, params, integrator, batch_sensor, n_views: int, *, spp: int, seed,
                 spp_grad: int = 0) -> list:
    """Render a :func:`make_batch_sensor` sensor once; the views' images
    (linear RGB tensors (H, W, 3)), differentiable like :func:`render_view`'s."""
    import mitsuba as mi

    image = mi.render(scene, params, sensor=batch_sensor, integrator=integrator, spp=int(spp),
                      seed=seed, spp_grad=int(spp_grad))
    w = image.shape[1] // n_views
    return [image[:, i * w:(i + 1) * w, :3] for i in range(n_views)]


class ViewSlots:
    """``k`` perspective sensors in one Mitsuba ``batch`` sensor, aimed anew at
    each step's subset of the views (``[optimize] views_per_step``): one render
    call per step whichever views it picks, and, since the sensors' values are
    Dr.Jit variables rather than a choice among scene objects, one recording
    of a frozen step for all subsets.

    Build it with :meth:`make`. The slots copy each view's ``to_world``, field of
    view, principal point and clip planes; the film (size, filter) is the
    views' common one.
    """

    KEYS = ("to_world", "x_fov", "principal_point_offset_x", "principal_point_offset_y",
            "near_clip", "far_clip")

    def __init__(self, slots: list, batch_sensor, values: list[dict[str, np.ndarray]]):
        import mitsuba as mi

        self.sensor = batch_sensor
        self.k = len(slots)
        self._params = [mi.traverse(s) for s in slots]
        self._values = values

    @classmethod
    def make(cls, scene, indices: list[int], k: int) -> "ViewSlots | None":
        """Slots for ``k`` of the sensors ``indices`` of ``scene``; None where
        they cannot share one (not all perspective, films of different sizes,
        types or filters, crop windows)."""
        import mitsuba as mi

        sensors = [scene.sensors()[i] for i in indices]
        film = _common_film(sensors)
        if k < 1 or film is None or any(s.class_name() != "PerspectiveCamera" for s in sensors):
            return None
        w, h = (int(v) for v in film.size())
        values = []
        for s in sensors:
            p = mi.traverse(s)
            values.append({key: np.array(p[key], dtype=np.float32).ravel() for key in cls.KEYS
                           if key != "to_world"})
            values[-1]["to_world"] = np.array(p["to_world"].matrix, dtype=np.float32).reshape(4, 4)
        slot = {"type": "perspective", "fov": 45.0, "fov_axis": "x",
                "film": {"type": "hdrfilm", "width": w, "height": h, "rfilter": film.rfilter(),
                         "sample_border": bool(film.sample_border())}}
        slots = [mi.load_dict(slot) for _ in range(k)]
        batch = _batch(slots, film)
        return None if batch is None else cls(slots, batch, values)

    def aim(self, views: list[int]) -> None:
        """Point the slots at ``views`` (positions in the ``indices`` given to
        :meth:`make`), in order."""
        import drjit as dr
        import mitsuba as mi

        for params, v in zip(self._params, views):
            for key in self.KEYS:
                kind = type(params[key])
                if kind is float:  # the clip planes: scalars
                    params[key] = float(self._values[v][key][0])
                    continue
                # A fresh opaque variable per number: the recording of a frozen step then
                # holds for any views (literals would be baked into its kernels, and equal
                # ones shared between slots would change its inputs' layout).
                value = self._values[v][key]
                if key == "to_world":
                    params[key] = kind(mi.Matrix4f([[dr.opaque(mi.Float, float(x)) for x in row]
                                                    for row in value]))
                else:
                    params[key] = kind(dr.opaque(mi.Float, float(value[0])))
            params.update()

    def render(self, scene, params, integrator, *, spp: int, seed, spp_grad: int = 0) -> list:
        """The aimed views' images, as :func:`render_batch`'s."""
        return render_batch(scene, params, integrator, self.sensor, self.k, spp=spp, seed=seed,
                            spp_grad=spp_grad)
