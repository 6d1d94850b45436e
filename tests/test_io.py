"""Unit tests of image reading and writing (invpbr.io): colour spaces, bit
depths, channels, masks and the errors a bad file gives. No rendering."""

from __future__ import annotations

import re

import numpy as np
import pytest

import invpbr
from invpbr.capture import images as io


def srgb_to_linear(c):
    """The sRGB transfer function (IEC 61966-2-1), decoding to linear."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


@pytest.mark.parametrize("value", [0, 5, 10, 11, 128, 200, 255])
def test_8bit_png_is_decoded_from_srgb(mi, tmp_path, value):
    path = tmp_path / "u8.png"
    data = np.full((4, 5, 3), value, np.uint8)
    data[..., 1] = 255 - value
    mi.Bitmap(data).write(str(path))
    img = io.load_image(path)
    assert img.shape == (4, 5, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img[..., 0], srgb_to_linear(value / 255), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(img[..., 1], srgb_to_linear((255 - value) / 255), rtol=1e-5, atol=1e-7)


def test_16bit_png_is_decoded_from_srgb(mi, tmp_path):
    path = tmp_path / "u16.png"
    values = np.array([0, 100, 30000, 40001, 65535], np.uint16)
    data = np.repeat(np.repeat(values[None, :, None], 3, axis=2), 2, axis=0)  # (2, 5, 3)
    bmp = mi.Bitmap(data)
    assert bmp.component_format() == mi.Struct.Type.UInt16
    bmp.write(str(path))
    assert mi.Bitmap(str(path)).component_format() == mi.Struct.Type.UInt16
    img = io.load_image(path)
    assert img.shape == (2, 5, 3)
    expected = srgb_to_linear(values / 65535.0)
    np.testing.assert_allclose(img[0, :, 0], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(img[1, :, 2], expected, rtol=1e-5, atol=1e-7)
    # 16 bit keeps levels that 8 bit would merge
    assert img[0, 3, 0] - img[0, 2, 0] > 0


def test_exr_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    img = (rng.random((6, 7, 3)) * 20).astype(np.float32)  # HDR values above 1 stay
    path = io.save_image(tmp_path / "x.exr", img)
    assert path == tmp_path / "x.exr"
    back = io.load_image(path)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, img)


def test_exr_single_channel_round_trip(tmp_path):
    img = np.linspace(0, 4, 12, dtype=np.float32).reshape(3, 4)
    io.save_image(tmp_path / "y.exr", img)
    back = io.load_image(tmp_path / "y.exr")
    assert back.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(back[..., c], img)


def test_grey_png_gives_three_equal_channels(mi, tmp_path):
    data = np.arange(12, dtype=np.uint8).reshape(3, 4, 1) * 20
    mi.Bitmap(data, mi.Bitmap.PixelFormat.Y).write(str(tmp_path / "g.png"))
    img = io.load_image(tmp_path / "g.png")
    assert img.shape == (3, 4, 3)
    expected = srgb_to_linear(data[..., 0] / 255)
    for c in range(3):
        np.testing.assert_allclose(img[..., c], expected, rtol=1e-5, atol=1e-7)
    single = io.load_image(tmp_path / "g.png", channels=1)
    assert single.shape == (3, 4, 1)
    np.testing.assert_allclose(single[..., 0], expected, rtol=1e-5, atol=1e-7)


def test_rgba_png_alpha_and_colour(mi, tmp_path):
    data = np.zeros((2, 3, 4), np.uint8)
    data[..., :3] = 100
    data[..., 3] = [[0, 128, 255], [255, 51, 0]]
    path = tmp_path / "a.png"
    mi.Bitmap(data, mi.Bitmap.PixelFormat.RGBA).write(str(path))
    alpha = io.load_alpha(path)
    assert alpha.shape == (2, 3) and alpha.dtype == np.float32
    np.testing.assert_allclose(alpha, data[..., 3] / 255, atol=1e-6)  # alpha is linear
    img = io.load_image(path)
    assert img.shape == (2, 3, 3)  # alpha dropped, colour not premultiplied
    np.testing.assert_allclose(img, srgb_to_linear(100 / 255), rtol=1e-5)


def test_no_alpha_gives_none(mi, tmp_path):
    mi.Bitmap(np.zeros((2, 2, 3), np.uint8)).write(str(tmp_path / "rgb.png"))
    assert io.load_alpha(tmp_path / "rgb.png") is None


def test_mask_threshold_png_and_exr(mi, tmp_path):
    # PNG: threshold at the sRGB middle (127 off, 129 on), whatever the linear value
    data = np.array([[0, 126, 129, 255]], np.uint8)[..., None].repeat(3, axis=2)
    mi.Bitmap(data).write(str(tmp_path / "m.png"))
    mask = io.load_mask(tmp_path / "m.png")
    assert mask.dtype == bool and mask.shape == (1, 4)
    assert mask.tolist() == [[False, False, True, True]]
    # EXR: linear, threshold 0.5 of the channel mean
    lin = np.array([[0.0, 0.49, 0.51, 1.0]], np.float32)[..., None].repeat(3, axis=2)
    lin[0, 2] = [1.53, 0.0, 0.0]  # mean 0.51: on
    io.save_image(tmp_path / "m.exr", lin)
    assert io.load_mask(tmp_path / "m.exr").tolist() == [[False, False, True, True]]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_exr_names_file_and_pixel_count(mi, tmp_path, bad):
    img = np.ones((5, 6, 3), np.float32)
    img[1, 2, 0] = bad
    img[3, 4, :] = bad
    img[4, 0, 2] = bad
    path = tmp_path / "bad.exr"
    mi.Bitmap(img).write(str(path))  # io.save_image would not refuse it either
    with pytest.raises(ValueError, match=re.escape(str(path))
                       + r": 3 pixel\(s\) are NaN or infinite \(first at x=2, y=1\)"):
        io.load_image(path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "photo.bmp"
    path.write_bytes(b"BM")
    with pytest.raises(ValueError, match=re.escape(str(path)) + r": unsupported image format '\.bmp'"):
        io.load_image(path)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "out.tiff"))
                       + r": unsupported image format '\.tiff'"):
        io.save_image(tmp_path / "out.tiff", np.zeros((2, 2, 3)))
    assert not (tmp_path / "out.tiff").exists()


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path)) + ": no such image file"):
        io.load_image(path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        io.load_alpha(path)


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "junk.png"
    path.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": cannot be read as an image"):
        io.load_image(path)


def test_save_png_is_8bit_srgb_and_reads_back(mi, tmp_path):
    rng = np.random.default_rng(2)
    img = rng.random((8, 9, 3)).astype(np.float32)
    img[0, 0] = [0.0, 1.0, 0.5]
    path = io.save_image(tmp_path / "p.png", img)
    bmp = mi.Bitmap(str(path))
    assert bmp.component_format() == mi.Struct.Type.UInt8
    assert bmp.pixel_format() == mi.Bitmap.PixelFormat.RGB
    raw = np.array(bmp).astype(int)
    # Mitsuba's sRGB curve is a fit: within one level of the exact encoding
    assert np.abs(raw - np.round(linear_to_srgb(img) * 255)).max() <= 1
    back = io.load_image(path)
    # within one 8-bit level in sRGB, at most about 1/64 linear (near white)
    assert np.abs(linear_to_srgb(back) - linear_to_srgb(img)).max() <= 1 / 255 + 1e-5
    assert np.abs(back - img).max() < 1 / 64
    assert back[0, 0, 0] == 0.0 and back[0, 0, 1] == 1.0  # black and white are exact


def test_save_png_clips_and_writes_grey(mi, tmp_path):
    img = np.array([[-1.0, 0.25, 7.0, np.nan]], np.float32)  # (1, 4)
    io.save_image(tmp_path / "g.png", img)
    bmp = mi.Bitmap(str(tmp_path / "g.png"))
    assert bmp.pixel_format() == mi.Bitmap.PixelFormat.Y
    back = io.load_image(tmp_path / "g.png")[0, :, 0]
    np.testing.assert_allclose(back, [0.0, 0.25, 1.0, 0.0], atol=4e-3)


def test_save_leaves_no_temporary_files(tmp_path):
    io.save_image(tmp_path / "sub" / "a.exr", np.zeros((2, 2, 3)))
    io.save_image(tmp_path / "sub" / "a.png", np.zeros((2, 2, 3)))
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.exr", "a.png"]


@pytest.mark.parametrize("shape, size", [((8, 6, 3), (12, 16)), ((16, 16, 3), (5, 7)),
                                         ((4, 4, 1), (2, 3))])
def test_resize_image_shape(shape, size):
    img = np.full(shape, 0.4, np.float32)
    w, h = size
    out = io.resize_image(img, w, h)
    assert out.shape == (h, w, shape[-1])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 0.4, atol=1e-5)  # a constant stays constant


# -- photos with alpha (load_photo)


def test_load_photo_rgba_png_gives_mask_and_straight_colour(mi, tmp_path):
    data = np.zeros((4, 6, 4), np.uint8)
    data[..., 0], data[..., 1], data[..., 2] = 200, 100, 30
    data[:, :3, 3] = 255          # left half opaque
    data[:, 3:, 3] = 0            # right half transparent
    data[0, 2, 3], data[0, 3, 3] = 129, 127   # just above and below one half
    path = tmp_path / "cut.png"
    mi.Bitmap(data, mi.Bitmap.PixelFormat.RGBA).write(str(path))
    assert not mi.Bitmap(str(path)).premultiplied_alpha()
    rgb, mask = io.load_photo(path)
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.float32
    assert mask.shape == (4, 6) and mask.dtype == bool
    expected = np.zeros((4, 6), bool)
    expected[:, :3] = True
    expected[0, 3] = False
    assert mask.tolist() == expected.tolist()
    # PNG colour is straight: the same everywhere whatever the alpha (not premultiplied)
    np.testing.assert_allclose(rgb, np.broadcast_to(srgb_to_linear([200 / 255, 100 / 255, 30 / 255]),
                                                    rgb.shape), rtol=1e-5)
    np.testing.assert_array_equal(rgb, io.load_image(path))


def test_load_photo_without_alpha_gives_none(mi, tmp_path):
    data = np.full((3, 5, 3), 90, np.uint8)
    mi.Bitmap(data).write(str(tmp_path / "rgb.png"))
    mi.Bitmap(data).write(str(tmp_path / "rgb.jpg"))
    for name in ("rgb.png", "rgb.jpg"):
        rgb, mask = io.load_photo(tmp_path / name)
        assert mask is None and rgb.shape == (3, 5, 3)
        np.testing.assert_allclose(rgb, srgb_to_linear(90 / 255), atol=2e-3)  # JPEG is lossy


def test_load_photo_16bit_rgba_png(mi, tmp_path):
    data = np.zeros((2, 4, 4), np.uint16)
    data[..., 0] = [[0, 1000, 30000, 65535], [5, 6, 7, 8]]
    data[..., 1] = 40001
    data[..., 3] = [[65535, 32768, 32767, 0], [65535, 65535, 0, 0]]
    path = tmp_path / "u16.png"
    mi.Bitmap(data, mi.Bitmap.PixelFormat.RGBA).write(str(path))
    assert mi.Bitmap(str(path)).component_format() == mi.Struct.Type.UInt16
    rgb, mask = io.load_photo(path)
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False]]
    np.testing.assert_allclose(rgb[0, :, 0], srgb_to_linear(data[0, :, 0] / 65535), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(rgb[..., 1], srgb_to_linear(40001 / 65535), rtol=1e-5)


def test_load_photo_grey_alpha_png(mi, tmp_path):
    data = np.zeros((2, 2, 2), np.uint8)
    data[..., 0] = 180
    data[..., 1] = [[255, 0], [200, 10]]
    mi.Bitmap(data, mi.Bitmap.PixelFormat.YA).write(str(tmp_path / "ya.png"))
    rgb, mask = io.load_photo(tmp_path / "ya.png")
    assert rgb.shape == (2, 2, 3)
    assert mask.tolist() == [[True, False], [True, False]]
    np.testing.assert_allclose(rgb, srgb_to_linear(180 / 255), rtol=1e-5)


def test_load_photo_exr_alpha_is_unpremultiplied(mi, tmp_path):
    # OpenEXR colour is premultiplied (Mitsuba's rgba films write R = alpha * colour)
    colour = np.array([0.8, 0.4, 0.2], np.float32)
    alpha = np.array([[1.0, 0.6, 0.25, 0.0]], np.float32)
    rgba = np.concatenate([colour * alpha[..., None], alpha[..., None]], axis=-1)
    path = tmp_path / "premul.exr"
    mi.Bitmap(rgba, mi.Bitmap.PixelFormat.RGBA).write(str(path))
    assert mi.Bitmap(str(path)).premultiplied_alpha()
    rgb, mask = io.load_photo(path)
    assert mask.tolist() == [[True, True, False, False]]
    np.testing.assert_allclose(rgb[0, :3], np.broadcast_to(colour, (3, 3)), rtol=1e-6)
    np.testing.assert_array_equal(rgb[0, 3], 0.0)   # alpha 0: nothing to divide
    np.testing.assert_allclose(io.load_image(path)[0, 1], colour * 0.6, rtol=1e-6)  # as stored


# -- resizing to a working resolution


@pytest.mark.parametrize("size", [(256, 256, 16, 16), (256, 256, 17, 15), (250, 260, 9, 7)])
def test_resize_image_filters_fine_detail(size):
    """Downsampling a checkerboard of 1-pixel squares must give grey, not a moire."""
    h, w, new_w, new_h = size
    y, x = np.mgrid[:h, :w]
    board = ((x + y) % 2).astype(np.float32)[..., None].repeat(3, axis=2)
    out = io.resize_image(board, new_w, new_h)
    assert out.shape == (new_h, new_w, 3)
    np.testing.assert_allclose(out, 0.5, atol=0.01)   # measured: 0.5 +- 0.005
    # a sine of period 3 px too
    sine = (0.5 + 0.5 * np.sin(2 * np.pi * x / 3)).astype(np.float32)[..., None]
    np.testing.assert_allclose(io.resize_image(sine, new_w, new_h), 0.5, atol=0.05)


def test_resize_image_keeps_pixel_alignment():
    # a linear ramp sampled at pixel centres stays one (centres at (i + 0.5) * scale)
    x = (np.arange(256) + 0.5) / 256
    ramp = np.broadcast_to(x[None, :, None], (8, 256, 3)).astype(np.float32)
    for new_w in (16, 37, 100):
        out = io.resize_image(np.ascontiguousarray(ramp), new_w, 8)[4, :, 0]
        centre = slice(new_w // 4, 3 * new_w // 4)   # away from the clamped borders
        np.testing.assert_allclose(out[centre], ((np.arange(new_w) + 0.5) / new_w)[centre],
                                   atol=0.1 / 256)


def test_resize_mask_area_coverage():
    mask = np.zeros((8, 8), bool)
    mask[:, :4] = True              # left half
    mask[0:2, 4:5] = True           # one-column bump, top right
    out = io.resize_mask(mask, 4, 4)
    assert out.dtype == bool and out.shape == (4, 4)
    # block (0, 2) covers mask[0:2, 4:6]: half True, not more: False
    assert out.tolist() == [[True, True, False, False]] * 4
    mask[0, 5] = True               # now 3/4 of that block
    assert io.resize_mask(mask, 4, 4)[0].tolist() == [True, True, True, False]
    # a non-integer factor: 8/3 columns per new pixel, fractional overlaps weighted
    cols = np.zeros((1, 8), bool)
    cols[0, :4] = True              # coverage 1, 1/2 (computed as 0.5000000000000001), 0
    assert io.resize_mask(cols, 3, 1).tolist() == [[True, False, False]]
    cols[0, 4] = True               # middle: 7/8
    assert io.resize_mask(cols, 3, 1).tolist() == [[True, True, False]]
    # upsampling repeats; the identity is the identity
    np.testing.assert_array_equal(io.resize_mask(mask, 16, 16), mask.repeat(2, 0).repeat(2, 1))
    np.testing.assert_array_equal(io.resize_mask(mask, 8, 8), mask)
    # a 1-pixel checkerboard has exactly half coverage everywhere: False
    y, x = np.mgrid[:16, :16]
    assert not io.resize_mask((x + y) % 2 == 1, 4, 4).any()


def test_resize_mask_errors():
    with pytest.raises(ValueError, match=r"resize_mask\(\): mask has shape \(2, 2, 3\)"):
        io.resize_mask(np.zeros((2, 2, 3), bool), 1, 1)
    with pytest.raises(ValueError, match="must be positive"):
        io.resize_mask(np.zeros((2, 2), bool), 0, 1)
