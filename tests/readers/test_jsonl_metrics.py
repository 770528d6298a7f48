"""The JSON-lines reader: nested keys, NaN/Infinity, a truncated tail, Ray Tune's result.json."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from mldebug_ray.errors import ReadError
from mldebug_ray.readers import READERS


def _rows(metrics: pl.DataFrame) -> dict[tuple[int, str], tuple[float, str | None, float | None]]:
    return {(r["step"], r["key"]): (r["value"], r["split"], r["wall_time_s"]) for r in metrics.iter_rows(named=True)}


def test_nested_numbers_are_flattened_and_non_numbers_skipped(tmp_path):
    lines = [
        {"step": 1, "epoch": 0, "train": {"loss": 2.0, "acc": 0.1}, "lr": 1e-3, "phase": "warmup", "ok": True, "hist": [1, 2]},
        {"step": 2, "epoch": 0, "train": {"loss": float("nan")}, "grad_norm": float("inf")},
        {"step": 2, "epoch": 0, "val_loss": 2.5, "timestamp": 1700000000.5},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    reader = READERS["jsonl"]
    files = reader.detect(tmp_path)
    assert [p.name for p in files] == ["metrics.jsonl"]
    data = reader.read(tmp_path, files)
    rows = _rows(data.metrics)
    assert rows[(1, "train.loss")][:2] == (2.0, "train")
    assert rows[(1, "lr")][:2] == (1e-3, None)
    assert math.isnan(rows[(2, "train.loss")][0])
    assert rows[(2, "grad_norm")][0] == math.inf
    assert rows[(2, "val_loss")] == (2.5, "val", 1700000000.5)
    assert {k for _, k in rows} == {"train.loss", "train.acc", "lr", "grad_norm", "val_loss", "epoch"}
    assert data.metrics.filter(pl.col("key") == "epoch").height == 2  # once per step
    assert data.problems == []


def test_truncated_last_line_is_dropped_with_a_problem(tmp_path):
    path = tmp_path / "metrics.jsonl"
    body = "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 57))
    path.write_text(body + '{"step": 57, "lo')
    data = READERS["jsonl"].read(tmp_path, [path])
    assert data.metrics["step"].max() == 56 and data.metrics.height == 56
    assert data.problems == ["metrics.jsonl: line 57 truncated, dropped, kept 56 lines"]


def test_a_complete_last_line_without_a_line_end_is_kept_and_the_run_reads_ok(tmp_path):
    from mldebug_ray.api import read_run

    body = "\n".join(json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 6))  # no final line end
    (tmp_path / "metrics.jsonl").write_text(body)
    run = read_run(tmp_path)
    assert run.status == "ok" and run.reason is None
    assert run.metrics["step"].to_list() == [1, 2, 3, 4, 5]


def test_a_bad_line_in_the_middle_is_skipped_and_counted(tmp_path):
    path = tmp_path / "log.ndjson"
    path.write_text('{"iter": 1, "loss": 1.0}\nnot json\n[1, 2]\n{"iter": 3, "loss": 0.5}\n')
    data = READERS["jsonl"].read(tmp_path, READERS["jsonl"].detect(tmp_path))
    assert data.metrics.sort("step")["step"].to_list() == [1, 3]
    assert data.problems == ["log.ndjson: 2 unparsable line(s) skipped (first: line 2)"]


def test_lines_without_a_step_use_line_order(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"loss": 1.0}\n{"loss": 0.5}\n')
    data = READERS["jsonl"].read(tmp_path, [path])
    assert data.metrics["step"].to_list() == [0, 1]
    assert "used the line order" in data.problems[0]


def test_ray_tune_result_json_uses_training_iteration_and_skips_bookkeeping(tmp_path):
    results = [
        {
            "mean_loss": 1.0 / i,
            "training_iteration": i,
            "timestamp": 1700000000 + i,
            "time_this_iter_s": 0.5,
            "done": False,
            "pid": 123,
            "config": {"lr": 0.1},
            "trial_id": "abc",
            "iterations_since_restore": i,
        }
        for i in (1, 2, 3)
    ]
    (tmp_path / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results))
    (tmp_path / "params.json").write_text(json.dumps({"lr": 0.1, "model": {"width": 8}}))
    (tmp_path / "params.pkl").write_bytes(b"\x80\x04not to be touched")
    reader = READERS["jsonl"]
    assert reader.detect(tmp_path) == []  # a Tune trial folder: the ray_tune reader owns these files
    files = [tmp_path / "params.json", tmp_path / "result.json"]  # given directly, as outside a trial
    data = reader.read(tmp_path, files)
    assert sorted(data.metrics["key"].unique().to_list()) == ["mean_loss", "time_this_iter_s"]
    rows = _rows(data.metrics)
    assert rows[(3, "mean_loss")] == (pytest.approx(1 / 3), None, 1700000003.0)
    assert data.params == {"lr": 0.1, "model.width": 8}


def test_a_file_without_objects_is_a_read_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("garbage\n")
    with pytest.raises(ReadError, match="metrics.jsonl"):
        READERS["jsonl"].read(tmp_path, [path])
