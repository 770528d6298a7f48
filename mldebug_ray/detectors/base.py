"""The detector registry: functions from a run's evidence frames to findings."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable

import polars as pl

from mldebug_ray.findings import Finding
from mldebug_ray import schema


@dataclass
class RunEvidence:
    """One run's evidence tables (SPEC §4 schemas, this run's rows only)."""

    run_id: str
    runs: pl.DataFrame = field(default_factory=lambda: schema.empty("runs"))
    params: pl.DataFrame = field(default_factory=lambda: schema.empty("params"))
    metrics: pl.DataFrame = field(default_factory=lambda: schema.empty("metrics"))
    events: pl.DataFrame = field(default_factory=lambda: schema.empty("events"))
    checkpoints: pl.DataFrame = field(default_factory=lambda: schema.empty("checkpoints"))
    layers: pl.DataFrame = field(default_factory=lambda: schema.empty("layers"))
    # Model-in-the-loop probes and telemetry (probes/run_probes.py); empty without probes.
    gradients: pl.DataFrame = field(default_factory=lambda: schema.empty("gradients"))
    activations: pl.DataFrame = field(default_factory=lambda: schema.empty("activations"))
    memory: pl.DataFrame = field(default_factory=lambda: schema.empty("memory"))
    precision: pl.DataFrame = field(default_factory=lambda: schema.empty("precision"))
    outputs: pl.DataFrame = field(default_factory=lambda: schema.empty("outputs"))
    gpu: pl.DataFrame = field(default_factory=lambda: schema.empty("gpu"))
    deployment: pl.DataFrame = field(default_factory=lambda: schema.empty("deployment"))
    robustness: pl.DataFrame = field(default_factory=lambda: schema.empty("robustness"))
    confusion: pl.DataFrame = field(default_factory=lambda: schema.empty("confusion"))
    # The data probe (probes/data.py), once per run when probes.data_fn is set.
    data_splits: pl.DataFrame = field(default_factory=lambda: schema.empty("data_splits"))
    data_labels: pl.DataFrame = field(default_factory=lambda: schema.empty("data_labels"))
    data_overlap: pl.DataFrame = field(default_factory=lambda: schema.empty("data_overlap"))
    data_features: pl.DataFrame = field(default_factory=lambda: schema.empty("data_features"))

    def table(self, name: str) -> pl.DataFrame:
        return getattr(self, name)


# The evidence tables a RunEvidence holds, in field order.
EVIDENCE_TABLES = tuple(f.name for f in fields(RunEvidence) if f.name in schema.TABLES)


# A run detector: (evidence, its own config) -> findings.
RunDetector = Callable[[RunEvidence, object], list[Finding]]


@dataclass(frozen=True)
class Detector:
    name: str
    fn: RunDetector
    config_key: str  # attribute of DetectorsConfig holding this detector's config


DETECTORS: dict[str, Detector] = {}


def detector(name: str, *, config_key: str | None = None):
    """Register a run-level detector under `name`; refuses a duplicate name."""

    def register(fn: RunDetector) -> RunDetector:
        if name in DETECTORS:
            raise ValueError(f"detector {name!r} is already registered")
        DETECTORS[name] = Detector(name, fn, config_key or name)
        return fn

    return register


class SweepTables:
    """Lazy access to a whole sweep's evidence tables on disk, for sweep-level detectors.

    Detectors should filter and select before collecting: on a sweep of thousands of
    runs the metrics table does not fit comfortably in the driver.
    """

    def __init__(self, out_dir):
        self.out_dir = out_dir

    def scan(self, table: str) -> pl.LazyFrame:
        from mldebug_ray.evidence.io import scan_table

        return scan_table(self.out_dir, table)


# A sweep detector: (all runs' tables, its own config) -> findings (scope run or sweep).
SweepDetector = Callable[[SweepTables, object], list[Finding]]

SWEEP_DETECTORS: dict[str, Detector] = {}


def sweep_detector(name: str, *, config_key: str | None = None):
    """Register a detector that compares runs (peers, seeds, hyperparameters); refuses duplicates."""

    def register(fn: SweepDetector) -> SweepDetector:
        if name in SWEEP_DETECTORS or name in DETECTORS:
            raise ValueError(f"detector {name!r} is already registered")
        SWEEP_DETECTORS[name] = Detector(name, fn, config_key or name)
        return fn

    return register
