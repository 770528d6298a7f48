"""The MLflow reader on hand-made stores laid out as MLflow writes them (the mlflow package is not installed here).

File store: `mlruns/<experiment_id>/meta.yaml`, `mlruns/<experiment_id>/<run_id>/{meta.yaml,metrics/,params/,tags/,artifacts/}`,
metric files of `<timestamp ms> <value> <step>` lines (mlflow/store/tracking/file_store.py). SQLite store: the
tables `experiments`, `runs`, `metrics` (with `is_nan`; +-Inf saved as +-1.7976931348623157e308), `params`, `tags`
as MLflow's SQLAlchemy models declare them (mlflow/store/tracking/dbmodels/models.py).
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
from pathlib import Path

import polars as pl
import pytest
import yaml

from mldebug_ray.discover import discover
from mldebug_ray.gather import read_run_dir
from mldebug_ray.readers import READERS

RUN_A = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
RUN_B = "f9e8d7c6b5a4938271605f4e3d2c1b0a"


def _file_store_run(root: Path, run_id: str, *, status: int = 3, experiment: str = "0") -> Path:
    exp = root / "mlruns" / experiment
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "meta.yaml").write_text(
        yaml.safe_dump({"artifact_location": f"file://{exp}", "experiment_id": experiment, "lifecycle_stage": "active", "name": "Default"})
    )
    run = exp / run_id
    (run / "metrics" / "val").mkdir(parents=True)
    (run / "params").mkdir()
    (run / "tags").mkdir()
    (run / "artifacts").mkdir()
    meta = {
        "artifact_uri": f"file://{run}/artifacts", "end_time": 1700000100000, "entry_point_name": "",
        "experiment_id": experiment, "lifecycle_stage": "active", "run_id": run_id, "run_name": "bold-cat-123",
        "run_uuid": run_id, "source_name": "", "source_type": 4, "source_version": "", "start_time": 1700000000000,
        "status": status, "tags": [], "user_id": "me",
    }
    (run / "meta.yaml").write_text(yaml.safe_dump(meta))
    (run / "metrics" / "loss").write_text(
        "1700000000000 2.5 0\n1700000001000 nan 1\n1700000002000 inf 2\n1700000003000 1.5 3\n1700000009000 1.25 3\n"
    )
    (run / "metrics" / "val" / "loss").write_text("1700000004000 2.0 3\n")
    (run / "metrics" / "legacy").write_text("1700000005000 0.5\n")
    (run / "params" / "lr").write_text("0.001")
    (run / "params" / "seed").write_text("42")
    (run / "tags" / "mlflow.runName").write_text("bold-cat-123")
    return run


def test_a_file_store_run_folder_is_a_run_with_every_point(tmp_path):
    run = _file_store_run(tmp_path, RUN_A)
    trash = _file_store_run(tmp_path, RUN_B, experiment=".trash")
    model = tmp_path / "mlruns" / "0" / "models" / "m-123"
    (model / "metrics").mkdir(parents=True)
    (model / "meta.yaml").write_text(yaml.safe_dump({"model_id": "m-123", "experiment_id": "0"}))
    (model / "metrics" / "accuracy").write_text("1700000000000 0.9 0\n")
    assert trash.is_dir()
    assert [r.run_id for r in discover([str(tmp_path)])] == [f"mlruns/0/{RUN_A}"]
    ev, used, problems = read_run_dir(run, RUN_A)
    assert used == ["mlflow"] and problems == [] and ev.runs["status"][0] == "ok"
    rows = {(r["step"], r["key"]): (r["value"], r["split"], r["wall_time_s"]) for r in ev.metrics.iter_rows(named=True)}
    assert rows[(0, "loss")] == (2.5, None, 1700000000.0)
    assert math.isnan(rows[(1, "loss")][0]) and rows[(2, "loss")][0] == math.inf
    assert rows[(3, "loss")][0] == 1.25  # logged twice at step 3: the last logged wins
    assert rows[(3, "val/loss")][:2] == (2.0, "val")
    assert rows[(0, "legacy")][0] == 0.5  # a 2-field line of old MLflow versions: step 0
    params = dict(ev.params.select("key", "value").iter_rows())
    assert params["lr"] == "0.001" and params["seed"] == "42"
    assert params["mlflow.tag.mlflow.runName"] == "bold-cat-123" and params["mlflow.status"] == "FINISHED"
    assert ev.events.height == 0


def test_a_failed_file_store_run_gives_an_error_event(tmp_path):
    run = _file_store_run(tmp_path, RUN_A, status=4)
    data = READERS["mlflow"].read(run, READERS["mlflow"].detect(run))
    assert data.events.select("step", "kind", "text").rows() == [(3, "error", "MLflow run status FAILED")]


def _sqlite_store(db: Path, runs: dict[str, str | None]) -> None:
    con = sqlite3.connect(db)
    con.executescript(
        """
        CREATE TABLE experiments (experiment_id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(256) NOT NULL UNIQUE,
            artifact_location VARCHAR(256), lifecycle_stage VARCHAR(32), creation_time BIGINT, last_update_time BIGINT);
        CREATE TABLE runs (run_uuid VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(250), source_type VARCHAR(20),
            source_name VARCHAR(500), entry_point_name VARCHAR(50), user_id VARCHAR(256), status VARCHAR(9),
            start_time BIGINT, end_time BIGINT, deleted_time BIGINT, source_version VARCHAR(50),
            lifecycle_stage VARCHAR(20), artifact_uri VARCHAR(200), experiment_id INTEGER);
        CREATE TABLE metrics (key VARCHAR(250) NOT NULL, value FLOAT NOT NULL, timestamp BIGINT NOT NULL,
            run_uuid VARCHAR(32) NOT NULL, step BIGINT DEFAULT '0' NOT NULL, is_nan BOOLEAN DEFAULT '0' NOT NULL,
            PRIMARY KEY (key, timestamp, step, run_uuid, value, is_nan));
        CREATE TABLE params (key VARCHAR(250) NOT NULL, value VARCHAR(8000) NOT NULL, run_uuid VARCHAR(32) NOT NULL,
            PRIMARY KEY (key, run_uuid));
        CREATE TABLE tags (key VARCHAR(250) NOT NULL, value VARCHAR(8000), run_uuid VARCHAR(32) NOT NULL,
            PRIMARY KEY (key, run_uuid));
        INSERT INTO experiments VALUES (0, 'Default', 'mlruns/0', 'active', 1700000000000, 1700000000000);
        """
    )
    for i, (uuid, artifact_uri) in enumerate(runs.items()):
        status = "FAILED" if i == 1 else "FINISHED"
        con.execute(
            "INSERT INTO runs VALUES (?, ?, 'LOCAL', '', '', 'me', ?, 1700000000000, 1700000100000, NULL, '', 'active', ?, 0)",
            (uuid, f"run-{i}", status, artifact_uri),
        )
        metrics = [
            ("train_loss", 2.5, 1700000000000, 0, 0),
            ("train_loss", 0.0, 1700000001000, 1, 1),  # NaN: MLflow stores 0 with is_nan
            ("train_loss", 1.7976931348623157e308, 1700000002000, 2, 0),  # +Inf as the largest double
            ("val_loss", -1.7976931348623157e308, 1700000002000, 2, 0),
            ("train_loss", 1.0 + i, 1700000003000, 3, 0),
        ]
        con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)", [(k, v, t, uuid, s, n) for k, v, t, s, n in metrics])
        con.executemany("INSERT INTO params VALUES (?, ?, ?)", [("lr", str(0.01 * (i + 1)), uuid), ("optim/beta1", "0.9", uuid)])
        con.execute("INSERT INTO tags VALUES ('mlflow.runName', ?, ?)", (f"run-{i}", uuid))
    con.commit()
    con.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sqlite_runs_are_read_in_their_artifact_folders_read_only(tmp_path):
    root = tmp_path / "project"
    folders = {}
    for uuid in (RUN_A, RUN_B):
        folders[uuid] = root / "mlruns" / "0" / uuid
        (folders[uuid] / "artifacts").mkdir(parents=True)
    _sqlite_store(root / "mlflow.db", {RUN_A: f"mlruns/0/{RUN_A}/artifacts", RUN_B: f"file://{folders[RUN_B]}/artifacts"})
    before = _digest(root / "mlflow.db")
    (root / "mlflow.db").chmod(0o444)
    assert [r.run_id for r in discover([str(root)])] == [f"mlruns/0/{RUN_A}", f"mlruns/0/{RUN_B}"]
    ev, used, problems = read_run_dir(folders[RUN_B], RUN_B)
    assert used == ["mlflow"] and problems == []
    rows = {(r["step"], r["key"]): r["value"] for r in ev.metrics.iter_rows(named=True)}
    assert rows[(0, "train_loss")] == 2.5 and math.isnan(rows[(1, "train_loss")])
    assert rows[(2, "train_loss")] == math.inf and rows[(2, "val_loss")] == -math.inf
    assert rows[(3, "train_loss")] == 2.0
    params = dict(ev.params.select("key", "value").iter_rows())
    assert params["lr"] == "0.02" and params["optim.beta1"] == "0.9" and params["mlflow.tag.mlflow.runName"] == "run-1"
    assert ev.events.select("kind", "text").rows() == [("error", "MLflow run status FAILED")]
    assert _digest(root / "mlflow.db") == before
    assert sorted(p.name for p in root.iterdir()) == ["mlflow.db", "mlruns"]  # no journal or WAL left behind


def test_a_database_without_run_folders_is_one_run_only_if_it_holds_one(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    _sqlite_store(one / "mlflow.db", {RUN_A: f"mlruns/0/{RUN_A}/artifacts"})
    assert [r.run_id for r in discover([str(one)])] == ["one"]
    ev, _, problems = read_run_dir(one, "one")
    assert problems == [] and ev.metrics.filter(pl.col("key") == "train_loss").height == 4
    two = tmp_path / "two"
    two.mkdir()
    _sqlite_store(two / "mlflow.db", {RUN_A: None, RUN_B: None})
    ev, _, problems = read_run_dir(two, "two")
    assert ev.runs["status"][0] == "unreadable"
    assert problems == [
        "mlflow.db: holds 2 runs and none has a run folder (mlruns/<experiment>/<run_uuid>/) here;"
        " one folder per run is needed to read them apart"
    ]


def test_a_file_that_is_not_a_database_is_not_a_run(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"not sqlite at all" * 10)
    assert READERS["mlflow"].detect(tmp_path) == []


@pytest.mark.parametrize("meta", [None, "not: [yaml", {"experiment_id": "0"}])
def test_a_folder_whose_meta_yaml_names_no_run_is_not_a_run(tmp_path, meta):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "loss").write_text("1 2.0 0\n")
    if meta is not None:
        (tmp_path / "meta.yaml").write_text(meta if isinstance(meta, str) else yaml.safe_dump(meta))
    assert READERS["mlflow"].detect(tmp_path) == []


def test_a_metric_line_cut_mid_write_is_dropped_not_misread(tmp_path):
    run = _file_store_run(tmp_path, RUN_A)
    with open(run / "metrics" / "loss", "a") as handle:
        handle.write("1700000010000 0.7")  # no step, no line end: the writer was interrupted
    data = READERS["mlflow"].read(run, READERS["mlflow"].detect(run))
    assert data.metrics.filter(pl.col("key") == "loss")["step"].to_list() == [0, 1, 2, 3]
    assert data.problems == ["metrics/loss: last line has no line end (cut while being written?), dropped"]
