import polars as pl

from mldebug_ray.config import AgentConfig
from mldebug_ray.diagnose.rules import diagnose_run
from mldebug_ray.findings import EvidenceRef, Finding


def metrics_rows(run_id, key, values, start=1):
    return [{"run_id": run_id, "step": start + i, "key": key, "value": v} for i, v in enumerate(values)]


def finding(kind, onset, key, value, severity="high", confidence=0.9):
    return Finding(
        kind=kind, severity=severity, confidence=confidence, summary=f"{kind} at {onset}",
        evidence=(EvidenceRef("metrics", {"run_id": "r", "step": onset, "key": key}, value, f"{key} {value}"),),
        detector=kind, run_id="r", onset_step=onset, fix=f"fix {kind}",
    )


def test_divergence_with_grad_spike_and_lr_jump_names_the_learning_rate():
    lr = [0.001] * 60 + [0.1] * 40
    metrics = pl.DataFrame(metrics_rows("r", "learning_rate", lr))
    params = pl.DataFrame({"run_id": ["r"], "key": ["optimizer.lr"], "value": ["0.001"], "value_num": [0.001], "source": ["hydra"]})
    findings = [finding("divergence", 62, "loss", 9.0, "critical"), finding("grad_norm_spike", 61, "grad_norm", 500.0, "medium")]
    out = diagnose_run("r", findings, 100, metrics, params, AgentConfig())
    assert len(out["root_causes"]) == 1
    cause = out["root_causes"][0]
    assert "learning rate" in cause["issue"].lower()
    assert cause["confidence"] >= 0.9
    keys = {e["where"].get("key") for e in cause["evidence"]}
    assert {"learning_rate", "grad_norm", "loss"} <= keys
    assert out["requests"] == []


def test_divergence_without_gradient_evidence_is_low_confidence_with_requests():
    findings = [finding("divergence", 62, "loss", 9.0, "critical")]
    empty = pl.DataFrame(schema={"run_id": pl.String, "step": pl.Int64, "key": pl.String, "value": pl.Float64})
    params = pl.DataFrame(schema={"run_id": pl.String, "key": pl.String, "value": pl.String, "value_num": pl.Float64})
    out = diagnose_run("r", findings, 100, empty, params, AgentConfig())
    assert out["root_causes"][0]["confidence"] < 0.8
    assert out["requests"], "a low-confidence cause must come with requests (SPEC §5)"


def test_findings_of_one_kind_merge_into_one_ranked_cause():
    findings = [finding("loss_spike", 10, "loss", 3.0, "low"), finding("loss_spike", 40, "loss", 4.0, "medium"), finding("overfitting", 50, "val_loss", 2.0, "high")]
    empty = pl.DataFrame(schema={"run_id": pl.String, "step": pl.Int64, "key": pl.String, "value": pl.Float64})
    out = diagnose_run("r", findings, 100, empty, empty, AgentConfig())
    kinds = [c["kind"] for c in out["root_causes"]]
    assert kinds == ["overfitting", "loss_spike"]
    assert len(out["root_causes"][1]["evidence"]) == 2


EMPTY_METRICS = pl.DataFrame(schema={"run_id": pl.String, "step": pl.Int64, "key": pl.String, "value": pl.Float64})
EMPTY_PARAMS = pl.DataFrame(schema={"run_id": pl.String, "key": pl.String, "value": pl.String, "value_num": pl.Float64})


def event_finding(kind, onset, text, severity="high", confidence=0.9, summary=None):
    return Finding(
        kind=kind, severity=severity, confidence=confidence, summary=summary or f"{kind} at {onset}",
        evidence=(EvidenceRef("events", {"run_id": "r", "file": "train.log", "line": onset}, None, text),),
        detector=kind, run_id="r", onset_step=onset, fix=f"fix {kind}",
    )


def test_mode_collapse_is_the_root_cause_of_the_overfitting_it_causes():
    findings = [
        finding("overfitting", 40, "val_loss", 8.8, "high", 0.95),
        finding("mode_collapse", 60, "val_top1_share", 1.0, "high", 0.85),
        finding("loss_spike", 41, "train_loss", 3.6, "medium", 0.85),
    ]
    out = diagnose_run("r", findings, 200, EMPTY_METRICS, EMPTY_PARAMS, AgentConfig())
    kinds = [c["kind"] for c in out["root_causes"]]
    assert kinds[0] == "mode_collapse" and "overfitting" not in kinds
    top = out["root_causes"][0]
    assert "overfitting" in top["issue"] and top["confidence"] >= 0.9
    assert {e["where"]["key"] for e in top["evidence"]} >= {"val_top1_share", "val_loss"}


def test_outputs_never_diverse_do_not_explain_a_later_validation_rise():
    findings = [finding("overfitting", 40, "val_loss", 8.8, "high"), finding("mode_collapse", 20, "val/top1_frac", 1.0, "low", 0.6)]
    out = diagnose_run("r", findings, 200, EMPTY_METRICS, EMPTY_PARAMS, AgentConfig())
    assert [c["kind"] for c in out["root_causes"]] == ["overfitting", "mode_collapse"]


def test_loss_scale_collapse_absorbs_overflow_bursts_the_minimum_message_and_the_nan():
    findings = [
        finding("loss_scale_collapse", 61, "loss_scale", 1.0, "critical", 0.9),
        event_finding("fp16_overflow", 61, "OVERFLOW! Rank 0 Skipping step"),
        event_finding("known_error", 77, "Current loss scale already at minimum", "critical",
                      summary="known error `loss_scale_minimum` at train.log:77: \"Exception: Current loss scale already at minimum\""),
        finding("nan_inf", 61, "train_loss", float("nan"), "critical", 0.99),
        finding("run_incomplete", 77, "train_loss", 1.0, "medium", 0.8),
    ]
    out = diagnose_run("r", findings, 77, EMPTY_METRICS, EMPTY_PARAMS, AgentConfig())
    kinds = [c["kind"] for c in out["root_causes"]]
    assert kinds == ["loss_scale_collapse", "run_incomplete"]
    top = out["root_causes"][0]
    assert top["severity"] == "critical" and top["confidence"] >= 0.9
    assert "overflow" in top["issue"].lower() and "NaN" in top["issue"]
    assert {e["table"] for e in top["evidence"]} == {"metrics", "events"}


def test_other_known_errors_are_not_absorbed_by_a_loss_scale_collapse():
    findings = [
        finding("loss_scale_collapse", 61, "loss_scale", 1.0, "high"),
        event_finding("known_error", 90, "No space left on device", summary="known error `no_space_left` at train.log:90: \"OSError\""),
    ]
    out = diagnose_run("r", findings, 100, EMPTY_METRICS, EMPTY_PARAMS, AgentConfig())
    assert sorted(c["kind"] for c in out["root_causes"]) == ["known_error", "loss_scale_collapse"]


def test_divergence_absorbs_the_lr_jump_found_at_its_transition():
    findings = [
        finding("divergence", 122, "loss", 9.0, "critical"),
        finding("grad_norm_spike", 122, "grad_norm", 40.0, "high"),
        finding("lr_schedule_anomaly", 121, "learning_rate", 0.5, "high", 0.85),
    ]
    out = diagnose_run("r", findings, 200, EMPTY_METRICS, EMPTY_PARAMS, AgentConfig())
    assert [c["kind"] for c in out["root_causes"]] == ["divergence"]
    cause = out["root_causes"][0]
    assert "step 121" in cause["issue"] and cause["confidence"] >= 0.9


def test_vanishing_gradients_explain_the_plateau():
    findings = [finding("plateau", 1, "train/loss", 1.36, "high", 0.9), finding("vanishing_gradients", 1, "grad_norm/mlp.0.weight", 4e-10, "high", 0.85)]
    out = diagnose_run("r", findings, 200, EMPTY_METRICS, EMPTY_PARAMS, AgentConfig())
    assert [c["kind"] for c in out["root_causes"]] == ["vanishing_gradients"]
    assert "plateau" in out["root_causes"][0]["issue"]


def test_an_oom_seen_by_memory_pressure_and_known_error_is_one_cause():
    findings = [
        event_finding("memory_pressure", 99, "CUDA out of memory", "critical", 0.95),
        event_finding("known_error", 99, "CUDA out of memory", "critical", summary="known error `cuda_oom` at train.log:99: \"CUDA out of memory\""),
    ]
    out = diagnose_run("r", findings, 100, EMPTY_METRICS, EMPTY_PARAMS, AgentConfig())
    assert [c["kind"] for c in out["root_causes"]] == ["memory_pressure"]


def test_exploding_gradients_explain_the_nan_and_the_nonfinite_weights_after_them():
    findings = [
        finding("exploding_gradients", 70, "grad_norm/mlp.2.weight", 5e18, "critical", 0.9),
        finding("nan_inf", 157, "train/loss", float("nan"), "critical", 0.99),
        finding("grad_norm_spike", 141, "train/grad_norm", 1.6e19, "high", 0.9),
        Finding(
            kind="nonfinite_weights", severity="critical", confidence=0.95, summary="NaN weights at step 200",
            evidence=(EvidenceRef("layers", {"run_id": "r", "step": 200, "layer": "mlp.0.weight"}, 1.0, "nonfinite_frac 1"),),
            detector="nonfinite_weights", run_id="r", onset_step=200, fix="fix",
        ),
    ]
    out = diagnose_run("r", findings, 200, EMPTY_METRICS, EMPTY_PARAMS, AgentConfig())
    assert [c["kind"] for c in out["root_causes"]] == ["exploding_gradients"]
    assert {e["table"] for e in out["root_causes"][0]["evidence"]} == {"metrics", "layers"}
