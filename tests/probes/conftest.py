"""Probe-test fixtures: GPU tests skipped (never silently passed) without CUDA; tiny models and checkpoints on disk."""

from __future__ import annotations

import pytest


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` tests are reported as skipped, with the reason, when there is no CUDA device."""
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords and str(item.fspath).startswith(str(config.rootpath / "tests" / "probes")):
            item.add_marker(skip)


@pytest.fixture
def cuda():
    import torch

    return torch.device("cuda", 0)
