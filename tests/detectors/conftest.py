"""Fixtures for detector tests: evidence frames built in the SPEC §4 schemas, and a check
that every evidence reference of a finding selects rows that exist."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from mldebug_ray import schema
from mldebug_ray.detectors.base import RunEvidence
from mldebug_ray.findings import Finding

RUN_ID = "sweep/run-0"


def _frame(table: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    if not rows:
        return schema.empty(table)
    columns = schema.schema_of(table)
    used = {k: columns[k] for row in rows for k in row}
    return schema.validate(table, pl.DataFrame(rows, schema=used))


def build_evidence(
    metrics: list[tuple] | None = None,
    *,
    params: dict[str, Any] | None = None,
    runs: list[dict[str, Any]] | None = None,
    checkpoints: list[dict[str, Any]] | None = None,
    layers: list[dict[str, Any]] | None = None,
    run_id: str = RUN_ID,
) -> RunEvidence:
    """metrics: (step, key, value) or (step, key, value, split) tuples; params: key -> value."""
    metric_rows = []
    for item in metrics or []:
        step, key, value = item[:3]
        metric_rows.append({"run_id": run_id, "step": step, "key": key, "value": float(value), "split": item[3] if len(item) > 3 else None})
    param_rows = []
    for key, value in (params or {}).items():
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        param_rows.append({"run_id": run_id, "key": key, "value": str(value), "value_num": number})
    return RunEvidence(
        run_id=run_id,
        runs=_frame("runs", [{"run_id": run_id, **r} for r in runs or []]),
        params=_frame("params", param_rows),
        metrics=_frame("metrics", metric_rows),
        checkpoints=_frame("checkpoints", [{"run_id": run_id, **r} for r in checkpoints or []]),
        layers=_frame("layers", [{"run_id": run_id, **r} for r in layers or []]),
    )


def series_rows(values, key: str = "loss", *, start: int = 0, every: int = 1, split: str | None = None) -> list[tuple]:
    """Metric tuples for one key at steps start, start+every, ..."""
    return [(start + i * every, key, float(v), split) for i, v in enumerate(values)]


def assert_findings_well_formed(ev: RunEvidence, findings: list[Finding]) -> None:
    """Every reference selects at least one existing row; fix/impact/verification are filled."""
    for f in findings:
        assert f.run_id == ev.run_id
        assert f.fix and f.expected_impact and f.verify_by, f
        for ref in f.evidence:
            frame = ev.table(ref.table)
            for column, value in ref.where.items():
                frame = frame.filter(pl.col(column) == value)
            assert frame.height >= 1, f"{f.detector}: evidence {ref.table} {ref.where} selects no row"


@pytest.fixture
def make_ev():
    return build_evidence


@pytest.fixture
def rows():
    return series_rows


@pytest.fixture
def well_formed():
    return assert_findings_well_formed
