"""Reconstruction of an object from photos, masks and cameras alone: visual
hull, then shape, per-vertex material and environment lighting optimized
together; the result is a Mitsuba scene (``[reconstruct]`` in invpbr.toml).

``reconstruct(problem)`` runs the pipeline (:mod:`.pipeline`);
``save_reconstruction`` writes the result folder (:mod:`.output`).
"""

from .hull import HullError
from .pipeline import Reconstruction, reconstruct
from .output import save_reconstruction

__all__ = ["HullError", "Reconstruction", "reconstruct", "save_reconstruction"]
