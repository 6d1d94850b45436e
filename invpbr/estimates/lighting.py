"""Lighting: environment-map layouts and low-order models, albedo-light scale.

Mitsuba's ``envmap`` stores its lat-long image as a (H, W + 2, 3) tensor: the
W real columns plus one halo column at each side (copies of the opposite
edge, so bilinear lookups wrap in phi). invpbr's envmap estimates and errors
use the real (H, W, 3) texels; :func:`envmap_with_halo` adds the halo back.

Low-order models for few views (``model`` in an ``[[estimate]]`` table):

- ``sh``: real spherical harmonics up to band ``L`` per colour channel,
  ``(L + 1)^2`` coefficients each, radiance clamped at zero.
- ``sun_sky``: ``exp(a + b y) + I exp((cos(angle to sun) - 1) / w^2)``: a sky
  varying with height ``y`` (per channel ``a``, ``b``), and a sun lobe of
  colour ``I`` (log-parametrized), direction (two angles) and width ``w``.
"""

from __future__ import annotations

import math

import numpy as np

#: Default total-variation weight (on log radiance) of estimated envmap texels.
#: 0.005: on the shipped envmap scenes (l2 and l1 losses, 2 to 8 views) it gave
#: 25-50 % smaller texel errors and 0.5-5 dB better held-out views than 0.02,
#: which flattens the sun and the horizon; 0 lets unconstrained texels run
#: off (4-6x the error).
ENVMAP_TV = 0.005

#: Keys whose names mark an albedo-like parameter (for the scale-invariant error).
ALBEDO_NAMES = ("reflectance", "base_color", "diffuse_reflectance", "albedo", "specular_reflectance")


def envmap_texels(data: np.ndarray) -> np.ndarray:
    """The real texels (H, W, 3) of Mitsuba envmap data (H, W + 2, 3)."""
    return np.asarray(data)[:, 1:-1, :]


def envmap_with_halo(texels):
    """Mitsuba envmap data (H, W + 2, 3) from texels (H, W, 3).

    Works on numpy arrays and on Dr.Jit tensors (differentiably).
    """
    if isinstance(texels, np.ndarray):
        return np.concatenate([texels[:, -1:], texels, texels[:, :1]], axis=1)
    import drjit as dr

    return dr.concat([texels[:, -1:, :], texels, texels[:, :1, :]], axis=1)


def envmap_directions(width: int, height: int, *, supersample: int = 1) -> np.ndarray:
    """World directions of the pixels of a lat-long map in Mitsuba's ``envmap`` convention.

    Mitsuba's ``envmap`` (3.9) looks a direction up at
    ``u = atan2(x, -z) / (2 pi)``, ``v = acos(y) / pi`` and places the centres of the
    columns at ``u = (col + 0.5) / W`` (wrapping around) but the centres of the rows at
    ``v = row / (H - 1)``: the first row is exactly the north pole (+Y), the last row
    exactly the south pole. The pixel at ``(u, v)`` looks along
    ``(sin t sin p, cos t, -sin t cos p)`` with ``t = v pi``, ``p = u 2 pi``, so ``u = 0``
    is -Z, ``u = 0.25`` is +X and ``u = 0.5`` is +Z (for the default ``to_world``).

    Args:
        width: Map width W, pixels.
        height: Map height H >= 2, pixels.
        supersample: Sub-pixel samples per axis, ``s``, spread over the pixel's footprint
            (1: pixel centres only). Rows at the poles only cover their half towards the
            equator.

    Returns:
        Unit directions, (H, W, s * s, 3) float64.

    Raises:
        ValueError: If ``width < 1``, ``height < 2`` or ``supersample < 1``.
    """
    if width < 1 or height < 2 or supersample < 1:
        raise ValueError(
            f"envmap_directions(): need width >= 1, height >= 2, supersample >= 1, got "
            f"{width}, {height}, {supersample}"
        )
    s = int(supersample)
    offsets = (np.arange(s) + 0.5) / s - 0.5
    ou, ov = np.meshgrid(offsets, offsets, indexing="ij")
    u = (np.arange(width)[None, :, None] + 0.5 + ou.ravel()[None, None, :]) / width
    v = (np.arange(height)[:, None, None] + ov.ravel()[None, None, :]) / (height - 1)
    u, v = np.broadcast_arrays(u, np.clip(v, 0.0, 1.0))
    theta, phi = v * np.pi, u * 2.0 * np.pi
    st = np.sin(theta)
    return np.stack([st * np.sin(phi), np.cos(theta), -st * np.cos(phi)], axis=-1)


def sh_basis(directions: np.ndarray, order: int) -> np.ndarray:
    """Real spherical harmonics up to band ``order`` at unit ``directions``.

    Args:
        directions: (..., 3) unit vectors.
        order: highest band L.

    Returns:
        (..., (L + 1)^2) values, orthonormal over the sphere.
    """
    from scipy.special import sph_harm_y

    d = np.asarray(directions, dtype=np.float64)
    theta = np.arccos(np.clip(d[..., 1], -1, 1))  # polar angle from +Y (up)
    phi = np.arctan2(d[..., 0], d[..., 2])
    out = []
    for band in range(order + 1):
        for m in range(-band, band + 1):
            y = sph_harm_y(band, abs(m), theta, phi)
            if m < 0:
                out.append(math.sqrt(2) * (-1) ** m * y.imag)
            elif m == 0:
                out.append(y.real)
            else:
                out.append(math.sqrt(2) * (-1) ** m * y.real)
    return np.stack(out, axis=-1)


def texel_solid_angles(height: int, width: int) -> np.ndarray:
    """Solid angle of each lat-long texel in Mitsuba's layout, (H, W)."""
    v = np.clip((np.arange(height + 1) - 0.5) / (height - 1), 0, 1)
    band = np.cos(v[:-1] * np.pi) - np.cos(v[1:] * np.pi)
    return np.repeat((band * 2 * np.pi / width)[:, None], width, axis=1)


class EnvmapModel:
    """A low-order envmap model: latent vector -> texels (H, W, 3), on Dr.Jit.

    Args:
        kind: ``sh`` or ``sun_sky``.
        height, width: texel grid.
        sh_order: band of the ``sh`` model.
    """

    def __init__(self, kind: str, height: int, width: int, *, sh_order: int = 2):
        self.kind = kind
        self.height, self.width = height, width
        self.directions = envmap_directions(width, height)[:, :, 0, :]  # (H, W, 3)
        if kind == "sh":
            self.basis = sh_basis(self.directions, sh_order).reshape(height * width, -1)
        elif kind != "sun_sky":
            raise ValueError(f"EnvmapModel(): unknown model {kind!r}; expected 'sh' or 'sun_sky'")

    @property
    def size(self) -> int:
        return 3 * self.basis.shape[1] if self.kind == "sh" else 12

    def fit(self, texels: np.ndarray) -> np.ndarray:
        """Latent vector approximating ``texels`` (H, W, 3), as a start value."""
        texels = np.asarray(texels, dtype=np.float64).reshape(-1, 3)
        if self.kind == "sh":
            w = texel_solid_angles(self.height, self.width).reshape(-1, 1)
            coeffs, *_ = np.linalg.lstsq(self.basis * np.sqrt(w), texels * np.sqrt(w), rcond=None)
            return coeffs.T.reshape(-1).astype(np.float32)  # channel-major
        y = self.directions.reshape(-1, 3)[:, 1]
        latent = np.zeros(12, np.float32)
        for c in range(3):
            logs = np.log(np.maximum(texels[:, c], 1e-4))
            b, a = np.polyfit(y, logs, 1)
            latent[c], latent[3 + c] = a, b
        brightest = int(np.argmax(texels.sum(axis=1)))
        d = self.directions.reshape(-1, 3)[brightest]
        latent[6:9] = np.log(0.1)  # a dim sun to start with
        latent[9] = np.arccos(np.clip(d[1], -1, 1))
        latent[10] = np.arctan2(d[0], d[2])
        latent[11] = np.log(0.15)
        return latent

    def texels(self, latent):
        """Texels (H, W, 3) as a Dr.Jit tensor, differentiable in ``latent`` (mi.Float)."""
        import drjit as dr
        import mitsuba as mi

        n = self.height * self.width
        if self.kind == "sh":
            k = self.basis.shape[1]
            basis = [mi.Float(self.basis[:, j].astype(np.float32)) for j in range(k)]
            channels = []
            for c in range(3):
                value = mi.Float(0.0)
                for j in range(k):
                    value = value + basis[j] * dr.gather(mi.Float, latent, c * k + j)
                channels.append(dr.maximum(value, 0.0))
        else:
            d = self.directions.reshape(-1, 3).astype(np.float32)
            dx, dy, dz = (mi.Float(d[:, i]) for i in range(3))
            g = [dr.gather(mi.Float, latent, i) for i in range(12)]
            theta, phi, log_width = g[9], g[10], g[11]
            sx, sy, sz = dr.sin(theta) * dr.sin(phi), dr.cos(theta), dr.sin(theta) * dr.cos(phi)
            cosine = dx * sx + dy * sy + dz * sz
            lobe = dr.exp((cosine - 1.0) / dr.square(dr.exp(log_width)))
            channels = [dr.exp(g[c] + g[3 + c] * dy) + dr.exp(g[6 + c]) * lobe for c in range(3)]
        flat = dr.ravel(mi.Color3f(*channels))  # interleaved RGB
        return mi.TensorXf(flat, (self.height, self.width, 3)) if n else None


def scale_invariant_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute error after the best per-channel scale of the estimate.

    As the Stanford-ORB benchmark reports albedo: each colour channel of the
    estimate is scaled by the least-squares factor that best matches the truth,
    which removes the albedo x light-intensity ambiguity.

    Args:
        estimate, truth: (..., C) arrays of the same shape (C channels last;
            a colour (3, 1) is treated as 3 channels of one value).
    """
    e = np.asarray(estimate, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if e.shape != t.shape:
        raise ValueError(f"scale_invariant_error(): shapes {e.shape} and {t.shape} differ")
    if e.ndim == 2 and e.shape[1] == 1:  # a colour from mi.traverse, (3, 1)
        e, t = e.T, t.T
    e2 = e.reshape(-1, e.shape[-1])
    t2 = t.reshape(-1, t.shape[-1])
    if e2.shape[0] == 1:  # one colour: a single scale (per-channel scales would fit exactly)
        s = float((e2 * t2).sum() / max((e2 * e2).sum(), 1e-12))
        return float(np.mean(np.abs(s * e2 - t2)))
    s = (e2 * t2).sum(axis=0) / np.maximum((e2 * e2).sum(axis=0), 1e-12)
    return float(np.mean(np.abs(e2 * s - t2)))


def is_albedo_key(key: str) -> bool:
    """Whether a parameter key names an albedo-like quantity."""
    parts = key.split(".")
    return any(name in parts for name in ALBEDO_NAMES)


#: Parameter names that only emitters have: the emitted radiance (area, constant),
#: intensity (point, spot) or irradiance (directional, projector). Mitsuba
#: 3.9.1 gives such a colour's key to its spectrum object (class
#: ``SRGBReflectanceSpectrum`` or ``UniformSpectrum``, not the emitter), and only
#: an area light's key has ``.emitter.`` in it, so the name is what tells.
EMITTER_NAMES = ("radiance", "intensity", "irradiance")


def is_light_key(key: str, node_class: str | None) -> bool:
    """Whether a parameter is an emitter's: any parameter of an environment map
    or other ``*Emitter`` class, anything under an area light (``.emitter.``),
    or the radiance, intensity or irradiance of any light (e.g. a point
    light's ``lamp.intensity.value``, whose node class is a spectrum)."""
    if (node_class or "").endswith("Emitter") or ".emitter." in key:
        return True
    parts = key.split(".")
    if len(parts) > 1 and parts[-1] in ("value", "data"):
        parts = parts[:-1]
    return len(parts) > 1 and parts[-1] in EMITTER_NAMES
