"""Reproducibility gaps: runs whose recorded configuration lacks a seed or a data version.

The finding kind is `reproducibility_gap`, added to SPEC §5's list (SPEC: "A detector may
add kinds") because none of the fixed kinds means it: `nondeterminism` says two runs with
the same configuration and seed disagree, which is an observed fault; a missing seed is
the absence of the record that would let anyone check. Reporting it as `nondeterminism`
would make a healthy, merely under-documented sweep look broken.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from mldebug_ray.detectors.base import SweepTables, sweep_detector
from mldebug_ray.detectors.series import finding_id
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import Finding
from mldebug_ray.sweep.grouping import GroupingConfig, matches_key
from mldebug_ray.sweep.outcomes import OutcomeConfig
from mldebug_ray.sweep.view import sweep_view

NAME = "reproducibility"


@dataclass
class ReproducibilityConfig:
    """Settings of the `reproducibility` sweep detector (keys `detectors.reproducibility.*`)."""

    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    """Which params are seeds (grouping.seed_keys) and which path components name a seed."""
    data_version_keys: list[str] = field(
        default_factory=lambda: [
            "*data*version*", "*dataset*version*", "*data*revision*", "*dataset*revision*", "*data*hash*",
            "*data*sha*", "*data*commit*", "*dataset*tag*", "*data*checksum*", "*dataset*fingerprint*",
            "*data*snapshot*",
        ]
    )
    """Param keys (fnmatch, case-insensitive, on the key or its last component) that pin the data."""
    max_runs_cited: int = 5
    """Runs cited as evidence per finding (run_ids lists them all)."""

    def __post_init__(self) -> None:
        p = f"detectors.{NAME}"
        if any(not isinstance(v, str) or not v.strip() for v in self.data_version_keys):
            raise ConfigError(f"{p}.data_version_keys must hold non-empty strings, got {self.data_version_keys}")
        if self.max_runs_cited < 1:
            raise ConfigError(f"{p}.max_runs_cited must be >= 1, got {self.max_runs_cited}")


def _finding(view, ids: list[str], severity: str, what: str, why: str, fix: str, tag: str, cfg: ReproducibilityConfig) -> Finding:
    n_groups = view.runs.filter(pl.col("run_id").is_in(ids))["group"].n_unique()
    shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
    return Finding(
        kind="reproducibility_gap",
        severity=severity,
        confidence=0.9,
        summary=f"{len(ids)} of {view.runs.height} runs ({n_groups} comparison group(s); {shown}) {what}: {why}",
        evidence=tuple(view.run_ref(r, f"{r}: {what}") for r in ids[: cfg.max_runs_cited]),
        detector=NAME,
        scope="sweep",
        run_ids=tuple(ids),
        finding_id=finding_id(NAME, None, tag),
        fix=fix,
        expected_impact="Every result of the sweep can be rerun and checked.",
        verify_by="Rerun the analysis: the runs carry the missing params and this finding is gone.",
    )


@sweep_detector(NAME)
def reproducibility(tables: SweepTables, cfg: ReproducibilityConfig) -> list[Finding]:
    """Runs whose recorded configuration has no seed or no data version (kind `reproducibility_gap`).

    Evidence: the `params` each reader found and the run paths (`grouping.py`: a seed is
    a seed-like param or a `seed<N>` path component). Three aggregated sweep-scope
    findings, each listing its runs: no params at all (low: neither hyperparameters nor
    seed can be recovered), params but no seed (low: the result cannot be repeated), no
    data version (info: the data may have changed under the same config). No threshold:
    the record is there or not. A seed kept in a file no reader parses (AlgoPerf's
    `flags_0.json` rng_seed) counts as missing, which is what a reader of the evidence
    sees.
    """
    view = sweep_view(tables, cfg.grouping, OutcomeConfig())
    runs = view.runs.filter(pl.col("status") != "unreadable")
    if runs.height == 0:
        return []
    keys = view.params.select("run_id", "key")
    data_keys = [k for k in keys["key"].unique().to_list() if matches_key(k, cfg.data_version_keys)]
    with_data = set(keys.filter(pl.col("key").is_in(data_keys))["run_id"].to_list())
    no_params = sorted(runs.filter(~pl.col("has_params"))["run_id"].to_list())
    no_seed = sorted(runs.filter(pl.col("has_params") & pl.col("seed").is_null())["run_id"].to_list())
    no_data = sorted(r for r in runs["run_id"].to_list() if r not in with_data)
    findings = []
    if no_params:
        seeded = runs.filter(~pl.col("has_params") & pl.col("seed").is_not_null()).height
        findings.append(_finding(
            view, no_params, "low", "record no configuration (no params were read)",
            "their hyperparameters cannot be recovered from the run directory"
            + (f" ({seeded} name a seed in their folder name only)" if seeded else "") + ".",
            "Save the resolved config next to the metrics (e.g. Hydra's .hydra/config.yaml, hparams.yaml, or a config "
            "JSON) including the seed and the data version.",
            "no_params", cfg,
        ))
    if no_seed:
        findings.append(_finding(
            view, no_seed, "low", "record no seed among their params",
            "the same configuration cannot be rerun to the same result, and seed effects cannot be told from "
            "hyperparameter effects.",
            "Add the seed (and any data-order seed) to the saved config; set it explicitly rather than drawing it at start-up.",
            "no_seed", cfg,
        ))
    if no_data:
        findings.append(_finding(
            view, no_data, "info", "record no data version",
            "a rerun may train on different data under the same config. Keys looked for: "
            + ", ".join(cfg.data_version_keys[:4]) + ", ...",
            "Record the dataset version, revision or content hash (e.g. data.version, dataset_revision) in the config.",
            "no_data_version", cfg,
        ))
    return findings
