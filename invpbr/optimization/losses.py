"""Losses: pure functions of Dr.Jit tensors.

Images are linear RGB tensors (H, W, 3); a weight tensor (H, W, 1) of 0/1
selects the pixels a mask keeps (None: all pixels). Each image loss is a mean
over the selected pixels and channels, so its scale does not depend on the
image size.
"""

from __future__ import annotations

from ..estimates.textures import total_variation  # noqa: F401  (a texture's regularizer)


def _masked_mean(x, weight):
    import drjit as dr

    if weight is None:
        return dr.mean(x, axis=None)
    return dr.sum(x * weight, axis=None) / (dr.sum(weight, axis=None) * x.shape[-1])


def l1_loss(image, reference, weight=None):
    """Mean absolute difference."""
    import drjit as dr

    return _masked_mean(dr.abs(image - reference), weight)


def l2_loss(image, reference, weight=None):
    """Mean squared difference."""
    import drjit as dr

    return _masked_mean(dr.square(image - reference), weight)


def relative_l2_loss(image, reference, weight=None, *, epsilon: float = 1e-2):
    """Squared difference relative to the (detached) rendered intensity.

    ``(image - reference)^2 / (detach(image)^2 + epsilon)``, robust to the
    wide range of HDR values (Lehtinen et al. 2018's relative MSE).
    """
    import drjit as dr

    return _masked_mean(dr.square(image - reference) / (dr.square(dr.detach(image)) + epsilon), weight)


def cauchy_loss(image, reference, weight=None, *, scale: float = 0.05):
    """Robust: ``log(1 + ((image - reference) / scale)^2)``.

    Like L2 for residuals well below ``scale``; a pixel far off (a person or a
    car in the photo that the model does not have) pulls with a weight that
    falls as ``1 / (1 + (r / scale)^2)`` instead of growing, so it is not baked
    into the scene.
    """
    import drjit as dr

    return _masked_mean(dr.log(1.0 + dr.square((image - reference) / scale)), weight)


IMAGE_LOSSES = {"l1": l1_loss, "l2": l2_loss, "relative_l2": relative_l2_loss,
                "cauchy": cauchy_loss}


def image_loss(name: str, *, scale: float = 0.05):
    """The image loss function named ``name`` (``l1``, ``l2``, ``relative_l2``,
    ``cauchy`` with residual ``scale``)."""
    try:
        loss = IMAGE_LOSSES[name]
    except KeyError:
        raise ValueError(f"image_loss(): unknown loss {name!r}; expected one of "
                         f"{', '.join(IMAGE_LOSSES)}") from None
    if name == "cauchy":
        return lambda image, reference, weight=None: loss(image, reference, weight, scale=scale)
    return loss
