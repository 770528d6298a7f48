"""CSV/TSV metric tables: Lightning CSVLogger, AlgoPerf `measurements.csv`, Ray Tune `progress.csv`, plain logs.

Files: `metrics.csv`, `measurements.csv`, `eval_measurements.csv`, `progress.csv`, and
any other `*.csv` / `*.tsv` whose header names a step column (`step`, `global_step`,
`iteration`, ...; only the first line is read to decide). Params come from Lightning's
`hparams.yaml`, AlgoPerf's `hparams.json` and the `workload.*` entries of its
`meta_data_0.json`.

Wide to long: every non-step column with a numeric value becomes a metric key (split
from `infer_split(column)`); an empty cell means "not logged on this row" (no row), a
literal `nan`/`inf` a NaN/Inf row. Every cell is read as text and cast afterwards, so
a stray string never loses a column. A last line cut mid-way (file killed while being
written: fewer fields and no line end) is dropped with a problem; a last line with all
its fields but no line end is a complete row, kept without one.

AlgoPerf (a `global_step` column plus `score` or `*/num_examples` columns) interleaves
three kinds of rows (see the corpus README): eval rows (a `*/num_examples` cell set),
one final row (only `score`/`preemption_count`), and per-step train rows. pandas writes
NaN as an empty cell, so an empty cell in a column that this row kind logs elsewhere in
the file is a NaN row: the train loss of a diverged trial (`65,,,,...`), or the losses
of a NaN eval. Train-row keys get split 'train'. The final row's empty cells mean
nothing; its values go to params as `summary.<column>`. `eval_measurements.csv`
repeats the eval rows of `measurements.csv`; only (step, key) pairs missing from the
latter are kept from it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import polars as pl

from mldebug_ray.errors import ReadError
from mldebug_ray.readers.base import METRIC_COLUMNS, SourceData, files_in, infer_split, read_bytes_limited, reader
from mldebug_ray.readers.hydra_config import flatten_params, load_yaml

KNOWN_FILES = ("metrics.csv", "measurements.csv", "eval_measurements.csv", "progress.csv")
# Step column names, most specific first; matched case-insensitively.
STEP_COLUMNS = ("step", "global_step", "trainer/global_step", "_step", "iteration", "iter", "training_iteration")
WALL_COLUMNS = ("wall_time_s", "wall_time", "walltime", "timestamp", "_timestamp")
PARAM_FILES = ("hparams.yaml", "hparams.json", "meta_data_0.json")
_HEADER_PEEK_BYTES = 65536


def _separator(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _header_fields(line: str, sep: str) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=sep))
    except (StopIteration, csv.Error):
        return []


def _step_column(columns: list[str]) -> str | None:
    lowered = {c.strip().lower(): c for c in columns}
    for name in STEP_COLUMNS:
        if name in lowered:
            return lowered[name]
    return None


def _has_step_column(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER_PEEK_BYTES)
    except OSError:
        return False
    line = head.split(b"\n", 1)[0].decode("utf-8-sig", "replace").rstrip("\r")
    return _step_column(_header_fields(line, _separator(path))) is not None


def detect(run_dir: Path) -> list[Path]:
    from mldebug_ray.readers.ray_tune import claimed_names  # a Tune trial's progress.csv is read there

    files = files_in(run_dir)
    if any(p.name == "progress.csv" for p in files):
        tune = claimed_names(run_dir)
        files = [p for p in files if p.name not in tune]
    tables = [
        p
        for p in files
        if p.suffix.lower() in (".csv", ".tsv") and (p.name in KNOWN_FILES or _has_step_column(p))
    ]
    if not tables:
        return []
    return tables + [p for p in files if p.name in PARAM_FILES]


def _drop_cut_tail(raw: bytes, sep: str, name: str, problems: list[str]) -> bytes:
    """`raw` without a last line that was cut mid-way (no line end and fewer fields than the header)."""
    if not raw or raw.endswith(b"\n"):
        return raw
    cut = raw.rfind(b"\n")
    if cut < 0:
        return raw  # only a header (or one cut line): nothing to keep either way
    header = raw.split(b"\n", 1)[0].decode("utf-8-sig", "replace").rstrip("\r")
    last = raw[cut + 1 :].decode("utf-8", "replace")
    n_lines = raw.count(b"\n")
    if len(_header_fields(last, sep)) < len(_header_fields(header, sep)):
        problems.append(f"{name}: last line cut mid-way (line {n_lines + 1}), dropped, kept {n_lines - 1} data lines")
        return raw[: cut + 1]
    return raw  # every field there: a writer that omits the final line end, a complete row


def _numeric(name: str) -> pl.Expr:
    return pl.col(name).cast(pl.Float64, strict=False)


def _any_set(frame: pl.DataFrame, columns: list[str]) -> set[str]:
    """The columns holding at least one non-empty cell in `frame` (one pass)."""
    if not columns or not frame.height:
        return set()
    row = frame.select(pl.col(c).is_not_null().any() for c in columns).row(0, named=True)
    return {c for c, seen in row.items() if seen}


def _is_algoperf(columns: list[str], step: str) -> bool:
    return step == "global_step" and ("score" in columns or any(c.endswith("/num_examples") for c in columns))


def _to_float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _algoperf_wide(frame: pl.DataFrame, values: list[str], params: dict[str, Any]) -> tuple[pl.DataFrame, list[pl.Expr]]:
    """AlgoPerf rows without the final row, and value expressions turning empty logged cells into NaN.

    Adds the boolean column `__eval`; the final row's `score`/`preemption_count` go to params.
    """
    examples = [c for c in values if c.endswith("/num_examples")]
    is_eval = pl.any_horizontal([pl.col(c).is_not_null() for c in examples]) if examples else pl.lit(False)
    closing = [c for c in ("score", "preemption_count") if c in values]
    is_final = ~is_eval & (pl.any_horizontal([pl.col(c).is_not_null() for c in closing]) if closing else pl.lit(False))
    frame = frame.with_columns(is_eval.alias("__eval"), is_final.alias("__final"))
    for row in frame.filter(pl.col("__final")).select(closing).iter_rows(named=True):
        for c in closing:
            number = _to_float(row[c])
            if number is not None:
                params[f"summary.{c}"] = number
    frame = frame.filter(~pl.col("__final"))
    train_cols = _any_set(frame.filter(~pl.col("__eval")), values) or {c for c in ("loss", "grad_norm") if c in values}
    eval_cols = _any_set(frame.filter(pl.col("__eval")), values)
    exprs = []
    for c in values:
        logged_here = pl.when(pl.col("__eval")).then(pl.lit(c in eval_cols)).otherwise(pl.lit(c in train_cols))
        exprs.append(pl.when(pl.col(c).is_null() & logged_here).then(pl.lit(float("nan"))).otherwise(_numeric(c)).alias(c))
    return frame, exprs


def read_table(path: Path, params: dict[str, Any], problems: list[str]) -> pl.DataFrame:
    """One CSV/TSV file as a metrics frame; raises ReadError when it holds no usable rows."""
    name = path.name
    sep = _separator(path)
    try:
        raw = read_bytes_limited(path)
    except OSError as exc:
        raise ReadError(f"{name}: {exc.strerror or exc}") from None
    raw = _drop_cut_tail(raw, sep, name, problems)
    if not raw.strip():
        raise ReadError(f"{name}: empty file")
    try:
        frame = pl.read_csv(
            io.BytesIO(raw),
            separator=sep,
            infer_schema=False,
            truncate_ragged_lines=True,
            encoding="utf8-lossy",
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ReadError(f"{name}: not a readable table ({str(exc).splitlines()[0]})") from None
    frame = frame.with_columns(pl.col(c).str.strip_chars().replace("", None) for c in frame.columns)
    step = _step_column(frame.columns)
    if step is None:
        raise ReadError(f"{name}: no step column (one of {', '.join(STEP_COLUMNS)})")
    steps = _numeric(step)
    frame = frame.with_columns(
        pl.when(steps.is_finite() & (steps == steps.round(0))).then(steps).otherwise(None).cast(pl.Int64).alias(step)
    )
    no_step = frame[step].null_count()
    if no_step:
        problems.append(f"{name}: {no_step} row(s) without a numeric step skipped")
        frame = frame.filter(pl.col(step).is_not_null())
    lowered = {c.lower(): c for c in frame.columns if c != step}
    wall = next((lowered[w] for w in WALL_COLUMNS if w in lowered), None)
    candidates = [c for c in frame.columns if c not in (step, wall)]
    if not candidates or not frame.height:
        raise ReadError(f"{name}: no metric rows")
    # Per column: cells present, cells that parse as numbers (one pass over the frame).
    counts = frame.select(
        *[pl.col(c).is_not_null().sum().alias(f"p{i}") for i, c in enumerate(candidates)],
        *[_numeric(c).is_not_null().sum().alias(f"n{i}") for i, c in enumerate(candidates)],
    ).row(0, named=True)
    values = []
    for i, c in enumerate(candidates):
        present, parsed = counts[f"p{i}"], counts[f"n{i}"]
        if parsed:
            values.append(c)
            if present > parsed:
                problems.append(f"{name}: column {c!r}: {present - parsed} non-numeric cell(s) skipped")
    if not values:
        raise ReadError(f"{name}: no numeric metric column")
    wall_expr = (_numeric(wall) if wall else pl.lit(None, dtype=pl.Float64)).alias("wall_time_s")
    algoperf = _is_algoperf(frame.columns, step)
    if algoperf:
        frame, exprs = _algoperf_wide(frame, values, params)
        eval_flag = pl.col("__eval")
    else:
        exprs = [_numeric(c).alias(c) for c in values]
        eval_flag = pl.lit(False).alias("__eval")
    wide = frame.select(pl.col(step).alias("step"), wall_expr, eval_flag, *exprs)
    long = wide.unpivot(index=["step", "wall_time_s", "__eval"], on=values, variable_name="key", value_name="value")
    long = long.filter(pl.col("value").is_not_null())
    by_name = pl.col("key").replace_strict({c: infer_split(c) for c in values}, default=None, return_dtype=pl.String)
    # AlgoPerf train rows carry the training loss/grad norm under bare names (`loss`).
    split = pl.when(pl.col("__eval") | pl.lit(not algoperf)).then(by_name).otherwise(pl.lit("train"))
    long = long.select(
        pl.col("step"), pl.col("key"), pl.col("value"), pl.col("wall_time_s"), split.alias("split")
    ).cast(METRIC_COLUMNS)
    # Lightning repeats `epoch` on the train and the val row of one step: keep it once.
    if "epoch" in values:
        epochs = long.filter(pl.col("key") == "epoch").unique(["step"], keep="first", maintain_order=True)
        long = pl.concat([long.filter(pl.col("key") != "epoch"), epochs])
    return long


def _read_params(path: Path, params: dict[str, Any], problems: list[str]) -> None:
    try:
        text = path.read_text(encoding="utf-8")
        data = load_yaml(text) if path.suffix == ".yaml" else json.loads(text)
    except Exception as exc:  # a params file never stops the metrics from being read
        problems.append(f"{path.name}: not parsed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return
    if path.name == "meta_data_0.json":
        data = {k: v for k, v in data.items() if str(k).startswith("workload.")} if isinstance(data, dict) else {}
    elif data is None:
        return
    params.update(flatten_params(data))


@reader("csv", detect=detect, provides_metrics=True, priority=40)
def read(run_dir: Path, files: list[Path]) -> SourceData:
    """Metrics of every table in `files` and params of the param files; ReadError if no table is usable."""
    params: dict[str, Any] = {}
    problems: list[str] = []
    errors: list[str] = []
    frames: dict[Path, pl.DataFrame] = {}
    for path in files:
        if path.name in PARAM_FILES:
            _read_params(path, params, problems)
            continue
        try:
            frames[path] = read_table(path, params, problems)
        except ReadError as exc:
            errors.append(str(exc))
    if not frames:
        raise ReadError("; ".join(errors) if errors else "no CSV metrics file")
    for path, frame in list(frames.items()):
        if path.name == "eval_measurements.csv":
            main = frames.get(path.with_name("measurements.csv"))
            if main is not None:
                frames[path] = frame.join(main.select("step", "key").unique(), on=["step", "key"], how="anti")
    metrics = pl.concat(list(frames.values()), how="vertical")
    return SourceData(metrics=metrics, params=params, problems=errors + problems)
