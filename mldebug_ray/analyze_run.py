"""The work on one run, as a plain function: read -> gather evidence -> detect -> write parts.

No Ray here: `orchestrate` wraps `analyze_runs` in a task; tests call it directly.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mldebug_ray import paths, schema
from mldebug_ray.config import MainConfig
from mldebug_ray.detectors import run_detectors
from mldebug_ray.discover import RunRef
from mldebug_ray.errors import OutputError
from mldebug_ray.evidence.io import write_table
from mldebug_ray.findings import SEVERITY_RANK, findings_frame
from mldebug_ray.fingerprint import config_digest, run_fingerprint
from mldebug_ray.gather import read_run_dir, safe_text
from mldebug_ray.probes.run_probes import PROBE_TABLES, probe_run
from mldebug_ray.readers.text_log import user_patterns

log = logging.getLogger(__name__)

# The order parts are written in: `runs` last, so a run with a `runs` row has all its parts.
RUN_TABLES = (
    "params", "metrics", "events", "checkpoints",
    "layers", "gradients", "activations", "memory", "precision", "outputs", "deployment", "robustness", "confusion", "gpu",  # probes/run_probes.py PROBE_TABLES
    "data_splits", "data_labels", "data_overlap", "data_features",  # probes/data.py DATA_TABLES
    "findings", "runs",
)


@dataclass(frozen=True)
class RunSummary:
    """What a task sends back to the driver: counts and paths, never bulk data."""

    run_id: str
    status: str
    reason: str | None
    n_findings: int
    worst_severity: str | None
    elapsed_s: float
    cached: bool = False
    worker_peak_rss_bytes: int = 0  # the task process's peak RSS after this run (Linux ru_maxrss)


def cached_summary(run: RunRef, out_dir: Path, fingerprint: str) -> RunSummary | None:
    """The summary of a run whose parts from an earlier invocation match `fingerprint`."""
    key = paths.part_key(run.run_id)
    runs_part = paths.part_path(out_dir, "runs", key)
    findings_part = paths.part_path(out_dir, "findings", key)
    if not runs_part.is_file():
        return None
    try:
        row = pl.read_parquet(runs_part).row(0, named=True)
        severities = pl.read_parquet(findings_part, columns=["severity"])["severity"].to_list() if findings_part.is_file() else []
    except Exception:  # a damaged cache entry is recomputed, never trusted
        return None
    if row.get("fingerprint") != fingerprint or row.get("run_id") != run.run_id:
        return None
    worst = min(severities, key=SEVERITY_RANK.__getitem__, default=None)
    return RunSummary(run.run_id, row["status"], row["reason"], len(severities), worst, 0.0, cached=True)


def analyze_run(
    run: RunRef, cfg: MainConfig, out_dir: Path, previous_fingerprint: str | None = None, config_fp: str | None = None
) -> RunSummary:
    """Read, probe and detect on one run and write its evidence parts under `out_dir`.

    When `previous_fingerprint` (from this out_dir's `runs` table) equals the run's
    fingerprint now, the parts on disk are reused and nothing is recomputed.
    """
    started = time.perf_counter()
    key = paths.part_key(run.run_id)
    fingerprint = run_fingerprint(Path(run.path), config_fp or config_digest(cfg.probes, cfg.detectors, cfg.readers))
    if previous_fingerprint == fingerprint:
        cached = cached_summary(run, out_dir, fingerprint)
        if cached is not None:
            return cached
    try:
        with user_patterns(cfg.readers.text_log.patterns):  # a worker process: the config came with the task
            ev, _, problems = read_run_dir(Path(run.path), run.run_id)
        probe_problems: list[str] = []
        for table, frame in probe_run(ev, Path(run.path), cfg.probes, probe_problems, out_dir).items():
            setattr(ev, table, frame)
        for problem in probe_problems:
            log.warning("%s: %s", run.run_id, problem)
        findings, detector_problems = run_detectors(ev, cfg.detectors)
        for problem in detector_problems:
            log.warning("%s: %s", run.run_id, problem)
        frames = {
            "params": ev.params,
            "metrics": ev.metrics,
            "events": ev.events,
            "checkpoints": ev.checkpoints,
            **{table: getattr(ev, table) for table in PROBE_TABLES},
            "findings": findings_frame(findings),
            "runs": ev.runs.with_columns(pl.lit(fingerprint).alias("fingerprint")),
        }
    except Exception as exc:  # the run is marked, the sweep goes on
        log.error("%s: analysis failed: %s", run.run_id, traceback.format_exc(limit=3))
        findings = []
        frames = {t: schema.empty(t) for t in RUN_TABLES}
        frames["runs"] = _unreadable_row(run, f"analysis failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    try:
        for table in RUN_TABLES:
            write_table(out_dir, table, frames[table], key, skip_empty=table != "runs")
    except OSError as exc:
        # Disk full or read-only: this run's `runs` part (written last) is not updated, so a
        # rerun recomputes it; the sweep stops rather than marking runs it cannot record.
        raise OutputError(f"cannot write evidence under {out_dir}: {exc.strerror or exc}") from None
    runs_row = frames["runs"].row(0, named=True)
    worst = min((f.severity for f in findings), key=SEVERITY_RANK.__getitem__, default=None)
    return RunSummary(
        run_id=run.run_id,
        status=runs_row["status"],
        reason=runs_row["reason"],
        n_findings=len(findings),
        worst_severity=worst,
        elapsed_s=time.perf_counter() - started,
    )


def _unreadable_row(run: RunRef, reason: str) -> pl.DataFrame:
    return schema.validate(
        "runs",
        pl.DataFrame(
            [{"run_id": run.run_id, "path": safe_text(run.path), "status": "unreadable", "reason": reason, "n_steps": 0}],
            schema=schema.schema_of("runs"),
        ),
    )


def mark_unreadable(run: RunRef, out_dir: Path, reason: str) -> RunSummary:
    """Record a run whose task could not complete (e.g. its worker kept dying)."""
    key = paths.part_key(run.run_id)
    for table in RUN_TABLES[:-1]:
        write_table(out_dir, table, schema.empty(table), key, skip_empty=True)
    write_table(out_dir, "runs", _unreadable_row(run, reason), key)
    return RunSummary(run.run_id, "unreadable", reason, 0, None, 0.0)


def analyze_runs(runs: list[RunRef], cfg: MainConfig, out_dir: str, previous: dict[str, str] | None = None) -> list[RunSummary]:
    """A batch of runs in one task (tiny runs would drown in per-task overhead)."""
    logging.basicConfig(level=logging.INFO)
    previous = previous or {}
    config_fp = config_digest(cfg.probes, cfg.detectors, cfg.readers)
    summaries = [analyze_run(run, cfg, Path(out_dir), previous.get(run.run_id), config_fp) for run in runs]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return [dataclasses.replace(s, worker_peak_rss_bytes=peak) for s in summaries]
