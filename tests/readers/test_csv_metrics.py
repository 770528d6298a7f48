"""The CSV reader: Lightning's sparse metrics.csv, a cut last line, and AlgoPerf measurements from the corpus."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import polars as pl
import pytest
import yaml

from mldebug_ray.errors import ReadError
from mldebug_ray.readers import READERS

ALGOPERF = Path("/work/shared/corpus/algoperf")
DIVERGED = ALGOPERF / "shampoo_submission/study_0/criteo1tb_pytorch/trial_3"
HEALTHY = ALGOPERF / "shampoo_submission/study_0/criteo1tb_pytorch/trial_1"
EVAL_NAN = ALGOPERF / "shampoo_submission/study_2/criteo1tb_pytorch/trial_3"
PYTHIA = Path("/work/shared/corpus/pythia/70m-seed1")


def _rows(metrics: pl.DataFrame) -> dict[tuple[int, str], tuple[float, str | None]]:
    return {(r["step"], r["key"]): (r["value"], r["split"]) for r in metrics.iter_rows(named=True)}


def _lightning_run(run_dir: Path) -> None:
    """metrics.csv as Lightning's CSVLogger writes it: train and val rows apart, sparse columns."""
    with open(run_dir / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "lr-Adam", "step", "train_loss", "val_acc", "val_loss"])
        writer.writerow([0, 0.001, 9, 2.5, "", ""])
        writer.writerow([0, 0.001, 19, "nan", "", ""])
        writer.writerow([0, "", 19, "", 0.41, 2.2])
        writer.writerow([1, 0.001, 29, "inf", "", ""])
        writer.writerow([1, "", 39, "", 0.52, ""])
    with open(run_dir / "hparams.yaml", "w") as handle:
        yaml.safe_dump({"lr": 0.001, "model": {"hidden": 64, "layers": [2, 2]}}, handle)


def test_sparse_lightning_columns_become_rows_only_where_logged(tmp_path):
    _lightning_run(tmp_path)
    reader = READERS["csv"]
    files = reader.detect(tmp_path)
    assert {p.name for p in files} == {"metrics.csv", "hparams.yaml"}
    data = reader.read(tmp_path, files)
    rows = _rows(data.metrics)
    assert rows[(9, "train_loss")] == (2.5, "train")
    assert math.isnan(rows[(19, "train_loss")][0])
    assert rows[(29, "train_loss")][0] == math.inf
    assert rows[(19, "val_loss")] == (2.2, "val")
    assert rows[(39, "val_acc")] == (0.52, "val")
    assert (39, "val_loss") not in rows  # empty cell: not logged
    assert (19, "lr-Adam") in rows and rows[(19, "lr-Adam")] == (0.001, None)
    # epoch is on both rows of step 19 but kept once
    assert data.metrics.filter(pl.col("key") == "epoch").height == 4
    assert data.metrics.group_by("step", "key").len()["len"].max() == 1
    assert data.params == {"lr": 0.001, "model.hidden": 64, "model.layers": "[2, 2]"}
    assert data.problems == []


def test_a_last_line_cut_mid_way_is_dropped_with_a_problem(tmp_path):
    _lightning_run(tmp_path)
    path = tmp_path / "metrics.csv"
    path.write_bytes(path.read_bytes() + b"1,0.001,49,1.2")  # the job died writing this row
    data = READERS["csv"].read(tmp_path, [path])
    assert data.metrics["step"].max() == 39
    assert len(data.problems) == 1 and "metrics.csv" in data.problems[0] and "cut" in data.problems[0]


def test_a_complete_last_line_without_a_line_end_is_kept_and_the_run_reads_ok(tmp_path):
    from mldebug_ray.api import read_run

    (tmp_path / "metrics.csv").write_bytes(b"step,train_loss,val_loss\n1,2.0,\n2,1.5,1.7\n3,1.25,")
    run = read_run(tmp_path)
    assert run.status == "ok" and run.reason is None
    assert run.metrics.filter(pl.col("key") == "train_loss").sort("step")["value"].to_list() == [2.0, 1.5, 1.25]
    # The same file cut inside its last row (fewer fields) is partial, that row dropped.
    (tmp_path / "metrics.csv").write_bytes(b"step,train_loss,val_loss\n1,2.0,\n2,1.5,1.7\n3,1.2")
    run = read_run(tmp_path)
    assert run.status == "partial" and "cut mid-way" in run.reason
    assert run.metrics["step"].max() == 2


def test_other_csv_needs_a_step_column_to_be_detected(tmp_path):
    (tmp_path / "losses.csv").write_text("global_step,loss,optimizer\n1,0.5,adam\n2,0.4,adam\n")
    (tmp_path / "table.csv").write_text("name,value\na,1\n")
    reader = READERS["csv"]
    files = reader.detect(tmp_path)
    assert [p.name for p in files] == ["losses.csv"]
    data = reader.read(tmp_path, files)
    assert sorted(data.metrics["key"].unique().to_list()) == ["loss"]  # the text column is skipped
    assert data.problems == []


def test_non_numeric_cells_in_a_numeric_column_are_skipped_and_counted(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,loss\n1,0.5\n2,oops\n3,0.3\n")
    data = READERS["csv"].read(tmp_path, [tmp_path / "metrics.csv"])
    assert data.metrics.sort("step")["step"].to_list() == [1, 3]
    assert data.problems == ["metrics.csv: column 'loss': 1 non-numeric cell(s) skipped"]


def test_a_table_without_step_column_is_a_read_error(tmp_path):
    (tmp_path / "metrics.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ReadError, match="metrics.csv: no step column"):
        READERS["csv"].read(tmp_path, [tmp_path / "metrics.csv"])


def test_algoperf_empty_train_loss_cells_are_nan_rows():
    reader = READERS["csv"]
    files = reader.detect(DIVERGED)
    assert {p.name for p in files} == {"measurements.csv", "eval_measurements.csv", "hparams.json", "meta_data_0.json"}
    data = reader.read(DIVERGED, files)
    rows = _rows(data.metrics)
    assert rows[(61, "loss")] == (2.009026527404785, "train")
    assert rows[(64, "loss")] == (1.0121265667689676e18, "train")
    for step in range(65, 99):  # `65,,,,,...`: the loss and grad norm went NaN
        assert math.isnan(rows[(step, "loss")][0]) and rows[(step, "loss")][1] == "train"
        assert math.isnan(rows[(step, "grad_norm")][0])
    # the eval row at step 1 is finite and split by its column names
    assert rows[(1, "validation/loss")] == (0.373768151810185, "val")
    assert rows[(1, "train/loss")][1] == "train"
    assert rows[(1, "test/loss")][1] == "test"
    assert rows[(1, "score")][1] is None
    # eval_measurements.csv repeats the eval rows: no (step, key) twice
    assert data.metrics.group_by("step", "key").len()["len"].max() == 1
    assert data.params["learning_rate"] == pytest.approx(4.199449275251465)
    assert data.params["workload.step_hint"] == 10666
    assert data.problems == []


def test_algoperf_final_score_row_is_not_a_nan():
    data = READERS["csv"].read(HEALTHY, READERS["csv"].detect(HEALTHY))
    assert data.metrics.filter(pl.col("value").is_nan()).height == 0
    assert data.params["summary.score"] == pytest.approx(5765.915495634079)
    assert data.params["summary.preemption_count"] == 0.0
    last = data.metrics["step"].max()
    assert last == 7970


def test_algoperf_eval_row_with_empty_losses_is_a_nan_eval():
    data = READERS["csv"].read(EVAL_NAN, READERS["csv"].detect(EVAL_NAN))
    rows = _rows(data.metrics)
    for key in ("train/loss", "validation/loss", "test/loss"):
        assert math.isnan(rows[(170, key)][0])
    assert rows[(170, "validation/num_examples")][0] == 83274637.0
    # train rows stayed finite in this study
    assert not data.metrics.filter(pl.col("key") == "loss", pl.col("value").is_nan()).height


def test_tab_separated_logs_are_read_whole():
    data = READERS["csv"].read(PYTHIA, READERS["csv"].detect(PYTHIA))
    assert data.metrics.height == 143_000
    assert data.metrics["key"].unique().to_list() == ["train/lm_loss"]
    assert data.metrics.filter(pl.col("step") == 1)["value"].item() == pytest.approx(11.070497512817383)
