"""The data probe end to end through mldebug_ray.analyze: a data_fn module from probes.code_paths, tables and findings per run."""

from __future__ import annotations

import json
import textwrap

import polars as pl
import pytest

import mldebug_ray
from mldebug_ray.evidence.io import read_table

DATA_MODULE = textwrap.dedent(
    '''
    """A user's data_fn: train/val splits of a seeded toy problem; params decide the faults."""
    import torch


    def splits(params):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3000, 20, generator=g)
        y = torch.randint(0, 3, (3000,), generator=g)
        train_x, train_y = x[:2400], y[:2400]
        val_x, val_y = x[2400:].clone(), y[2400:].clone()
        data = params.get("data") or {}
        if data.get("leak"):
            val_x[:30] = train_x[100:130]  # 5% of val copied from train
        if data.get("skew"):
            train_y = torch.where(torch.arange(2400) < 2390, torch.zeros(2400, dtype=torch.long), train_y)  # 2390 : ~3

        def stream(x, y, ids=None):
            def batches():
                for i in range(0, len(x), 500):
                    batch = {"x": x[i : i + 500], "y": y[i : i + 500]}
                    if ids is not None:
                        batch["id"] = ids[i : i + 500]
                    yield batch
            return batches

        return {"train": stream(train_x, train_y, [f"row{i}" for i in range(2400)]), "val": stream(val_x, val_y)}


    def broken(params):
        raise RuntimeError("cannot reach the data bucket")
    '''
)


@pytest.mark.slow  # a local Ray instance and three runs: ~40 s on 2 cores
def test_analyze_fills_the_data_tables_and_finds_the_planted_faults(tmp_path, jsonl_run, ray_local):
    code = tmp_path / "code"
    code.mkdir()
    (code / "toy_data.py").write_text(DATA_MODULE)
    root = tmp_path / "sweep"
    losses = [2.0, 1.5, 1.2, 1.0, 0.9]
    jsonl_run(root / "clean", losses, params={"data": {"leak": False}})
    jsonl_run(root / "leaky", losses, params={"data": {"leak": True}})
    jsonl_run(root / "skewed", losses, params={"data": {"skew": True}})
    out = tmp_path / "out"
    paths = mldebug_ray.analyze(
        [root], out_dir=out, progress="off",
        overrides={"probes.data_fn": "toy_data:splits", "probes.code_paths": [str(code)], "cluster.num_cpus": 2},
    )
    splits = read_table(out, "data_splits")
    assert splits.height == 6 and set(splits["status"]) == {"ok"}
    assert splits.filter(pl.col("split") == "train")["n_examples"].to_list() == [2400] * 3
    overlap = read_table(out, "data_overlap").filter(pl.col("kind") == "exact")
    leaked = overlap.filter(pl.col("run_id") == "leaky").row(0, named=True)
    assert leaked["n_examples_b"] == 30 and leaked["example_ids_a"][:2] == ["row100", "row101"]
    assert overlap.filter(pl.col("run_id") == "clean")["n_examples_b"].to_list() == [0]
    findings = read_table(out, "findings")
    kinds = {(r["run_id"], r["kind"]) for r in findings.iter_rows(named=True)}
    assert ("leaky", "data_leakage") in kinds and ("clean", "data_leakage") not in kinds
    assert ("skewed", "class_imbalance") in kinds and ("clean", "class_imbalance") not in kinds
    assert ("skewed", "distribution_shift") in kinds  # the labels moved between train and val
    diagnosis = json.loads(paths["diagnosis"].read_text())
    assert any(c["kind"] == "data_leakage" for c in diagnosis["runs"]["leaky"]["root_causes"])


def test_a_failing_data_fn_leaves_the_run_analysed(tmp_path, jsonl_run, ray_local):
    code = tmp_path / "code"
    code.mkdir()
    (code / "toy_data_broken.py").write_text(DATA_MODULE)
    root = tmp_path / "sweep"
    jsonl_run(root / "r", [2.0, 1.0, 0.5])
    out = tmp_path / "out"
    mldebug_ray.analyze([root], out_dir=out, progress="off",
                        overrides={"probes.data_fn": "toy_data_broken:broken", "probes.code_paths": [str(code)], "cluster.num_cpus": 2})
    runs = read_table(out, "runs")
    assert runs["status"].to_list() == ["ok"]
    assert read_table(out, "data_splits").height == 0
