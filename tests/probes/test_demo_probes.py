"""The probes end to end on demo runs through the Python API and Ray: the diagnoses the probes must make."""

from __future__ import annotations

import polars as pl
import pytest

import mldebug_ray
from mldebug_ray.evidence.check import reference_holds
from mldebug_ray.evidence.io import read_table

RUNS = ["mode_collapse", "vanishing_gradients", "exploding_gradients", "baseline/seed0"]


@pytest.fixture(scope="module")
def probed(demo_root, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_probes") / "out"
    mldebug_ray.analyze(
        [demo_root],
        out_dir=out,
        progress="off",
        overrides={
            "sweep.include": RUNS,
            "probes.model_fn": "mldebug_ray.demo.models:model_fn",
            "probes.batch_fn": "mldebug_ray.demo.models:batch_fn",
        },
    )
    return out


def test_mode_collapse_run_has_a_collapsed_outputs_row_and_a_finding(probed):
    outputs = read_table(probed, "outputs").filter(pl.col("run_id") == "mode_collapse").sort("step")
    assert outputs.height >= 2
    newest = outputs.row(outputs.height - 1, named=True)
    assert newest["top1_frac"] > 0.95 and newest["entropy_bits"] < 0.2
    assert outputs["top1_frac"][0] < 0.5  # before the fault the outputs were diverse
    findings = read_table(probed, "findings").filter((pl.col("run_id") == "mode_collapse") & (pl.col("kind") == "mode_collapse"))
    assert findings.height >= 1


def test_vanishing_gradients_run_has_a_first_layer_norm_far_below_the_last(probed):
    grads = read_table(probed, "gradients").filter(pl.col("run_id") == "vanishing_gradients")
    for step in grads["step"].unique().to_list():
        at = grads.filter(pl.col("step") == step)
        first = at.filter(pl.col("layer") == "mlp.0.weight")["grad_norm_l2"][0]
        last = at.filter(pl.col("layer") == "head.weight")["grad_norm_l2"][0]
        assert first < 1e-4 * last, (step, first, last)
    kinds = set(read_table(probed, "findings").filter(pl.col("run_id") == "vanishing_gradients")["kind"])
    assert "vanishing_gradients" in kinds


def test_exploding_run_shows_nonfinite_weights_and_dead_units_from_finite_checkpoints_only(probed):
    findings = read_table(probed, "findings").filter(pl.col("run_id") == "exploding_gradients")
    assert "nonfinite_weights" in set(findings["kind"])
    acts = read_table(probed, "activations").filter(pl.col("run_id") == "exploding_gradients")
    layers = read_table(probed, "layers").filter(pl.col("run_id") == "exploding_gradients")
    nan_steps = set(layers.filter(pl.col("nonfinite_frac") == 1.0)["step"])
    assert nan_steps
    assert acts.filter(pl.col("step").is_in(list(nan_steps)) & pl.col("dead_frac").is_not_null())["dead_frac"].is_nan().all()


def test_healthy_baseline_gets_every_probe_table_and_no_probe_finding(probed):
    rid = "baseline/seed0"
    for table in ("layers", "gradients", "activations", "memory", "precision", "outputs"):
        assert read_table(probed, table).filter(pl.col("run_id") == rid).height > 0, table
    probe_kinds = {"dead_units", "saturated_activations", "nonfinite_weights", "update_ratio_anomaly", "mode_collapse", "fp16_overflow"}
    found = read_table(probed, "findings").filter((pl.col("run_id") == rid) & pl.col("kind").is_in(list(probe_kinds)))
    assert found.height == 0, found.select("kind", "summary").rows()
    assert read_table(probed, "gpu").height == 0  # no GPU here: no telemetry rows


def test_probe_evidence_references_select_rows(probed):
    findings = read_table(probed, "findings")
    bad = []
    for evidence in findings["evidence"]:
        for e in evidence:
            if e["table"] in ("layers", "gradients", "activations", "memory", "precision", "outputs"):
                import json

                ok, why = reference_holds(probed, {"table": e["table"], "where": json.loads(e["where"]), "value": e["value"]})
                if not ok:
                    bad.append(why)
    assert not bad, bad[:5]
