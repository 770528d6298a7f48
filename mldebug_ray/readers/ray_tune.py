"""Ray Tune trial folders: `result.json` (JSON lines), `params.json`, `error.txt`; pickles never loaded.

A trial folder is one with `result.json` next to `params.json`, `progress.csv`,
`params.pkl` or `error.txt`, or one with `error.txt` and `params.json` (a trial that
failed before reporting anything is still a run: unreadable, with its traceback).

Ownership (other readers also claim some of these files; gather keeps, for each
(step, key), the value of the reader with the lowest priority number):
- `result.json`: read here (priority 30) with the same step rule and key flattening as
  the JSON-lines reader (priority 45), so its duplicate rows are the ones dropped; this
  reader adds what a plain JSON-lines reading cannot know: Tune restores. A result
  line with `iterations_since_restore == 1` after the first line is a restore from a
  checkpoint: a `restart` event at its step; when the step goes back, the rows of the
  earlier attempt at or beyond that step are dropped (the final attempt is the curve
  the trial continued from).
- `progress.csv`: the same numbers as `result.json` (nested keys joined with `/`
  instead of `.`, plus Tune's bookkeeping columns), so it is claimed here and the CSV
  reader leaves it alone, as the JSON-lines reader leaves `result.json` and
  `params.json` of a trial: each point is read once, under one name. It is read
  only when `result.json` yields no row (missing, empty or unparsable), Tune's
  bookkeeping columns (`pid`, `time_since_restore`, `config/...`) dropped (noted).
- `params.json`: params, here and not from the JSON-lines reader's copy (same keys,
  ours first).
- `error.txt`: Tune's failure report (`Failure # 1 (occurred at ...)` then a Python
  traceback, or a Ray task error: `ray::ImplicitFunc.train() (pid=...)`, frames, the
  exception line): events via the text-log library (a `traceback` event, `oom` if it
  is one); a Ray task error becomes a `traceback` event (exception line | first
  frame | innermost frame, as the text-log library writes them); anything else one
  `error` event with its first line. Its step is the last
  step reported.
- `params.pkl`, `error.pkl`, `checkpoint_*/`: pickles and checkpoints; never loaded
  (`error.pkl` without `error.txt` gives an `error` event saying only that it exists).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mldebug_ray.errors import ReadError
from mldebug_ray.readers.base import (
    EVENT_COLUMNS,
    MAX_JSON_DOCUMENT_BYTES,
    SourceData,
    check_size,
    files_in,
    infer_split,
    iter_lines,
    metrics_frame,
    reader,
)
from mldebug_ray.readers.hydra_config import flatten_params
from mldebug_ray.readers.jsonl_metrics import RAY_FIELDS, WALL_KEYS
from mldebug_ray.readers.jsonl_metrics import _flatten_numbers as _numbers
from mldebug_ray.readers.jsonl_metrics import _step_of
from mldebug_ray.readers.text_log import parse_logs

RESULT = "result.json"
PARAMS = "params.json"
PROGRESS = "progress.csv"
ERROR_TXT = "error.txt"
ERROR_PKL = "error.pkl"
PARAMS_PKL = "params.pkl"
MAX_ERROR_LINES = 5000
MAX_ERROR_BYTES = 4 << 20


def detect(run_dir: Path) -> list[Path]:
    names = {p.name: p for p in files_in(Path(run_dir))}
    has_result = RESULT in names and ({PARAMS, PROGRESS, PARAMS_PKL, ERROR_TXT} & names.keys())
    failed_early = ERROR_TXT in names and PARAMS in names
    if not (has_result or failed_early):
        return []
    return [names[n] for n in (RESULT, PARAMS, PROGRESS, ERROR_TXT, ERROR_PKL) if n in names]


def claimed_names(run_dir: Path) -> frozenset[str]:
    """Names of the files of `run_dir` this reader owns when it is a Tune trial (the CSV and JSON-lines readers skip them)."""
    return frozenset(p.name for p in detect(run_dir))



def read_results(path: Path, problems: list[str], events: list[tuple]) -> pl.DataFrame:
    """Metrics of a Tune `result.json`, restores turned into `restart` events and cut segments."""
    columns: dict[str, list] = {"step": [], "key": [], "value": [], "wall_time_s": [], "split": []}
    segment_of_row: list[int] = []
    segment_starts: list[int] = []
    segment = 0
    max_step: int | None = None
    bad = 0
    used = 0
    splits: dict[str, str | None] = {}
    for index, line, ended in iter_lines(path, problems):  # streamed, bounded line length
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            if not ended:
                problems.append(f"{RESULT}: line {index + 1} truncated, dropped")
            else:
                bad += 1
            continue
        if not isinstance(record, dict):
            bad += 1
            continue
        step_key, step = _step_of(record)
        if step is None:
            step = used
        restored = record.get("iterations_since_restore") == 1 and used > 0
        if max_step is not None and (step < max_step or restored):
            segment += 1
            segment_starts.append(step)
            why = "Tune restored the trial from a checkpoint" if restored else "steps went back"
            events.append(
                (step, "restart", f"{why} at step {step} (after step {max_step}); earlier rows at steps >= {step} dropped", RESULT, index + 1)
            )
            max_step = step
        wall = next(
            (float(record[k]) for k in WALL_KEYS if isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)),
            None,
        )
        numbers: dict[str, float] = {}
        for key, value in record.items():
            if key == step_key or key in WALL_KEYS or key in RAY_FIELDS:
                continue
            if isinstance(value, dict):
                _numbers(value, key, numbers)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                numbers[key] = float(value)
        for key, value in numbers.items():
            if key not in splits:
                splits[key] = infer_split(key.replace(".", "/"))
            columns["step"].append(step)
            columns["key"].append(key)
            columns["value"].append(value)
            columns["wall_time_s"].append(wall)
            columns["split"].append(splits[key])
            segment_of_row.append(segment)
        max_step = step if max_step is None else max(max_step, step)
        used += 1
    if bad:
        problems.append(f"{RESULT}: {bad} unparsable line(s) skipped")
    frame = metrics_frame(columns)
    if segment and frame.height:
        starts = np.array(segment_starts + [np.iinfo(np.int64).max], dtype=np.int64)
        cutoff = np.minimum.accumulate(starts[::-1])[::-1]
        keep = frame["step"].to_numpy() < cutoff[np.asarray(segment_of_row)]
        frame = frame.filter(pl.Series(keep))
    return frame.unique(["step", "key"], keep="last", maintain_order=True)


def _progress_metrics(path: Path, problems: list[str]) -> pl.DataFrame | None:
    """Metrics of `progress.csv` without Tune's bookkeeping columns (used when result.json gives none)."""
    from mldebug_ray.readers.csv_metrics import read_table

    notes: list[str] = []
    try:
        frame = read_table(path, {}, notes)
    except ReadError as exc:
        problems.append(str(exc))
        return None
    frame = frame.filter(~pl.col("key").str.split("/").list.first().is_in(list(RAY_FIELDS)))
    problems.extend(notes)
    problems.append(f"{PROGRESS}: read instead of {RESULT} (which gave no row)")
    return frame


_FRAME = re.compile(r'^\s+File "')


def _head_text(path: Path) -> str:
    """The first MAX_ERROR_BYTES of `path` as text ('' if unreadable)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_ERROR_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""


def _task_traceback(path: Path) -> tuple[str, int] | None:
    """(exception line | first frame, line number) of a Ray task error (`ray::Trainable.train() ...` then frames)."""
    lines = _head_text(path).splitlines()[:MAX_ERROR_LINES]
    first_frame = last_frame = start = None
    exception = None
    for number, line in enumerate(lines, start=1):
        if _FRAME.match(line):
            first_frame = first_frame or line.strip()
            last_frame = line.strip()
            start = start or number
        elif first_frame and line.strip() and not line[:1].isspace():
            exception = line.strip()
    if first_frame and exception:
        frames = [first_frame] + ([last_frame] if last_frame != first_frame else [])
        return " | ".join([exception] + frames), start
    return None


def _error_events(run_dir: Path, path: Path, step: int | None, problems: list[str]) -> pl.DataFrame:
    data = parse_logs(run_dir, [path], metrics=False)
    problems.extend(data.problems)
    events = data.events if data.events is not None else pl.DataFrame(schema=EVENT_COLUMNS)
    if not events.filter(pl.col("kind") == "traceback").height:
        task = _task_traceback(path)
        if task is not None:
            row = (None, "traceback", task[0], ERROR_TXT, task[1])
        else:
            text = _head_text(path)
            first = next((line.strip() for line in text.splitlines() if line.strip()), "")
            row = (None, "error", first or "error.txt (empty)", ERROR_TXT, 1)
        events = pl.concat([events, pl.DataFrame([row], schema=EVENT_COLUMNS, orient="row")])
    return events if step is None else events.with_columns(pl.col("step").fill_null(step))


@reader("ray_tune", detect=detect, provides_metrics=True, priority=30)
def read(run_dir: Path, files: list[Path]) -> SourceData:
    """One Tune trial: results, params, and its failure report as events."""
    run_dir = Path(run_dir)
    names = {p.name: p for p in files}
    problems: list[str] = []
    params: dict[str, Any] = {}
    event_rows: list[tuple] = []
    metrics = None
    if RESULT in names:
        metrics = read_results(names[RESULT], problems, event_rows)
    if PARAMS in names:
        try:
            check_size(names[PARAMS], MAX_JSON_DOCUMENT_BYTES, "JSON document")
            data = json.loads(names[PARAMS].read_text(encoding="utf-8"))
            params.update(flatten_params(data) if isinstance(data, dict) else {})
        except ReadError as exc:
            problems.append(str(exc))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            problems.append(f"{PARAMS}: not parsed ({type(exc).__name__})")
    if (metrics is None or metrics.height == 0) and PROGRESS in names:
        metrics = _progress_metrics(names[PROGRESS], problems)
    last_step = int(metrics["step"].max()) if metrics is not None and metrics.height else None
    parts = [pl.DataFrame(event_rows or None, schema=EVENT_COLUMNS, orient="row")]
    if ERROR_TXT in names:
        parts.append(_error_events(run_dir, names[ERROR_TXT], last_step, problems))
    elif ERROR_PKL in names:
        parts.append(
            pl.DataFrame(
                [(last_step, "error", "the trial failed: error.pkl present (a pickle, not loaded) and no error.txt", ERROR_PKL, None)],
                schema=EVENT_COLUMNS,
                orient="row",
            )
        )
    events = pl.concat(parts, how="vertical_relaxed")
    if metrics is not None and metrics.height == 0:
        problems.append(f"{RESULT}: no result line")
    return SourceData(metrics=metrics, params=params, events=events, problems=problems)
