"""Gradients: forward-mode AD against central finite differences.

One tiny scene per material parameter kind that invpbr claims to estimate: a
sphere on a textured floor, lit by a point light and a constant environment,
rendered with prb (the integrator ``auto`` picks for materials). Each case
must agree with finite differences: the derivative of the image sum within a
few percent, and the per-pixel error no larger than the finite difference's
own noise allows.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import invpbr
from invpbr.optimization.gradcheck import check_gradients, format_checks, relative_errors

from conftest import checker

SCENE = """<scene version="3.0.0">
  <emitter type="constant"><rgb name="radiance" value="0.5"/></emitter>
  <emitter type="point"><point name="position" x="2" y="3" z="4"/><rgb name="intensity" value="25"/></emitter>
  <shape type="sphere" id="obj">
    {bsdf}
  </shape>
  <shape type="rectangle" id="floor">
    <transform name="to_world"><scale value="4"/><rotate x="1" angle="-90"/><translate y="-1"/></transform>
    <bsdf type="diffuse"><texture type="bitmap" name="reflectance"><string name="filename" value="checker.png"/></texture></bsdf>
  </shape>
  <sensor type="perspective" id="front">
    <transform name="to_world"><lookat origin="0,1.5,5" target="0,-0.3,0" up="0,1,0"/></transform>
    <film type="hdrfilm"><integer name="width" value="24"/><integer name="height" value="24"/></film>
  </sensor>
</scene>
"""

BITMAP = ('<texture type="bitmap" name="{name}"><string name="filename" value="{file}"/>'
          '</texture>')

# (case id, BSDF XML, parameter key, finite-difference epsilon)
CASES = [
    ("diffuse.reflectance", '<bsdf type="diffuse"><rgb name="reflectance" value="0.4, 0.5, 0.6"/></bsdf>',
     "obj.bsdf.reflectance.value", 0.02),
    ("principled.base_color", '<bsdf type="principled"><rgb name="base_color" value="0.6, 0.3, 0.2"/>'
     '<float name="roughness" value="0.4"/></bsdf>', "obj.bsdf.base_color.value", 0.02),
    ("principled.roughness", '<bsdf type="principled"><rgb name="base_color" value="0.6, 0.3, 0.2"/>'
     '<float name="roughness" value="0.4"/></bsdf>', "obj.bsdf.roughness.value", 0.02),
    ("principled.metallic", '<bsdf type="principled"><rgb name="base_color" value="0.6, 0.3, 0.2"/>'
     '<float name="roughness" value="0.4"/><float name="metallic" value="0.3"/></bsdf>',
     "obj.bsdf.metallic.value", 0.02),
    ("principled.specular", '<bsdf type="principled"><rgb name="base_color" value="0.6, 0.3, 0.2"/>'
     '<float name="roughness" value="0.3"/><float name="specular" value="0.5"/></bsdf>',
     "obj.bsdf.specular", 0.05),
    ("roughconductor.alpha", '<bsdf type="roughconductor"><float name="alpha" value="0.3"/></bsdf>',
     "obj.bsdf.alpha.value", 0.02),
    ("roughplastic.alpha", '<bsdf type="roughplastic"><float name="alpha" value="0.3"/>'
     '<rgb name="diffuse_reflectance" value="0.5, 0.4, 0.3"/></bsdf>', "obj.bsdf.alpha", 0.02),
    ("diffuse.texture_texel", '<bsdf type="diffuse">' + BITMAP.format(name="reflectance", file="checker.png")
     + "</bsdf>", "obj.bsdf.reflectance.data", 0.05),
    ("principled.roughness_texel", '<bsdf type="principled"><rgb name="base_color" value="0.6, 0.3, 0.2"/>'
     + BITMAP.format(name="roughness", file="rough.png") + '</bsdf>', "obj.bsdf.roughness.data", 0.05),
]


def write_case(folder, bsdf: str, key: str, *, truth_bsdf: str | None = None, toml: str = ""):
    folder.mkdir(parents=True, exist_ok=True)
    invpbr.init_backend()
    invpbr.capture.images.save_image(folder / "checker.png", checker())
    invpbr.capture.images.save_image(folder / "rough.png", np.full((8, 8, 1), 0.6, np.float32))
    (folder / "scene.xml").write_text(SCENE.format(bsdf=bsdf))
    (folder / "invpbr.toml").write_text(
        toml or f'[render]\nmax_depth = 3\n[[estimate]]\nkey = "{key}"\n')
    if truth_bsdf is None:
        invpbr.render_photos(folder, spp=4, source="scene.xml")  # photos only satisfy the loader
    else:
        (folder / "truth.xml").write_text(SCENE.format(bsdf=truth_bsdf))
        invpbr.render_photos(folder, spp=256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return invpbr.load_problem(folder)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_gradient_matches_finite_differences(case, tmp_path):
    name, bsdf, key, epsilon = case
    problem = write_case(tmp_path / name, bsdf, key)
    assert problem.parameters[0].key == key
    checks = check_gradients(problem, spp=1024, fd_spp=4096, epsilon=epsilon)
    print(format_checks(checks))
    for c in checks:
        assert abs(c.fd_sum) > 1e-3, f"{name}: the parameter does not change the image"
        if name == "roughplastic.alpha":
            # Mitsuba 3.9.1 computes roughplastic's transmittance tables from alpha
            # in scalar code: its gradient is far off, the check must show it, and
            # invpbr must estimate alpha by finite differences instead.
            assert c.reverse_error > 0.3 and c.sum_error > 0.3, format_checks([c])
            assert problem.parameters[0].gradient == "fd"
            continue
        # Reverse mode (what the optimizer uses) is right for every kind.
        assert c.reverse_error < 0.05 + c.fd_noise, format_checks([c])
        if name == "principled.specular":
            # Mitsuba 3.9.1 drops forward-mode derivatives of eta, which the
            # principled BSDF derives from `specular`: the check must say so.
            assert c.forward_lost and c.ad_sum == 0.0, format_checks([c])
            continue
        assert c.sum_error < 0.05 + c.fd_noise, format_checks([c])
        assert c.error_mean < 0.05 + 1.5 * c.fd_noise, format_checks([c])


def test_check_rejects_a_wrong_gradient():
    rng = np.random.default_rng(0)
    fd = rng.normal(size=(8, 8, 3))
    assert relative_errors(fd, fd) == (0.0, 0.0)
    mean, worst = relative_errors(1.2 * fd, fd)
    assert mean > 0.1 and worst > 0.15
    assert relative_errors(np.ones((2, 2, 3)), np.zeros((2, 2, 3)))[0] == float("inf")


def test_texture_from_8bit_png_is_differentiable(tmp_path):
    """Mitsuba stores 8-bit bitmaps as integers; invpbr loads them as floats."""
    import drjit as dr

    problem = write_case(tmp_path / "png", CASES[-2][1], "obj.bsdf.reflectance.data")
    value = problem.params["obj.bsdf.reflectance.data"]
    assert dr.is_float_v(value) and dr.is_diff_v(value)
    # The sRGB PNG is decoded to the linear values it was written from.
    assert np.allclose(np.array(value), checker(), atol=0.01)


ROUGHPLASTIC = ('<bsdf type="roughplastic"><float name="alpha" value="{}"/>'
                '<rgb name="diffuse_reflectance" value="0.5, 0.4, 0.3"/></bsdf>')


def test_roughplastic_alpha_is_estimated_with_finite_differences(tmp_path):
    """Where Mitsuba's gradient is biased, `gradient = "auto"` switches to finite
    differences, with a warning, and recovers the truth far more closely."""
    toml = ('[render]\nspp = 16\nmax_depth = 3\n[[estimate]]\nkey = "obj.bsdf.alpha"\n'
            'bounds = [0.01, 1.0]\ngradient = "{}"\n[optimize]\niterations = 120\nloss = "l2"\n')
    errors = {}
    for gradient in ("auto", "ad"):
        folder = tmp_path / gradient
        write_case(folder, ROUGHPLASTIC.format(0.5), "obj.bsdf.alpha",
                   truth_bsdf=ROUGHPLASTIC.format(0.15), toml=toml.format(gradient))
        with pytest.warns(UserWarning, match=r"invpbr.toml: estimate\[0\] 'obj.bsdf.alpha': "
                                             r"Mitsuba 3.9.1 computes roughplastic"):
            problem = invpbr.load_problem(folder)
        assert problem.parameters[0].gradient == ("fd" if gradient == "auto" else "ad")
        result = invpbr.optimize(problem, progress=False)
        errors[gradient] = result.errors["obj.bsdf.alpha"]
    print(errors)
    assert errors["auto"] < 0.006
    assert errors["auto"] < 0.33 * errors["ad"]


def test_fd_gradient_refuses_textures(tmp_path):
    folder = tmp_path / "tex"
    bsdf = CASES[-2][1]
    toml = '[[estimate]]\nkey = "obj.bsdf.reflectance.data"\ngradient = "fd"\n'
    with pytest.raises(ValueError, match=r"invpbr.toml: estimate\[0\].key 'obj.bsdf.reflectance.data': "
                                         r"gradient = \"fd\" is for scalars"):
        write_case(folder, bsdf, "obj.bsdf.reflectance.data", toml=toml)
