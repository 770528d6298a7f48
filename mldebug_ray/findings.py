"""`Finding` and `EvidenceRef`: the one shape every detector returns (SPEC §4 `findings`, §5 kinds)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, get_args

import polars as pl

from mldebug_ray import schema

Kind = Literal[
    "nan_inf",
    "divergence",
    "loss_spike",
    "grad_norm_spike",
    "exploding_gradients",
    "vanishing_gradients",
    "plateau",
    "slow_convergence",
    "oscillation",
    "overfitting",
    "lr_schedule_anomaly",
    "loss_scale_collapse",
    "fp16_overflow",
    "dead_units",
    "saturated_activations",
    "architecture_imbalance",
    "mode_collapse",
    "nonfinite_weights",
    "update_ratio_anomaly",
    "memory_pressure",
    "eval_on_train",
    "data_leakage",
    "class_imbalance",
    "distribution_shift",
    "adversarial_fragility",
    "catastrophic_forgetting",
    "known_error",
    "run_incomplete",
    "seed_sensitivity",
    "hp_effect",
    "hp_instability_boundary",
    "ranking_inconsistency",
    "nondeterminism",
    # Added by a detector (SPEC §5 allows it): the recorded config lacks a seed or a data
    # version, so the run cannot be repeated (mldebug_ray/sweep/reproducibility.py).
    "reproducibility_gap",
    # Added by a detector: a probed checkpoint exceeds a deployment limit the user set in
    # probes.deploy (latency, parameters, bytes) (mldebug_ray/detectors/deployment_limit.py).
    "deployment_limit",
]
KINDS: tuple[str, ...] = get_args(Kind)

Severity = Literal["critical", "high", "medium", "low", "info"]
SEVERITIES: tuple[str, ...] = get_args(Severity)
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}  # 0 is worst

Scope = Literal["run", "sweep"]


@dataclass(frozen=True)
class EvidenceRef:
    """A pointer at rows of an evidence table: `where` holds the key columns that select them."""

    table: str
    where: Mapping[str, Any]
    value: float | None = None
    text: str = ""

    def __post_init__(self) -> None:
        if self.table not in schema.TABLES:
            raise ValueError(f"evidence table {self.table!r} is not one of {sorted(schema.TABLES)}")
        if not self.where:
            raise ValueError("evidence reference needs at least one key column in `where`")
        columns = schema.TABLES[self.table]
        unknown = [k for k in self.where if k not in columns]
        if unknown:
            raise ValueError(f"evidence on {self.table!r} selects by unknown column(s) {unknown}")
        object.__setattr__(self, "where", dict(self.where))
        if self.value is not None:
            object.__setattr__(self, "value", float(self.value))

    def to_row(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "where": json.dumps(self.where, sort_keys=True, default=str),
            "value": self.value,
            "text": self.text,
        }

    def to_json(self) -> dict[str, Any]:
        value = self.value
        if value is not None and not math.isfinite(value):
            value = str(value)  # JSON has no NaN/Inf; keep what was seen as text
        return {"table": self.table, "where": dict(self.where), "value": value, "text": self.text}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "EvidenceRef":
        return cls(row["table"], json.loads(row["where"]), row["value"], row["text"] or "")


@dataclass(frozen=True)
class Finding:
    """One thing a detector saw, with the rows that show it."""

    kind: Kind
    severity: Severity
    confidence: float
    summary: str
    evidence: tuple[EvidenceRef, ...]
    detector: str
    run_id: str | None = None
    scope: Scope = "run"
    run_ids: tuple[str, ...] = ()
    onset_step: int | None = None
    end_step: int | None = None
    fix: str = ""
    expected_impact: str = ""
    verify_by: str = ""
    finding_id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"finding kind {self.kind!r} is not in SPEC §5's list")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {SEVERITIES}")
        if not (0.0 <= float(self.confidence) <= 1.0) or math.isnan(float(self.confidence)):
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence}")
        if self.scope not in ("run", "sweep"):
            raise ValueError(f"scope must be 'run' or 'sweep', got {self.scope!r}")
        if self.scope == "run" and not self.run_id:
            raise ValueError("a run-scope finding needs run_id")
        if not self.evidence:
            raise ValueError(f"{self.detector}: a finding needs at least one evidence reference")
        object.__setattr__(self, "evidence", tuple(self.evidence))
        object.__setattr__(self, "run_ids", tuple(self.run_ids))
        object.__setattr__(self, "confidence", round(float(self.confidence), 4))
        for name in ("onset_step", "end_step"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, int(value))
        if not self.finding_id:
            basis = f"{self.detector}|{self.kind}|{self.scope}|{self.run_id}|{','.join(self.run_ids)}|{self.onset_step}"
            object.__setattr__(self, "finding_id", hashlib.sha1(basis.encode()).hexdigest()[:12])

    def to_row(self) -> dict[str, Any]:
        return {
            "finding_id": self.finding_id,
            "scope": self.scope,
            "run_id": self.run_id,
            "run_ids": list(self.run_ids),
            "kind": self.kind,
            "severity": self.severity,
            "confidence": self.confidence,
            "onset_step": self.onset_step,
            "end_step": self.end_step,
            "summary": self.summary,
            "evidence": [e.to_row() for e in self.evidence],
            "fix": self.fix,
            "expected_impact": self.expected_impact,
            "verify_by": self.verify_by,
            "detector": self.detector,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Finding":
        return cls(
            kind=row["kind"],
            severity=row["severity"],
            confidence=row["confidence"],
            summary=row["summary"] or "",
            evidence=tuple(EvidenceRef.from_row(e) for e in row["evidence"] or ()),
            detector=row["detector"],
            run_id=row["run_id"],
            scope=row["scope"],
            run_ids=tuple(row["run_ids"] or ()),
            onset_step=row["onset_step"],
            end_step=row["end_step"],
            fix=row["fix"] or "",
            expected_impact=row["expected_impact"] or "",
            verify_by=row["verify_by"] or "",
            finding_id=row["finding_id"],
        )


def findings_frame(findings: list[Finding]) -> pl.DataFrame:
    """Findings as a frame with the `findings` table schema."""
    if not findings:
        return schema.empty("findings")
    return schema.validate("findings", pl.DataFrame([f.to_row() for f in findings], schema=schema.schema_of("findings")))
