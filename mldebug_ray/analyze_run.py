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
from mldebug_ray.detectors import EVIDENCE_TABLES, RunEvidence, run_detectors
from mldebug_ray.detectors.screen import screen_runs
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
RUN_TABLES = ("params", "metrics", "events", "checkpoints", *PROBE_TABLES, "findings", "runs")


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


# Runs of a task are screened together (detectors/screen.py: every run at once in polars,
# the exact detectors only on runs that can fire) in groups of at most this many metric
# rows, so a task holds a bounded amount of evidence: 2M rows are ~100 MB in memory, and a
# run bigger than that is screened on its own.
SCREEN_GROUP_MAX_ROWS = 2_000_000


@dataclass
class _Prepared:
    """A run read and probed, waiting for its detectors and its parts to be written."""

    run: RunRef
    ev: RunEvidence
    fingerprint: str
    started: float


def _prepare(run: RunRef, cfg: MainConfig, out_dir: Path, previous_fingerprint: str | None, config_fp: str) -> _Prepared | RunSummary:
    """Read and probe one run; a summary instead when its cached parts still hold or it failed."""
    started = time.perf_counter()
    fingerprint = run_fingerprint(Path(run.path), config_fp)
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
    except Exception as exc:  # the run is marked, the sweep goes on
        return _finish_failed(run, out_dir, exc, started)
    return _Prepared(run, ev, fingerprint, started)


def _detect_and_write(p: _Prepared, cfg: MainConfig, out_dir: Path, screened_out: bool) -> RunSummary:
    """Run the detectors (none when the screen showed none can fire) and write the run's parts."""
    try:
        findings, detector_problems = ([], []) if screened_out else run_detectors(p.ev, cfg.detectors)
        for problem in detector_problems:
            log.warning("%s: %s", p.run.run_id, problem)
        ev = p.ev
        frames = {
            "params": ev.params,
            "metrics": ev.metrics,
            "events": ev.events,
            "checkpoints": ev.checkpoints,
            **{table: getattr(ev, table) for table in PROBE_TABLES},
            "findings": findings_frame(findings),
            "runs": ev.runs.with_columns(pl.lit(p.fingerprint).alias("fingerprint")),
        }
    except Exception as exc:
        return _finish_failed(p.run, out_dir, exc, p.started)
    _write_parts(p.run, out_dir, frames)
    runs_row = frames["runs"].row(0, named=True)
    worst = min((f.severity for f in findings), key=SEVERITY_RANK.__getitem__, default=None)
    return RunSummary(
        run_id=p.run.run_id,
        status=runs_row["status"],
        reason=runs_row["reason"],
        n_findings=len(findings),
        worst_severity=worst,
        elapsed_s=time.perf_counter() - p.started,
    )


def _finish_failed(run: RunRef, out_dir: Path, exc: Exception, started: float) -> RunSummary:
    log.error("%s: analysis failed: %s", run.run_id, traceback.format_exc(limit=3))
    frames = {t: schema.empty(t) for t in RUN_TABLES}
    frames["runs"] = _unreadable_row(run, f"analysis failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    _write_parts(run, out_dir, frames)
    row = frames["runs"].row(0, named=True)
    return RunSummary(run.run_id, row["status"], row["reason"], 0, None, time.perf_counter() - started)


def _write_parts(run: RunRef, out_dir: Path, frames: dict[str, pl.DataFrame]) -> None:
    key = paths.part_key(run.run_id)
    try:
        for table in RUN_TABLES:
            write_table(out_dir, table, frames[table], key, skip_empty=table != "runs")
    except OSError as exc:
        # Disk full or read-only: this run's `runs` part (written last) is not updated, so a
        # rerun recomputes it; the sweep stops rather than marking runs it cannot record.
        raise OutputError(f"cannot write evidence under {out_dir}: {exc.strerror or exc}") from None


def analyze_run(
    run: RunRef, cfg: MainConfig, out_dir: Path, previous_fingerprint: str | None = None, config_fp: str | None = None
) -> RunSummary:
    """Read, probe and detect on one run and write its evidence parts under `out_dir`.

    When `previous_fingerprint` (from this out_dir's `runs` table) equals the run's
    fingerprint now, the parts on disk are reused and nothing is recomputed.
    """
    prepared = _prepare(run, cfg, out_dir, previous_fingerprint, config_fp or config_digest(cfg.probes, cfg.detectors, cfg.readers))
    if isinstance(prepared, RunSummary):
        return prepared
    return _detect_and_write(prepared, cfg, out_dir, screened_out=False)


def _screened_out(group: list[_Prepared], cfg: MainConfig) -> set[str]:
    """Runs of `group` that no run detector can flag, screened all at once (detectors/screen.py)."""
    if len(group) < 2:
        return set()  # one run: its exact detectors cost less than the screen
    try:
        tables = {}
        for table in EVIDENCE_TABLES:
            frames = [getattr(p.ev, table) for p in group if getattr(p.ev, table).height]
            if frames:
                tables[table] = pl.concat(frames, how="vertical_relaxed")
        kept = set(screen_runs(tables, cfg.detectors)["run_id"].to_list())
    except Exception as exc:  # the screen only saves time: on any doubt every run is detected
        log.warning("screening %d runs failed, detecting each: %s", len(group), exc)
        return set()
    return {p.run.run_id for p in group} - kept


def _detect_group(group: list[_Prepared], cfg: MainConfig, out_dir: Path) -> list[RunSummary]:
    dropped = _screened_out(group, cfg)
    return [_detect_and_write(p, cfg, out_dir, p.run.run_id in dropped) for p in group]


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
    """A batch of runs in one task (tiny runs would drown in per-task overhead).

    Runs are read and probed one by one, then screened and detected in groups of at most
    SCREEN_GROUP_MAX_ROWS metric rows: the run detectors' heavy part is vectorised over the
    group's runs at once (detectors/screen.py), with the same findings as run by run.
    """
    logging.basicConfig(level=logging.INFO)
    previous = previous or {}
    config_fp = config_digest(cfg.probes, cfg.detectors, cfg.readers)
    root = Path(out_dir)
    done: dict[str, RunSummary] = {}
    group: list[_Prepared] = []
    rows = 0
    for run in runs:
        prepared = _prepare(run, cfg, root, previous.get(run.run_id), config_fp)
        if isinstance(prepared, RunSummary):
            done[run.run_id] = prepared
            continue
        if group and rows + prepared.ev.metrics.height > SCREEN_GROUP_MAX_ROWS:
            done.update((s.run_id, s) for s in _detect_group(group, cfg, root))
            group, rows = [], 0
        group.append(prepared)
        rows += prepared.ev.metrics.height
    done.update((s.run_id, s) for s in _detect_group(group, cfg, root))
    summaries = [done[run.run_id] for run in runs]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return [dataclasses.replace(s, worker_peak_rss_bytes=peak) for s in summaries]
