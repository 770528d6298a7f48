"""The Hugging Face trainer_state.json reader: mixed log_history rows, NaN/Infinity, checkpoint fallback."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import polars as pl
import pytest

from mldebug_ray.errors import ReadError
from mldebug_ray.readers import READERS

MARKER_NAME = "training_args_was_unpickled"


def _make_marker(path: str) -> None:
    Path(path).write_text("unpickled")


class _Booby:
    """Unpickling this object creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (_make_marker, (str(self.marker),))


def _state(nan_step: int = 30) -> dict:
    history = [
        {"epoch": 0.1, "grad_norm": 1.5, "learning_rate": 1e-4, "loss": 2.5, "step": 10},
        {"epoch": 0.2, "grad_norm": float("inf"), "learning_rate": 2e-4, "loss": 2.1, "step": 20},
        {"epoch": 0.2, "eval_loss": 2.2, "eval_accuracy": 0.4, "eval_runtime": 1.5, "step": 20},
        {"epoch": 0.3, "grad_norm": float("nan"), "learning_rate": 3e-4, "loss": float("nan"), "step": nan_step},
        {"epoch": 0.3, "eval_loss": float("nan"), "step": nan_step},
        {"epoch": 0.3, "step": nan_step, "total_flos": 123.0, "train_loss": 2.3, "train_runtime": 9.5, "train_samples_per_second": 11.0},
    ]
    return {"global_step": 30, "max_steps": 100, "num_train_epochs": 1, "epoch": 0.3, "best_metric": None, "log_history": history}


def _write(path: Path, state: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # json.dumps writes NaN / Infinity as the Trainer's files have them.
    path.write_text(json.dumps(state, indent=2))
    return path


def _rows(metrics: pl.DataFrame) -> dict[tuple[int, str], tuple[float, str | None]]:
    return {(r["step"], r["key"]): (r["value"], r["split"]) for r in metrics.iter_rows(named=True)}


def test_train_eval_and_summary_rows_are_told_apart(tmp_path):
    _write(tmp_path / "trainer_state.json", _state())
    reader = READERS["hf_trainer_state"]
    files = reader.detect(tmp_path)
    assert files == [tmp_path / "trainer_state.json"]
    data = reader.read(tmp_path, files)
    rows = _rows(data.metrics)
    assert rows[(10, "loss")] == (2.5, "train")
    assert rows[(10, "learning_rate")] == (1e-4, "train")
    assert rows[(20, "eval_loss")] == (2.2, "val")
    assert rows[(20, "eval_accuracy")] == (0.4, "val")
    assert rows[(20, "grad_norm")][0] == math.inf
    assert math.isnan(rows[(30, "loss")][0]) and rows[(30, "loss")][1] == "train"
    assert math.isnan(rows[(30, "eval_loss")][0])
    assert rows[(10, "epoch")] == (0.1, None)
    # `epoch` appears once per step even though train and eval rows both carry it.
    assert data.metrics.filter(pl.col("key") == "epoch").height == 3
    # The summary row is not a step metric.
    assert not data.metrics.filter(pl.col("key").is_in(["train_runtime", "train_loss", "total_flos"])).height
    assert data.params["summary.train_loss"] == 2.3
    assert data.params["summary.train_runtime"] == 9.5
    assert data.params["trainer.max_steps"] == 100
    assert data.params["trainer.global_step"] == 30
    assert data.params["trainer.num_train_epochs"] == 1
    assert data.problems == []


def test_newest_checkpoint_state_is_used_when_none_at_top_level(tmp_path):
    _write(tmp_path / "checkpoint-100" / "trainer_state.json", _state(nan_step=100))
    _write(tmp_path / "checkpoint-200" / "trainer_state.json", _state(nan_step=200))
    _write(tmp_path / "checkpoint-30" / "trainer_state.json", _state())
    reader = READERS["hf_trainer_state"]
    files = reader.detect(tmp_path)
    assert files == [tmp_path / "checkpoint-200" / "trainer_state.json"]
    data = reader.read(tmp_path, files)
    assert data.metrics["step"].max() == 200


def test_training_args_bin_is_never_unpickled(tmp_path):
    marker = tmp_path / MARKER_NAME
    (tmp_path / "training_args.bin").write_bytes(pickle.dumps(_Booby(marker)))
    _write(tmp_path / "trainer_state.json", _state())
    reader = READERS["hf_trainer_state"]
    reader.read(tmp_path, reader.detect(tmp_path))
    assert not marker.exists()


def test_a_broken_state_falls_back_to_a_checkpoint_copy(tmp_path):
    (tmp_path / "trainer_state.json").write_text('{"log_history": [{"loss": 1.0, "step": 1}, {"lo')
    _write(tmp_path / "checkpoint-20" / "trainer_state.json", _state())
    reader = READERS["hf_trainer_state"]
    data = reader.read(tmp_path, reader.detect(tmp_path))
    assert data.metrics.height > 0
    assert any("trainer_state.json: not valid JSON" in p for p in data.problems)
    assert any("checkpoint-20/trainer_state.json" in p for p in data.problems)


def test_unreadable_state_is_a_read_error(tmp_path):
    (tmp_path / "trainer_state.json").write_text("[1, 2")
    with pytest.raises(ReadError, match="trainer_state.json"):
        READERS["hf_trainer_state"].read(tmp_path, [tmp_path / "trainer_state.json"])
