"""What is estimated: one module per kind of unknown."""

from .base import Parameter, parameter_error, resample_texture, resolve_parameters

__all__ = ["Parameter", "parameter_error", "resample_texture", "resolve_parameters"]
