"""SPEC §8: read_run and analyze, the same work without the command line."""

import json
import subprocess
import sys

import polars as pl

import mldebug_ray
from mldebug_ray.evidence.io import read_table


def test_read_run_returns_spec_frames_and_status(tmp_path, jsonl_run):
    run = mldebug_ray.read_run(jsonl_run(tmp_path / "r", [2.0, 1.0, float("nan")], params={"optimizer": {"lr": 0.1}, "seed": 3}))
    assert run.status == "ok" and run.reason is None
    assert run.metrics.filter(pl.col("key") == "train_loss")["value"].is_nan().sum() == 1
    params = dict(zip(run.params["key"], run.params["value"]))
    assert params["optimizer.lr"] == "0.1" and params["seed"] == "3"
    assert {"metrics", "params", "events", "checkpoints"} <= set(vars(run))


def test_read_run_of_a_dir_without_metrics_is_unreadable_with_reason(tmp_path):
    (tmp_path / "notes.md").write_text("hello")
    run = mldebug_ray.read_run(tmp_path)
    assert run.status == "unreadable" and "no metrics" in run.reason


def test_analyze_writes_outputs_and_marks_the_broken_run(tmp_path, jsonl_run, ray_local):
    root = tmp_path / "sweep"
    jsonl_run(root / "good", [2.0, 1.8, 1.5, 1.2, 1.0])
    bad = root / "bad"
    bad.mkdir(parents=True)
    (bad / "metrics.jsonl").write_bytes(b"\x00\xff garbage that is not json\n")
    paths = mldebug_ray.analyze([root], out_dir=tmp_path / "out", progress="off")
    assert paths["diagnosis"].is_file() and paths["report_md"].is_file()
    runs = read_table(tmp_path / "out", "runs")
    status = dict(zip(runs["run_id"], runs["status"]))
    assert status == {"good": "ok", "bad": "unreadable"}
    assert runs.filter(pl.col("run_id") == "bad")["reason"][0]
    diagnosis = json.loads(paths["diagnosis"].read_text())
    assert set(diagnosis["runs"]) == {"good", "bad"}


def test_cli_exits_1_when_a_run_is_unreadable(tmp_path, jsonl_run):
    root = tmp_path / "sweep"
    jsonl_run(root / "good", [2.0, 1.0])
    (root / "bad").mkdir()
    (root / "bad" / "metrics.jsonl").write_text("{not json\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mldebug_ray", "+sweep=paths", f"sweep.roots=[{root}]", f"out_dir={tmp_path / 'out'}", "cluster.num_cpus=1"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "1 unreadable" in proc.stdout
