"""JSON-lines metric logs: `metrics.jsonl`, any `*.jsonl` / `*.ndjson`, and Ray Tune's `result.json`.

One JSON object per line. The step comes from the first of `step`, `global_step`,
`_step` (W&B), `iteration`, `iter`, `training_iteration` (Ray Tune) present on the line;
a file with none of them uses the line's order (0, 1, ...) and says so in problems.
Nested objects are flattened with dots (`{"train": {"loss": 1}}` -> `train.loss`);
numbers become metric rows (NaN/Infinity, which Python's json accepts, are kept;
the split from `infer_split`, reading `train.loss` as `train/loss`),
anything else (strings, booleans, lists, null) is skipped. `timestamp` / `_timestamp`
/ `wall_time` give the wall time. Ray Tune's bookkeeping fields (`config`, `pid`,
`done`, `*_since_restore`, ...) are not metrics; its `params.json` next to
`result.json` gives params (never `params.pkl`). In a Tune trial folder (what the
`ray_tune` reader claims) `result.json` and `params.json` are left to that reader, which
also knows Tune's restores: each point is read once. A last line cut mid-way (no line end)
is dropped with a problem; an unparsable line elsewhere is skipped and counted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from mldebug_ray.errors import ReadError
from mldebug_ray.readers.base import SourceData, files_in, infer_split, iter_lines, metrics_frame, reader
from mldebug_ray.readers.hydra_config import flatten_params

RAY_RESULT = "result.json"
RAY_PARAMS = "params.json"
STEP_KEYS = ("step", "global_step", "_step", "iteration", "iter", "training_iteration")
WALL_KEYS = ("wall_time_s", "wall_time", "_timestamp", "timestamp")
# Ray Tune bookkeeping written on every result line; not training metrics.
RAY_FIELDS = frozenset(
    {
        "config",
        "pid",
        "done",
        "trial_id",
        "experiment_id",
        "experiment_tag",
        "date",
        "hostname",
        "node_ip",
        "iterations_since_restore",
        "time_since_restore",
        "timesteps_since_restore",
        "checkpoint_dir_name",
        "should_checkpoint",
        "warmup_time",
    }
)


def detect(run_dir: Path) -> list[Path]:
    files = files_in(run_dir)
    if any(p.name == RAY_RESULT for p in files):
        from mldebug_ray.readers.ray_tune import claimed_names  # a Tune trial's files are read there

        tune = claimed_names(run_dir)
        files = [p for p in files if p.name not in tune]
    logs = [p for p in files if p.suffix.lower() in (".jsonl", ".ndjson") or p.name == RAY_RESULT]
    if any(p.name == RAY_RESULT for p in logs):
        logs += [p for p in files if p.name == RAY_PARAMS]
    return logs


def _flatten_numbers(obj: dict[str, Any], prefix: str, out: dict[str, float]) -> None:
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            _flatten_numbers(value, name, out)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)


def _step_of(record: dict[str, Any]) -> tuple[str | None, int | None]:
    for key in STEP_KEYS:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return key, int(value)
    return None, None


def read_jsonl(path: Path, problems: list[str]) -> tuple[dict[str, list], int]:
    """Metric columns of one JSON-lines file and the number of records used."""
    name = path.name
    ray = name == RAY_RESULT
    columns: dict[str, list] = {"step": [], "key": [], "value": [], "wall_time_s": [], "split": []}
    split_of: dict[str, str | None] = {}
    bad_lines: list[int] = []
    used = 0
    no_step = 0
    # Streamed line by line: a file with a gigantic line or tail costs bounded memory.
    for index, line, ended in iter_lines(path, problems):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            # A file still being written ends without a line end: its last line may be cut.
            if not ended:
                problems.append(f"{name}: line {index + 1} truncated, dropped, kept {used} lines")
            else:
                bad_lines.append(index + 1)
            continue
        if not isinstance(record, dict):
            bad_lines.append(index + 1)
            continue
        step_key, step = _step_of(record)
        if step is None:
            step = used
            no_step += 1
        wall = None
        for key in WALL_KEYS:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                wall = float(value)
                break
        numbers: dict[str, float] = {}
        for key, value in record.items():
            if key == step_key or key in WALL_KEYS or (ray and key in RAY_FIELDS):
                continue
            if isinstance(value, dict):
                _flatten_numbers(value, key, numbers)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                numbers[key] = float(value)
        for key, value in numbers.items():
            split = split_of.get(key, "?")
            if split == "?":
                # A flattened `train.loss` names its split like `train/loss`.
                split = split_of[key] = infer_split(key.replace(".", "/"))
            columns["step"].append(step)
            columns["key"].append(key)
            columns["value"].append(value)
            columns["wall_time_s"].append(wall)
            columns["split"].append(split)
        used += 1
    if bad_lines:
        problems.append(f"{name}: {len(bad_lines)} unparsable line(s) skipped (first: line {bad_lines[0]})")
    if no_step and used:
        what = "all lines" if no_step == used else f"{no_step} line(s)"
        problems.append(f"{name}: no step field ({', '.join(STEP_KEYS)}) on {what}; used the line order as step")
    return columns, used


@reader("jsonl", detect=detect, provides_metrics=True, priority=45)
def read(run_dir: Path, files: list[Path]) -> SourceData:
    """Metrics of every JSON-lines file in `files` (plus Ray Tune params); ReadError if none has a record."""
    problems: list[str] = []
    errors: list[str] = []
    params: dict[str, Any] = {}
    merged: dict[str, list] = {"step": [], "key": [], "value": [], "wall_time_s": [], "split": []}
    used = 0
    for path in files:
        if path.name == RAY_PARAMS:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                params.update(flatten_params(data) if isinstance(data, dict) else {})
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                problems.append(f"{path.name}: not parsed ({type(exc).__name__})")
            continue
        try:
            columns, n = read_jsonl(path, problems)
        except ReadError as exc:
            errors.append(str(exc))
            continue
        if n == 0:
            errors.append(f"{path.name}: no JSON object line")
        used += n
        for key, values in columns.items():
            merged[key].extend(values)
    if used == 0:
        raise ReadError("; ".join(errors) if errors else "no JSON-lines file")
    metrics = metrics_frame(merged)
    # Train and eval lines of one step both carry `epoch`: keep it once.
    epochs = metrics.filter(pl.col("key") == "epoch")
    if epochs.height:
        once = epochs.unique(["step"], keep="first", maintain_order=True)
        metrics = pl.concat([metrics.filter(pl.col("key") != "epoch"), once])
    return SourceData(metrics=metrics, params=params, problems=errors + problems)
