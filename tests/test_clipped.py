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


def test_view_subsets_bound_clipped_channels_too(tmp_path, mi, monkeypatch):
    """``views_per_step`` draws views into the slots of one batch sensor (the Slots
    strategy, its photos and ceilings in flat arrays): the same bound there, seen in the
    same estimate from two photos, one view per step."""
    from invpbr.optimization.strategies import Slots

    scene = SCENE.replace('</scene>', SCENE[SCENE.index('  <sensor'):SCENE.index('</scene>')]
                          .replace('id="cam"', 'id="cam2"').replace('0,0,4', '0.3,0,4') + '</scene>')
    (tmp_path / "scene.xml").write_text(scene)
    (tmp_path / "invpbr.toml").write_text(TOML + 'views_per_step = 1\n\n[photos]\nclipped = "bound"\n')
    (tmp_path / "photos").mkdir()
    rng = np.random.default_rng(2)
    for name in ("cam", "cam2"):
        photo = (TRUTH + NOISE * rng.standard_normal((24, 24, 3))).astype(np.float32)
        invpbr.capture.images.save_image(tmp_path / "photos" / f"{name}.png", photo)
    made = []
    init = Slots.__init__
    monkeypatch.setattr(Slots, "__init__",
                        lambda self, *a, **k: made.append(self) or init(self, *a, **k))
    result = invpbr.optimize(invpbr.load_problem(tmp_path), progress=False)
    assert len(made) == 1 and made[0].ceilings is not None
    assert float(np.mean(result.estimates["panel.emitter.radiance.value"])) == \
        pytest.approx(TRUTH, abs=0.01)


def test_a_render_above_a_clipped_channel_costs_nothing(mi):
    """The step's loss with bounds: a render brighter than a clipped channel matches it (a
    sky brighter than the camera's white, where a photo's gain is estimated), a darker one
    differs by how much darker; without bounds the clipped pixel is not in the loss."""
    from pathlib import Path
    from types import SimpleNamespace

    from invpbr.optimization.losses import l1_loss
    from invpbr.optimization.strategies import StepContext
    from invpbr.problem.folder import View, mask_saturated

    photo = np.array([[[1.0, 1.0, 1.0], [0.5, 0.5, 0.5]]], np.float32)  # (1, 2, 3)
    view = View(index=0, id="a", photo_path=Path("a.png"), photo=photo)
    mask_saturated([view], 0.98)
    for bound, render, expected in ((True, 1.5, 0.0), (True, 0.8, 0.1), (False, 0.8, 0.0),
                                    (False, 1.5, 0.0)):
        problem = SimpleNamespace(views=[view], clipped_bounds=lambda b=bound: b)
        context = StepContext(problem=problem, integrator=None, integrator_type="prb",
                              loss_fn=l1_loss, fit=[0], per_step=1,
                              latents=SimpleNamespace(apply_to_image=lambda image, v: image))
        context.load_photos()
        image = mi.TensorXf(np.array([[[render] * 3, [0.5] * 3]], np.float32))
        loss = float(np.asarray(context.view_loss(image, 0, 1)).ravel()[0])
        assert loss == pytest.approx(expected, abs=1e-6), (bound, render)
