"""What is estimated: one module per kind of unknown, all behind the protocol
of :mod:`.base` (:class:`Estimate`, :func:`register_kind`).

============  =================================================================
module        kind
============  =================================================================
values        scalars and colours (BSDF parameters, emitters' radiance)
textures      bitmap textures, coarse to fine, TV prior
envmaps       environment maps (texels or low-order models)
poses         rigid poses of meshes and analytic shapes (and area lights)
shapes        free meshes (large steps, remeshing)
cameras       camera poses, refined by moving the scene
gains         per-photo exposure and white balance (``[photos] gain``)
fields        radiance fields (``[field]``), rendered by :mod:`.volume`;
              the hash-grid model in :mod:`.field_hash`
============  =================================================================

Shared math: :mod:`.meshes` (rotations, mesh errors, remeshing, Mitsuba's
geometry traps) and :mod:`.lighting` (envmap layout and models, albedo x
light). A new kind is one new module here, registered with
:func:`register_kind`.
"""

from .base import (AUTO_KINDS, KINDS, Estimate, LatentStore, ResolveContext, implied_estimates,
                   kind_class, node_class, register_kind, resolve_estimates)
from .values import Value, parameter_error, resample_texture  # noqa: I001 (registration order)
from .textures import Texture
from .envmaps import Envmap
from .poses import Pose
from .shapes import Shape
from .cameras import Cameras
from .gains import GainsEstimate
from .fields import FieldEstimate
from .field_hash import HashFieldEstimate

#: The name the first wave used (``invpbr.params.resolve_parameters``).
resolve_parameters = resolve_estimates

__all__ = ["AUTO_KINDS", "KINDS", "Cameras", "Envmap", "Estimate", "FieldEstimate", "GainsEstimate",
           "HashFieldEstimate",
           "LatentStore", "Pose", "ResolveContext", "Shape", "Texture", "Value",
           "implied_estimates", "kind_class", "node_class", "parameter_error",
           "register_kind", "resample_texture", "resolve_estimates", "resolve_parameters"]
