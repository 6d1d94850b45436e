"""Clipped channels of 8-bit photos (``[photos] saturation`` and ``clipped``).

A camera clips: a channel at the top of an 8-bit photo says only that the scene is at
least that bright there. Leaving such pixels out (``clipped = "mask"``) keeps only the
pixels whose noise stayed below the clip, darker than the truth on average; counting
them as a bound (``clipped = "bound"``, the default) penalizes a render only where it is
darker than the clipped channel.
"""

from __future__ import annotations

import numpy as np
import pytest

import invpbr

SCENE = """<scene version="3.0.0">
  <shape type="rectangle" id="panel">
    <transform name="to_world"><scale value="3"/></transform>
    <emitter type="area"><rgb name="radiance" value="0.5"/></emitter>
  </shape>
  <sensor type="perspective" id="cam">
    <float name="fov" value="30"/>
    <transform name="to_world"><lookat origin="0,0,4" target="0,0,0" up="0,1,0"/></transform>
    <film type="hdrfilm"><integer name="width" value="24"/><integer name="height" value="24"/></film>
  </sensor>
</scene>
"""

TOML = """[render]
spp = 4

[[estimate]]
key = "panel.emitter.radiance.value"

[optimize]
iterations = 200
loss = "l1"
"""

#: The panel's radiance, and the photo's noise (standard deviation, linear).
TRUTH, NOISE = 0.95, 0.08


def test_clipped_channels_bound_the_estimate_instead_of_biasing_it(tmp_path, mi):
    """A panel of radiance 0.95 seen in a photo with noise of 0.08: a third of its
    channels are clipped. Counted as bounds they leave the L1 estimate at the photo's
    median (the truth); left out, the estimate is the median of the darker rest."""
    (tmp_path / "scene.xml").write_text(SCENE)
    (tmp_path / "invpbr.toml").write_text(TOML)
    (tmp_path / "photos").mkdir()
    rng = np.random.default_rng(1)
    photo = (TRUTH + NOISE * rng.standard_normal((24, 24, 3))).astype(np.float32)
    invpbr.capture.images.save_image(tmp_path / "photos" / "cam.png", photo)

    found = {}
    for clipped in ("bound", "mask"):
        problem = invpbr.load_problem(tmp_path)
        assert problem.config.photos.clipped == "auto"  # the default: left out here
        assert not problem.clipped_bounds()             # (an emitter's radiance)
        view = problem.views[0]
        assert 0.25 < view.clipped.mean() < 0.45 and view.mask.mean() < 0.5
        problem.config.photos.clipped = clipped
        result = invpbr.optimize(problem, progress=False)
        assert result.status == "completed"
        found[clipped] = float(np.mean(result.estimates["panel.emitter.radiance.value"]))
    assert found["bound"] == pytest.approx(TRUTH, abs=0.01), found
    assert found["mask"] < TRUTH - 0.025, found  # (the bias the bound removes)


@pytest.mark.parametrize("suffix, pixel_wide", [(".png", False), (".jpg", True), (".JPEG", True)])
def test_a_jpeg_bounds_every_channel_of_a_clipped_pixel(suffix, pixel_wide):
    """A PNG's channels are apart: only the clipped one is a bound. A JPEG mixes them
    (colour subsampling, compression): every channel of a pixel with a clipped channel is
    a bound there. Pixels without one keep no ceiling; ``bound = False`` is the mask."""
    from pathlib import Path

    from invpbr.problem.folder import View, mask_saturated

    photo = np.full((2, 3, 3), 0.4, np.float32)
    photo[0, 1] = (1.0, 0.7, 0.2)  # red clipped
    view = View(index=0, id="a", photo_path=Path("photos") / f"a{suffix}", photo=photo)
    mask_saturated([view], 0.98)
    assert view.mask.sum() == 5 and not view.mask[0, 1]
    mask, ceiling = view.loss_pixels(True)
    assert mask is None  # every pixel counts again
    expected = np.full(photo.shape, np.inf, np.float32)
    expected[0, 1] = photo[0, 1] if pixel_wide else (1.0, np.inf, np.inf)
    np.testing.assert_array_equal(ceiling, expected)
    assert view.loss_pixels(False) == (view.mask, None)
