"""The reader registry: one reader per format, each detecting its own files in a run directory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import polars as pl

# Frames a reader returns carry no run_id; the run assembler adds it.
METRIC_COLUMNS = {"step": pl.Int64, "key": pl.String, "value": pl.Float64, "wall_time_s": pl.Float64, "split": pl.String}
EVENT_COLUMNS = {"step": pl.Int64, "kind": pl.String, "text": pl.String, "file": pl.String, "line": pl.Int64}
CHECKPOINT_COLUMNS = {
    "step": pl.Int64,
    "path": pl.String,
    "format": pl.String,
    "n_params": pl.Int64,
    "bytes": pl.Int64,
    "status": pl.String,
    "reason": pl.String,
}

# Folders never descended into while looking for a run's files.
SKIP_DIRS = frozenset({"__pycache__", ".git", "node_modules", ".ipynb_checkpoints"})


@dataclass
class SourceData:
    """What one reader got out of its files.

    `problems` are non-fatal notes naming the file (a truncated tail, a skipped
    line); a reader raises ReadError only when it got nothing usable.
    """

    metrics: pl.DataFrame | None = None  # METRIC_COLUMNS
    params: dict[str, Any] = field(default_factory=dict)  # dotted key -> scalar
    events: pl.DataFrame | None = None  # EVENT_COLUMNS
    checkpoints: pl.DataFrame | None = None  # CHECKPOINT_COLUMNS
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Reader:
    """A registered reader.

    detect(run_dir) returns the files of `run_dir` this reader would read (empty:
    not this format); read(run_dir, files) returns a SourceData.
    """

    name: str
    detect: Callable[[Path], list[Path]]
    read: Callable[[Path, list[Path]], SourceData]
    provides_metrics: bool
    # Lower reads first; when two sources log the same (step, key), the first wins.
    priority: int


READERS: dict[str, Reader] = {}


def reader(name: str, *, detect: Callable[[Path], list[Path]], provides_metrics: bool = True, priority: int = 50):
    """Register `read` under `name`; refuses a duplicate name."""

    def register(read: Callable[[Path, list[Path]], SourceData]):
        if name in READERS:
            raise ValueError(f"reader {name!r} is already registered")
        READERS[name] = Reader(name, detect, read, provides_metrics, priority)
        return read

    return register


def files_in(directory: Path, *, max_depth: int = 0) -> list[Path]:
    """Regular files under `directory` down to `max_depth` subfolder levels, symlinks not followed."""
    found: list[Path] = []
    stack = [(Path(directory), 0)]
    while stack:
        current, depth = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        continue
                    if entry.is_file(follow_symlinks=False):
                        found.append(Path(entry.path))
                    elif depth < max_depth and entry.is_dir(follow_symlinks=False) and entry.name not in SKIP_DIRS:
                        stack.append((Path(entry.path), depth + 1))
        except OSError:
            continue
    return sorted(found)


def metrics_frame(rows: list[dict[str, Any]] | dict[str, list]) -> pl.DataFrame:
    """A metrics frame (METRIC_COLUMNS) from row dicts or column lists, missing columns null."""
    frame = pl.DataFrame(rows, schema_overrides=None, strict=False) if rows else pl.DataFrame()
    cols = []
    for name, dtype in METRIC_COLUMNS.items():
        if name in frame.columns:
            cols.append(pl.col(name).cast(dtype, strict=False))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
    if frame.width == 0:
        return pl.DataFrame(schema=METRIC_COLUMNS)
    return frame.select(cols)


def infer_split(key: str) -> str | None:
    """The split a metric key names by convention (`train/loss`, `eval_loss`, `val_acc`), else None."""
    k = key.lower().replace("-", "_")
    head = k.split("/", 1)[0] if "/" in k else k.split("_", 1)[0]
    if head in ("train", "training", "trn"):
        return "train"
    if head in ("val", "valid", "validation", "eval", "dev"):
        return "val"
    if head == "test":
        return "test"
    return None
