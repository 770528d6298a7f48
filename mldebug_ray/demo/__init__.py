"""The embedded demo sweep (SPEC §6): small real CPU training runs with injected faults."""

from __future__ import annotations

__all__ = ["build_demo_sweep"]


def __getattr__(name: str):
    # Lazy, so `python -m mldebug_ray.demo.build` does not import build.py twice.
    if name == "build_demo_sweep":
        from mldebug_ray.demo.build import build_demo_sweep

        return build_demo_sweep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
