"""Read one run directory with every reader that claims files in it, into SPEC §4 frames."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import polars as pl

from mldebug_ray import schema
from mldebug_ray.detectors.base import RunEvidence
from mldebug_ray.errors import ReadError
from mldebug_ray.readers import READERS
from mldebug_ray.readers.base import CHECKPOINT_COLUMNS, EVENT_COLUMNS, METRIC_COLUMNS, SourceData

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 500


def _param_value(value: Any) -> tuple[str, float | None]:
    if isinstance(value, bool):
        return str(value).lower(), float(value)
    if isinstance(value, (int, float)):
        return str(value), float(value) if not (isinstance(value, float) and math.isnan(value)) else None
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str), None
    text = "" if value is None else str(value)
    try:
        number = float(text)
    except ValueError:
        number = None
    return text, number


def params_frame(run_id: str, params: dict[str, Any], source: str) -> pl.DataFrame:
    rows = []
    for key, value in params.items():
        text, number = _param_value(value)
        rows.append({"run_id": run_id, "key": str(key), "value": text, "value_num": number, "source": source})
    if not rows:
        return schema.empty("params")
    return schema.validate("params", pl.DataFrame(rows, schema=schema.schema_of("params")))


def _with_run_id(frame: pl.DataFrame | None, run_id: str, columns: dict, **extra) -> pl.DataFrame | None:
    if frame is None or frame.height == 0:
        return None
    cols = [pl.lit(run_id).alias("run_id")]
    for name, dtype in columns.items():
        cols.append(pl.col(name).cast(dtype, strict=False) if name in frame.columns else pl.lit(None, dtype=dtype).alias(name))
    for name, value in extra.items():
        cols.append(pl.lit(value).alias(name))
    return frame.select(cols)


def read_run_dir(run_dir: Path, run_id: str) -> tuple[RunEvidence, list[str], list[str]]:
    """Every reader's output for `run_dir`, merged without double counting.

    Returns the evidence (runs row included), the reader names that contributed,
    and the problems met (each naming its file). A reader that raises does not stop
    the others; when several sources log the same (step, key) the one with the
    lower reader priority wins.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    problems: list[str] = []
    used: list[str] = []
    metrics_parts: list[pl.DataFrame] = []
    event_parts: list[pl.DataFrame] = []
    ckpt_parts: list[pl.DataFrame] = []
    param_parts: list[pl.DataFrame] = []
    metrics_sources = 0
    metrics_failures = 0
    if not run_dir.is_dir():
        problems.append(f"{run_dir}: not a directory")
    for reader in sorted(READERS.values(), key=lambda r: r.priority) if run_dir.is_dir() else []:
        try:
            files = reader.detect(run_dir)
        except OSError as exc:
            problems.append(f"{reader.name}: cannot list {run_dir}: {exc}")
            continue
        if not files:
            continue
        if reader.provides_metrics:
            metrics_sources += 1
        try:
            data: SourceData = reader.read(run_dir, files)
        except ReadError as exc:  # one unreadable source never stops the others
            if reader.provides_metrics:
                metrics_failures += 1
            problems.append(_one_line(exc))
            continue
        except Exception as exc:  # a reader bug or a hostile file: name the files, keep going
            if reader.provides_metrics:
                metrics_failures += 1
            names = ", ".join(safe_text(f.name) for f in files[:3]) + (" ..." if len(files) > 3 else "")
            problems.append(f"{names}: {reader.name} reader failed: {type(exc).__name__}: {_one_line(exc)}")
            continue
        used.append(reader.name)
        problems.extend(data.problems)
        if (m := _with_run_id(data.metrics, run_id, METRIC_COLUMNS, source=reader.name)) is not None:
            metrics_parts.append(m)
        if (e := _with_run_id(data.events, run_id, EVENT_COLUMNS)) is not None:
            event_parts.append(e)
        if (c := _with_run_id(data.checkpoints, run_id, CHECKPOINT_COLUMNS)) is not None:
            ckpt_parts.append(c)
        if data.params:
            param_parts.append(params_frame(run_id, data.params, reader.name))

    metrics = pl.concat(metrics_parts, how="vertical_relaxed") if metrics_parts else schema.empty("metrics")
    if metrics.height:
        null_steps = metrics["step"].null_count()
        if null_steps:
            problems.append(f"{null_steps} metric value(s) without a step were dropped")
            metrics = metrics.filter(pl.col("step").is_not_null())
        metrics = metrics.unique(subset=["step", "key"], keep="first", maintain_order=True).sort(["key", "step"])
    params = pl.concat(param_parts, how="vertical_relaxed") if param_parts else schema.empty("params")
    if params.height:
        params = params.unique(subset=["key"], keep="first", maintain_order=True)
    checkpoints = pl.concat(ckpt_parts, how="vertical_relaxed") if ckpt_parts else schema.empty("checkpoints")
    events = pl.concat(event_parts, how="vertical_relaxed") if event_parts else schema.empty("events")
    if checkpoints.height and "status" in checkpoints.columns:
        for row in checkpoints.filter(pl.col("status") == "unreadable").iter_rows(named=True):
            problems.append(f"{row['path']}: {row['reason'] or 'unreadable checkpoint'}")

    if metrics.height == 0:
        status = "unreadable"
        if metrics_sources == 0 and not problems:
            problems.append(f"{run_dir}: no metrics source found")
        elif metrics_sources and metrics_failures == metrics_sources:
            pass  # the reader errors already say why
        elif not problems:
            problems.append(f"{run_dir}: metrics sources hold no values")
    elif problems:
        status = "partial"
    else:
        status = "ok"
    reason = "; ".join(problems)
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    steps = metrics["step"] if metrics.height else None
    runs_row = {
        "run_id": run_id,
        "path": safe_text(str(run_dir)),
        "source_format": "+".join(used) or None,
        "status": status,
        "reason": reason or None,
        "n_steps": int(steps.n_unique()) if steps is not None else 0,
        "last_step": int(steps.max()) if steps is not None else None,
        "n_metrics": int(metrics.height),
        "n_checkpoints": int(checkpoints.height),
        "read_time_s": time.perf_counter() - started,
    }
    ev = RunEvidence(
        run_id=run_id,
        runs=schema.validate("runs", pl.DataFrame([runs_row], schema=schema.schema_of("runs"))),
        params=schema.validate("params", params),
        metrics=schema.validate("metrics", metrics),
        events=schema.validate("events", events),
        checkpoints=schema.validate("checkpoints", checkpoints),
    )
    return ev, used, problems


def safe_text(text: str) -> str:
    """`text` made valid UTF-8: undecodable bytes of file names (surrogate escapes) become \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:MAX_REASON_CHARS]
