"""Synthetic sweeps written as evidence parts (SPEC §4 tables) into an out_dir, for the sweep detector tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import SweepTables
from mldebug_ray.evidence.check import reference_holds
from mldebug_ray.evidence.io import write_table
from mldebug_ray.findings import EvidenceRef, Finding, findings_frame


@dataclass
class Run:
    """One synthetic run: its params, a validation curve, optional train curve and run-level findings."""

    run_id: str
    params: dict[str, Any] = field(default_factory=dict)
    val: list[float] | None = None
    val_every: int = 100
    train: list[float] | None = None
    status: str = "ok"
    findings: list[tuple[str, str, int]] = field(default_factory=list)  # (kind, severity, onset_step)
    val_key: str = "val/loss"
    train_key: str = "train/loss"


def curve(final: float, n: int = 10, start: float | None = None) -> list[float]:
    """A decaying loss curve from `start` (default 3x final) to exactly `final` at its last point."""
    start = 3 * final if start is None else start
    t = np.linspace(0, 1, n)
    return list(final + (start - final) * np.exp(-5 * t) - (start - final) * np.exp(-5.0) * t)


def write_sweep(out_dir: Path, runs: list[Run]) -> SweepTables:
    """Write `runs` as one part per table, the way the pipeline's parts look, and return the tables."""
    run_rows, param_rows, metric_rows, finding_rows = [], [], [], []
    for r in runs:
        n_val = len(r.val or [])
        run_rows.append({"run_id": r.run_id, "path": f"/sweep/{r.run_id}", "source_format": "synthetic", "status": r.status,
                         "reason": None, "n_steps": n_val * r.val_every, "last_step": n_val * r.val_every})
        for k, v in r.params.items():
            num = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
            param_rows.append({"run_id": r.run_id, "key": k, "value": str(v), "value_num": num})
        for i, v in enumerate(r.val or []):
            metric_rows.append({"run_id": r.run_id, "step": (i + 1) * r.val_every, "key": r.val_key, "value": float(v), "split": "val"})
        for i, v in enumerate(r.train or []):
            metric_rows.append({"run_id": r.run_id, "step": i + 1, "key": r.train_key, "value": float(v), "split": "train"})
        for j, (kind, severity, onset) in enumerate(r.findings):
            finding_rows.append(
                Finding(kind=kind, severity=severity, confidence=0.9, summary=f"{kind} in {r.run_id}",
                        evidence=(EvidenceRef("runs", {"run_id": r.run_id}),), detector=kind, run_id=r.run_id,
                        onset_step=onset, finding_id=f"{r.run_id}#{kind}#{j}")
            )
    write_table(out_dir, "runs", pl.DataFrame(run_rows), "all")
    if param_rows:
        write_table(out_dir, "params", pl.DataFrame(param_rows, schema={"run_id": pl.String, "key": pl.String, "value": pl.String, "value_num": pl.Float64}), "all")
    if metric_rows:
        write_table(out_dir, "metrics", pl.DataFrame(metric_rows), "all")
    if finding_rows:
        write_table(out_dir, "findings", findings_frame(finding_rows), "all")
    return SweepTables(out_dir)


def assert_evidence_holds(out_dir: Path, findings: list[Finding]) -> None:
    """Every evidence reference selects an existing row (and its value, where it has one)."""
    for f in findings:
        assert f.evidence, f
        assert f.fix and f.expected_impact and f.verify_by, f
        for ref in f.evidence:
            ok, why = reference_holds(out_dir, ref.to_json() | {"value": ref.value})
            assert ok, f"{f.detector}: {why}"
