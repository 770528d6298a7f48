"""Fixtures for the sweep detector tests: synthetic sweeps in a temporary out_dir (helpers in synthetic.py)."""

from __future__ import annotations

import pytest

from synthetic import assert_evidence_holds, write_sweep


@pytest.fixture
def sweep(tmp_path):
    def make(runs, name: str = "out"):
        """Write `runs` (synthetic.Run) under tmp_path/name and return its SweepTables."""
        return write_sweep(tmp_path / name, runs)

    return make


@pytest.fixture
def evidence_holds():
    return assert_evidence_holds
