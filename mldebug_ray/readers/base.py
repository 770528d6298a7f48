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


# Bounds on what one file may cost (issue 10: hostile input gets a reason, not an OOM).
MAX_WHOLE_FILE_BYTES = 2 << 30
"""Formats read whole into memory (CSV, event files): beyond this the file is refused."""
MAX_JSON_DOCUMENT_BYTES = 256 << 20
"""One JSON/YAML document parsed into Python objects (~10x its size in memory). A
trainer_state.json logging every step of a 1M-step run is ~150 MB."""
MAX_LINE_BYTES = 1 << 20
"""One line of a line-based format (JSON lines); a longer line is skipped, never held whole."""


def check_size(path: Path, limit: int, what: str = "file") -> int:
    """The size of `path`; ReadError naming it when larger than `limit`."""
    from mldebug_ray.errors import ReadError

    try:
        size = Path(path).stat().st_size
    except OSError as exc:
        raise ReadError(f"{Path(path).name}: {exc.strerror or exc}") from None
    if size > limit:
        raise ReadError(f"{Path(path).name}: {size:,} bytes is over the {limit:,}-byte limit for a {what}")
    return size


def read_bytes_limited(path: Path, limit: int = MAX_WHOLE_FILE_BYTES, what: str = "file read whole") -> bytes:
    """The bytes of `path`, refusing files over `limit` before reading them."""
    from mldebug_ray.errors import ReadError

    check_size(path, limit, what)
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ReadError(f"{Path(path).name}: {exc.strerror or exc}") from None


def iter_lines(path: Path, problems: list[str], max_line_bytes: int = MAX_LINE_BYTES):
    """Yield (index, line, ended) for each line of `path`, streaming with bounded memory.

    `ended` is False only for a last line without a line end (a file still being
    written). A line longer than `max_line_bytes` is skipped while it is read past,
    in chunks, and noted once in `problems`.
    """
    from mldebug_ray.errors import ReadError

    name = Path(path).name
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise ReadError(f"{name}: {exc.strerror or exc}") from None
    skipped = 0
    with fh:
        index = 0
        while True:
            line = fh.readline(max_line_bytes + 1)
            if not line:
                break
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # read past the rest of the oversized line
                    line = fh.readline(max_line_bytes)
                skipped += 1
                index += 1
                continue
            ended = line.endswith(b"\n")
            yield index, line.rstrip(b"\r\n"), ended
            index += 1
    if skipped:
        problems.append(f"{name}: {skipped} line(s) longer than {max_line_bytes:,} bytes skipped")
