"""mldebug_ray: a distributed debugger for ML training sweeps (SPEC §8 Python API)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["read_run", "analyze", "__version__"]


def read_run(path, readers=None):
    """One run directory read with the same readers, no Ray (SPEC §8); `readers`: a config.ReadersConfig."""
    from mldebug_ray.api import read_run as _read_run

    return _read_run(path, readers)


def analyze(roots, out_dir=None, **overrides):
    """The whole pipeline over `roots`; returns the paths it wrote (SPEC §8)."""
    from mldebug_ray.api import analyze as _analyze

    return _analyze(roots, out_dir=out_dir, **overrides)
