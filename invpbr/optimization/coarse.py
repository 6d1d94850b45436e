"""Coarse to fine for rigid motions (cameras, poses): blurred images first.

A camera or pose a degree or two off sees every edge and texture a pixel or more away
from where its photo has it. The image loss of one noisy Monte Carlo render then says
little about which way to move: measured on a random scene (11 cameras, 40x40, 8 spp),
the mean gradient over 4 seeds was 0.4 to 4 standard errors from zero and pointed away
from the truth for 3 of 11 cameras. Comparing blurred images (render and photo alike)
averages the render's noise over the kernel and widens the basin, as BARF does for NeRF
cameras: the loss of a step is that of images box-blurred with a radius that shrinks
from about a sixteenth of the image width to 1 (a 3x3 box) over the first half of the
run. Measured on that scene (mean of 4 seeds at the starting cameras): with a radius of
2 the gradient pointed towards the truth for all 11 cameras (cosines 0.05 to 0.64, L1;
0.02 to 0.64, L2), against 8 of 11 unblurred (-0.65 to 0.59).

The blur is separable, clamped at the image borders, and differentiable (Dr.Jit
gathers), applied to the weighted images so masked pixels stay out.
"""

from __future__ import annotations

from typing import Callable


def box_blur(image, radius: int):
    """``image`` (a Dr.Jit tensor (H, W, C)) box-blurred with a (2 r + 1)^2 kernel,
    borders clamped."""
    import drjit as dr
    import mitsuba as mi

    if radius <= 0:
        return image
    h, w, c = image.shape
    flat = image.array
    i = dr.arange(mi.UInt32, h * w * c)
    y, rest = i // (w * c), i % (w * c)
    x, ch = rest // c, rest % c
    out = flat
    for axis in (0, 1):
        total = mi.Float(0.0)
        for d in range(-radius, radius + 1):
            if axis == 0:
                yy = mi.UInt32(dr.clip(mi.Int32(y) + d, 0, h - 1))
                index = (yy * w + x) * c + ch
            else:
                xx = mi.UInt32(dr.clip(mi.Int32(x) + d, 0, w - 1))
                index = (y * w + xx) * c + ch
            total = total + dr.gather(mi.Float, out, index)
        out = total / (2 * radius + 1)
    return mi.TensorXf(out, image.shape)


def blur_radius(iteration: int, iterations: int, width: int) -> int:
    """The blur radius of step ``iteration``: from ``width // 16`` (at least 1) down
    to 1 over the first half of the run, 1 after (a 3x3 box: the render's noise
    averaged, edges still sharp to a pixel)."""
    start = max(1, width // 16)
    half = max(iterations // 2, 1)
    if iteration >= half:
        return 1
    return max(1, int(round(start + (1 - start) * iteration / half)))


class CoarseToFine:
    """A loss function ``(image, photo, weight) -> loss`` that compares blurred images
    while :attr:`radius` > 0 (set by the loop for each step)."""

    def __init__(self, loss_fn: Callable):
        self.loss_fn = loss_fn
        self.radius = 0
        self.watch_radius = 1
        self.plain: list = []
        """The losses at :attr:`watch_radius` (detached) of the calls since the loop
        last emptied it, in call order: what best-state keeping compares. Losses of
        different radii are not comparable, and an unblurred L1 loss of a noisy render
        prefers states that see less (a camera turned to an empty sky scored lower than
        its start), so one fixed blur is watched."""

    def __call__(self, image, photo, weight):
        import drjit as dr

        if weight is not None:
            masked, reference = image * weight, photo * weight
        else:
            masked, reference = image, photo

        def blurred(radius):
            if radius <= 0:
                return self.loss_fn(image, photo, weight)
            return self.loss_fn(box_blur(masked, radius), box_blur(reference, radius), None)

        loss = blurred(self.radius)
        watched = loss if self.watch_radius == self.radius else blurred(self.watch_radius)
        self.plain.append(dr.detach(watched))
        return loss


def applies(estimates) -> bool:
    """Whether a run gets the coarse-to-fine loss: it estimates a rigid motion."""
    return any(e.kind in ("camera", "pose") for e in estimates)
