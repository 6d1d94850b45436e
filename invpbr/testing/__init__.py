"""Tooling for tests, benchmarks and scene generation: procedural assets and
standard discontinuity cases. The library never imports this package."""
