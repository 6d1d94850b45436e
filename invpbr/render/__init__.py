"""Rendering: the integrator chosen from what is estimated (:mod:`.integrators`),
views one by one or batched (:mod:`.views`) and photos of synthetic scenes
(:mod:`.photos`)."""

from .integrators import choose_integrator_type, make_integrator, reuse_guiding
from .photos import render_clean, render_photos, simulate_capture
from .views import ViewSlots, make_batch_sensor, render_batch, render_view

__all__ = ["ViewSlots", "choose_integrator_type", "make_batch_sensor", "make_integrator",
           "render_batch", "render_clean", "render_photos", "render_view", "reuse_guiding",
           "simulate_capture"]
