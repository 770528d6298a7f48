"""`write_table` / `read_table`: validated, atomic Parquet parts under <out>/evidence/<table>/."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import polars as pl

from mldebug_ray import paths, schema


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{paths.TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_table(out_dir: Path, table: str, frame: pl.DataFrame, key: str) -> Path:
    """Validate `frame` against `table`'s schema and write it as part `key`, atomically.

    The temp file is hidden (dot-prefixed, ``.tmp``) so ``**/*.parquet`` globs never
    match it; ``os.replace`` makes the part appear whole or not at all.
    """
    frame = schema.validate(table, frame)
    path = paths.part_path(Path(out_dir), table, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{paths.TMP_SUFFIX}")
    try:
        frame.write_parquet(tmp, compression="zstd", statistics=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def scan_table(out_dir: Path, table: str) -> pl.LazyFrame:
    """A lazy scan over every part of `table`; empty (with the schema) when none exist."""
    directory = paths.table_dir(Path(out_dir), table)
    if not directory.is_dir() or not any(directory.rglob("*.parquet")):
        return schema.empty(table).lazy()
    return pl.scan_parquet(paths.table_glob(Path(out_dir), table), schema=schema.schema_of(table))


def read_table(out_dir: Path, table: str) -> pl.DataFrame:
    """Every part of `table` as one frame with the declared schema."""
    return scan_table(out_dir, table).collect()
