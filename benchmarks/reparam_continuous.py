"""Why prb_reparam was retired: image-sum derivatives of two continuous parameters
(a diffuse plane's albedo, a GGX roughness; a sphere on the plane under a constant sky,
32x32, max_depth 3) by prb, prb_projective and prb_reparam against central finite
differences of ``path`` (1024 spp).

prb_reparam no longer exists in invpbr; to rerun this, check out the commit before its
removal (``git show 20ea492:invpbr/render/reparam.py``) into invpbr/render/reparam.py.
Without it, the prb and prb_projective rows still run.
"""
import numpy as np
import invpbr
import mitsuba as mi, drjit as dr
mi.set_variant('llvm_ad_rgb')
try:
    from invpbr.render import reparam  # registers prb_reparam (only in old checkouts)
    reparam.register()
    INTEGRATORS = ('prb', 'prb_projective', 'prb_reparam')
except ImportError:
    INTEGRATORS = ('prb', 'prb_projective')
def scene(bsdf):
    return mi.load_dict({'type': 'scene',
        'sensor': {'type': 'perspective', 'fov': 40, 'to_world': mi.ScalarTransform4f().look_at(origin=[0, 2, 3], target=[0, 0, 0], up=[0, 1, 0]),
                   'film': {'type': 'hdrfilm', 'width': 32, 'height': 32, 'rfilter': {'type': 'box'}}},
        'env': {'type': 'constant', 'radiance': {'type': 'rgb', 'value': 1.0}},
        'plane': {'type': 'rectangle', 'to_world': mi.ScalarTransform4f().rotate([1, 0, 0], -90).scale(1.5), 'bsdf': bsdf},
        'ball': {'type': 'sphere', 'center': [0, 0.5, 0], 'radius': 0.5, 'bsdf': {'type': 'diffuse'}}})
cases = {'diffuse albedo': ({'type': 'diffuse', 'reflectance': {'type': 'rgb', 'value': 0.5}}, 'plane.bsdf.reflectance.value', 0.05),
         'ggx roughness': ({'type': 'roughconductor', 'distribution': 'ggx', 'alpha': 0.3}, 'plane.bsdf.alpha.value', 0.02)}
for name, (bsdf, key, eps) in cases.items():
    sc = scene(bsdf); p = mi.traverse(sc)
    base = type(p[key])(p[key])
    out = {}
    for integ in INTEGRATORS:
        it = mi.load_dict({'type': integ, 'max_depth': 3})
        gs = []
        for seed in range(2):
            x = type(base)(base); dr.enable_grad(x); p[key] = x; p.update()
            img = mi.render(sc, p, integrator=it, spp=64, seed=seed)
            dr.backward(dr.sum(img, axis=None))
            gs.append(float(np.sum(dr.grad(x))))
            p[key] = type(base)(base); p.update()
        out[integ] = np.mean(gs)
    path = mi.load_dict({'type': 'path', 'max_depth': 3})
    def render(v):
        p[key] = v; p.update()
        return np.array(mi.render(sc, p, integrator=path, spp=1024, seed=7)).sum()
    fd = (render(base + eps) - render(base - eps)) / (2 * eps)
    p[key] = base; p.update()
    nc = 1 if np.ndim(np.array(base)) == 0 or np.size(np.array(base)) == 1 else np.size(np.array(base))
    print(name, 'FD', round(fd, 2), {k: (round(v, 2), f'{100*abs(v-fd)/abs(fd):.0f}% off') for k, v in out.items()})
