"""Unit tests of the losses (against numpy, and total variation's gradient
against central finite differences) and of the pure-numpy helpers in
invpbr.params (texture resampling, parameter error). No rendering."""

from __future__ import annotations

import numpy as np
import pytest

import invpbr
from invpbr.optimization import losses
from invpbr.estimates import parameter_error, resample_texture


def value(x) -> float:
    return float(np.asarray(x).ravel()[0])


def random_images(shape=(6, 7, 3), seed=0):
    rng = np.random.default_rng(seed)
    image = (rng.random(shape) * 2).astype(np.float32)
    reference = (rng.random(shape) * 2).astype(np.float32)
    weight = (rng.random(shape[:2] + (1,)) > 0.4).astype(np.float32)
    return image, reference, weight


NUMPY_LOSSES = {
    "l1": lambda i, r: np.abs(i - r),
    "l2": lambda i, r: (i - r) ** 2,
    "relative_l2": lambda i, r: (i - r) ** 2 / (i ** 2 + 1e-2),
}


@pytest.mark.parametrize("name", list(NUMPY_LOSSES))
def test_image_loss_matches_numpy(mi, name):
    image, reference, _ = random_images()
    fn = losses.image_loss(name)
    assert fn is losses.IMAGE_LOSSES[name]
    got = value(fn(mi.TensorXf(image), mi.TensorXf(reference)))
    expected = NUMPY_LOSSES[name](image.astype(np.float64), reference.astype(np.float64)).mean()
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", list(NUMPY_LOSSES))
def test_weight_excludes_pixels(mi, name):
    image, reference, weight = random_images(seed=1)
    fn = losses.image_loss(name)
    got = value(fn(mi.TensorXf(image), mi.TensorXf(reference), mi.TensorXf(weight)))
    per = NUMPY_LOSSES[name](image.astype(np.float64), reference.astype(np.float64))
    keep = weight[..., 0] > 0
    assert got == pytest.approx(per[keep].mean(), rel=1e-5)
    # whatever the excluded pixels hold does not change the loss
    wild = image.copy()
    wild[~keep] = 1e4
    assert value(fn(mi.TensorXf(wild), mi.TensorXf(reference), mi.TensorXf(weight))) \
        == pytest.approx(got, rel=1e-5)


def test_loss_of_identical_images_is_zero(mi):
    image, _, weight = random_images(seed=2)
    for fn in losses.IMAGE_LOSSES.values():
        assert value(fn(mi.TensorXf(image), mi.TensorXf(image))) == 0.0
        assert value(fn(mi.TensorXf(image), mi.TensorXf(image), mi.TensorXf(weight))) == 0.0


def test_relative_l2_gradient_treats_denominator_as_constant(mi):
    import drjit as dr

    image, reference, _ = random_images((3, 4, 3), seed=3)
    x = mi.TensorXf(image)
    dr.enable_grad(x)
    dr.backward(losses.relative_l2_loss(x, mi.TensorXf(reference)))
    expected = 2 * (image - reference) / (image.astype(np.float64) ** 2 + 1e-2) / image.size
    np.testing.assert_allclose(np.array(dr.grad(x)), expected, rtol=1e-4, atol=1e-9)


def test_unknown_loss_name():
    with pytest.raises(ValueError, match=r"image_loss\(\): unknown loss 'huber'; expected one of l1, l2"):
        losses.image_loss("huber")


def numpy_tv(t: np.ndarray) -> float:
    t = t.astype(np.float64)
    tv = 0.0
    if t.shape[0] > 1:
        tv += np.abs(np.diff(t, axis=0)).mean()
    if t.shape[1] > 1:
        tv += np.abs(np.diff(t, axis=1)).mean()
    return tv


@pytest.mark.parametrize("shape", [(5, 6, 3), (1, 7, 1), (4, 1, 3)])
def test_total_variation_matches_numpy(mi, shape):
    t = np.random.default_rng(4).random(shape).astype(np.float32)
    assert value(losses.total_variation(mi.TensorXf(t))) == pytest.approx(numpy_tv(t), rel=1e-5)


def test_total_variation_of_constant_and_single_texel(mi):
    assert value(losses.total_variation(mi.TensorXf(np.full((4, 4, 3), 0.3, np.float32)))) == 0.0
    assert value(losses.total_variation(mi.TensorXf(np.ones((1, 1, 3), np.float32)))) == 0.0


def test_total_variation_gradient_matches_finite_differences(mi):
    import drjit as dr

    # Distinct values 0.1 apart, so that a step of eps crosses no kink of |.|.
    shape = (4, 5, 2)
    t = (np.random.default_rng(5).permutation(np.prod(shape)) * 0.1).reshape(shape).astype(np.float32)
    x = mi.TensorXf(t)
    dr.enable_grad(x)
    dr.backward(losses.total_variation(x))
    grad = np.array(dr.grad(x))

    eps = 1e-2
    fd = np.zeros(shape)
    for idx in np.ndindex(*shape):
        plus, minus = t.copy(), t.copy()
        plus[idx] += eps
        minus[idx] -= eps
        fd[idx] = (value(losses.total_variation(mi.TensorXf(plus)))
                   - value(losses.total_variation(mi.TensorXf(minus)))) / (2 * eps)
    assert np.abs(grad).max() > 0
    np.testing.assert_allclose(grad, fd, rtol=1e-3, atol=1e-4)


# ---- params: texture resampling and parameter errors (numpy only) ----

def test_resample_box_downsample_is_block_mean():
    t = np.random.default_rng(6).random((8, 12, 3)).astype(np.float32)
    out = resample_texture(t, (2, 3))
    assert out.shape == (2, 3, 3)
    expected = np.array([[t[4 * i:4 * i + 4, 4 * j:4 * j + 4].mean(axis=(0, 1)) for j in range(3)]
                         for i in range(2)])
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    square = resample_texture(t[:8, :8], 4)
    assert square.shape == (4, 4, 3)
    np.testing.assert_allclose(square[1, 2], t[2:4, 4:6].mean(axis=(0, 1)), rtol=1e-6)


@pytest.mark.parametrize("resolution", [8, 13, (7, 5), 3])
def test_resample_bilinear_stays_within_input_range(resolution):
    t = np.random.default_rng(7).random((4, 4, 3)).astype(np.float32)
    t[0, 0] = [0.0, 1.0, 0.0]  # a sharp texel: Lanczos would ring around it
    out = resample_texture(t, resolution)
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    assert out.shape == (h, w, 3)
    for c in range(3):
        assert out[..., c].min() >= t[..., c].min() - 1e-7
        assert out[..., c].max() <= t[..., c].max() + 1e-7


def test_resample_bilinear_of_linear_ramp_is_exact_inside():
    # a ramp along x sampled at texel centres: upsampling by 2 interpolates it
    t = np.tile(np.arange(4, dtype=np.float32)[None, :, None], (4, 1, 1))
    out = resample_texture(t, 8)[0, :, 0]
    np.testing.assert_allclose(out, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)


def test_resample_same_size_is_an_exact_copy():
    t = np.random.default_rng(8).random((5, 5, 3)).astype(np.float32)
    out = resample_texture(t, 5)
    np.testing.assert_array_equal(out, t)
    out[0, 0, 0] = 42.0
    assert t[0, 0, 0] != 42.0  # a copy, not a view


def test_parameter_error_colour_and_scalar():
    assert parameter_error(np.array([0.5, 0.5, 0.5]), np.array([0.8, 0.25, 0.1])) \
        == pytest.approx((0.3 + 0.25 + 0.4) / 3)
    # a scalar against a colour (and the other way round) is broadcast
    assert parameter_error(np.array([0.5]), np.array([0.8, 0.25, 0.1])) == pytest.approx(0.95 / 3)
    assert parameter_error(np.array([0.8, 0.25, 0.1]), np.array(0.5)) == pytest.approx(0.95 / 3)
    assert parameter_error(np.array(2.0), np.array(2.0)) == 0.0


def test_parameter_error_shape_mismatch():
    with pytest.raises(ValueError, match=r"parameter_error\(\): estimate of shape \(2,\) cannot be "
                                         r"compared with truth of shape \(3,\)"):
        parameter_error(np.zeros(2), np.zeros(3))


def test_parameter_error_texture_at_other_resolution():
    rng = np.random.default_rng(9)
    truth = rng.random((4, 4, 3)).astype(np.float32)
    fine = np.repeat(np.repeat(truth, 4, axis=0), 4, axis=1)  # 16x16 copy of the truth
    assert parameter_error(fine, truth) == pytest.approx(0.0, abs=1e-7)
    assert parameter_error(fine + 0.1, truth) == pytest.approx(0.1, rel=1e-5)
    # a coarser estimate is upsampled to the truth's resolution
    coarse = np.full((2, 2, 3), 0.5, np.float32)
    assert parameter_error(coarse, truth) == pytest.approx(np.abs(truth - 0.5).mean(), rel=1e-5)


def test_cauchy_matches_numpy_and_is_bounded(mi):
    import drjit as dr

    image, reference, weight = random_images()
    fn = losses.image_loss("cauchy", scale=0.1)
    got = value(fn(mi.TensorXf(image), mi.TensorXf(reference), mi.TensorXf(weight)))
    per = np.log1p(((image - reference) / 0.1) ** 2)
    expected = (per * weight).sum() / (weight.sum() * 3)
    assert got == pytest.approx(expected, rel=1e-5)
    # The pull of one pixel falls as it goes far off (L2's grows).
    x = mi.TensorXf(np.array([[[0.05, 1.0, 10.0]]], np.float32))
    dr.enable_grad(x)
    dr.backward(losses.image_loss("cauchy", scale=0.1)(x, mi.TensorXf(np.zeros((1, 1, 3), np.float32))))
    g = np.array(dr.grad(x)).ravel()
    assert g[0] > g[1] > g[2] > 0


def test_cauchy_loss_ignores_a_transient_that_l2_bakes_in(tmp_path):
    """A bright 'passer-by' covers a sixth of one of cornell's two photos, over the left
    wall: with L2 the wall's colour is pulled far up; the robust loss stays near the clean
    photos' error. Measured after 60 steps (mean absolute error of the left wall):
    l2 0.78 (clean photos 0.008), cauchy 0.012 (clean photos 0.008)."""
    import shutil

    from invpbr.capture import images as io
    from invpbr.optimization import optimize
    from invpbr.problem import load_problem

    from conftest import REPO

    folder = tmp_path / "cornell"
    shutil.copytree(REPO / "scenes" / "cornell", folder)
    photo = io.load_image(folder / "photos" / "front.exr")
    h, w = photo.shape[:2]
    photo[h // 4: h // 4 + h // 2, : w // 3] = [2.0, 2.0, 1.6]  # over the left wall
    io.save_image(folder / "photos" / "front.exr", photo)
    key = "left_wall.bsdf.reflectance.value"
    errors = {}
    for loss in ("l2", "cauchy"):
        problem = load_problem(folder)
        problem.config.optimize.loss = loss
        result = optimize(problem, iterations=60, progress=False)
        errors[loss] = result.errors[key]
    assert errors["l2"] > 3 * errors["cauchy"], errors
    assert errors["cauchy"] < 0.03, errors
