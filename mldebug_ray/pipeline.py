"""The whole invocation: generate -> discover -> fan out -> diagnose -> render."""

from __future__ import annotations

import importlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mldebug_ray import paths, schema
from mldebug_ray.config import AgentConfig, MainConfig
from mldebug_ray.diagnose import rules
from mldebug_ray.discover import discover
from mldebug_ray.errors import EXIT_OK, EXIT_UNREADABLE_RUNS, ConfigError
from mldebug_ray.detectors import SweepTables, run_sweep_detectors
from mldebug_ray.evidence.io import atomic_write_bytes, remove_stale_parts, remove_temp_files, remove_temp_files_settled, write_schema_parts, write_table
from mldebug_ray.findings import findings_frame
from mldebug_ray.orchestrate import fan_out, ray_cluster
from mldebug_ray.readers import text_log
from mldebug_ray.render.report_html import write_report_html
from mldebug_ray.render.report_md import render_markdown, terminal_summary

log = logging.getLogger(__name__)



@dataclass
class PipelineResult:
    """What an invocation wrote and how it ended."""

    out_dir: Path
    exit_code: int
    n_runs: int
    n_unreadable: int
    timings_s: dict[str, float] = field(default_factory=dict)
    worker_peak_rss_bytes: int = 0

    @property
    def paths(self) -> dict[str, Path]:
        return {
            "out_dir": self.out_dir,
            "evidence": self.out_dir / paths.EVIDENCE_DIR,
            "diagnosis": self.out_dir / paths.DIAGNOSIS_FILE,
            "report_md": self.out_dir / paths.REPORT_MD,
            "report_html": self.out_dir / paths.REPORT_HTML,
        }


def load_entry_point(spec: str, key: str):
    """Import `module:function`; ConfigError names the key when it cannot."""
    module_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}: cannot import {spec!r}: {exc}") from None


def diagnose(out_dir: Path, agent: AgentConfig) -> dict:
    """The configured agent's diagnosis. The one place the core reaches the LLM agent, imported only when chosen."""
    if agent.kind == "anthropic":
        from mldebug_ray.agent import anthropic_agent

        return anthropic_agent.diagnose(out_dir, agent)
    return rules.diagnose(out_dir, agent)


def run_pipeline(cfg: MainConfig, out_dir: Path, *, print_summary: bool = True) -> PipelineResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    sweep = cfg.sweep
    assert sweep is not None

    if sweep.generate:
        generate = load_entry_point(sweep.generate, "sweep.generate")
        t0 = time.perf_counter()
        log.info("building sweep %r under %s (cached after the first run)", sweep.name, sweep.roots[0])
        generate(sweep.roots[0])
        timings["generate_s"] = time.perf_counter() - t0
        log.info("sweep ready in %.1fs", timings["generate_s"])

    t0 = time.perf_counter()
    text_log.configure(cfg.readers.text_log.patterns)  # the driver; workers get them with the task
    runs = discover(sweep.roots, include=sweep.include, exclude=sweep.exclude, max_depth=sweep.max_depth, exclude_dirs=[out_dir])
    timings["discover_s"] = time.perf_counter() - t0
    log.info("found %d runs under %s in %.2fs", len(runs), ", ".join(sweep.roots), timings["discover_s"])
    if not runs:
        raise ConfigError(f"sweep.roots: no run directories (no metrics source) under {', '.join(sweep.roots)}")

    remove_temp_files(out_dir)
    write_schema_parts(out_dir, schema.TABLES)
    t0 = time.perf_counter()
    try:
        with ray_cluster(cfg.cluster):
            summaries = fan_out(runs, cfg, out_dir)
    except BaseException:
        # A full disk or an interrupt stops workers mid-write; their hidden temp files go
        # once Ray is down, so the out_dir holds whole parts only and a rerun resumes.
        remove_temp_files_settled(out_dir)
        raise
    timings["analyze_s"] = time.perf_counter() - t0
    stale = remove_stale_parts(out_dir, {paths.part_key(r.run_id) for r in runs})
    if stale:
        log.info("removed %d evidence parts of runs no longer in the sweep", stale)

    t0 = time.perf_counter()
    sweep_findings, problems = run_sweep_detectors(SweepTables(out_dir), cfg.detectors)
    for problem in problems:
        log.warning("sweep detector %s", problem)
    write_table(out_dir, "findings", findings_frame(sweep_findings), paths.SWEEP_PART_KEY)
    timings["sweep_detect_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    diagnosis = diagnose(out_dir, cfg.agent)
    # report.html first, so diagnosis.json can point at it (report.md if rendering failed)
    html_ok = write_report_html(out_dir, diagnosis, sweep.name)
    diagnosis.setdefault("analysis_artifacts", {})["report"] = paths.REPORT_HTML if html_ok else paths.REPORT_MD
    atomic_write_bytes(out_dir / paths.DIAGNOSIS_FILE, rules.dumps(diagnosis).encode())
    atomic_write_bytes(out_dir / paths.REPORT_MD, render_markdown(diagnosis, sweep.name).encode())
    timings["diagnose_s"] = time.perf_counter() - t0

    n_unreadable = sum(1 for s in summaries if s.status == "unreadable")
    if print_summary:
        print(terminal_summary(diagnosis), file=sys.stdout)
        print(f"\n{len(runs)} runs ({n_unreadable} unreadable); outputs in {out_dir}", file=sys.stdout)
    log.info("timings: %s", ", ".join(f"{k}={v:.2f}" for k, v in timings.items()))
    return PipelineResult(
        out_dir=out_dir,
        exit_code=EXIT_UNREADABLE_RUNS if n_unreadable else EXIT_OK,
        n_runs=len(runs),
        n_unreadable=n_unreadable,
        timings_s=timings,
        worker_peak_rss_bytes=max((s.worker_peak_rss_bytes for s in summaries), default=0),
    )
