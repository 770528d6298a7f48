"""The app end to end on the demo sweep, through a real local Ray instance (issue 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest

from mldebug_ray.evidence.check import reference_holds
from mldebug_ray.evidence.io import read_table


@pytest.fixture(scope="module")
def demo_out(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_out") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "mldebug_ray", "+sweep=demo", f"sweep.roots=[{demo_root}]", f"out_dir={out}", "cluster.num_cpus=2"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def params_of(out, run_id):
    p = read_table(out, "params").filter(pl.col("run_id") == run_id)
    return dict(zip(p["key"], p["value"]))


def test_outputs_of_spec_section_3_are_written(demo_out):
    out, proc = demo_out
    for table in ("runs", "params", "metrics", "events", "checkpoints", "layers", "findings"):
        assert (out / "evidence" / table).is_dir(), table
        pl.scan_parquet(str(out / "evidence" / table / "**" / "*.parquet")).collect()
    assert (out / "diagnosis.json").is_file() and (out / "report.md").is_file() and (out / "mldebug.log").is_file()
    assert "run_id" in proc.stdout  # the terminal summary table


def test_epoch7_divergence_is_found_in_epoch_7_with_lr_root_cause(demo_out):
    out, _ = demo_out
    rid = "lr_change_divergence"
    spe = int(params_of(out, rid)["train.steps_per_epoch"])
    f = read_table(out, "findings").filter((pl.col("run_id") == rid) & (pl.col("kind") == "divergence"))
    assert f.height >= 1
    onset = f["onset_step"][0]
    assert 6 * spe < onset <= 7 * spe, f"onset {onset} not in epoch 7 ({6 * spe + 1}..{7 * spe})"
    diagnosis = json.loads((out / "diagnosis.json").read_text())
    causes = diagnosis["runs"][rid]["root_causes"]
    top = causes[0]
    assert top["kind"] == "divergence" and "learning rate" in top["issue"].lower()
    assert any("grad" in str(e["where"].get("key", "")) for e in top["evidence"]), top["evidence"]


def test_embedding_heavy_run_gets_architecture_imbalance_citing_79_percent(demo_out):
    out, _ = demo_out
    f = read_table(out, "findings").filter((pl.col("run_id") == "embedding_heavy") & (pl.col("kind") == "architecture_imbalance"))
    assert f.height == 1
    values = [e["value"] for e in f["evidence"][0] if e["value"] is not None]
    assert any(0.77 <= v <= 0.81 for v in values), values


def test_broken_run_is_partial_or_unreadable_and_the_others_ok(demo_out):
    out, _ = demo_out
    runs = read_table(out, "runs")
    broken = runs.filter(pl.col("run_id") == "broken_artifacts").row(0, named=True)
    assert broken["status"] in ("partial", "unreadable") and broken["reason"]
    others = runs.filter(pl.col("run_id") != "broken_artifacts")
    assert set(others["status"]) == {"ok"}, others.filter(pl.col("status") != "ok").select("run_id", "reason").rows()


def test_healthy_baselines_have_no_critical_or_high_finding(demo_out):
    out, _ = demo_out
    f = read_table(out, "findings").filter(pl.col("run_id").str.starts_with("baseline/") & pl.col("severity").is_in(["critical", "high"]))
    assert f.height == 0, f.select("run_id", "kind", "summary").rows()


def test_leaked_skewed_and_fragile_runs_get_their_data_side_findings_and_no_other_run_does(demo_out):
    out, _ = demo_out
    findings = read_table(out, "findings")

    def kinds(rid: str) -> set[str]:
        return set(findings.filter(pl.col("run_id") == rid)["kind"])

    assert "data_leakage" in kinds("data_leakage")
    leak = findings.filter((pl.col("run_id") == "data_leakage") & (pl.col("kind") == "data_leakage")).row(0, named=True)
    assert "307" in leak["summary"]  # round(0.3 * 1024) validation examples copied from the training pool
    assert "class_imbalance" in kinds("class_imbalance")
    imbalance = findings.filter((pl.col("run_id") == "class_imbalance") & (pl.col("kind") == "class_imbalance"))
    assert "confusion" in {e["table"] for e in imbalance["evidence"][0]}  # the rarest class's accuracy
    data_kinds = {"data_leakage", "class_imbalance", "eval_on_train"}
    clean = findings.filter(~pl.col("run_id").is_in(["data_leakage", "class_imbalance"]) & pl.col("kind").is_in(list(data_kinds)))
    assert clean.height == 0, clean.select("run_id", "kind", "summary").rows()
    # The 2048-dimensional classifier, and only it, loses more than half its accuracy at 1/255.
    fragile = findings.filter(pl.col("kind") == "adversarial_fragility")
    assert set(fragile["run_id"]) == {"adversarial_fragility"}, fragile.select("run_id", "summary").rows()
    # Every run's model was attacked; every classification run's newest checkpoint scored per class.
    robustness = read_table(out, "robustness")
    assert set(robustness["attack"]) == {"fgsm", "pgd"}
    assert {"baseline/seed0", "data_leakage", "class_imbalance"} <= set(robustness["run_id"])
    assert {"data_leakage", "class_imbalance", "embedding_heavy"} <= set(read_table(out, "confusion")["run_id"])


def test_every_evidence_reference_selects_rows(demo_out):
    out, _ = demo_out
    findings = read_table(out, "findings")
    assert findings.height > 0
    refs = [(e["table"], json.loads(e["where"]), e["value"]) for evs in findings["evidence"] for e in evs]
    diagnosis = json.loads((out / "diagnosis.json").read_text())
    for scope in [*diagnosis["runs"].values(), diagnosis["sweep"]]:
        for cause in scope["root_causes"]:
            refs += [(e["table"], e["where"], e["value"]) for e in cause["evidence"]]
    # The Anthropic agent may cite a row only by the key columns its answer schema allows.
    from mldebug_ray.agent.validate import WHERE_COLUMNS

    unknown = {k for _, where, _ in refs for k in where} - set(WHERE_COLUMNS)
    assert not unknown, f"evidence keys the agent's answer schema rejects: {sorted(unknown)}"
    bad = []
    for table, where, value in refs:
        ok, why = reference_holds(out, {"table": table, "where": where, "value": value})
        if not ok:
            bad.append(why)
    assert not bad, bad[:10]


def test_diagnosis_follows_the_spec_schema(demo_out):
    out, _ = demo_out
    d = json.loads((out / "diagnosis.json").read_text())
    assert d["status"] in ("diagnosis_complete", "needs_more_data")
    assert {"runs", "sweep", "analysis_artifacts"} <= set(d)
    for entry in d["runs"].values():
        for cause in entry["root_causes"]:
            assert {"issue", "kind", "severity", "evidence", "fix", "expected_impact", "verify_by", "confidence"} <= set(cause)
            if cause["confidence"] < 0.8:
                assert entry["requests"], "SPEC §5: a root cause below 0.8 comes with requests"
