"""The agent's answer: its JSON schema, a structural check, and the evidence check against the tables.

Nothing the model writes reaches diagnosis.json unchecked. Every evidence reference
goes through `reference_holds` (the one checker the rules agent's output is tested
with): a reference that selects no row, or whose value no selected row holds, is
removed; each removal multiplies the claim's confidence by INVALID_REFERENCE_PENALTY,
and a claim left with no valid evidence is dropped. The claim's text says so (it is
what report.md shows), and the `validation` section of diagnosis.json lists every
removed reference and dropped claim.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import polars as pl

from mldebug_ray import schema
from mldebug_ray.config import AgentConfig
from mldebug_ray.diagnose.rules import DEFAULT_REQUEST, REQUESTS_BY_KIND
from mldebug_ray.evidence.check import holds_value, reference_holds, select
from mldebug_ray.findings import KINDS, SEVERITIES, SEVERITY_RANK, EvidenceRef

SUBMIT_TOOL = "submit_diagnosis"
# An invented citation makes the whole claim less credible, not only the cited row:
# one removal takes a 0.95 claim to 0.67, under SPEC §5's 0.8 line (so it needs requests).
INVALID_REFERENCE_PENALTY = 0.7
MAX_ROOT_CAUSES = 10
MAX_EVIDENCE_PER_CAUSE = 12
MAX_TEXT_CHARS = 2000
MAX_LIST_ITEMS = 10
# The key columns a reference may select rows by (SPEC §4's keys, plus finding_id).
WHERE_COLUMNS: dict[str, dict[str, Any]] = {
    "run_id": {"type": "string", "description": "Set for every row of a run; omit only for a sweep-scope finding (by finding_id)."},
    "step": {"type": "integer"},
    "key": {"type": "string", "description": "metrics/params key."},
    "layer": {"type": "string"},
    "module_type": {"type": "string", "description": "layers: all tensors of one module type."},
    "phase": {"type": "string"},
    "dtype": {"type": "string"},
    "kind": {"type": "string", "description": "events kind."},
    "finding_id": {"type": "string"},
    "device_uuid": {"type": "string"},
    "t_s": {"type": "number"},
    "file": {"type": "string"},
    "line": {"type": "integer"},
    "path": {"type": "string"},
    "text": {"type": "string", "description": "events: the exact line text, when file/line are null."},
    "device": {"type": "string", "description": "deployment: the device measured on."},
    "attack": {"type": "string", "description": "robustness: fgsm or pgd."},
    "epsilon": {"type": "number", "description": "robustness: the perturbation budget."},
    "split": {"type": "string", "description": "data_splits, data_labels, data_features, confusion: the split name."},
    "split_a": {"type": "string", "description": "data_overlap: the reference split (train)."},
    "split_b": {"type": "string", "description": "data_overlap: the held-out split."},
    "label": {"type": "integer", "description": "data_labels: the class label."},
    "true_label": {"type": "integer", "description": "confusion: the true class."},
    "pred_label": {"type": "integer", "description": "confusion: the predicted class."},
    "feature": {"type": "string", "description": "data_features: the feature name."},
}
CITABLE_TABLES = [t for t in schema.TABLES if t != "agent_calls"]

EVIDENCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A pointer at rows of an evidence table. Copy table/where/value from a tool result; never invent them.",
    "properties": {
        "table": {"type": "string", "enum": CITABLE_TABLES},
        "where": {
            "type": "object",
            "description": "Key columns that select the cited rows; must include run_id (or a finding_id).",
            "properties": WHERE_COLUMNS,
            "additionalProperties": False,
        },
        "value": {
            "anyOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}],
            "description": "The value a selected row holds (the `value` column, or `column`'s); null when citing rows only.",
        },
        "column": {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "description": "For tables without a `value` column: the column whose value you cite (e.g. grad_norm_l2).",
        },
        "text": {"type": "string", "description": "What this row shows, in a few words."},
    },
    "required": ["table", "where", "text"],
    "additionalProperties": False,
}
ROOT_CAUSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "issue": {"type": "string", "description": "The root cause, as a finding with its mechanism."},
        "kind": {"type": "string", "enum": list(KINDS)},
        "severity": {"type": "string", "enum": list(SEVERITIES)},
        "confidence": {"type": "number", "description": "0..1, by SPEC §5: below 0.8 only together with requests."},
        "evidence": {"type": "array", "items": EVIDENCE_SCHEMA},
        "fix": {"type": "string"},
        "expected_impact": {"type": "string"},
        "verify_by": {"type": "string"},
        "onset_step": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
    },
    "required": ["issue", "kind", "severity", "confidence", "evidence", "fix", "expected_impact", "verify_by"],
    "additionalProperties": False,
}
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "root_causes": {"type": "array", "items": ROOT_CAUSE_SCHEMA, "description": "Ranked, most important first."},
        "quick_fixes": {"type": "array", "items": {"type": "string"}},
        "requests": {"type": "array", "items": {"type": "string"}, "description": "Data that would raise confidence."},
        "summary": {"type": "string", "description": "Two or three sentences for the report."},
    },
    "required": ["root_causes", "quick_fixes", "requests"],
    "additionalProperties": False,
}


def submit_tool_definition() -> dict[str, Any]:
    return {
        "name": SUBMIT_TOOL,
        "description": (
            "Submit the final diagnosis. Every root cause cites evidence rows it was tested against; a reference that "
            "does not hold is removed and lowers the claim's confidence. Calling this ends the investigation."
        ),
        "input_schema": ANSWER_SCHEMA,
    }


class AnswerError(ValueError):
    """The answer does not have the schema's shape; the message lists what is wrong."""


def _check(value: Any, spec: Mapping[str, Any], path: str, errors: list[str]) -> None:
    """A JSON-schema subset (type, enum, anyOf, properties, required, additionalProperties, items)."""
    if len(errors) >= 20:
        return
    if "anyOf" in spec:
        for option in spec["anyOf"]:
            trial: list[str] = []
            _check(value, option, path, trial)
            if not trial:
                return
        errors.append(f"{path}: does not match any allowed type")
        return
    if "enum" in spec and value not in spec["enum"]:
        errors.append(f"{path}: {str(value)[:60]!r} is not one of the allowed values")
        return
    kind = spec.get("type")
    ok = {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "null": value is None,
        "boolean": isinstance(value, bool),
        None: True,
    }[kind]
    if not ok:
        errors.append(f"{path}: expected {kind}")
        return
    if kind == "object":
        props = spec.get("properties", {})
        for req in spec.get("required", []):
            if req not in value:
                errors.append(f"{path}.{req}: missing")
        for k, v in value.items():
            if k in props:
                _check(v, props[k], f"{path}.{k}", errors)
            elif spec.get("additionalProperties") is False:
                errors.append(f"{path}.{k}: unknown field")
    elif kind == "array":
        for i, item in enumerate(value):
            _check(item, spec.get("items", {}), f"{path}[{i}]", errors)


def check_answer(answer: Any) -> dict[str, Any]:
    """`answer` when it has ANSWER_SCHEMA's shape (and confidences in 0..1); AnswerError otherwise."""
    errors: list[str] = []
    _check(answer, ANSWER_SCHEMA, "answer", errors)
    if not errors:
        for i, cause in enumerate(answer["root_causes"]):
            c = cause["confidence"]
            if not (0.0 <= float(c) <= 1.0) or math.isnan(float(c)):
                errors.append(f"answer.root_causes[{i}].confidence: must be in [0, 1]")
    if errors:
        raise AnswerError("; ".join(errors))
    return answer


def finite_json(value: Any) -> Any:
    """`value` with NaN/Inf floats spelled as text: diagnosis.json is strict JSON (the model's JSON may hold NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def ref_key(ref: Mapping[str, Any]) -> str:
    """A canonical identity of a reference (table, where, value) to recognise the detectors' own."""
    value = ref.get("value")
    try:
        value = None if value is None else float(value)
    except (TypeError, ValueError):
        pass
    if isinstance(value, float) and not math.isfinite(value):
        value = str(value)
    return json.dumps([ref.get("table"), dict(ref.get("where") or {}), value], sort_keys=True, default=str)


@dataclass
class ValidationReport:
    """What the evidence check changed, for diagnosis.json's `validation` section."""

    checked: int = 0
    removed: list[dict[str, Any]] = field(default_factory=list)
    dropped_claims: list[dict[str, Any]] = field(default_factory=list)
    lowered: list[dict[str, Any]] = field(default_factory=list)
    values_dropped: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: "ValidationReport") -> None:
        self.checked += other.checked
        self.removed += other.removed
        self.dropped_claims += other.dropped_claims
        self.lowered += other.lowered
        self.values_dropped += other.values_dropped

    def to_json(self) -> dict[str, Any]:
        return finite_json({
            "checked_references": self.checked,
            "removed_references": self.removed,
            "dropped_claims": self.dropped_claims,
            "lowered_confidence": self.lowered,
            "unverifiable_values_dropped": self.values_dropped,
        })


def _coerce_where(table: str, where: Mapping[str, Any]) -> dict[str, Any]:
    """`where` with values cast to the columns' types (the model may write 60.0 or "60" for a step)."""
    columns = schema.TABLES[table]
    out: dict[str, Any] = {}
    for col, value in where.items():
        dtype = columns.get(col)
        if value is None or dtype is None:
            out[col] = value
        elif dtype.is_integer():
            f = float(value)
            if not f.is_integer():
                raise ValueError(f"{col}={value!r} is not an integer")
            out[col] = int(f)
        elif dtype.is_float():
            out[col] = float(value)
        else:
            out[col] = str(value)
    return out


def _column_holds(out_dir: Path, table: str, where: Mapping[str, Any], column: str, value: Any) -> tuple[bool, str]:
    rows = select(out_dir, table, where)
    if column not in rows.columns or not rows.schema[column].is_numeric():
        return False, f"{table} has no numeric column {column!r}"
    wanted = float(value)
    if holds_value(rows[column].cast(pl.Float64).to_list(), wanted):
        return True, ""
    return False, f"rows of {table} matching {dict(where)} do not hold {column} = {value}"


def check_reference(out_dir: Path, raw: Mapping[str, Any], trusted: set[str]) -> tuple[dict[str, Any] | None, str, bool]:
    """(the reference as diagnosis.json writes it, or None when it does not hold; why; value dropped?)."""
    try:
        table = raw["table"]
        if table not in CITABLE_TABLES:
            return None, f"unknown table {table!r}", False
        where = _coerce_where(table, raw.get("where") or {})
        if not where.get("run_id") and not where.get("finding_id"):
            return None, "too broad: where names no run_id (or finding_id)", False
        ref = EvidenceRef(table, where, raw.get("value"), str(raw.get("text") or "")[:MAX_TEXT_CHARS])
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"malformed reference: {exc}", False
    try:
        holds, why = reference_holds(out_dir, {"table": ref.table, "where": ref.where, "value": ref.value})
        if holds and ref.value is not None and raw.get("column"):
            holds, why = _column_holds(out_dir, ref.table, ref.where, str(raw["column"]), ref.value)
    except Exception as exc:  # a where value polars cannot compare: the reference cannot be checked
        return None, f"cannot be checked: {str(exc).splitlines()[0][:200]}", False
    if not holds:
        return None, why, False
    out = ref.to_json()
    value_dropped = False
    has_value_column = schema.TABLES[ref.table].get("value") == pl.Float64
    if ref.value is not None and not has_value_column and not raw.get("column") and ref_key(out) not in trusted:
        # A number on a table without a `value` column, not tied to a column and not one the
        # detectors wrote: nothing can check it, so it does not reach the diagnosis.
        out["value"] = None
        value_dropped = True
    if raw.get("column"):
        out["column"] = str(raw["column"])
    return out, "", value_dropped


def validate_answer(
    out_dir: Path,
    answer: Mapping[str, Any],
    cfg: AgentConfig,
    *,
    scope: str,
    run_id: str | None,
    trusted: set[str] = frozenset(),
) -> tuple[dict[str, Any], ValidationReport]:
    """The diagnosis entry (root_causes, quick_fixes, requests) of a checked answer, and what was changed."""
    answer = check_answer(answer)
    report = ValidationReport()
    causes: list[dict[str, Any]] = []
    for raw in answer["root_causes"][:MAX_ROOT_CAUSES]:
        issue = str(raw["issue"])[:MAX_TEXT_CHARS]
        kept: list[dict[str, Any]] = []
        removed = 0
        for ev in raw["evidence"][:MAX_EVIDENCE_PER_CAUSE]:
            report.checked += 1
            ref, why, value_dropped = check_reference(out_dir, ev, trusted)
            if ref is None:
                removed += 1
                report.removed.append({"scope": scope, "run_id": run_id, "issue": issue[:200], "reference": ev, "reason": why})
                continue
            if value_dropped:
                report.values_dropped.append({"scope": scope, "run_id": run_id, "issue": issue[:200], "reference": ev})
            kept.append(ref)
        confidence = float(raw["confidence"])
        if not kept:
            report.dropped_claims.append(
                {"scope": scope, "run_id": run_id, "issue": issue[:200], "kind": raw["kind"],
                 "reason": f"none of its {removed} evidence reference(s) holds" if removed else "it cites no evidence"}
            )
            continue
        if removed:
            lowered = confidence * INVALID_REFERENCE_PENALTY**removed
            report.lowered.append({"scope": scope, "run_id": run_id, "issue": issue[:200], "from": round(confidence, 3), "to": round(lowered, 3)})
            issue += (
                f" [validation: {removed} of {removed + len(kept)} cited evidence references did not hold and were "
                f"removed; confidence lowered from {confidence:.2f} to {lowered:.2f}]"
            )
            confidence = lowered
        causes.append(
            {
                "issue": issue,
                "kind": raw["kind"],
                "severity": raw["severity"],
                "evidence": kept,
                "fix": str(raw["fix"])[:MAX_TEXT_CHARS],
                "expected_impact": str(raw["expected_impact"])[:MAX_TEXT_CHARS],
                "verify_by": str(raw["verify_by"])[:MAX_TEXT_CHARS],
                "confidence": round(confidence, 3),
                "onset_step": raw.get("onset_step"),
            }
        )
    causes.sort(key=lambda c: (SEVERITY_RANK[c["severity"]], -c["confidence"]))
    requests = [str(r)[:MAX_TEXT_CHARS] for r in answer["requests"]][:MAX_LIST_ITEMS]
    for c in causes:  # SPEC §5: below the line only together with requests
        if c["confidence"] < cfg.min_confidence_without_requests and not requests:
            requests.append(REQUESTS_BY_KIND.get(c["kind"], DEFAULT_REQUEST))
    quick_fixes = [str(q)[:MAX_TEXT_CHARS] for q in answer["quick_fixes"]][:MAX_LIST_ITEMS]
    entry: dict[str, Any] = {"root_causes": causes, "quick_fixes": quick_fixes, "requests": requests}
    if answer.get("summary"):
        entry["summary"] = str(answer["summary"])[:MAX_TEXT_CHARS]
    return finite_json(entry), report
