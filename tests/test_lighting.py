"""Lighting: gradients of emitters, envmap layout and models, lighting metrics.

- Gradients: forward-mode AD against central finite differences (as in
  tests/test_gradients.py) for an environment-map texel, an area light's
  radiance, a point light's and a spot light's intensity.
- The envmap layout (Mitsuba's halo columns), the envmap parameter's defaults
  (log space, coarse-to-fine stages, no halo in ``initial``), log-space
  latents of emitter values.
- The low-order envmap models (spherical harmonics, sun + sky).
- Scale-invariant albedo error, relighting PSNR and held-out views checked
  against answers computed here independently, ambiguity notes, and the
  validation of the lighting settings of invpbr.toml.

Scenes are tiny (16x16 to 24x24 pixels, envmaps 8x16 to 16x32).
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import invpbr
from invpbr.estimates import lighting
from invpbr.problem.folder import load_relight_maps
from invpbr.results import evaluate
from invpbr.config import ConfigError, EstimateConfig, load_config
from invpbr.optimization.gradcheck import check_gradients, format_checks
from invpbr.estimates import resolve_parameters
from invpbr.testing.procedural import envmap_directions, sky_envmap
from invpbr.results import result_to_json

from conftest import TOML

# A diffuse sphere on a floor; {emitters} lights it. "front" sees the sky
# behind the sphere; "down" looks at the floor from above and sees no sky.
SCENE = """<scene version="3.0.0">
  {emitters}
  <shape type="sphere" id="obj"><bsdf type="diffuse"><rgb name="reflectance" value="{albedo}"/></bsdf></shape>
  <shape type="rectangle" id="floor">
    <transform name="to_world"><scale value="4"/><rotate x="1" angle="-90"/><translate y="-1"/></transform>
    <bsdf type="diffuse"><rgb name="reflectance" value="0.5"/></bsdf>
  </shape>
  <sensor type="perspective" id="front">
    <transform name="to_world"><lookat origin="0,1.5,5" target="0,-0.3,0" up="0,1,0"/></transform>
    <film type="hdrfilm"><integer name="width" value="{res}"/><integer name="height" value="{res}"/></film>
  </sensor>
  <sensor type="perspective" id="down">
    <float name="fov" value="40"/>
    <transform name="to_world"><lookat origin="0.3,3,0.6" target="0.3,-1,0.5" up="0,0,-1"/></transform>
    <film type="hdrfilm"><integer name="width" value="{res}"/><integer name="height" value="{res}"/></film>
  </sensor>
</scene>
"""

ENVMAP = '<emitter type="envmap" id="sky"><string name="filename" value="{file}"/></emitter>'
AREA_LIGHT = ('<shape type="rectangle" id="light"><transform name="to_world"><rotate x="1" angle="90"/>'
              '<translate y="3"/></transform><emitter type="area"><rgb name="radiance" value="4, 3, 2"/>'
              '</emitter></shape>')
AREA = '<emitter type="constant"><rgb name="radiance" value="0.1"/></emitter>' + AREA_LIGHT
POINT = ('<emitter type="point" id="lamp"><point name="position" x="2" y="3" z="4"/>'
         '<rgb name="intensity" value="25, 20, 15"/></emitter>')
SPOT = ('<emitter type="spot" id="spot"><transform name="to_world"><lookat origin="1,4,2" '
        'target="0,-0.5,0"/></transform><float name="cutoff_angle" value="35"/>'
        '<rgb name="intensity" value="40, 30, 20"/></emitter>')
ALL_LIGHTS = ENVMAP + AREA_LIGHT + POINT + SPOT


def sky(width: int = 16, height: int = 8, **kwargs) -> np.ndarray:
    """A small procedural sky (H, W, 3) with a broad sun."""
    kwargs = dict(sun_intensity=10.0, sun_radius_deg=15.0, supersample=2) | kwargs
    return sky_envmap(width, height, **kwargs)


def write_folder(folder: Path, emitters: str, key: str, *, res: int = 24,
                 albedo: str = "0.6, 0.5, 0.4", sky_map: np.ndarray | None = None):
    """A scene folder whose photos only satisfy the loader; the loaded Problem."""
    folder.mkdir(parents=True, exist_ok=True)
    invpbr.init_backend()
    invpbr.capture.images.save_image(folder / "sky.exr", sky() if sky_map is None else sky_map)
    (folder / "scene.xml").write_text(SCENE.format(emitters=emitters.format(file="sky.exr"),
                                                   res=res, albedo=albedo))
    (folder / "invpbr.toml").write_text(f'[render]\nmax_depth = 3\n[[estimate]]\nkey = "{key}"\n')
    invpbr.render_photos(folder, spp=4, source="scene.xml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return invpbr.load_problem(folder)


def scene_params(tmp_path: Path, emitters: str = ALL_LIGHTS, sky_map: np.ndarray | None = None):
    """(scene, mi.traverse(scene)) of SCENE with ``emitters``, no folder needed."""
    invpbr.init_backend()
    import mitsuba as mi

    invpbr.capture.images.save_image(tmp_path / "sky.exr", sky() if sky_map is None else sky_map)
    xml = SCENE.format(emitters=emitters.format(file=str(tmp_path / "sky.exr")), res=16,
                       albedo="0.6, 0.5, 0.4")
    scene = mi.load_string(xml, optimize=False)
    return scene, mi.traverse(scene)


# ---------------------------------------------------------------------------------------
# Gradients: AD against finite differences
# ---------------------------------------------------------------------------------------

# (case id, emitters, key, finite-difference epsilon, views)
GRADIENT_CASES = [
    ("envmap_texel", ENVMAP, "sky.data", 0.05, ["front", "down"]),
    ("area_radiance", AREA, "light.emitter.radiance.value", 0.1, ["front"]),
    ("point_intensity", POINT, "lamp.intensity.value", 0.5, ["front"]),
    ("spot_intensity", SPOT, "spot.intensity.value", 0.5, ["front"]),
]


@pytest.mark.parametrize("case", GRADIENT_CASES, ids=[c[0] for c in GRADIENT_CASES])
def test_emitter_gradient_matches_finite_differences(case, tmp_path):
    name, emitters, key, epsilon, views = case
    problem = write_folder(tmp_path / name, emitters, key)
    (parameter,) = problem.parameters
    assert parameter.key == key and parameter.gradient == "ad"
    # Every emitter value is optimized in log space by default.
    assert parameter.space == "log", (key, parameter.space)
    checks = check_gradients(problem, views=views, spp=1024, fd_spp=4096, epsilon=epsilon)
    print(format_checks(checks))
    assert len(checks) == (len(views) if parameter.kind == "envmap" else 3 * len(views))
    for c in checks:
        assert abs(c.fd_sum) > 1e-3, f"{name}: the parameter does not change the image"
        if parameter.kind == "envmap":
            # The check chose one real texel, never one of Mitsuba's halo columns.
            y, x = map(int, re.fullmatch(r"texel \((\d+), (\d+)\)", c.component).groups())
            assert 0 <= y < 8 and 1 <= x <= 16, c.component
        assert not c.forward_lost, format_checks([c])
        assert c.reverse_error < 0.05 + c.fd_noise, format_checks([c])
        assert c.sum_error < 0.05 + c.fd_noise, format_checks([c])
        assert c.error_mean < 0.05 + 1.5 * c.fd_noise, format_checks([c])


# ---------------------------------------------------------------------------------------
# Envmap layout and the envmap parameter
# ---------------------------------------------------------------------------------------


def test_envmap_halo_round_trip_numpy():
    x = np.random.default_rng(0).uniform(0.1, 2.0, (4, 6, 3)).astype(np.float32)
    data = lighting.envmap_with_halo(x)
    assert data.shape == (4, 8, 3)
    np.testing.assert_array_equal(data[:, 0], x[:, -1])   # left halo: the last column
    np.testing.assert_array_equal(data[:, -1], x[:, 0])   # right halo: the first column
    np.testing.assert_array_equal(lighting.envmap_texels(data), x)


def test_envmap_halo_round_trip_drjit_and_its_gradient():
    invpbr.init_backend()
    import drjit as dr
    import mitsuba as mi

    x = np.random.default_rng(1).uniform(0.1, 2.0, (4, 6, 3)).astype(np.float32)
    t = mi.TensorXf(x)
    dr.enable_grad(t)
    data = lighting.envmap_with_halo(t)
    assert isinstance(data, mi.TensorXf) and tuple(data.shape) == (4, 8, 3)
    np.testing.assert_array_equal(np.array(data), lighting.envmap_with_halo(x))
    np.testing.assert_array_equal(lighting.envmap_texels(np.array(data)), x)
    # Differentiable: the edge columns reach the sum twice (once through the halo).
    dr.backward(dr.sum(data, axis=None))
    grad = np.array(dr.grad(t))
    expected = np.ones_like(x)
    expected[:, [0, -1]] = 2.0
    np.testing.assert_array_equal(grad, expected)


def test_envmap_halo_is_mitsubas_own(tmp_path):
    """Mitsuba's envmap data of an EXR is exactly envmap_with_halo(EXR texels)."""
    x = np.random.default_rng(2).uniform(0.1, 3.0, (8, 16, 3)).astype(np.float32)
    _, params = scene_params(tmp_path, ENVMAP, sky_map=x)
    data = np.array(params["sky.data"])
    assert data.shape == (8, 18, 3)
    np.testing.assert_array_equal(data, lighting.envmap_with_halo(x))


def test_estimated_envmap_parameter_defaults(tmp_path):
    import mitsuba as mi

    x = sky(32, 16)
    _, params = scene_params(tmp_path, ENVMAP, sky_map=x)
    (p,) = resolve_parameters(params, [EstimateConfig(key="sky.data")])
    assert p.kind == "envmap" and p.space == "log" and p.model is None
    assert p.shape == (16, 34, 3)
    # initial: the real texels, without the halo columns
    assert p.initial.shape == (16, 32, 3)
    np.testing.assert_allclose(p.initial, x, rtol=1e-6)
    # coarse to fine: a quarter, half and all of the height, width = 2 x height
    assert p.resolutions == [(4, 8), (8, 16), (16, 32)]
    assert p.tv == lighting.ENVMAP_TV
    assert [p.stage(i, 30) for i in (0, 9, 10, 19, 20, 29)] == [0, 0, 1, 1, 2, 2]
    # the latent is log radiance at the stage's resolution
    latent = p.latent_from_scene(p.initial, 0)
    assert latent.shape == (4, 8, 3)
    np.testing.assert_allclose(latent, np.log(x.reshape(4, 4, 8, 4, 3).mean(axis=(1, 3))),
                               rtol=1e-5, atol=1e-5)
    # to_scene: exp of the latent, halo added, Mitsuba's layout
    full = p.latent_from_scene(p.initial, 2)
    scene_value = p.to_scene(mi.TensorXf(full), params["sky.data"])
    assert tuple(scene_value.shape) == (16, 34, 3)
    np.testing.assert_allclose(np.array(scene_value), lighting.envmap_with_halo(x), rtol=1e-5)
    np.testing.assert_allclose(p.from_scene(scene_value), x, rtol=1e-5)
    # no bounds: unbounded latent
    assert p.latent_bounds() is None

    (q,) = resolve_parameters(params, [EstimateConfig(key="sky.data", resolution=[8, 16], tv=0.5)])
    assert q.resolutions == [(8, 16), (16, 32)] and q.tv == 0.5
    (lin,) = resolve_parameters(params, [EstimateConfig(key="sky.data", space="linear")])
    assert lin.space == "linear"
    np.testing.assert_array_equal(np.array(lin.to_scene(mi.TensorXf(x), None)),
                                  lighting.envmap_with_halo(x))


def test_latent_bounds_in_log_space(tmp_path):
    _, params = scene_params(tmp_path)
    (p,) = resolve_parameters(params, [EstimateConfig(key="sky.data", bounds=(0.01, 100.0))])
    lo, hi = p.latent_bounds()
    assert lo == pytest.approx(math.log(0.01)) and hi == pytest.approx(math.log(100.0))
    # latents are clipped into the bounds before the log
    latent = p.latent_from_scene(np.full((8, 16, 3), 500.0, np.float32), 1)
    np.testing.assert_allclose(latent, math.log(100.0), rtol=1e-6)
    # a lower bound of 0 becomes the log of a small positive floor
    (q,) = resolve_parameters(params, [EstimateConfig(key="lamp.intensity.value", bounds=(0.0, 50.0))])
    assert q.space == "log"
    lo, hi = q.latent_bounds()
    assert lo == pytest.approx(math.log(1e-6)) and hi == pytest.approx(math.log(50.0))
    # linear space keeps the bounds as they are
    (r,) = resolve_parameters(params, [EstimateConfig(key="lamp.intensity.value", bounds=(0.0, 50.0),
                                                      space="linear")])
    assert r.latent_bounds() == (0.0, 50.0)
    with pytest.raises(ValueError, match=r"inv\.toml: estimate\[0\]\.key 'lamp\.intensity\.value': "
                                         r"space = \"log\" needs positive values"):
        resolve_parameters(params, [EstimateConfig(key="lamp.intensity.value", bounds=(-2.0, 0.0),
                                                   space="log")], source="inv.toml")


@pytest.mark.parametrize("key,value", [
    ("light.emitter.radiance.value", [4, 3, 2]),
    ("lamp.intensity.value", [25, 20, 15]),
    ("spot.intensity.value", [40, 30, 20]),
])
def test_emitter_value_log_latent_maps_to_exp(key, value, tmp_path):
    """Emitter radiance and intensity are optimized as logarithms: auto picks
    log space for every kind of light (a point or spot light's intensity too,
    whose key Mitsuba gives to a spectrum object, not to the emitter)."""
    import mitsuba as mi

    _, params = scene_params(tmp_path)
    (p,) = resolve_parameters(params, [EstimateConfig(key=key)])
    assert p.kind == "value" and p.space == "log"
    np.testing.assert_allclose(p.initial.ravel(), value)
    latent = p.latent_from_scene(p.initial)
    np.testing.assert_allclose(latent.ravel(), np.log(value), rtol=1e-6)
    scene_value = p.to_scene(mi.Color3f(np.array([[0.0], [1.0], [-1.0]], np.float32)), params[key])
    assert isinstance(scene_value, mi.Color3f)
    np.testing.assert_allclose(np.array(scene_value).ravel(), np.exp([0.0, 1.0, -1.0]), rtol=1e-6)
    # materials stay linear
    (albedo,) = resolve_parameters(params, [EstimateConfig(key="obj.bsdf.reflectance.value")])
    assert albedo.space == "linear"


# ---------------------------------------------------------------------------------------
# Envmap models
# ---------------------------------------------------------------------------------------


def test_sh_basis_is_orthonormal_over_the_sphere():
    height, width = 64, 128
    weights = lighting.texel_solid_angles(height, width)
    assert weights.shape == (height, width) and (weights > 0).all()
    assert weights.sum() == pytest.approx(4 * math.pi, rel=1e-9)
    d = envmap_directions(width, height)[:, :, 0, :]
    for order in (2, 3):
        basis = lighting.sh_basis(d, order).reshape(height * width, -1)
        assert basis.shape[1] == (order + 1) ** 2
        gram = basis.T @ (basis * weights.reshape(-1, 1))
        np.testing.assert_allclose(gram, np.eye(basis.shape[1]), atol=2e-3)
    # band 0 is the constant 1 / sqrt(4 pi)
    np.testing.assert_allclose(lighting.sh_basis(d, 0), 1 / math.sqrt(4 * math.pi))


def test_sh_model_reproduces_a_low_order_map():
    import mitsuba as mi

    model = lighting.EnvmapModel("sh", 16, 32, sh_order=2)
    assert model.size == 27
    rng = np.random.default_rng(3)
    latent = rng.normal(0.0, 0.1, model.size).astype(np.float32)
    latent[[0, 9, 18]] = [3.0, 2.5, 2.0]  # band 0 per channel: positive everywhere (no clamp)
    x = np.array(model.texels(mi.Float(latent)))
    assert x.shape == (16, 32, 3) and x.min() > 0
    # channel-major latent, texels (H, W, 3): as computed directly with numpy
    direct = np.stack([model.basis @ latent[9 * c:9 * (c + 1)] for c in range(3)], axis=-1)
    np.testing.assert_allclose(x, direct.reshape(16, 32, 3), rtol=1e-5, atol=1e-5)
    fitted = model.fit(x)
    np.testing.assert_allclose(fitted, latent, atol=1e-4)
    np.testing.assert_allclose(np.array(model.texels(mi.Float(fitted))), x, rtol=1e-4, atol=1e-5)


def test_sun_sky_model_fit_puts_the_sun_at_the_brightest_direction():
    import mitsuba as mi

    sun = np.array([0.5, 0.7, 0.5]) / np.linalg.norm([0.5, 0.7, 0.5])
    x = sky_envmap(64, 32, sun_direction=sun)
    model = lighting.EnvmapModel("sun_sky", 32, 64)
    assert model.size == 12
    latent = model.fit(x)
    texels = np.array(model.texels(mi.Float(latent)))
    assert texels.shape == (32, 64, 3)
    assert np.isfinite(texels).all() and texels.min() > 0
    # the sun lobe alone: the model minus the model without sun
    no_sun = latent.copy()
    no_sun[6:9] = -50.0
    lobe = (texels - np.array(model.texels(mi.Float(no_sun)))).sum(axis=-1)
    d = envmap_directions(64, 32)[:, :, 0, :]
    brightest = d.reshape(-1, 3)[np.argmax(x.sum(axis=-1))]
    lobe_peak = d.reshape(-1, 3)[np.argmax(lobe)]
    texel_deg = 180 / 31
    assert math.degrees(math.acos(min(1.0, lobe_peak @ brightest))) < 1.5 * texel_deg
    assert math.degrees(math.acos(min(1.0, lobe_peak @ sun))) < 1.5 * texel_deg
    # the sky part follows the map's gradient: brighter blue up than down
    assert texels[0, :, 2].mean() > texels[-1, :, 2].mean()


def test_envmap_model_parameter(tmp_path):
    import mitsuba as mi

    x = sky(32, 16)
    _, params = scene_params(tmp_path, ENVMAP, sky_map=x)
    (p,) = resolve_parameters(params, [EstimateConfig(key="sky.data", model="sh", sh_order=3,
                                                      bounds=(0.0, 10.0))])
    assert isinstance(p.model, lighting.EnvmapModel) and p.model.kind == "sh"
    assert p.resolutions == [] and p.tv == 0.0 and p.latent_bounds() is None
    latent = p.latent_from_scene(p.initial)
    assert latent.shape == (3 * 16,)
    value = p.to_scene(mi.Float(latent), None)
    assert tuple(value.shape) == (16, 34, 3)
    np.testing.assert_array_equal(np.array(value)[:, 1:-1], np.array(p.model.texels(mi.Float(latent))))
    with pytest.raises(ValueError, match="unknown model 'fourier'"):
        lighting.EnvmapModel("fourier", 8, 16)


# ---------------------------------------------------------------------------------------
# Scale-invariant albedo error
# ---------------------------------------------------------------------------------------


def test_scale_invariant_error():
    rng = np.random.default_rng(4)
    truth = rng.uniform(0.1, 0.9, (8, 8, 3))
    scaled = truth * np.array([2.0, 0.5, 3.0])
    assert lighting.scale_invariant_error(scaled, truth) == pytest.approx(0.0, abs=1e-12)
    assert lighting.scale_invariant_error(truth, truth) == pytest.approx(0.0, abs=1e-12)
    other = truth + rng.normal(0.0, 0.05, truth.shape)
    err = lighting.scale_invariant_error(other, truth)
    assert 0.01 < err < np.mean(np.abs(other - truth)) + 1e-12
    # the same as the least-squares scale computed here, channel by channel
    s = (other * truth).sum(axis=(0, 1)) / (other * other).sum(axis=(0, 1))
    assert err == pytest.approx(np.mean(np.abs(other * s - truth)), rel=1e-12)
    with pytest.raises(ValueError, match="shapes"):
        lighting.scale_invariant_error(truth, truth[:4])


def test_scale_invariant_error_of_one_colour_uses_one_scale():
    truth = np.array([[0.8], [0.4], [0.2]])  # a colour as mi.traverse gives it, (3, 1)
    assert lighting.scale_invariant_error(0.5 * truth, truth) == pytest.approx(0.0, abs=1e-12)
    # per-channel scales would fit any colour exactly; one scale does not
    estimate = truth * np.array([[2.0], [1.0], [1.0]])
    err = lighting.scale_invariant_error(estimate, truth)
    s = float((estimate * truth).sum() / (estimate * estimate).sum())
    assert err > 0.05
    assert err == pytest.approx(np.mean(np.abs(s * estimate - truth)), rel=1e-12)


def test_albedo_scale_invariant_errors_only_for_albedos():
    truth = {"obj.bsdf.reflectance.value": np.array([[0.8], [0.4], [0.2]]),
             "lamp.intensity.value": np.array([[25.0], [20.0], [15.0]])}
    estimates = {k: 0.5 * v for k, v in truth.items()}
    out = evaluate.albedo_scale_invariant_errors(estimates, truth)
    assert list(out) == ["obj.bsdf.reflectance.value"]
    assert out["obj.bsdf.reflectance.value"] == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------------
# Relighting
# ---------------------------------------------------------------------------------------

RELIGHT_SCENE = """<scene version="3.0.0">
  <emitter type="envmap" id="sky"><string name="filename" value="{env}"/></emitter>
  <shape type="sphere" id="obj"><bsdf type="diffuse"><rgb name="reflectance" value="{albedo}"/></bsdf></shape>
  <sensor type="perspective" id="front">
    <transform name="to_world"><lookat origin="0,1.5,5" target="0,-0.3,0" up="0,1,0"/></transform>
    <film type="hdrfilm"><integer name="width" value="16"/><integer name="height" value="16"/></film>
  </sensor>
  <sensor type="perspective" id="side">
    <transform name="to_world"><lookat origin="4,2.5,2" target="0,-0.3,0" up="0,1,0"/></transform>
    <film type="hdrfilm"><integer name="width" value="16"/><integer name="height" value="16"/></film>
  </sensor>
</scene>
"""
TRUE_ALBEDO = np.array([0.8, 0.6, 0.4])


def test_relighting_psnr_against_direct_renders(tmp_path):
    """relit_renders + relight_psnr give exactly what rendering the scenes with
    the relighting map in their XML gives; identical scenes give inf."""
    invpbr.init_backend()
    import mitsuba as mi

    own = sky(16, 8)
    relight = sky(32, 16, sun_direction=(-0.6, 0.5, -0.3), zenith_color=(0.8, 0.5, 0.3))
    invpbr.capture.images.save_image(tmp_path / "own.exr", own)
    invpbr.capture.images.save_image(tmp_path / "relight.exr", relight)

    def load(env, albedo):
        text = ", ".join(f"{v:g}" for v in albedo)
        return mi.load_string(RELIGHT_SCENE.format(env=tmp_path / env, albedo=text), optimize=False)

    integrator = mi.load_dict({"type": "prb", "max_depth": 3})
    spp, ids = 16, ["front", "side"]
    truth = load("own.exr", TRUE_ALBEDO)
    same = load("own.exr", TRUE_ALBEDO)
    half = load("own.exr", TRUE_ALBEDO / 2)
    before = evaluate.render_all(half, integrator, 2, spp=spp)

    relit_truth = evaluate.relit_renders(truth, integrator, relight, spp=spp)
    relit_same = evaluate.relit_renders(same, integrator, relight, spp=spp)
    relit_half = evaluate.relit_renders(half, integrator, relight, spp=spp)

    # An estimate equal to the truth: the same renders, PSNR inf.
    scores = evaluate.relight_psnr(relit_same, relit_truth, ids)
    assert set(scores) == {"front", "side", "mean"}
    assert all(v == math.inf or v > 60 for v in scores.values()), scores

    # Half the albedo: the PSNR of renders made here with the relighting map in the XML.
    direct = {}
    for name, albedo in (("truth", TRUE_ALBEDO), ("half", TRUE_ALBEDO / 2)):
        scene = load("relight.exr", albedo)
        direct[name] = [np.array(mi.render(scene, sensor=i, integrator=integrator, spp=spp,
                                           seed=2**31 - 1))[..., :3] for i in range(2)]
    for mine, theirs in zip(direct["truth"] + direct["half"], relit_truth + relit_half):
        np.testing.assert_allclose(theirs, mine, atol=1e-5)
    expected = {}
    for vid, e, t in zip(ids, direct["half"], direct["truth"]):
        mse = np.mean((np.clip(e, 0, 1) - np.clip(t, 0, 1)) ** 2)
        expected[vid] = 10 * np.log10(1.0 / mse)
    scores = evaluate.relight_psnr(relit_half, relit_truth, ids)
    print(scores, expected)
    for vid in ids:
        assert scores[vid] == pytest.approx(expected[vid], abs=1e-3)
        assert 5 < scores[vid] < 40
    # "mean": the PSNR of all views' pixels together (their mean squared error).
    mse_all = np.mean([np.mean((np.clip(e, 0, 1) - np.clip(t, 0, 1)) ** 2)
                       for e, t in zip(direct["half"], direct["truth"])])
    assert scores["mean"] == pytest.approx(10 * np.log10(1.0 / mse_all), abs=1e-3)

    # The scene's own map is back afterwards.
    assert np.array(mi.traverse(half)["sky.data"]).shape == (8, 18, 3)
    after = evaluate.render_all(half, integrator, 2, spp=spp)
    for b, a in zip(before, after):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_relighting_needs_an_envmap_and_the_files(tmp_path):
    invpbr.init_backend()
    import mitsuba as mi

    scene = mi.load_string(SCENE.format(emitters=POINT, res=8, albedo="0.5"), optimize=False)
    integrator = mi.load_dict({"type": "prb"})
    with pytest.raises(ValueError, match="needs a scene with an envmap emitter"):
        evaluate.relit_renders(scene, integrator, sky(), spp=1)
    with pytest.raises(FileNotFoundError, match=r"missing\.exr: no such file \(named in invpbr\.toml "
                                                r"evaluate\.relight\)"):
        load_relight_maps(tmp_path, ["missing.exr"])
    invpbr.capture.images.save_image(tmp_path / "m.exr", sky())
    maps = load_relight_maps(tmp_path, ["m.exr"])
    np.testing.assert_allclose(maps["m.exr"], sky(), rtol=1e-6)


def test_psnr():
    a = np.zeros((4, 4, 3), np.float32)
    assert evaluate.psnr(a, a) == math.inf
    assert evaluate.psnr(a + 0.1, a) == pytest.approx(20.0)
    # clipped to [0, 1]: values above 1 count as 1
    assert evaluate.psnr(a + 5.0, a + 1.0) == math.inf
    scores = evaluate.relight_psnr([a + 0.1, a + 0.01], [a, a], ["x", "y"])
    # mean: PSNR of the pooled squared error, (0.01 + 0.0001) / 2
    assert scores == pytest.approx({"x": 20.0, "y": 40.0, "mean": 10 * math.log10(2 / 0.0101)})
    assert evaluate.relight_psnr([a], [a], ["x"]) == {"x": math.inf, "mean": math.inf}


# ---------------------------------------------------------------------------------------
# Held-out views
# ---------------------------------------------------------------------------------------

HELD_OUT_TOML = TOML + '\n[evaluate]\nheld_out = {held_out}\n'


def held_out_problem(folder: Path, held_out: str):
    text = HELD_OUT_TOML.format(held_out=held_out).replace("spp = 8", "spp = 4\nspp_final = 16")
    (folder / "invpbr.toml").write_text(text)
    return invpbr.load_problem(folder)


def test_held_out_view_is_never_fitted(tiny_scene):
    problem = held_out_problem(tiny_scene, '["side"]')
    assert [(v.id, v.held_out) for v in problem.views] == [("front", False), ("side", True)]
    seen = []

    def record(info):
        seen.append(list(info.views))

    result = invpbr.optimize(problem, iterations=4, callback=record, progress=False)
    assert seen == [["front"]] * 4
    assert result.held_out == ["side"]
    assert set(result.novel_view_psnr) == {"side"} and set(result.novel_view_psnr_initial) == {"side"}
    photo = problem.views[1].photo
    assert result.novel_view_psnr["side"] == pytest.approx(evaluate.psnr(result.renders["side"], photo))
    assert all(math.isfinite(v) and v > 5 for v in
               [result.novel_view_psnr["side"], result.novel_view_psnr_initial["side"]])
    doc = result_to_json(result)
    assert set(doc["novel_view_psnr"]) == {"side"} and doc["held_out"] == ["side"]

    # The held-out photo does not enter the fit: replacing it changes the
    # novel-view PSNR but not one loss value.
    problem = held_out_problem(tiny_scene, '["side"]')
    problem.views[1].photo = np.full_like(photo, 0.9)
    changed = invpbr.optimize(problem, iterations=4, progress=False)
    assert changed.loss == pytest.approx(result.loss, rel=1e-4)
    assert changed.novel_view_psnr["side"] < result.novel_view_psnr["side"] - 3


def test_held_out_errors(tiny_scene):
    with pytest.raises(ValueError, match=r"invpbr\.toml: evaluate\.held_out names unknown "
                                         r"sensor\(s\) 'back'; sensors: front, side"):
        held_out_problem(tiny_scene, '["back"]')
    with pytest.raises(ValueError, match=r"invpbr\.toml: evaluate\.held_out holds out every view"):
        held_out_problem(tiny_scene, '["front", "side"]')
    problem = held_out_problem(tiny_scene, "[]")
    for view in problem.views:
        view.held_out = True
    with pytest.raises(ValueError, match="every view is held out"):
        invpbr.optimize(problem, iterations=1, progress=False)


# ---------------------------------------------------------------------------------------
# Ambiguity notes
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("light", ["light.emitter.radiance.value", "lamp.intensity.value",
                                   "spot.intensity.value", "sky.data"])
def test_albedo_and_light_together_give_a_note(light, tmp_path):
    _, params = scene_params(tmp_path)
    albedo = "obj.bsdf.reflectance.value"
    parameters = resolve_parameters(params, [EstimateConfig(key=albedo), EstimateConfig(key=light)])
    notes = evaluate.ambiguity_notes(parameters, params)
    assert len(notes) == 1, notes
    assert albedo in notes[0] and light in notes[0] and "albedo x light" in notes[0]


@pytest.mark.parametrize("keys", [["obj.bsdf.reflectance.value"], ["lamp.intensity.value"],
                                  ["floor.bsdf.reflectance.value", "obj.bsdf.reflectance.value"]])
def test_no_note_without_both(keys, tmp_path):
    _, params = scene_params(tmp_path)
    parameters = resolve_parameters(params, [EstimateConfig(key=k) for k in keys])
    assert evaluate.ambiguity_notes(parameters, params) == []


# ---------------------------------------------------------------------------------------
# invpbr.toml: the lighting settings
# ---------------------------------------------------------------------------------------


def test_lighting_config_defaults_and_values(tmp_path):
    path = tmp_path / "invpbr.toml"
    path.write_text('[[estimate]]\nkey = "sky.data"\n')
    e = load_config(path).estimate[0]
    assert (e.space, e.model, e.sh_order, e.white_balance) == ("auto", "texels", 2, 0.0)
    assert load_config(path).evaluate.held_out == [] and load_config(path).evaluate.relight == []
    path.write_text('[[estimate]]\nkey = "sky.data"\nspace = "log"\nmodel = "sh"\nsh_order = 3\n'
                    'white_balance = 0.1\n[evaluate]\nheld_out = ["a", "b"]\nrelight = ["x.exr"]\n')
    config = load_config(path)
    e = config.estimate[0]
    assert (e.space, e.model, e.sh_order, e.white_balance) == ("log", "sh", 3, 0.1)
    assert config.evaluate.held_out == ["a", "b"] and config.evaluate.relight == ["x.exr"]


# (table, line, message after "<file>: ")
BAD_CONFIGS = [
    ("estimate", 'space = "cubic"', r"estimate\[0\] \(key 'sky.data'\)\.space = 'cubic'; expected "
                                    r"one of auto, linear, log"),
    ("estimate", 'model = "wavelet"', r"estimate\[0\] \(key 'sky.data'\)\.model = 'wavelet'; "
                                      r"expected one of texels, sh, sun_sky"),
    ("estimate", "sh_order = -1", r"estimate\[0\] \(key 'sky.data'\)\.sh_order must be >= 0"),
    ("estimate", "sh_order = 1.5", r"estimate\[0\] \(key 'sky.data'\)\.sh_order must be an integer"),
    ("estimate", "sh_order = true", r"estimate\[0\] \(key 'sky.data'\)\.sh_order must be an integer"),
    ("estimate", "white_balance = -0.5",
     r"estimate\[0\] \(key 'sky.data'\)\.white_balance must be >= 0"),
    ("estimate", 'white_balance = "yes"',
     r"estimate\[0\] \(key 'sky.data'\)\.white_balance must be a finite number"),
    ("estimate", 'shape = "round"', r"unknown key estimate\[0\]\.shape"),
    ("evaluate", 'held_out = "side"', r"evaluate\.held_out must be a list of strings, found 'side'"),
    ("evaluate", "held_out = [1]", r"evaluate\.held_out must be a list of strings"),
    ("evaluate", 'relight = "other.exr"', r"evaluate\.relight must be a list of strings"),
    ("evaluate", 'relight = [""]', r"evaluate\.relight must be a list of strings"),
    ("evaluate", "relight = true", r"evaluate\.relight must be a list of strings"),
    ("evaluate", "novel = []", r"unknown key evaluate\.novel"),
]


@pytest.mark.parametrize("table,line,message", BAD_CONFIGS, ids=[c[1] for c in BAD_CONFIGS])
def test_bad_lighting_config(table, line, message, tmp_path):
    path = tmp_path / "invpbr.toml"
    estimate = '[[estimate]]\nkey = "sky.data"\n' + (line + "\n" if table == "estimate" else "")
    evaluate_table = f"[evaluate]\n{line}\n" if table == "evaluate" else ""
    path.write_text(estimate + evaluate_table)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": " + message):
        load_config(path)


@pytest.mark.parametrize("setting", [dict(model="sh"), dict(model="sun_sky"), dict(white_balance=0.1)])
@pytest.mark.parametrize("key", ["obj.bsdf.reflectance.value", "lamp.intensity.value"])
def test_envmap_settings_on_other_keys_are_errors(setting, key, tmp_path):
    _, params = scene_params(tmp_path)
    source = tmp_path / "invpbr.toml"
    with pytest.raises(ValueError, match=re.escape(f"{source}: estimate[0].key {key!r}: 'model' and "
                                                   "'white_balance' apply to environment maps only")):
        resolve_parameters(params, [EstimateConfig(key=key, **setting)], source=source)
