"""Frozen steps (dr.freeze, on by default where it applies) give the same numbers as
traced ones."""

from __future__ import annotations

import numpy as np

import invpbr
from invpbr.optimization import can_freeze

from conftest import TOML

TEXTURE_TOML = TOML.replace("[optimize]", """[[estimate]]
key = "floor.bsdf.reflectance.data"
bounds = [0.0, 1.0]
tv = 0.01

[optimize]""")


def run(folder, freeze: bool, iterations: int = 15):
    problem = invpbr.load_problem(folder)
    problem.config.optimize.freeze = freeze
    return invpbr.optimize(problem, iterations=iterations, progress=False)


def test_frozen_and_traced_steps_give_the_same_estimates(tiny_scene):
    (tiny_scene / "invpbr.toml").write_text(TEXTURE_TOML)
    traced, frozen = run(tiny_scene, False), run(tiny_scene, True)
    assert traced.settings["frozen"] is False and frozen.settings["frozen"] is True
    assert traced.estimates.keys() == frozen.estimates.keys()
    for key in traced.estimates:
        assert traced.estimates[key].shape == frozen.estimates[key].shape
        # Equal up to float rounding: gradients are accumulated with atomics, so even two
        # traced runs differ by ~1e-8, and Adam's normalized steps can turn that into
        # 1e-3..1e-2 on texels whose gradient is almost zero (seen on 2 of 768 values on
        # one machine, 5 of 768 up to 0.012 on CI's). A frozen kernel that went wrong
        # (stale parameters, a missed update) moves most texels, not a handful.
        diff = np.abs(frozen.estimates[key] - traced.estimates[key])
        assert np.mean(diff > 5e-3) < 0.02, (key, np.sort(diff.ravel())[-10:])
        assert np.median(diff) < 1e-5
        # and the run did something: the estimates moved away from the start
        assert np.abs(frozen.estimates[key] - frozen.initial[key]).max() > 0.01
    np.testing.assert_allclose(frozen.loss, traced.loss, rtol=1e-3)


def test_freeze_is_default_and_skipped_where_it_cannot_apply(tiny_scene):
    problem = invpbr.load_problem(tiny_scene)
    assert can_freeze(problem, "prb", fixed_views=True)  # on by default
    problem.config.optimize.freeze = False
    assert not can_freeze(problem, "prb", fixed_views=True)
    problem.config.optimize.freeze = True
    assert not can_freeze(problem, "prb_projective", fixed_views=True)
    assert not can_freeze(problem, "prb", fixed_views=False)
    problem.config.optimize.precision = "half"
    assert not can_freeze(problem, "prb", fixed_views=True)
    problem.config.optimize.precision = "single"
    problem.config.photos.gain = "rgb"
    assert not can_freeze(problem, "prb", fixed_views=True)
    problem.config.photos.gain = "none"
    problem.parameters[0].gradient = "fd"
    assert not can_freeze(problem, "prb", fixed_views=True)


def test_coarse_to_fine_stages_are_frozen_and_give_the_same_numbers(tiny_scene):
    # Three texture sizes in 9 steps: each stage is recorded anew (a replay of the
    # previous stage's kernels would read a texture of the old size).
    (tiny_scene / "invpbr.toml").write_text(TEXTURE_TOML.replace("tv = 0.01", "resolution = [4, 8, 16]"))
    traced, frozen = run(tiny_scene, False, iterations=9), run(tiny_scene, True, iterations=9)
    assert traced.settings["frozen"] is False and frozen.settings["frozen"] is True
    key = "floor.bsdf.reflectance.data"
    assert frozen.estimates[key].shape == traced.estimates[key].shape == (16, 16, 3)
    # the steps right after each stage change see the resampled texture as traced
    # steps do: same losses, same estimates (up to the atomics' rounding)
    np.testing.assert_allclose(frozen.loss, traced.loss, rtol=1e-4)
    np.testing.assert_allclose(frozen.estimates[key], traced.estimates[key], atol=5e-3)
    assert np.abs(frozen.estimates[key] - frozen.initial[key]).max() > 0.01


MORE_SENSORS = """  <sensor type="perspective" id="left">
    <float name="fov" value="35"/>
    <transform name="to_world"><lookat origin="-4,1,3" target="0,-0.3,0" up="0,1,0"/></transform>
    <film type="hdrfilm"><integer name="width" value="24"/><integer name="height" value="24"/></film>
  </sensor>
  <sensor type="perspective" id="high">
    <transform name="to_world"><lookat origin="0.5,5,2" target="0,-0.3,0" up="0,1,0"/></transform>
    <film type="hdrfilm"><integer name="width" value="24"/><integer name="height" value="24"/></film>
  </sensor>
</scene>"""


def four_views(folder):
    """The tiny scene with two more cameras (one with another field of view), photos
    rendered anew."""
    for name in ("scene.xml", "truth.xml"):
        path = folder / name
        path.write_text(path.read_text().replace("</scene>", MORE_SENSORS))
    invpbr.render_photos(folder, spp=32)
    return folder


def test_view_slots_render_the_views_they_are_aimed_at(tiny_scene, mi):
    from invpbr.render import ViewSlots, render_view

    problem = invpbr.load_problem(four_views(tiny_scene))
    indices = [v.index for v in problem.views]
    slots = ViewSlots.make(problem.scene, indices, 2)
    assert slots is not None and slots.k == 2
    integrator = mi.load_dict({"type": "prb", "max_depth": 3})
    renders = [np.array(render_view(problem.scene, problem.params, integrator, i, spp=256, seed=1))
               for i in indices]
    for aimed in ([0, 1], [2, 3], [3, 0]):
        slots.aim(aimed)
        images = slots.render(problem.scene, problem.params, integrator, spp=256, seed=2)
        for k, v in enumerate(aimed):
            image = np.array(images[k])
            # the view itself up to noise; any other view is far off
            assert np.abs(image - renders[v]).mean() < 0.01
            assert min(np.abs(image - renders[u]).mean() for u in range(4) if u != v) > 0.03
    one = ViewSlots.make(problem.scene, indices, 1)  # one view per step: a batch of one
    one.aim([3])
    image = np.array(one.render(problem.scene, problem.params, integrator, spp=256, seed=3)[0])
    assert np.abs(image - renders[3]).mean() < 0.01


def test_view_subsets_are_frozen_once_and_give_the_same_numbers(tiny_scene):
    folder = four_views(tiny_scene)
    (folder / "invpbr.toml").write_text(TOML.replace("[optimize]", "[optimize]\nviews_per_step = 2"))
    traced, frozen = run(folder, False, iterations=12), run(folder, True, iterations=12)
    assert traced.settings["batched"] and frozen.settings["batched"]
    assert traced.settings["frozen"] is False and frozen.settings["frozen"] is True
    # 12 steps over up to 6 pairs of views: not a recording per pair (the first steps
    # record anew while Adam's state appears, then every pair replays)
    assert frozen.settings["recordings"] <= 3
    key = "ball.bsdf.base_color.value"
    np.testing.assert_allclose(frozen.loss, traced.loss, rtol=1e-4)
    np.testing.assert_allclose(frozen.estimates[key], traced.estimates[key], atol=1e-4)
    assert frozen.errors[key] < 0.5 * frozen.initial_errors[key]


def test_view_subsets_leave_masked_pixels_out(tiny_scene):
    # The lower half of two photos is ruined (a white blob over it) and masked out: the
    # slots must gather each view's own mask with its photo, or the blob pulls the
    # base colour up.
    folder = four_views(tiny_scene)
    (folder / "invpbr.toml").write_text(TOML.replace("[optimize]", "[optimize]\nviews_per_step = 2\n"
                                                     'loss = "l2"'))
    mask = np.ones((24, 24, 3), np.float32)
    mask[12:] = 0.0
    for view in ("front", "left"):
        photo = invpbr.capture.images.load_image(folder / "photos" / f"{view}.exr")
        photo[12:] = 4.0
        invpbr.capture.images.save_image(folder / "photos" / f"{view}.exr", photo)
        invpbr.capture.images.save_image(folder / "masks" / f"{view}.png", mask)
    key = "ball.bsdf.base_color.value"
    result = run(folder, True, iterations=40)
    assert result.settings["batched"] and result.settings["frozen"] is True
    assert result.errors[key] < 0.5 * result.initial_errors[key]
    (folder / "masks" / "left.png").unlink()  # one ruined photo left unmasked
    unmasked = run(folder, True, iterations=40)
    assert unmasked.errors[key] > 2 * result.errors[key]
