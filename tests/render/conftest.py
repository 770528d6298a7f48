"""Fixtures of the renderer tests (the builders live in render_fixtures.py so test modules can import them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from render_fixtures import build_rich_out_dir


@pytest.fixture(scope="session")
def rich_out(tmp_path_factory) -> tuple[Path, dict]:
    """A synthetic out_dir with every table a report can show, and its diagnosis."""
    out = tmp_path_factory.mktemp("rich") / "out"
    diagnosis = build_rich_out_dir(out)
    return out, diagnosis
