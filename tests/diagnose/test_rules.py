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
