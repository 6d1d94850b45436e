"""Radiance fields in Mitsuba's render calls: :class:`FieldIntegrator`, the
integrator a problem with a ``[field]`` renders its views with (start and
final renders, held-out views, gradient images' primal renders), so that
the loop, the evaluation and the report treat a field like any other
estimate. The volume rendering itself is :mod:`invpbr.estimates.volume`
(the field's own step strategy and ``invpbr view`` use it directly).
"""

from __future__ import annotations


def field_integrator(estimate):
    """A Mitsuba integrator whose ``render`` draws ``estimate``'s field (its
    current latents) as seen by the sensor; primal only: a field's gradients
    come from its own step strategy, not from ``mi.render``."""
    import mitsuba as mi

    class FieldIntegrator(mi.SamplingIntegrator):
        def __init__(self):
            super().__init__(mi.Properties())

        def render(self, scene, sensor, seed=0, spp=0, develop=True, evaluate=True):
            if isinstance(sensor, int):
                sensor = scene.sensors()[sensor]
            image = estimate.render_sensor(sensor, int(spp) or 1)
            return mi.TensorXf(image)

        def to_string(self):
            return "FieldIntegrator[volume rendering of a radiance field]"

    return FieldIntegrator()
