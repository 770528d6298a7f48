"""MLflow runs: the file store (`mlruns/<exp>/<run>/metrics|params|tags`) and the SQLite store (`mlflow.db`).

Which folder is a run
---------------------
- File store: a folder with `meta.yaml` (naming a `run_id`/`run_uuid`) and a `metrics/`,
  `params/` or `tags/` folder, i.e. `mlruns/<experiment_id>/<run_id>/`, is itself the
  run dir. Runs under `mlruns/.trash/` (deleted) are not read; an experiment folder
  (`meta.yaml` without those folders) and MLflow 3's logged-model folders
  (`<exp>/models/<model_id>/`, whose `meta.yaml` names a `model_id`) are not runs.
- SQLite store (the default backend since MLflow 3.7): `mlflow.db` holds every run of
  every experiment, and a run dir is a folder, so a database run is read in the folder
  of its artifacts: a folder named by the run's 32-hex `run_uuid` that has
  `mlflow.db` in one of the 4 folders above it (`./mlruns/<exp>/<run_uuid>/` next to
  `./mlflow.db`, where MLflow puts the artifacts of a local run) and whose uuid is in
  the database's `runs` table (or the folder its `artifact_uri` names, when local).
  The folder holding `mlflow.db` is a run itself only when
  it has no run below it: with exactly one database run it reads that run; with
  several it is `unreadable` with a reason listing how many runs have no folder
  (a run that logged no artifact has no folder on disk; discovery needs one folder
  per run, so such runs cannot be told apart).
The database is opened read-only (`file:...?mode=ro`, `PRAGMA query_only`), never
written; a database that cannot be opened that way is retried as `immutable=1`
(recent writes still in a WAL file may then be missing: noted).

What is read
------------
- metrics: file store `metrics/<key>` lines `timestamp value step` (2 fields in old
  versions: step 0; extra fields of newer versions ignored; a last line without its
  line end was cut mid-write and is dropped, noted); keys with `/` are subfolders. SQLite `metrics(key, value, timestamp, step, is_nan)`: `is_nan` rows are
  NaN and +-1.7976931348623157e308 (how the SQL store saves +-Inf) is +-Inf again.
  A (step, key) logged several times keeps the last logged (latest timestamp), as
  MLflow's UI does. wall_time_s = timestamp / 1000. Split from the key (`infer_split`).
- params: `params/<key>` (file contents) / table `params`, keys as logged (dotted
  keys stay dotted; `/` becomes `.`); tags go to params as `mlflow.tag.<key>` (long
  JSON tags such as `mlflow.log-model.history` skipped); the run's status, name,
  experiment id and lifecycle stage as `mlflow.status`, ... .
- events: a run whose status is FAILED or KILLED gives one `error` event.
"""

from __future__ import annotations

import re
import sqlite3
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

import polars as pl

from mldebug_ray.errors import ReadError
from mldebug_ray.readers.base import (
    EVENT_COLUMNS,
    MAX_JSON_DOCUMENT_BYTES,
    SourceData,
    files_in,
    infer_split,
    metrics_frame,
    read_bytes_limited,
    reader,
)
from mldebug_ray.readers.hydra_config import load_yaml

META_FILE = "meta.yaml"
DB_FILE = "mlflow.db"
STORE_DIRS = ("metrics", "params", "tags")
TRASH_DIR = ".trash"
DB_SEARCH_LEVELS = 4
MAX_TAG_CHARS = 1000
MAX_META_BYTES = 1 << 20  # MLflow's meta.yaml is a few hundred bytes
_RUN_UUID = re.compile(r"^[0-9a-f]{32}$")
_SQL_INF = sys.float_info.max
# File-store status is RunStatus' enum number; the SQL store writes the name.
_STATUS = {"1": "RUNNING", "2": "SCHEDULED", "3": "FINISHED", "4": "FAILED", "5": "KILLED"}
_MAX_KEY_DEPTH = 8

# --------------------------------------------------------------------------- file store


def _meta(run_dir: Path) -> dict[str, Any] | None:
    try:
        if (run_dir / META_FILE).stat().st_size > MAX_META_BYTES:
            return None
        data = load_yaml((run_dir / META_FILE).read_text(encoding="utf-8"))
    except Exception:  # an unreadable meta.yaml: not a run we can identify
        return None
    return data if isinstance(data, dict) else None


def _is_file_store_run(run_dir: Path) -> bool:
    if not (run_dir / META_FILE).is_file() or TRASH_DIR in run_dir.parts[-3:]:
        return False
    if not any((run_dir / d).is_dir() for d in STORE_DIRS):
        return False
    meta = _meta(run_dir)
    return bool(meta) and ("run_id" in meta or "run_uuid" in meta)


def _store_files(run_dir: Path) -> list[Path]:
    files = [run_dir / META_FILE]
    for folder in STORE_DIRS:
        if (run_dir / folder).is_dir():
            files.extend(files_in(run_dir / folder, max_depth=_MAX_KEY_DEPTH))
    return files


def _file_key(run_dir: Path, path: Path, folder: str) -> str:
    return path.relative_to(run_dir / folder).as_posix()


def _read_metric_file(path: Path, key: str, columns: dict[str, list], problems: list[str], label: str) -> None:
    bad = 0
    try:
        text = read_bytes_limited(path).decode("utf-8", "replace")
    except ReadError as exc:
        problems.append(f"{label}: {str(exc).split(': ', 1)[-1]}")
        return
    split = infer_split(key)
    lines = text.split("\n")
    if lines[-1].strip():
        # MLflow ends every line with a newline: a last line without one was cut mid-write.
        problems.append(f"{label}: last line has no line end (cut while being written?), dropped")
    for line in lines[:-1]:
        parts = line.split()
        if not parts:
            continue
        try:
            timestamp = int(parts[0])
            value = float(parts[1])
            step = int(parts[2]) if len(parts) >= 3 else 0
        except (ValueError, IndexError):
            bad += 1
            continue
        columns["step"].append(step)
        columns["key"].append(key)
        columns["value"].append(value)
        columns["wall_time_s"].append(timestamp / 1000.0)
        columns["split"].append(split)
        columns["timestamp"].append(timestamp)
    if bad:
        problems.append(f"{label}: {bad} malformed line(s) skipped")


def read_file_store(run_dir: Path, files: list[Path]) -> SourceData:
    """Metrics, params and status of one file-store run folder."""
    columns: dict[str, list] = {k: [] for k in ("step", "key", "value", "wall_time_s", "split", "timestamp")}
    params: dict[str, Any] = {}
    problems: list[str] = []
    for path in files:
        if path.name == META_FILE and path.parent == run_dir:
            continue
        try:
            folder = path.relative_to(run_dir).parts[0]
        except (ValueError, IndexError):
            continue
        key = _file_key(run_dir, path, folder)
        label = f"{folder}/{key}"
        if folder == "metrics":
            _read_metric_file(path, key, columns, problems, label)
            continue
        try:
            value = read_bytes_limited(path, MAX_JSON_DOCUMENT_BYTES, "param or tag").decode("utf-8", "replace")
        except ReadError as exc:
            problems.append(f"{label}: {str(exc).split(': ', 1)[-1]}")
            continue
        if folder == "params":
            params[key.replace("/", ".")] = value
        elif folder == "tags" and len(value) <= MAX_TAG_CHARS:
            params[f"mlflow.tag.{key}"] = value
    meta = _meta(run_dir) or {}
    status = _STATUS.get(str(meta.get("status")), meta.get("status"))
    _run_params(params, status, meta.get("run_name") or meta.get("name"), meta.get("experiment_id"), meta.get("lifecycle_stage"))
    return _result(columns, params, problems, status, META_FILE)


# --------------------------------------------------------------------------- SQLite store

_DB_CACHE: dict[tuple[str, int, int], dict[str, str | None]] = {}


def connect_read_only(db: Path) -> tuple[sqlite3.Connection, str | None]:
    """A read-only connection to `db` and a note when it had to be opened immutable."""
    uri = f"file:{quote(str(db))}?mode=ro"
    note = None
    try:
        con = sqlite3.connect(uri, uri=True)
        con.execute("PRAGMA query_only = 1")
        con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.Error:
        con = sqlite3.connect(f"file:{quote(str(db))}?immutable=1", uri=True)
        con.execute("PRAGMA query_only = 1")
        note = f"{db.name}: opened as immutable (read-only mode failed); writes still in its WAL may be missing"
    return con, note


def _db_runs(db: Path) -> dict[str, str | None]:
    """run_uuid -> artifact_uri of every run in `db` (cached per size and mtime); {} if unreadable."""
    try:
        st = db.stat()
    except OSError:
        return {}
    key = (str(db), st.st_size, st.st_mtime_ns)
    if key not in _DB_CACHE:
        runs: dict[str, str | None] = {}
        try:
            con, _ = connect_read_only(db)
            try:
                runs = dict(con.execute("SELECT run_uuid, artifact_uri FROM runs").fetchall())
            finally:
                con.close()
        except sqlite3.Error:
            runs = {}
        if len(_DB_CACHE) > 1000:
            _DB_CACHE.clear()
        _DB_CACHE[key] = runs
    return _DB_CACHE[key]


def _db_above(run_dir: Path) -> Path | None:
    for parent in list(run_dir.parents)[:DB_SEARCH_LEVELS]:
        candidate = parent / DB_FILE
        if candidate.is_file():
            return candidate
    return None


def run_folder(db: Path, run_uuid: str, artifact_uri: str | None) -> Path | None:
    """The folder a database run is read in: its artifact folder's parent, else `mlruns/<exp>/<run_uuid>/`."""
    if artifact_uri:
        uri = artifact_uri
        if uri.startswith("file://"):
            uri = unquote(urlparse(uri).path)
        if "://" not in uri:
            path = Path(uri)
            path = path if path.is_absolute() else db.parent / path
            folder = path.parent if path.name == "artifacts" else path
            if folder.name == run_uuid and folder.is_dir():
                return folder
    for candidate in (db.parent / "mlruns").glob(f"*/{run_uuid}"):
        if candidate.is_dir():
            return candidate
    return None


def _any_run_folder(db: Path) -> bool:
    return any(run_folder(db, uuid, uri) is not None for uuid, uri in _db_runs(db).items())


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in con.execute(f"PRAGMA table_info({table})").fetchall()}


def read_db_run(db: Path, run_uuid: str, label: str) -> SourceData:
    """Metrics, params and status of one run of an MLflow SQLite database."""
    problems: list[str] = []
    try:
        con, note = connect_read_only(db)
    except sqlite3.Error as exc:
        raise ReadError(f"{label}: cannot open read-only ({exc})") from None
    if note:
        problems.append(note)
    try:
        run_cols = _columns(con, "runs")
        if not run_cols:
            raise ReadError(f"{label}: no `runs` table (not an MLflow database)")
        wanted = [c for c in ("status", "name", "experiment_id", "lifecycle_stage") if c in run_cols]
        row = con.execute(f"SELECT {', '.join(wanted)} FROM runs WHERE run_uuid = ?", (run_uuid,)).fetchone()
        if row is None:
            raise ReadError(f"{label}: run {run_uuid} not in the database")
        info = dict(zip(wanted, row))
        metric_cols = _columns(con, "metrics")
        nan_col = "is_nan" if "is_nan" in metric_cols else "0"
        step_col = "step" if "step" in metric_cols else "0"
        rows = con.execute(
            f"SELECT key, value, timestamp, {step_col}, {nan_col} FROM metrics WHERE run_uuid = ?", (run_uuid,)
        ).fetchall()
        params = {
            str(k).replace("/", "."): v for k, v in con.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_uuid,))
        }
        if _columns(con, "tags"):
            for k, v in con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_uuid,)):
                if v is None or len(str(v)) <= MAX_TAG_CHARS:
                    params[f"mlflow.tag.{k}"] = v
    except sqlite3.Error as exc:
        raise ReadError(f"{label}: {exc}") from None
    finally:
        con.close()
    columns: dict[str, list] = {k: [] for k in ("step", "key", "value", "wall_time_s", "split", "timestamp")}
    splits: dict[str, str | None] = {}
    for key, value, timestamp, step, is_nan in rows:
        if value is None and not is_nan:
            continue
        number = float("nan") if is_nan else float(value)
        if abs(number) == _SQL_INF:
            number = float("inf") if number > 0 else float("-inf")
        if key not in splits:
            splits[key] = infer_split(key)
        columns["step"].append(int(step or 0))
        columns["key"].append(key)
        columns["value"].append(number)
        columns["wall_time_s"].append(None if timestamp is None else timestamp / 1000.0)
        columns["split"].append(splits[key])
        columns["timestamp"].append(timestamp or 0)
    status = info.get("status")
    _run_params(params, status, info.get("name"), info.get("experiment_id"), info.get("lifecycle_stage"))
    return _result(columns, params, problems, status, label)


# --------------------------------------------------------------------------- shared


def _run_params(params: dict[str, Any], status: Any, name: Any, experiment_id: Any, stage: Any) -> None:
    for key, value in (("status", status), ("run_name", name), ("experiment_id", experiment_id), ("lifecycle_stage", stage)):
        if value is not None:
            params[f"mlflow.{key}"] = str(value)


def _result(columns: dict[str, list], params: dict[str, Any], problems: list[str], status: Any, label: str) -> SourceData:
    frame = pl.DataFrame(
        columns,
        schema={"step": pl.Int64, "key": pl.String, "value": pl.Float64, "wall_time_s": pl.Float64, "split": pl.String, "timestamp": pl.Int64},
    )
    if frame.height:
        # A (step, key) logged twice: the last logged wins, as in MLflow's own views.
        frame = frame.sort(["key", "step", "timestamp"], maintain_order=True).unique(["step", "key"], keep="last", maintain_order=True)
    metrics = metrics_frame(frame.drop("timestamp").to_dict(as_series=False)) if frame.height else metrics_frame([])
    events = None
    if str(status).upper() in ("FAILED", "KILLED"):
        last = int(frame["step"].max()) if frame.height else None
        events = pl.DataFrame(
            [(last, "error", f"MLflow run status {str(status).upper()}", label, None)], schema=EVENT_COLUMNS, orient="row"
        )
    return SourceData(metrics=metrics, params=params, events=events, problems=problems)


def detect(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    if _is_file_store_run(run_dir):
        return _store_files(run_dir)
    if _RUN_UUID.match(run_dir.name):
        db = _db_above(run_dir)
        if db is not None and run_dir.name in _db_runs(db):
            return [db]
    db = run_dir / DB_FILE
    if db.is_file() and _db_runs(db) and not _any_run_folder(db):
        return [db]
    return []


@reader("mlflow", detect=detect, provides_metrics=True, priority=25)
def read(run_dir: Path, files: list[Path]) -> SourceData:
    """One MLflow run: a file-store folder, or a database run read in its artifact folder (see the docstring)."""
    run_dir = Path(run_dir)
    if any(p.name == META_FILE and p.parent == run_dir for p in files):
        return read_file_store(run_dir, files)
    db = files[0]
    label = db.name
    if _RUN_UUID.match(run_dir.name) and db.parent != run_dir:
        return read_db_run(db, run_dir.name, label)
    runs = _db_runs(db)
    if len(runs) == 1:
        return read_db_run(db, next(iter(runs)), label)
    raise ReadError(
        f"{label}: holds {len(runs)} runs and none has a run folder (mlruns/<experiment>/<run_uuid>/) here;"
        " one folder per run is needed to read them apart"
    )
