"""The Ray Tune reader: a real Tune experiment (tests/data/ray_tune, written by ray 2.60.0) and hand-made trial folders."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import polars as pl
import pytest

from mldebug_ray.discover import discover
from mldebug_ray.gather import read_run_dir
from mldebug_ray.readers import READERS

TRIAL = "train_fn_8a2b1_00000_0_lr=0.0100_2024-01-01_12-00-00"
REAL = Path(__file__).resolve().parents[1] / "data" / "ray_tune"


class _Boom:
    """Unpickling this runs `open(<marker>, 'w')`: a pickle that must never be loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _result(iteration: int, loss: float, since_restore: int) -> dict:
    return {
        "loss": loss, "mean_accuracy": 1 - loss / 4, "timestamp": 1700000000 + iteration, "checkpoint_dir_name": None,
        "done": False, "training_iteration": iteration, "trial_id": "8a2b1_00000", "date": "2024-01-01_12-00-00",
        "time_this_iter_s": 0.1, "time_total_s": 0.1 * iteration, "pid": 4242, "hostname": "node1",
        "node_ip": "127.0.0.1", "config": {"lr": 0.01, "seed": 3}, "time_since_restore": 0.1 * since_restore,
        "iterations_since_restore": since_restore, "val": {"loss": loss + 0.1},
    }


def trial(root: Path, results: list[dict], *, error: str | None = None) -> Path:
    run = root / "exp" / TRIAL
    run.mkdir(parents=True)
    (root / "exp" / "experiment_state-2024-01-01_12-00-00.json").write_text("{}")
    with open(run / "result.json", "w") as fh:
        for r in results:
            fh.write(json.dumps(r) + "\n")
    with open(run / "progress.csv", "w", newline="") as fh:
        flat = [{k: v for k, v in r.items() if not isinstance(v, dict)} | {"config/lr": 0.01} for r in results]
        writer = csv.DictWriter(fh, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    (run / "params.json").write_text(json.dumps({"lr": 0.01, "seed": 3, "model": {"width": 64}}))
    marker = root / "UNPICKLED"
    (run / "params.pkl").write_bytes(pickle.dumps(_Boom(str(marker))))
    if error is not None:
        (run / "error.txt").write_text(error)
        (run / "error.pkl").write_bytes(pickle.dumps(_Boom(str(marker))))
    (run / "checkpoint_000002").mkdir()
    (run / "checkpoint_000002" / "data.pkl").write_bytes(pickle.dumps(_Boom(str(marker))))
    return run


def test_a_trial_folder_reads_results_params_and_never_unpickles(tmp_path):
    run = trial(tmp_path, [_result(i, 4.0 / i, i) for i in range(1, 6)])
    assert [r.run_id for r in discover([str(tmp_path)])] == [f"exp/{TRIAL}"]
    ev, used, _ = read_run_dir(run, TRIAL)
    assert used[0] == "ray_tune"
    loss = ev.metrics.filter(pl.col("key") == "loss")
    assert loss["source"].unique().to_list() == ["ray_tune"] and loss.height == 5  # the JSONL/CSV copies lost the dedup
    assert dict(loss.select("step", "value").iter_rows()) == {i: 4.0 / i for i in range(1, 6)}
    keys = set(ev.metrics.filter(pl.col("source") == "ray_tune")["key"])
    assert keys == {"loss", "mean_accuracy", "time_this_iter_s", "time_total_s", "val.loss"}
    assert ev.metrics.filter(pl.col("key") == "val.loss")["split"].unique().to_list() == ["val"]
    params = ev.params.filter(pl.col("source") == "ray_tune")
    assert dict(params.select("key", "value").iter_rows()) == {"lr": "0.01", "seed": "3", "model.width": "64"}
    assert not (tmp_path / "UNPICKLED").exists()


def test_a_restored_trial_keeps_the_attempt_it_continued_from(tmp_path):
    results = [_result(i, 4.0 / i, i) for i in range(1, 6)] + [_result(i, 9.0 + i, i - 3) for i in range(4, 8)]
    run = trial(tmp_path, results)
    data = READERS["ray_tune"].read(run, READERS["ray_tune"].detect(run))
    loss = dict(data.metrics.filter(pl.col("key") == "loss").select("step", "value").iter_rows())
    assert loss == {1: 4.0, 2: 2.0, 3: 4.0 / 3, 4: 13.0, 5: 14.0, 6: 15.0, 7: 16.0}
    assert data.events.select("step", "kind", "line").rows() == [(4, "restart", 6)]


def test_a_failed_trial_gives_its_traceback(tmp_path):
    error = (
        "Failure # 1 (occurred at 2024-01-01_12-00-10)\n"
        "ray::ImplicitFunc.train() (pid=4242, ip=127.0.0.1, actor_id=abc, repr=train_fn)\n"
        '  File "/usr/lib/python3/site-packages/ray/tune/trainable/trainable.py", line 331, in train\n'
        "    raise skipped from exception_cause(skipped)\n"
        '  File "/work/train.py", line 20, in train_fn\n'
        "    raise ValueError('lr too high')\n"
        "ValueError: lr too high\n"
    )
    run = trial(tmp_path, [_result(i, 4.0 / i, i) for i in range(1, 3)], error=error)
    data = READERS["ray_tune"].read(run, READERS["ray_tune"].detect(run))
    assert data.events.select("step", "kind", "text", "file", "line").rows() == [
        (
            2,
            "traceback",
            'ValueError: lr too high | File "/usr/lib/python3/site-packages/ray/tune/trainable/trainable.py", line 331, in train'
            ' | File "/work/train.py", line 20, in train_fn',
            "error.txt",
            3,
        )
    ]
    assert not (tmp_path / "UNPICKLED").exists()


def test_a_trial_that_failed_before_reporting_is_an_unreadable_run_with_its_error(tmp_path):
    run = tmp_path / "exp" / TRIAL
    run.mkdir(parents=True)
    (run / "params.json").write_text(json.dumps({"lr": 0.5}))
    (run / "error.txt").write_text(
        "Failure # 1 (occurred at 2024-01-01_12-00-10)\nTraceback (most recent call last):\n"
        '  File "train.py", line 9, in <module>\ntorch.OutOfMemoryError: CUDA out of memory.\n'
    )
    assert [r.run_id for r in discover([str(tmp_path)])] == [f"exp/{TRIAL}"]
    ev, _, _ = read_run_dir(run, TRIAL)
    assert ev.runs["status"][0] == "unreadable"
    assert ev.events["kind"].to_list() == ["traceback", "oom"]
    assert dict(ev.params.select("key", "value").iter_rows()) == {"lr": "0.5"}


def test_a_real_tune_experiment_reads_both_trials(tmp_path):
    """tests/data/ray_tune/exp: a grid of two trials written by ray.tune 2.60.0; the lr=0.9 trial raised at iteration 3."""
    runs = discover([str(REAL)])
    assert [r.run_id for r in runs] == [
        "exp/train_fn_4d29b_00000_0_lr=0.0100_2026-11-24_23-32-23",
        "exp/train_fn_4d29b_00001_1_lr=0.9000_2026-11-24_23-32-24",
    ]
    good, failed = (Path(r.path) for r in runs)
    ev, used, problems = read_run_dir(good, good.name)
    assert used[0] == "ray_tune" and problems == [] and ev.runs["status"][0] == "ok"
    loss = dict(ev.metrics.filter(pl.col("key") == "loss").select("step", "value").iter_rows())
    assert loss == pytest.approx({i: 4.0 / i * 1.01 for i in range(1, 6)})
    assert dict(ev.metrics.filter(pl.col("key") == "val.loss").select("step", "split").iter_rows()) == {i: "val" for i in range(1, 6)}
    assert dict(ev.params.filter(pl.col("source") == "ray_tune").select("key", "value").iter_rows()) == {"lr": "0.01", "seed": "3"}
    assert ev.events.height == 0
    ev, _, problems = read_run_dir(failed, failed.name)
    assert problems == [] and ev.metrics.filter(pl.col("key") == "loss")["step"].to_list() == [1, 2]
    assert ev.events.select("step", "kind", "text").rows() == [
        (
            2,
            "traceback",
            "ValueError: lr too high: loss diverged"
            ' | File "/work/main/.venv/lib/python3.11/site-packages/ray/tune/trainable/trainable.py", line 329, in train'
            ' | File "/tmp/tune_fx/gen.py", line 6, in train_fn',
        )
    ]


def test_a_tune_trial_gives_each_point_once_under_one_name_and_no_bookkeeping_keys(tmp_path):
    """progress.csv and result.json hold the same points; only the ray_tune reader reads them."""
    good = REAL / "exp" / "train_fn_4d29b_00000_0_lr=0.0100_2026-11-24_23-32-23"
    ev, used, problems = read_run_dir(good, good.name)
    assert used == ["ray_tune"] and problems == []
    assert "csv" not in ev.runs["source_format"][0] and "jsonl" not in ev.runs["source_format"][0]
    counts = dict(ev.metrics.group_by("key").len().iter_rows())
    assert counts == {"loss": 5, "val.loss": 5, "time_this_iter_s": 5, "time_total_s": 5}  # no val/loss, pid, ...
    assert ev.metrics.group_by("step", "key").len()["len"].max() == 1
    written = [json.loads(line) for line in (good / "result.json").read_text().splitlines()]
    assert ev.metrics.filter(pl.col("key") == "val.loss").sort("step")["value"].to_list() == [r["val"]["loss"] for r in written]


def test_a_restore_past_the_final_end_leaves_no_stale_rows_from_another_reader(tmp_path):
    # The first attempt reached iteration 9; the restored one resumed at 4 and ended at 7.
    results = [_result(i, 4.0 / i, i) for i in range(1, 10)] + [_result(i, 9.0 + i, i - 3) for i in range(4, 8)]
    run = trial(tmp_path, results)
    ev, _, _ = read_run_dir(run, TRIAL)
    assert ev.metrics.filter(pl.col("key") == "loss")["step"].to_list() == [1, 2, 3, 4, 5, 6, 7]


def test_progress_csv_stands_in_when_result_json_gives_no_row(tmp_path):
    run = trial(tmp_path, [_result(i, 4.0 / i, i) for i in range(1, 6)])
    (run / "result.json").write_text("")
    ev, used, problems = read_run_dir(run, TRIAL)
    assert used == ["ray_tune"]
    assert dict(ev.metrics.filter(pl.col("key") == "loss").select("step", "value").iter_rows()) == {i: 4.0 / i for i in range(1, 6)}
    assert set(ev.metrics["key"]) == {"loss", "mean_accuracy", "time_this_iter_s", "time_total_s"}  # no pid, config/lr
    assert any("progress.csv: read instead of result.json" in p for p in problems)


def test_tunes_tensorboard_copy_of_the_results_is_not_a_second_set_of_keys(tmp_path):
    """Tune's TBX logger writes every result under `ray/tune/<key>` into the trial folder."""
    import shutil

    from torch.utils.tensorboard import SummaryWriter

    good = tmp_path / "trial"
    shutil.copytree(REAL / "exp" / "train_fn_4d29b_00000_0_lr=0.0100_2026-11-24_23-32-23", good)
    writer = SummaryWriter(str(good))
    for line in (good / "result.json").read_text().splitlines():
        result = json.loads(line)
        step = result["training_iteration"]
        writer.add_scalar("ray/tune/loss", result["loss"], step)
        writer.add_scalar("ray/tune/val/loss", result["val"]["loss"], step)
        writer.add_scalar("model/weight_norm", 3.0 + step, step)  # the user's own summary in the trial folder
    writer.close()
    ev, used, problems = read_run_dir(good, good.name)
    assert problems == [] and ev.runs["status"][0] == "ok" and "tensorboard" in used
    counts = dict(ev.metrics.group_by("key").len().iter_rows())
    assert counts == {"loss": 5, "val.loss": 5, "time_this_iter_s": 5, "time_total_s": 5, "model/weight_norm": 5}
