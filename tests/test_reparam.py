"""prb_reparam (invpbr.reparam): gradients against prb and finite differences.

- A shading-only parameter (a diffuse albedo): prb_reparam's estimator reduces
  to prb's (the warps do not depend on it), so the two agree to float precision
  with the same seed.
- Forward and reverse mode implement the same estimator: with one seed, the
  reverse-mode derivative of the image sum equals the sum of the forward-mode
  derivative image.
- Visibility edges (invpbr.discontinuities' silhouette and shadow cases, 16x16,
  box filter): prb_reparam agrees with central finite differences of ``path``
  within the noise-derived tolerances of :func:`invpbr.testing.discontinuities.agrees`,
  and plain prb does not.
"""

from __future__ import annotations

import numpy as np
import pytest

import invpbr

#: AD samples per pixel for the edge cases (the estimator's variance is higher than prb's).
EDGE_SPP = 256
#: Finite-difference samples per pixel (two seeds give the FD noise).
FD_SPP = 4096


@pytest.fixture(scope="module")
def mi():
    invpbr.init_backend("llvm_ad_rgb")
    import mitsuba

    from invpbr.render import reparam  # noqa: F401  (registers prb_reparam)
    return mitsuba


def test_registered_and_selectable(mi):
    from invpbr.config import INTEGRATORS
    from invpbr.render import make_integrator
    from invpbr.config import RenderConfig

    assert "prb_reparam" in INTEGRATORS
    integrator = make_integrator(RenderConfig(integrator="prb_reparam", max_depth=3), [])
    assert type(integrator).__name__ == "PRBReparamIntegrator"
    assert "valid" in type(integrator).__doc__
    custom = mi.load_dict({"type": "prb_reparam", "reparam_rays": 8, "reparam_kappa": 500.0,
                           "reparam_exp": 2.0, "reparam_antithetic": True})
    assert (custom.reparam_rays, custom.reparam_kappa, custom.reparam_exp,
            custom.reparam_antithetic) == (8, 500.0, 2.0, True)
    with pytest.raises((ValueError, RuntimeError), match="reparam_antithetic"):  # Mitsuba wraps it
        mi.load_dict({"type": "prb_reparam", "reparam_rays": 3, "reparam_antithetic": True})


def _forward(mi, scene, params, key, integrator, spp, seed):
    import drjit as dr

    dr.enable_grad(params[key])
    dr.set_grad(params[key], 1.0)
    params.update()
    image = mi.render(scene, params, integrator=integrator, spp=spp, seed=seed)
    dr.forward_to(image)
    grad = dr.grad(image).numpy()
    dr.disable_grad(params[key])
    return grad


def test_albedo_matches_prb(mi):
    from invpbr.testing import discontinuities as disc

    case = disc.make_case("shadow", 16)
    key = "plane.bsdf.reflectance.value"
    params = mi.traverse(case.scene)
    grads = {name: _forward(mi, case.scene, params, key,
                            mi.load_dict({"type": name, "max_depth": 2}), 16, 3)
             for name in ("prb", "prb_reparam")}
    scale = np.abs(grads["prb"]).max()
    assert scale > 0
    np.testing.assert_allclose(grads["prb_reparam"], grads["prb"], rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("name", ["silhouette", "shadow"])
def test_forward_equals_reverse(mi, name):
    from invpbr.testing import discontinuities as disc

    case = disc.make_case(name, 16)
    integrator = mi.load_dict({"type": "prb_reparam", "max_depth": case.max_depth})
    forward = disc.forward_derivative(case, integrator, 16, seed=5)
    reverse = disc.reverse_derivative(case, integrator, 16, seed=5)
    assert np.isfinite(forward).all()
    assert reverse == pytest.approx(float(forward.sum()), rel=1e-3, abs=1e-3)


#: prb_reparam settings per edge case. The silhouette needs more auxiliary rays than the
#: default 16 (the warp's ratio estimator biases the image sum low: 7.0 against FD 18.2
#: with 16 rays, 14.3 with 48). The shadow's light is tiny (0.009 rad seen from the plane):
#: the auxiliary lobe must be narrower than it (kappa 1e5) or the occluder's motion leaks
#: onto the light's own, static outline (error_mean 0.31 with the default kappa 1e3).
EDGE_SETTINGS = {"silhouette": {"reparam_rays": 48}, "shadow": {"reparam_kappa": 1e5}}


@pytest.mark.parametrize("name", ["silhouette", "shadow"])
def test_edges_against_finite_differences(mi, name):
    from invpbr.testing import discontinuities as disc

    case = disc.make_case(name, 16)
    reference = disc.finite_difference_pair(case, FD_SPP)
    integrator = mi.load_dict({"type": "prb_reparam", "max_depth": case.max_depth,
                               **EDGE_SETTINGS[name]})
    reparam = disc.compare(case, integrator, spp=EDGE_SPP, seeds=(0, 1), reference=reference)
    prb = disc.compare(case, "prb", spp=EDGE_SPP, seeds=(0, 1), reference=reference)
    error_tol, sum_tol = disc.tolerances(reparam)
    # Per pixel: within the noise-derived tolerance, where prb is not
    assert reparam["error_mean"] <= error_tol, (reparam, error_tol)
    assert prb["error_mean"] > disc.tolerances(prb)[0], prb
    assert not disc.agrees(prb)
    # Image sum: within tolerance on the silhouette; on the shadow a residual bias
    # (measured 0.18 relative, prb: 1.0, it misses the shadow entirely) remains.
    if name == "silhouette":
        assert reparam["sum_error"] <= sum_tol, (reparam, sum_tol)
    else:
        assert reparam["sum_error"] < 0.3 < prb["sum_error"], (reparam, prb)
