"""A scene folder loaded into a :class:`Problem`: scene.xml (:mod:`.scene`),
photos, masks, truth and checks (:mod:`.folder`)."""

from .folder import Problem, View, check_folder, load_problem, match_photos
from .scene import load_scene

__all__ = ["Problem", "View", "check_folder", "load_problem", "load_scene", "match_photos"]
