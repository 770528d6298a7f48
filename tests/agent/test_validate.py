"""The answer check: shape, and every evidence reference against the tables."""

from __future__ import annotations

import json

import pytest

from agent_loopback import GRAD_SPIKE, GRAD_SPIKE_STEP, agent_config
from mldebug_ray import paths
from mldebug_ray.agent.validate import AnswerError, check_answer, check_reference, ref_key, validate_answer
from mldebug_ray.evidence.io import write_table
import polars as pl


def cause(evidence, confidence=0.9):
    return {"issue": "i", "kind": "divergence", "severity": "high", "confidence": confidence, "evidence": evidence,
            "fix": "f", "expected_impact": "e", "verify_by": "v"}


@pytest.mark.parametrize(
    "answer",
    [
        {"root_causes": []},
        {"root_causes": [cause([])], "quick_fixes": [], "requests": [], "extra": 1},
        {"root_causes": [cause([], confidence=1.5)], "quick_fixes": [], "requests": []},
        {"root_causes": [cause([], confidence=float("nan"))], "quick_fixes": [], "requests": []},
        {"root_causes": [{**cause([]), "severity": "apocalyptic"}], "quick_fixes": [], "requests": []},
        {"root_causes": [cause([{"table": "metrics", "where": {"run_id": "r1", "sql": "1=1"}, "text": "x"}])], "quick_fixes": [], "requests": []},
        [],
    ],
)
def test_answers_off_the_schema_are_rejected(answer):
    with pytest.raises(AnswerError):
        check_answer(answer)


def test_reference_checks(evidence):
    good = {"table": "metrics", "where": {"run_id": "r1", "step": float(GRAD_SPIKE_STEP), "key": "grad_norm"}, "value": str(GRAD_SPIKE), "text": "t"}
    ref, why, _ = check_reference(evidence, good, set())
    assert ref is not None and ref["where"]["step"] == GRAD_SPIKE_STEP, why
    assert check_reference(evidence, {**good, "value": 1.0}, set())[0] is None
    assert "too broad" in check_reference(evidence, {"table": "metrics", "where": {"key": "grad_norm"}, "text": "t"}, set())[1]
    assert check_reference(evidence, {"table": "metrics", "where": {"run_id": "r1", "step": 1.5}, "text": "t"}, set())[0] is None
    assert check_reference(evidence, {"table": "agent_calls", "where": {"run_id": "r1"}, "text": "t"}, set())[0] is None


def test_values_on_tables_without_a_value_column_need_a_column_or_a_detector_origin(tmp_path):
    write_table(tmp_path, "gradients", pl.DataFrame([{"run_id": "r", "step": 5, "layer": "fc1", "grad_norm_l2": 812.5, "grad_max_abs": 3.0, "zero_frac": 0.0, "nonfinite_frac": 0.0}]), paths.part_key("r"))
    base = {"table": "gradients", "where": {"run_id": "r", "step": 5, "layer": "fc1"}, "text": "t"}
    ref, _, dropped = check_reference(tmp_path, {**base, "value": 812.5, "column": "grad_norm_l2"}, set())
    assert ref["value"] == 812.5 and ref["column"] == "grad_norm_l2" and not dropped
    assert check_reference(tmp_path, {**base, "value": 999.0, "column": "grad_norm_l2"}, set())[0] is None
    ref, _, dropped = check_reference(tmp_path, {**base, "value": 4.2}, set())
    assert ref["value"] is None and dropped  # nothing can check a bare number here
    trusted = {ref_key({**base, "value": 4.2})}
    ref, _, dropped = check_reference(tmp_path, {**base, "value": 4.2}, trusted)
    assert ref["value"] == 4.2 and not dropped  # the detectors wrote it


def test_a_claim_below_the_line_gets_requests_and_nan_never_reaches_the_json(evidence):
    ev = [{"table": "metrics", "where": {"run_id": "r1", "step": GRAD_SPIKE_STEP, "key": "grad_norm"}, "value": GRAD_SPIKE, "text": "t"},
          {"table": "metrics", "where": {"run_id": "r1", "step": 1, "key": "grad_norm", }, "value": float("nan"), "text": "bogus NaN"}]
    entry, report = validate_answer(evidence, {"root_causes": [cause(ev, 0.85)], "quick_fixes": [], "requests": []}, agent_config(), scope="run", run_id="r1")
    assert entry["root_causes"][0]["confidence"] < 0.8 and entry["requests"]
    json.dumps(report.to_json(), allow_nan=False)
    json.dumps(entry, allow_nan=False)
