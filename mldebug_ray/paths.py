"""File and folder names the tool reads and writes, in one place."""

from __future__ import annotations

import hashlib
from pathlib import Path

EVIDENCE_DIR = "evidence"
DIAGNOSIS_FILE = "diagnosis.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
LOG_FILE = "mldebug.log"  # Hydra names its job log after hydra.job.name ("mldebug")
# Per-run part files: one Parquet file per run (or run batch) and table.
PART_TEMPLATE = "part-{key}.parquet"
SWEEP_PART_KEY = "sweep"
SCHEMA_PART_KEY = "schema"  # an empty part per table: the folder exists and carries the schema
TMP_SUFFIX = ".tmp"


def table_dir(out_dir: Path, table: str) -> Path:
    return Path(out_dir) / EVIDENCE_DIR / table


def part_key(run_id: str) -> str:
    """A file-name-safe, stable key for a run id (run ids hold '/')."""
    return hashlib.sha1(run_id.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def part_path(out_dir: Path, table: str, key: str) -> Path:
    return table_dir(out_dir, table) / PART_TEMPLATE.format(key=key)


def table_glob(out_dir: Path, table: str) -> str:
    return str(table_dir(out_dir, table) / "**" / "*.parquet")
