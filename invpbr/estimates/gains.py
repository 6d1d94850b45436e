"""Per-photo gains (``[photos] gain``): exposure and white balance of each photo,
estimated with the scene.

Not an ``[[estimate]]`` table: ``[photos] gain = "exposure" | "rgb"`` implies
the estimate (:class:`GainsEstimate`), which multiplies each fitted view's
render by its photo's gain before the loss. Its results are ``gains`` and
``gain_errors`` (against ``[cameras] truth``'s frames' ``"gain"``), not a
parameter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Estimate, register_kind


class Gains:
    """Per-photo gains (``[photos] gain``): a render is multiplied by its
    photo's gain before the loss.

    The latent ``x`` holds a log gain per fitted view (and channel); the gain
    is ``exp(x - mean(x))`` over the views (or ``exp(x - x_ref)`` for a
    reference photo), since a common factor of all gains is indistinguishable
    from brighter lights. Fixing the gauge inside the function, rather than
    projecting ``x`` after each step, keeps Adam's per-coordinate step sizes
    from pulling the gains off the constrained optimum. Held-out views keep
    gain 1.
    """

    KEY = "photo gains"

    def __init__(self, problem, opt):
        import mitsuba as mi

        cfg = problem.config.photos
        self.channels = 1 if cfg.gain == "exposure" else 3
        self.fit = [i for i, v in enumerate(problem.views) if not v.held_out]
        self.ids = [problem.views[i].id for i in self.fit]
        self.slot = {v: j for j, v in enumerate(self.fit)}
        self.reference = None if cfg.gain_reference == "mean" \
            else self.ids.index(cfg.gain_reference)
        self.opt = opt
        start = mi.Float(np.zeros(len(self.fit) * self.channels, np.float32))
        if hasattr(opt, "add"):  # an optimizer's latent store
            opt.add(self.KEY, start, lr=cfg.gain_lr)
        else:  # a Dr.Jit optimizer
            opt[self.KEY] = start
            opt.set_learning_rate({self.KEY: cfg.gain_lr})

    def _index(self, j: int) -> list[int]:
        return [j * self.channels + (c if self.channels == 3 else 0) for c in range(3)]

    def apply(self, image, view: int):
        import drjit as dr
        import mitsuba as mi

        j = self.slot.get(view)
        if j is None:
            return image
        x = self.opt[self.KEY]
        log_gain = dr.gather(mi.Float, x, mi.UInt32(self._index(j)))
        if self.reference is not None:
            log_gain = log_gain - dr.gather(mi.Float, x, mi.UInt32(self._index(self.reference)))
        else:  # the mean over the views, per channel: one gather and a block sum
            n, c = len(self.fit), self.channels
            by_channel = dr.gather(mi.Float, x, mi.UInt32([k * c + ch for ch in range(c)
                                                            for k in range(n)]))
            means = dr.block_sum(by_channel, n) / n
            log_gain = log_gain - dr.gather(mi.Float, means, mi.UInt32(
                [ch if c == 3 else 0 for ch in range(3)]))
        return image * mi.TensorXf(dr.exp(log_gain), shape=(1, 1, 3))

    def values(self) -> dict[str, np.ndarray]:
        """Fitted view id -> its gain per colour channel, (3,)."""
        x = np.array(self.opt[self.KEY], dtype=np.float64).reshape(len(self.fit), self.channels)
        x = x - (x.mean(axis=0) if self.reference is None else x[self.reference])
        return {sid: np.broadcast_to(np.exp(g), (3,)).copy() for sid, g in zip(self.ids, x)}


def gain_errors(gains: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> dict[str, float]:
    """View id -> largest relative error of its per-channel gain against the
    truth, after bringing the truth into the estimate's gauge (the common
    factor of the true gains over these views, per channel, is removed)."""
    ids = [i for i in gains if i in truth]
    if not ids:
        return {}
    est = np.log(np.array([gains[i] for i in ids]))
    ref = np.log(np.array([truth[i] for i in ids]))
    ref = ref - ref.mean(axis=0) + est.mean(axis=0)
    return {i: float(np.max(np.abs(np.exp(e - r) - 1.0))) for i, e, r in zip(ids, est, ref)}


class GainsEstimate(Estimate):
    """The per-photo gains as an estimate of the problem (see the module)."""

    kind = "gains"
    freezable = False
    transforms_images = True
    reported = False

    def __init__(self, config):
        self.key = Gains.KEY
        self.config = config
        self.initial = np.zeros(0)
        self.problem = None
        self.gains: Gains | None = None

    @classmethod
    def from_config(cls, config, context) -> list["GainsEstimate"]:
        return [cls(config)] if config.photos.gain != "none" else []

    def setup(self, problem) -> None:
        self.problem = problem

    @property
    def scene_keys(self) -> list[str]:
        return []

    def start(self, store) -> None:
        self.gains = Gains(self.problem, store)

    def apply_to_image(self, store, image, view: int):
        return self.gains.apply(image, view)

    def value(self, store, params) -> np.ndarray:
        values = self.gains.values()
        return np.array([values[i] for i in self.gains.ids])

    def result_fields(self, store, problem, estimates) -> dict[str, Any]:
        gains = self.gains.values()
        return {"gains": gains,
                "gain_errors": gain_errors(gains, problem.true_gains),
                "gain_errors_initial": gain_errors({i: np.ones(3) for i in gains},
                                                   problem.true_gains)}


register_kind(GainsEstimate)
