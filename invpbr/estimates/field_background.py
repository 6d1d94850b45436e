"""The learned lat-long background of a radiance field (``[field] background
= "envmap"``), and the fitted photos that the others outvote on it.

The envmap is a colour per direction at infinity. Content outside the box
that is near (an area light, a wall) is seen in different directions from
different photos, and the fit's mean squared error gives each direction the
mean of what the photos show there. A photo that sees such an occluder over
most of its frame (scenes/field_object's view_39 sees the black back of the
area light over 2/3 of it) darkens the directions behind it for every other
viewpoint, and, through the rays that cross the box, the object's colours
too (held-out views 40 and 47 at 23-24 dB; BENCHMARKS.md).

``[field] leave_out_outvoted`` (on by default): before each coarse-to-fine
stage, the fitted photos vote on each envmap texel (each its mean implied
background colour there, ``(photo - field's colour) / transmittance`` over
its rays that the field leaves at least half transparent); a photo's rays in
a texel are outvoted when its vote is more than VOTE_TOLERANCE (linear units,
mean over the channels) from the median of three or more votes; a photo with
more than OUTVOTED_FRACTION of its rays (a third of its frame) outvoted is
left out of the rest of the fit. Photos of a room seen with parallax disagree
here and there, not over a third of a frame (the fox: up to 0.14; with "half
of the voting rays" instead, six fox photos were left out, -0.16 dB). When a
photo was left out, the envmap is fitted again at the end (:func:`refit_envmap`,
the field kept) without its rays and without the other photos' outvoted rays
(the same occluder seen over less of their frame): field_object 31.63 ->
32.09 dB. (That refit after every fit cost the fox 0.2 dB: only after one
that left a photo out.)
"""

from __future__ import annotations

import math

import numpy as np

#: Rays with transmittance below this (the field in front) do not vote.
VOTE_TRANSMITTANCE = 0.5
#: Largest distance (linear units, mean over the channels) of a photo's vote
#: from its texel's median vote.
VOTE_TOLERANCE = 0.05
#: A photo with more than this fraction of its rays (of its frame) outvoted is left
#: out (scenes/field_object's view_39: 0.54; the fox's photos: at most 0.14).
OUTVOTED_FRACTION = 1 / 3


def envmap_texture(values, h: int, channels: int):
    """The lat-long texture (h x 2h x ``channels``, Dr.Jit Float) of a learned
    background's values."""
    import drjit as dr
    import mitsuba as mi

    return mi.Texture2f(mi.TensorXf(values, shape=(h, 2 * h, channels)),
                        use_accel=False, migrate=False, wrap_mode=dr.WrapMode.Clamp)


def envmap_uv(d):
    """The lat-long texture coordinates (Point2f) of unit directions ``d`` (y up)."""
    import drjit as dr
    import mitsuba as mi

    u = dr.atan2(d.x, -d.z) * (0.5 / math.pi) + 0.5
    v = dr.safe_acos(d.y) * (1.0 / math.pi)
    return mi.Point2f(u, v)


def texel_of(d: np.ndarray, h: int) -> np.ndarray:
    """The index (row * 2h + column) of the h x 2h lat-long texel that each
    unit direction of ``d`` (N, 3) falls in."""
    u = np.arctan2(d[:, 0], -d[:, 2]) / (2 * math.pi) + 0.5
    v = np.arccos(np.clip(d[:, 1], -1.0, 1.0)) / math.pi
    col = np.clip((u * 2 * h).astype(np.int64), 0, 2 * h - 1)
    row = np.clip((v * h).astype(np.int64), 0, h - 1)
    return row * 2 * h + col


def outvoted_rays(photo: np.ndarray, texel: np.ndarray, implied: np.ndarray,
                  transmittance: np.ndarray, tolerance: float = VOTE_TOLERANCE) -> np.ndarray:
    """Which rays belong to a photo outvoted in their texel (bool, N).

    Args:
        photo: (N,) the fitted photo of each ray.
        texel: (N,) its envmap texel (:func:`texel_of`).
        implied: (N, 3) the background colour the ray implies (linear RGB).
        transmittance: (N,) the field's transmittance along the ray.
        tolerance: largest distance (mean over channels, linear units) of a
            photo's vote from the median of its texel's votes.
    """
    seen = transmittance > VOTE_TRANSMITTANCE
    key = photo.astype(np.int64) * (int(texel.max()) + 1) + texel
    groups, inverse = np.unique(key[seen], return_inverse=True)
    weight = np.bincount(inverse, transmittance[seen], minlength=len(groups))
    votes = np.stack([np.bincount(inverse, transmittance[seen] * implied[seen, c],
                                  minlength=len(groups)) for c in range(3)], -1)
    votes /= weight[:, None]
    group_texel = groups % (int(texel.max()) + 1)
    far = np.zeros(len(groups), bool)
    order = np.argsort(group_texel, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(group_texel[order]) != 0])
    for members in np.split(order, starts[1:]):
        if len(members) >= 3:  # (two photos: no majority)
            median = np.median(votes[members], axis=0)
            far[members] = np.abs(votes[members] - median).mean(-1) > tolerance
    out = np.zeros(len(photo), bool)
    out[np.flatnonzero(seen)] = far[inverse]
    return out


def outvoted_photos(photo: np.ndarray, texel: np.ndarray, implied: np.ndarray,
                    transmittance: np.ndarray) -> np.ndarray:
    """The photos (indices, as in ``photo``) with more than OUTVOTED_FRACTION
    of their rays (of their frame) outvoted (arguments as :func:`outvoted_rays`)."""
    out = outvoted_rays(photo, texel, implied, transmittance)
    n = int(photo.max()) + 1
    rays = np.bincount(photo, minlength=n)
    lost = np.bincount(photo, out, minlength=n)
    return np.flatnonzero(lost > OUTVOTED_FRACTION * np.maximum(rays, 1))


def refit_envmap(values: np.ndarray, d, field_rgb, transmittance, target,
                 *, steps: int = 150, lr: float = 0.05) -> np.ndarray:
    """The envmap's logits (h, 2h, 3) fitted again, from ``values``, to rays
    whose colour is ``field_rgb + transmittance x background(d)`` (Dr.Jit
    arrays: Vector3f, Color3f, Float, Color3f ``target``), mean squared error."""
    import drjit as dr
    import mitsuba as mi

    h = values.shape[0]
    opt = mi.ad.Adam(lr=lr)
    opt["bg"] = mi.Float(values.ravel())
    uv = envmap_uv(d)
    for _ in range(steps):
        logits = envmap_texture(opt["bg"], h, 3).eval(uv)
        rgb = field_rgb + transmittance * mi.Color3f(*[dr.rcp(1.0 + dr.exp(-x)) for x in logits])
        loss = dr.mean(dr.square(rgb - target), axis=None)
        dr.backward(loss)
        opt.step()
        loss.numpy()  # (a read-back per step, as the fit's loop)
    return np.array(opt["bg"], np.float32).reshape(values.shape)
