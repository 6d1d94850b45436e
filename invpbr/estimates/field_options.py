"""Options of a radiance field for photo collections (issue 15, NeRF-W):
per-photo appearance and transient occluders.

``[field] appearance = "affine"`` gives each fitted photo a colour transform
of the rendered colour, ``rgb' = M_p rgb + b_p`` with ``M_p = diag(exp(l_p))
+ A_p`` (``l_p`` per-channel log gain: exposure and white balance, ``A_p``
off-diagonal cross-talk, ``b_p`` an offset), each of ``l, A, b`` taken
relative to its mean over the photos, so that the mean transform is the
identity: the field itself is the photos' neutral appearance (the gauge of a
common factor, as ``[photos] gain_reference = "mean"``), and every render of
a view (held-out evaluation, ``invpbr view``) is at that neutral appearance.

``[field] transient = true`` handles passers-by as NeRF-W's transient head
does, in image space since a transient belongs to one photo: each fitted
photo has a coarse RGBA layer (:class:`TransientLayer`) composited over its
render, with an L1 prior on its opacity (``transient_weight``), so that what
no static field explains (an occluder seen by one photo) goes to the layer
and not into the field as floaters; renders of views leave the layer out.
(A trimmed loss as RobustNeRF's, without its spatial filter since a step's
rays are scattered, was tried and dropped: at 24 x 24 px it cost 4.3 dB on
clean photos, since the rays of not yet fitted objects have the largest
errors and were left out.)

Evaluation as NeRF-W: :func:`appearance_scores` fits each held-out photo's
affine transform (least squares, closed form) to the neutral render on the
left half of the image and scores the right half (``novel_view_appearance``
in result.json).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Numbers per photo of ``appearance = "affine"``: 3 log gains, 6 cross terms, 3 offsets.
AFFINE_SIZE = 12
#: The off-diagonal entries (row, column) of the matrix, in the latent's order.
OFF_DIAGONAL = ((0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1))
#: Adam learning rate of the per-photo transforms (log gains move fast enough at this).
APPEARANCE_LR = 0.02
#: Pixels per cell (along x and y) of the transient layer.
TRANSIENT_CELL = 3
#: Opacity logit of the transient layer at the start (sigmoid: 0.018).
TRANSIENT_START = -4.0
APPEARANCE_KEY = "field.appearance"
TRANSIENT_KEY = "field.transient"
LEARNING_RATES = {APPEARANCE_KEY: APPEARANCE_LR}


class AffineAppearance:
    """The per-photo affine colour transforms of ``n`` fitted photos (see the module)."""

    def __init__(self, n: int, ids: list[str]):
        self.n = n
        self.ids = list(ids)

    def initial(self):
        import mitsuba as mi

        return mi.Float(np.zeros(self.n * AFFINE_SIZE, np.float32))

    def apply(self, values, view, rgb):
        """``rgb`` (Color3f, per ray) as photo ``view`` (UInt32 index into the
        fitted photos, per ray) saw it, from the latent ``values``."""
        import drjit as dr
        import mitsuba as mi

        index = dr.arange(mi.UInt32, self.n) * AFFINE_SIZE

        def term(j):  # (this photo's number j) - (its mean over the photos)
            mean = dr.sum(dr.gather(mi.Float, values, index + j)) / self.n
            return dr.gather(mi.Float, values, view * AFFINE_SIZE + j) - mean

        m = [[None] * 3 for _ in range(3)]
        for c in range(3):
            m[c][c] = dr.exp(term(c))
        for j, (r, c) in enumerate(OFF_DIAGONAL):
            m[r][c] = term(3 + j)
        out = [m[r][0] * rgb[0] + m[r][1] * rgb[1] + m[r][2] * rgb[2] + term(9 + r)
               for r in range(3)]
        return mi.Color3f(*out)

    def matrices(self, values) -> np.ndarray:
        """(n, 3, 4) numpy: each photo's ``[M | b]`` (relative to the mean)."""
        v = np.array(values, np.float64).reshape(self.n, AFFINE_SIZE)
        v = v - v.mean(0, keepdims=True)
        out = np.zeros((self.n, 3, 4))
        for c in range(3):
            out[:, c, c] = np.exp(v[:, c])
        for j, (r, c) in enumerate(OFF_DIAGONAL):
            out[:, r, c] = v[:, 3 + j]
        out[:, :, 3] = v[:, 9:12]
        return out


def make_appearance(config, fitted_ids: list[str]) -> AffineAppearance | None:
    """The appearance model of ``[field] appearance`` (None: ``none``)."""
    if config.appearance == "affine":
        return AffineAppearance(len(fitted_ids), fitted_ids)
    return None


def make_transient(config, cameras) -> "TransientLayer | None":
    """The transient layer of ``[field] transient`` over the fitted photos
    (of one size: the first camera's) (None: ``false``)."""
    if config.transient:
        return TransientLayer(len(cameras), cameras[0].width, cameras[0].height)
    return None


class TransientLayer:
    """Per-photo transient occluders (NeRF-W's transient head, in image
    space since a transient belongs to one photo): a coarse RGBA image per
    fitted photo (one cell per TRANSIENT_CELL pixels, bilinear), composited
    over the render of that photo's rays, ``C = a T + (1 - a) C_static``, with
    an L1 prior ``transient_weight * mean(a)`` that leaves to the layer only
    what the static field cannot explain. Renders of views leave it out."""

    def __init__(self, n: int, width: int, height: int):
        self.n, self.width, self.height = n, width, height
        self.gw = max(2, -(-width // TRANSIENT_CELL))
        self.gh = max(2, -(-height // TRANSIENT_CELL))

    def initial(self):
        import mitsuba as mi

        v = np.zeros((self.n, self.gh, self.gw, 4), np.float32)
        v[..., 3] = TRANSIENT_START
        return mi.Float(v.ravel())

    def apply(self, values, view, px, py, rgb):
        """(composited Color3f, per-ray opacity of the layer) for rays of
        photos ``view`` through pixels (px, py) (continuous, from the top left)."""
        import drjit as dr
        import mitsuba as mi

        x = dr.clip(px / self.width * self.gw - 0.5, 0.0, self.gw - 1.0)
        y = dr.clip(py / self.height * self.gh - 0.5, 0.0, self.gh - 1.0)
        x0 = dr.minimum(mi.UInt32(dr.floor(x)), self.gw - 2)
        y0 = dr.minimum(mi.UInt32(dr.floor(y)), self.gh - 2)
        fx, fy = x - mi.Float(x0), y - mi.Float(y0)
        base = view * (self.gh * self.gw)
        corners = [((y0 + j) * self.gw + x0 + i, (fx if i else 1.0 - fx) * (fy if j else 1.0 - fy))
                   for i in (0, 1) for j in (0, 1)]
        logits = []
        for ch in range(4):
            acc = mi.Float(0.0)
            for cell, w in corners:
                acc += w * dr.gather(mi.Float, values, (base + cell) * 4 + ch)
            logits.append(acc)
        t = [dr.rcp(1.0 + dr.exp(-z)) for z in logits]
        a = t[3]
        return mi.Color3f(*[a * t[c] + (1.0 - a) * rgb[c] for c in range(3)]), a


def saved_appearance(data: dict[str, Any], photo: str | None, *, source) -> np.ndarray | None:
    """The (3, 4) ``[M | b]`` of fitted photo ``photo`` in a saved field's
    ``data`` (None: ``photo`` is None, the neutral appearance).

    Raises:
        ValueError: the field has no appearance, or no fitted photo ``photo``
            (naming a few it has).
    """
    if photo is None:
        return None
    if "appearance" not in data:
        raise ValueError(f"{source}: --appearance {photo!r}: this field was fitted without "
                         "[field] appearance")
    ids = [str(i) for i in data["appearance_ids"]]
    if photo not in ids:
        raise ValueError(f"{source}: --appearance {photo!r}: not a fitted photo of this field "
                         f"(it has {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''})")
    return np.asarray(data["appearance"][ids.index(photo)], np.float64)


# -- NeRF-W's evaluation -----------------------------------------------------------------------


def fit_affine(render: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """The (4, 3) least-squares affine map of pixels ``render`` (N, 3) to ``photo`` (N, 3)."""
    a = np.concatenate([render.reshape(-1, 3), np.ones((render.size // 3, 1))], 1)
    x, *_ = np.linalg.lstsq(a, photo.reshape(-1, 3), rcond=None)
    return x


def half_psnr(render: np.ndarray, photo: np.ndarray) -> float:
    """NeRF-W's held-out score: PSNR (linear, clipped to [0, 1]) of the right
    half of ``render`` (H, W, 3) after the affine colour map fitted on its left half."""
    w = render.shape[1]
    left, right = slice(0, w // 2), slice(w // 2, w)
    x = fit_affine(render[:, left].astype(np.float64), photo[:, left].astype(np.float64))
    r = render[:, right].reshape(-1, 3).astype(np.float64)
    mapped = np.concatenate([r, np.ones((len(r), 1))], 1) @ x
    truth = np.clip(photo[:, right].reshape(-1, 3), 0, 1)
    mse = float(np.mean((np.clip(mapped, 0, 1) - truth) ** 2))
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def appearance_scores(renders: dict[str, np.ndarray], photos: dict[str, np.ndarray]
                      ) -> dict[str, Any]:
    """Per held-out view id :func:`half_psnr` of its neutral render, and their ``mean``."""
    out: dict[str, Any] = {vid: half_psnr(renders[vid], photos[vid]) for vid in renders}
    if out:
        out["mean"] = float(np.mean(list(out.values())))
    return out
