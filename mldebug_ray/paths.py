"""File and folder names the tool reads and writes, in one place."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import quote

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
# torch.profiler traces of probe steps (probes.deploy.profile_trace), one folder per run;
# TensorBoard's profiler plugin and HTA look for the `.pt.trace.json` suffix.
PROFILES_DIR = "profiles"
TRACE_TEMPLATE = "step-{step}.pt.trace.json"


def table_dir(out_dir: Path, table: str) -> Path:
    return Path(out_dir) / EVIDENCE_DIR / table


def part_key(run_id: str) -> str:
    """A file-name-safe, stable key for a run id (run ids hold '/')."""
    return hashlib.sha1(run_id.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def part_path(out_dir: Path, table: str, key: str) -> Path:
    return table_dir(out_dir, table) / PART_TEMPLATE.format(key=key)


def table_glob(out_dir: Path, table: str) -> str:
    return str(table_dir(out_dir, table) / "**" / "*.parquet")


def profile_trace_path(out_dir: Path, run_id: str, step: int | None) -> Path:
    """Where the profiler trace of a run's checkpoint goes: the run id percent-escaped into one folder name
    ('/' and a leading '.' escaped too, so no run id names a folder above or hidden)."""
    folder = quote(run_id, safe="")
    if folder.startswith("."):
        folder = "%2E" + folder[1:]
    return Path(out_dir) / PROFILES_DIR / folder / TRACE_TEMPLATE.format(step="none" if step is None else step)
