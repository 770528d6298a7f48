import json
import shutil
import sqlite3
from pathlib import Path

import polars as pl
import pytest

from mldebug_ray.api import read_run
from mldebug_ray.discover import discover
from mldebug_ray.errors import ConfigError


def test_run_ids_are_relative_paths_of_the_deepest_run_dirs(tmp_path, jsonl_run):
    jsonl_run(tmp_path / "a" / "seed0", [1.0, 0.9])
    jsonl_run(tmp_path / "a" / "seed1", [1.0, 0.8])
    jsonl_run(tmp_path / "b", [2.0])
    (tmp_path / "empty" / "deep").mkdir(parents=True)
    runs = discover([str(tmp_path)])
    assert [r.run_id for r in runs] == ["a/seed0", "a/seed1", "b"]


def test_parent_with_its_own_metrics_yields_to_the_deeper_runs(tmp_path, jsonl_run):
    jsonl_run(tmp_path / "w", [1.0])
    jsonl_run(tmp_path / "w" / "trial_1", [1.0])
    assert [r.run_id for r in discover([str(tmp_path)])] == ["w/trial_1"]


def test_checkpoint_and_hydra_folders_are_never_runs(tmp_path, jsonl_run):
    run = jsonl_run(tmp_path / "r", [1.0], params={"lr": 0.1})
    ck = run / "checkpoint-10"
    ck.mkdir()
    (ck / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    assert [r.run_id for r in discover([str(tmp_path)])] == ["r"]


def test_several_roots_prefix_run_ids_with_the_root_name(tmp_path, jsonl_run):
    jsonl_run(tmp_path / "x" / "r1", [1.0])
    jsonl_run(tmp_path / "y" / "r1", [1.0])
    ids = [r.run_id for r in discover([str(tmp_path / "x"), str(tmp_path / "y")])]
    assert ids == ["x/r1", "y/r1"]


def test_include_and_exclude_globs(tmp_path, jsonl_run):
    for name in ("lr0.1_seed0", "lr0.1_seed1", "lr1_seed0"):
        jsonl_run(tmp_path / name, [1.0])
    ids = [r.run_id for r in discover([str(tmp_path)], include=["lr0.1*"], exclude=["*seed1"])]
    assert ids == ["lr0.1_seed0"]


def test_missing_root_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="nope"):
        discover([str(tmp_path / "nope")])


def test_symlinked_folders_are_not_followed(tmp_path, jsonl_run):
    outside = jsonl_run(tmp_path / "outside" / "r", [1.0])
    root = tmp_path / "root"
    jsonl_run(root / "inside", [1.0])
    (root / "link").symlink_to(outside.parent, target_is_directory=True)
    assert [r.run_id for r in discover([str(root)])] == ["inside"]


def test_own_output_dir_under_a_root_is_skipped(tmp_path, jsonl_run):
    jsonl_run(tmp_path / "r", [1.0])
    jsonl_run(tmp_path / "out" / "copy", [1.0])
    assert [r.run_id for r in discover([str(tmp_path)], exclude_dirs=[tmp_path / "out"])] == ["r"]


# ---- folders inside a run that belong to it (issue 3): real-looking layouts

DATA = Path(__file__).resolve().parent / "data"
RUN_UUID = "3f2a9c1e5b7d4e8fa0b1c2d3e4f5a6b7"


def _mlflow_file_store_run(root: Path) -> Path:
    """mlruns/0/<run_id>/ as MLflow's file store writes it, with logged artifacts that look like metrics."""
    exp = root / "mlruns" / "0"
    run = exp / RUN_UUID
    for sub in ("metrics", "params", "tags", "artifacts/logs", "artifacts/tb"):
        (run / sub).mkdir(parents=True)
    (exp / "meta.yaml").write_text(f"artifact_location: file://{exp}\nexperiment_id: '0'\nlifecycle_stage: active\nname: Default\n")
    (run / "meta.yaml").write_text(
        f"artifact_uri: file://{run}/artifacts\nexperiment_id: '0'\nlifecycle_stage: active\nrun_id: {RUN_UUID}\n"
        f"run_name: bold-cat-123\nrun_uuid: {RUN_UUID}\nstart_time: 1700000000000\nend_time: 1700000100000\nstatus: 3\n"
    )
    (run / "metrics" / "train_loss").write_text("".join(f"{1700000000000 + s} {2.0 / (s + 1)} {s}\n" for s in range(10)))
    (run / "params" / "lr").write_text("0.001")
    # mlflow.log_artifact of the training script's own CSV and log, and a TensorBoard folder
    (run / "artifacts" / "logs" / "metrics.csv").write_text("step,train_loss\n" + "".join(f"{s},{2.0 / (s + 1)}\n" for s in range(10)))
    (run / "artifacts" / "logs" / "train.log").write_text("step 1 | loss: 2.0\n")
    (run / "artifacts" / "tb" / "events.out.tfevents.1700000000.host.1.0").write_bytes(b"")
    return run


def test_an_mlflow_runs_artifacts_are_part_of_it_never_a_run(tmp_path):
    run = _mlflow_file_store_run(tmp_path)
    assert [r.path for r in discover([str(tmp_path)])] == [str(run)]
    read = read_run(run)
    assert read.status == "ok" and read.source_format == "mlflow"
    assert read.metrics.filter(pl.col("key") == "train_loss").height == 10


def test_an_mlflow_database_runs_artifact_folder_keeps_its_artifacts_inside(tmp_path):
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as con:  # the tables and columns read, as MLflow's models declare them
        con.executescript(
            "CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT, artifact_location TEXT, lifecycle_stage TEXT);"
            "CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, name TEXT, status TEXT, start_time BIGINT, end_time BIGINT,"
            " lifecycle_stage TEXT, artifact_uri TEXT, experiment_id INTEGER, user_id TEXT, source_type TEXT);"
            "CREATE TABLE metrics (key TEXT, value FLOAT, timestamp BIGINT, run_uuid TEXT, step BIGINT, is_nan BOOLEAN);"
            "CREATE TABLE params (key TEXT, value TEXT, run_uuid TEXT);"
            "CREATE TABLE tags (key TEXT, value TEXT, run_uuid TEXT);"
        )
        artifacts = tmp_path / "mlruns" / "1" / RUN_UUID / "artifacts"
        con.execute("INSERT INTO experiments VALUES (1, 'exp', ?, 'active')", (f"file://{tmp_path / 'mlruns' / '1'}",))
        con.execute(
            "INSERT INTO runs VALUES (?, 'run', 'FINISHED', 1700000000000, 1700000100000, 'active', ?, 1, 'me', 'LOCAL')",
            (RUN_UUID, f"file://{artifacts}"),
        )
        con.executemany("INSERT INTO metrics VALUES ('train_loss', ?, ?, ?, ?, 0)", [(2.0 / (s + 1), 1700000000000 + s, RUN_UUID, s) for s in range(10)])
    artifacts.mkdir(parents=True)
    (artifacts / "metrics.csv").write_text("step,train_loss\n1,2.0\n")
    assert [r.path for r in discover([str(tmp_path)])] == [str(artifacts.parent)]
    read = read_run(artifacts.parent)
    assert read.status == "ok" and read.source_format == "mlflow" and read.metrics.height == 10


def _hydra_output_dir(root: Path) -> Path:
    """outputs/<date>/<time>/ of a Hydra job run with hydra.job.chdir=True, W&B offline inside it."""
    out = root / "outputs" / "2026-11-24" / "23-35-18"
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra" / "config.yaml").write_text("optimizer:\n  lr: 0.003\nseed: 7\n")
    (out / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=0.003\n- seed=7\n")
    (out / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: train\n    chdir: true\n")
    (out / "train.log").write_text("[2026-11-24 23:35:18,123][__main__][INFO] - starting\n")
    wandb_dir = out / "wandb"
    shutil.copytree(DATA / "wandb" / "offline-run-20261124_233518-r1dwlrk5", wandb_dir / "offline-run-20261124_233518-r1dwlrk5")
    (wandb_dir / "latest-run").symlink_to("offline-run-20261124_233518-r1dwlrk5")
    (wandb_dir / "debug.log").symlink_to("offline-run-20261124_233518-r1dwlrk5/logs/debug.log")
    return out


def test_a_wandb_run_inside_a_hydra_output_dir_is_read_as_part_of_that_run(tmp_path):
    out = _hydra_output_dir(tmp_path)
    runs = discover([str(tmp_path)])
    assert [r.run_id for r in runs] == ["outputs/2026-11-24/23-35-18"]
    read = read_run(out)
    alone = read_run(DATA / "wandb" / "offline-run-20261124_233518-r1dwlrk5")
    assert read.status == "ok", read.reason
    assert "wandb" in read.source_format.split("+") and "hydra" in read.source_format.split("+")
    cols = ["step", "key", "value"]
    assert read.metrics.select(cols).sort(cols).equals(alone.metrics.select(cols).sort(cols))  # every W&B point, once
    params = dict(zip(read.params["key"], read.params["value"]))
    assert params["optimizer.lr"] == "0.003" and params["seed"] == "7"  # Hydra's config


def test_a_wandb_folder_outside_a_hydra_dir_is_still_its_own_run(tmp_path):
    shutil.copytree(DATA / "wandb" / "offline-run-20261124_233518-r1dwlrk5", tmp_path / "proj" / "wandb" / "offline-run-20261124_233518-r1dwlrk5")
    (tmp_path / "proj" / "train.log").write_text("step 1 | loss: 2.0\n")
    ids = [r.run_id for r in discover([str(tmp_path)])]
    assert ids == ["proj/wandb/offline-run-20261124_233518-r1dwlrk5"]


def test_ray_tune_checkpoint_folders_are_checkpoints_of_the_trial_never_runs(tmp_path):
    import torch

    src = DATA / "ray_tune" / "exp"
    trial_name = "train_fn_4d29b_00000_0_lr=0.0100_2026-11-24_23-32-23"
    exp = tmp_path / "exp"
    shutil.copytree(src, exp)
    trial = exp / trial_name
    for index, step in ((0, 2), (1, 4)):
        ck = trial / f"checkpoint_{index:06d}"
        ck.mkdir()
        torch.save({"w": torch.zeros(3, 4), "b": torch.zeros(4)}, ck / "model.pt")
        # a Hugging Face Trainer's state saved into the Tune checkpoint (Ray Train's transformers integration)
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": [{"step": step, "loss": 9.9}]}))
    runs = discover([str(tmp_path)])
    assert all("checkpoint_" not in r.run_id for r in runs)
    assert f"exp/{trial_name}" in [r.run_id for r in runs]
    read = read_run(trial)
    assert read.status == "ok", read.reason
    assert sorted(Path(p).parent.name for p in read.checkpoints["path"]) == ["checkpoint_000000", "checkpoint_000001"]
    assert set(read.checkpoints["n_params"].to_list()) == {16}
    assert 9.9 not in read.metrics["value"].to_list()  # the checkpoint's copy of the log is not a second curve


def test_two_wandb_folders_of_a_resumed_hydra_job_merge_without_double_counting(tmp_path):
    out = _hydra_output_dir(tmp_path)
    real = DATA / "wandb" / "offline-run-20261124_233518-r1dwlrk5"
    shutil.copytree(real, out / "wandb" / "offline-run-20261125_080000-r1dwlrk5")  # the resumed attempt
    read = read_run(out)
    alone = read_run(real)
    assert read.status == "ok", read.reason
    cols = ["step", "key", "value"]
    assert read.metrics.select(cols).sort(cols).equals(alone.metrics.select(cols).sort(cols))
