"""The rules agent's joined root causes (issue 4): each with its evidence, confidence rule, fix,
expected impact, verification, and requests when the confidence is below 0.8."""

import json
import math

import polars as pl
import pytest

from mldebug_ray.config import AgentConfig
from mldebug_ray.diagnose.rules import diagnose_run
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding

EMPTY_METRICS = pl.DataFrame(schema={"run_id": pl.String, "step": pl.Int64, "key": pl.String, "value": pl.Float64})


def params_frame(rows):
    """rows: (run_id, key, value) triples."""
    return pl.DataFrame(
        [{"run_id": r, "key": k, "value": str(v), "value_num": float(v) if isinstance(v, (int, float)) else None, "source": "hydra"} for r, k, v in rows],
        schema={"run_id": pl.String, "key": pl.String, "value": pl.String, "value_num": pl.Float64, "source": pl.String},
    )


EMPTY_PARAMS = params_frame([])


def metrics_frame(run_id, series: dict[str, list[float]], start=0):
    rows = [{"run_id": run_id, "step": start + i, "key": k, "value": v} for k, values in series.items() for i, v in enumerate(values)]
    return pl.DataFrame(rows, schema=EMPTY_METRICS.schema)


def finding(kind, onset, table="metrics", where=None, value=None, severity="high", confidence=0.9, summary=None, run_id="r"):
    where = where or {"run_id": run_id, "step": onset, "key": "loss"}
    return Finding(
        kind=kind, severity=severity, confidence=confidence, summary=summary or f"{kind} at {onset}",
        evidence=(EvidenceRef(table, where, value, f"{kind} evidence"),), detector=kind, run_id=run_id, onset_step=onset,
        fix=f"fix {kind}", expected_impact=f"impact {kind}", verify_by=f"verify {kind}",
    )


def oom_findings(run_id):
    where = {"run_id": run_id, "file": "stderr.log", "line": 12}
    return [
        finding("memory_pressure", 40, "events", where, None, "critical", 0.95, "CUDA out of memory at step 40", run_id),
        finding("known_error", 40, "events", where, None, "critical", 0.95,
                "known error `cuda_oom` at stderr.log:12: \"torch.OutOfMemoryError: CUDA out of memory\"", run_id),
    ]


def assert_complete(cause):
    """Every root cause carries what SPEC §5 asks for, and is valid JSON."""
    assert cause["issue"] and cause["fix"] and cause["expected_impact"] and cause["verify_by"]
    assert 0 <= cause["confidence"] <= 1 and cause["evidence"]
    json.dumps(cause, allow_nan=False)


def test_grad_norm_spike_at_the_divergence_step_without_an_lr_change_blames_the_learning_rate_at_0_82():
    findings = [finding("divergence", 500, severity="critical", confidence=0.85),
                finding("grad_norm_spike", 498, where={"run_id": "r", "step": 498, "key": "grad_norm"}, value=310.0, severity="medium")]
    out = diagnose_run("r", findings, 1000, EMPTY_METRICS, EMPTY_PARAMS, AgentConfig())
    assert [c["kind"] for c in out["root_causes"]] == ["divergence"]
    cause = out["root_causes"][0]
    assert_complete(cause)
    assert cause["confidence"] == pytest.approx(0.82)  # grad evidence, no logged LR change
    assert {e["where"]["key"] for e in cause["evidence"]} >= {"loss", "grad_norm"}
    assert "clip" in cause["fix"] and "500" in cause["verify_by"]
    assert out["requests"] == []


def test_loss_scale_collapsing_before_the_nan_is_one_cause_with_its_fix():
    findings = [finding("loss_scale_collapse", 300, where={"run_id": "r", "step": 300, "key": "loss_scale"}, value=1.0, severity="critical"),
                finding("nan_inf", 320, where={"run_id": "r", "step": 320, "key": "loss"}, value=float("nan"), severity="critical", confidence=0.99)]
    out = diagnose_run("r", findings, 400, EMPTY_METRICS, EMPTY_PARAMS, AgentConfig())
    assert [c["kind"] for c in out["root_causes"]] == ["loss_scale_collapse"]
    cause = out["root_causes"][0]
    assert_complete(cause)
    assert "NaN/Inf from step 320" in cause["issue"] and cause["onset_step"] == 300
    assert cause["confidence"] >= 0.9
    assert {e["where"]["key"] for e in cause["evidence"]} == {"loss_scale", "loss"}


def chance_plateau():
    return finding("plateau", 0, where={"run_id": "r", "step": 0, "key": "train_loss"}, value=math.log(10), severity="high",
                   summary="train loss stuck at chance: ln(10) = 2.303")


def test_loss_at_chance_from_the_start_with_a_zero_learning_rate_names_the_learning_rate():
    metrics = metrics_frame("r", {"train_loss": [2.303] * 50, "lr": [0.0] * 50})
    lr_anomaly = finding("lr_schedule_anomaly", 0, where={"run_id": "r", "step": 0, "key": "lr"}, value=0.0, severity="critical",
                         summary="learning rate `lr` is zero at every step")
    out = diagnose_run("r", [chance_plateau(), lr_anomaly], 49, metrics, params_frame([("r", "optimizer.lr", 0.0)]), AgentConfig())
    assert len(out["root_causes"]) == 1
    cause = out["root_causes"][0]
    assert_complete(cause)
    assert cause["kind"] == "lr_schedule_anomaly" and cause["severity"] == "critical"
    assert "learning rate is zero" in cause["issue"]
    assert cause["confidence"] == pytest.approx(0.95)  # the logged LR shows it at every step
    cited = {(e["table"], e["where"].get("key")) for e in cause["evidence"]}
    assert {("metrics", "lr"), ("metrics", "train_loss"), ("params", "optimizer.lr")} <= cited
    assert "nonzero learning rate" in cause["fix"]
    assert out["requests"] == []


def test_a_configured_zero_lr_without_a_logged_lr_is_below_0_8_and_asks_for_the_lr():
    metrics = metrics_frame("r", {"train_loss": [2.303] * 50})
    out = diagnose_run("r", [chance_plateau()], 49, metrics, params_frame([("r", "optimizer.lr", 0.0)]), AgentConfig())
    cause = out["root_causes"][0]
    assert cause["kind"] == "lr_schedule_anomaly" and cause["confidence"] == pytest.approx(0.75)
    assert out["requests"] and "lr logged every step" in " ".join(out["requests"]).lower()


def test_a_plateau_with_a_learning_rate_that_moves_is_not_blamed_on_the_lr():
    metrics = metrics_frame("r", {"train_loss": [2.303] * 50, "lr": [1e-3] * 50})
    out = diagnose_run("r", [chance_plateau()], 49, metrics, params_frame([("r", "optimizer.lr", 1e-3)]), AgentConfig())
    assert [c["kind"] for c in out["root_causes"]] == ["plateau"]


def overfit():
    return finding("overfitting", 1200, where={"run_id": "r", "step": 1200, "key": "val_loss"}, value=0.9, severity="high", confidence=0.9,
                   summary="validation loss rose 40% above its minimum while the train loss fell")


def test_overfitting_with_a_small_training_set_is_too_little_data_with_a_learning_curve_request():
    out = diagnose_run("r", [overfit()], 5000, EMPTY_METRICS, params_frame([("r", "data.max_train_samples", 2000), ("r", "optimizer.lr", 3e-4)]), AgentConfig())
    cause = out["root_causes"][0]
    assert_complete(cause)
    assert cause["kind"] == "overfitting" and cause["issue"].startswith("Too little training data")
    assert "2,000" in cause["issue"] and "data.max_train_samples" in cause["fix"]  # a cap: lift it
    assert cause["confidence"] == pytest.approx(0.75)
    assert {"table": "params", "where": {"run_id": "r", "key": "data.max_train_samples"}} in [{k: e[k] for k in ("table", "where")} for e in cause["evidence"]]
    assert out["requests"] and "learning curve" in out["requests"][0]


def test_overfitting_with_a_large_training_set_stays_plain_overfitting():
    out = diagnose_run("r", [overfit()], 5000, EMPTY_METRICS, params_frame([("r", "data.train_size", 1_200_000)]), AgentConfig())
    cause = out["root_causes"][0]
    assert cause["kind"] == "overfitting" and not cause["issue"].startswith("Too little")
    # the threshold is the config's: raise it and the same run counts as small
    out = diagnose_run("r", [overfit()], 5000, EMPTY_METRICS, params_frame([("r", "data.train_size", 1_200_000)]), AgentConfig(small_dataset_examples=2_000_000))
    assert out["root_causes"][0]["issue"].startswith("Too little training data")


def test_oom_after_a_batch_size_above_its_seed_twins_names_the_batch_size():
    params = params_frame([
        ("grid/seed0", "data.batch_size", 64), ("grid/seed1", "data.batch_size", 64),
        ("grid/seed2", "data.batch_size", 256), ("grid/seed2", "hydra.overrides", json.dumps(["data.batch_size=256", "seed=2"])),
    ])
    out = diagnose_run("grid/seed2", oom_findings("grid/seed2"), 40, EMPTY_METRICS, params, AgentConfig(), oom_runs={"grid/seed2"})
    assert len(out["root_causes"]) == 1
    cause = out["root_causes"][0]
    assert_complete(cause)
    assert cause["kind"] == "memory_pressure" and cause["severity"] == "critical"
    assert "batch size was raised" in cause["issue"] and "256" in cause["issue"] and "64" in cause["issue"]
    assert cause["confidence"] >= 0.9
    assert "data.batch_size = 64" in cause["fix"] and "accumulation" in cause["fix"] and "4 micro-batches" in cause["fix"]
    cited = [(e["table"], e["where"]) for e in cause["evidence"]]
    assert ("params", {"run_id": "grid/seed2", "key": "data.batch_size"}) in cited
    assert ("params", {"run_id": "grid/seed0", "key": "data.batch_size"}) in cited or ("params", {"run_id": "grid/seed1", "key": "data.batch_size"}) in cited
    assert ("params", {"run_id": "grid/seed2", "key": "hydra.overrides"}) in cited
    assert any(e["table"] == "events" for e in cause["evidence"])


def test_oom_with_a_batch_size_set_on_the_command_line_and_no_peers_is_the_batch_size_at_0_8():
    params = params_frame([("solo", "batch_size", 512), ("solo", "hydra.overrides", json.dumps(["batch_size=512"]))])
    out = diagnose_run("solo", oom_findings("solo"), 40, EMPTY_METRICS, params, AgentConfig(), oom_runs={"solo"})
    cause = out["root_causes"][0]
    assert "batch size was raised" in cause["issue"] and cause["confidence"] == pytest.approx(0.8)


def test_oom_when_peers_ran_a_larger_batch_is_not_blamed_on_the_batch_size():
    params = params_frame([("g/a", "batch_size", 64), ("g/b", "batch_size", 128), ("g/c", "batch_size", 128)])
    out = diagnose_run("g/a", oom_findings("g/a"), 40, EMPTY_METRICS, params, AgentConfig(), oom_runs={"g/a"})
    cause = out["root_causes"][0]
    assert cause["kind"] == "memory_pressure" and "batch size was raised" not in cause["issue"]


def test_mode_collapse_in_a_model_that_is_79_percent_embeddings_is_a_capacity_problem_not_dropout():
    collapse = finding("mode_collapse", 300, where={"run_id": "r", "step": 300, "key": "val/top1_frac"}, value=1.0, severity="high",
                       confidence=0.8, summary="outputs collapsed to one token from step 300")
    arch = Finding(
        kind="architecture_imbalance", severity="medium", confidence=0.95,
        summary="embedding layers hold 79.2% of the model's 27,008 parameters (limit 50%)",
        evidence=(EvidenceRef("layers", {"run_id": "r", "module_type": "embedding", "step": 600}, 0.792, "embedding layers hold 79.2%"),
                  EvidenceRef("layers", {"run_id": "r", "layer": "emb.weight", "step": 600}, 21376.0, "emb.weight: 21,376 parameters")),
        detector="architecture_imbalance", run_id="r", onset_step=600, fix="Shrink the vocabulary ...",
    )
    overfitting = overfit()
    out = diagnose_run("r", [collapse, arch, overfitting], 600, EMPTY_METRICS, EMPTY_PARAMS, AgentConfig())
    assert [c["kind"] for c in out["root_causes"]] == ["mode_collapse"]
    cause = out["root_causes"][0]
    assert_complete(cause)
    assert "capacity" in cause["issue"].lower() and "79%" in cause["issue"]
    assert "non-embedding capacity" in cause["fix"] and "Do not add dropout" in cause["fix"]
    assert cause["confidence"] >= 0.85 and cause["severity"] == "high"
    assert {"table": "layers", "where": {"run_id": "r", "module_type": "embedding", "step": 600}} in [{k: e[k] for k in ("table", "where")} for e in cause["evidence"]]
    assert out["requests"] == []


def test_agent_thresholds_reject_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="agent.small_dataset_examples"):
        AgentConfig(small_dataset_examples=0)
    with pytest.raises(ConfigError, match="agent.lr_zero_max"):
        AgentConfig(lr_zero_max=-1.0)


def test_diagnose_reads_the_peers_batch_sizes_from_the_evidence_tables(tmp_path):
    """The whole agent on an out_dir: the OOM run's folder peers' params are loaded for the rule."""
    from mldebug_ray import paths
    from mldebug_ray.diagnose.rules import diagnose
    from mldebug_ray.evidence.io import write_table
    from mldebug_ray.findings import findings_frame

    runs = ["grid/seed0", "grid/seed1", "grid/seed2"]
    for rid in runs:
        key = paths.part_key(rid)
        write_table(tmp_path, "runs", pl.DataFrame([{"run_id": rid, "path": rid, "source_format": "csv", "status": "ok", "reason": None, "n_steps": 40, "last_step": 40}]), key)
        write_table(tmp_path, "params", params_frame([(rid, "data.batch_size", 256 if rid.endswith("2") else 64), (rid, "model.width", 512)]), key)
        write_table(tmp_path, "findings", findings_frame(oom_findings(rid) if rid.endswith("2") else []), key)
    diagnosis = diagnose(tmp_path, AgentConfig())
    cause = diagnosis["runs"]["grid/seed2"]["root_causes"][0]
    assert "batch size was raised" in cause["issue"] and cause["confidence"] >= 0.9
    assert diagnosis["runs"]["grid/seed0"]["root_causes"] == []


def test_an_overridden_batch_size_that_a_peer_ran_without_oom_is_not_the_cause():
    params = params_frame([("g/a", "batch_size", 128), ("g/a", "hydra.overrides", json.dumps(["batch_size=128"])), ("g/b", "batch_size", 256)])
    out = diagnose_run("g/a", oom_findings("g/a"), 40, EMPTY_METRICS, params, AgentConfig(), oom_runs={"g/a"})
    assert "batch size was raised" not in out["root_causes"][0]["issue"]
