"""Nondeterminism: runs with the same configuration and the same seed whose curves differ."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import SweepTables, sweep_detector
from mldebug_ray.detectors.series import finding_id, fmt, metric_ref
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import Finding
from mldebug_ray.sweep.grouping import GroupingConfig
from mldebug_ray.sweep.outcomes import OutcomeConfig
from mldebug_ray.sweep.view import sweep_view

NAME = "nondeterminism"


@dataclass
class NondeterminismConfig:
    """Settings of the `nondeterminism` sweep detector (keys `detectors.nondeterminism.*`)."""

    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    """How runs are grouped; the seed is a seed-like param value or a `seed<N>` path component."""
    outcome: OutcomeConfig = field(default_factory=OutcomeConfig)
    """Which metric is compared (the group's outcome metric)."""
    rtol: float = 1e-3
    """Curves differ when, at some step both logged, |a - b| > rtol * max(|a|, |b|). A bitwise-deterministic
    rerun differs by 0; 0.1% is far above float32 rounding (1e-7) and below any seed effect seen in the corpus
    (seeds of one configuration differ by 0.1-3% at the end)."""
    min_common_steps: int = 2
    """Steps logged by both runs needed for a comparison."""
    final_rtol: float = 0.01
    """A difference of the final values above this share makes the finding medium instead of low."""

    def __post_init__(self) -> None:
        p = f"detectors.{NAME}"
        if not self.rtol > 0:
            raise ConfigError(f"{p}.rtol must be > 0, got {self.rtol}")
        if self.min_common_steps < 1:
            raise ConfigError(f"{p}.min_common_steps must be >= 1, got {self.min_common_steps}")
        if not self.final_rtol > 0:
            raise ConfigError(f"{p}.final_rtol must be > 0, got {self.final_rtol}")


def _compare(a: pl.DataFrame, b: pl.DataFrame) -> tuple[int, float, int, float, float] | None:
    """(common steps, max relative difference, its step, value in a, value in b); NaN vs finite counts as 1."""
    j = a.join(b, on="step", how="inner", suffix="_b").sort("step")
    if j.height == 0:
        return None
    x, y = j["value"].to_numpy(), j["value_b"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.maximum(np.abs(x), np.abs(y))
        rel = np.where(scale > 0, np.abs(x - y) / scale, 0.0)
    both_nan = ~np.isfinite(x) & ~np.isfinite(y) & (np.isnan(x) == np.isnan(y))
    one_bad = np.isfinite(x) != np.isfinite(y)
    rel = np.where(both_nan, 0.0, np.where(one_bad, 1.0, rel))
    i = int(np.nanargmax(rel))
    return j.height, float(rel[i]), int(j["step"][i]), float(x[i]), float(y[i])


@sweep_detector(NAME)
def nondeterminism(tables: SweepTables, cfg: NondeterminismConfig) -> list[Finding]:
    """Identical config and seed, different results (SPEC §5 `nondeterminism`).

    Evidence: runs of one comparison group with the same configuration and the same
    recorded seed (`grouping.py`; a `study_N` folder is not a seed, so AlgoPerf studies
    are never compared here), and their outcome-metric curves, read for those runs only.
    Each duplicate is compared with the first run of its set at the steps both logged;
    the finding cites the two rows at the step of the largest relative difference.
    """
    view = sweep_view(tables, cfg.grouping, cfg.outcome)
    dup = (
        view.runs.filter(pl.col("seed").is_not_null() & (pl.col("status") != "unreadable") & pl.col("key").is_not_null())
        .group_by("group", "config", "seed")
        .agg(pl.col("run_id").sort(), pl.col("key").first())
        .filter(pl.col("run_id").list.len() >= 2)
        .sort("group", "config", "seed")
    )
    if dup.height == 0:
        return []
    wanted = dup.explode("run_id").select("run_id", "key")
    curves = (
        tables.scan("metrics")
        .select("run_id", "step", "key", "value")
        .join(wanted.lazy(), on=["run_id", "key"], how="semi")
        .filter(pl.col("value").is_not_null())
        .unique(["run_id", "step"], keep="last")
        .collect()
    )
    findings = []
    for group, config, seed, ids, key in dup.iter_rows():
        ref = curves.filter(pl.col("run_id") == ids[0]).select("step", "value")
        worst = None
        for other in ids[1:]:
            got = _compare(ref, curves.filter(pl.col("run_id") == other).select("step", "value"))
            if got is None or got[0] < cfg.min_common_steps:
                continue
            if worst is None or got[1] > worst[1][1]:
                worst = (other, got)
        if worst is None or worst[1][1] <= cfg.rtol:
            continue
        other, (n_common, rel, step, va, vb) = worst
        rows = view.runs.filter(pl.col("run_id").is_in(ids))
        finals = rows["final"].drop_nulls().to_numpy()
        final_rel = float((finals.max() - finals.min()) / max(abs(finals).max(), 1e-12)) if finals.size >= 2 else float("nan")
        mixed_failure = rows["failed"].any() and not rows["failed"].all()
        label = rows["config_label"][0]
        summary = (
            f"{len(ids)} runs of configuration {label} in {view.group_label(group)} with the same seed ({seed}) differ: "
            f"`{key}` is {fmt(va)} in {ids[0]} and {fmt(vb)} in {other} at step {step} (relative difference "
            f"{fmt(rel)} > {cfg.rtol}, over {n_common} common steps)"
            + (f"; final values differ by {fmt(100 * final_rel)}%" if np.isfinite(final_rel) else "")
            + ("; one of them failed and the other did not" if mixed_failure else "")
            + ". Either the runs are not deterministic (cuDNN/atomic-add kernels, data-loader workers, unseeded "
            "augmentation) or the recorded seed is not the one that was used."
        )
        findings.append(
            Finding(
                kind="nondeterminism",
                severity="medium" if mixed_failure or (np.isfinite(final_rel) and final_rel > cfg.final_rtol) else "low",
                confidence=0.85,
                summary=summary,
                evidence=(
                    metric_ref(ids[0], step, key, va, f"{ids[0]}: {key} = {fmt(va)} at step {step}"),
                    metric_ref(other, step, key, vb, f"{other}: {key} = {fmt(vb)} at step {step} (same config and seed)"),
                ),
                detector=NAME,
                scope="sweep",
                run_ids=tuple(ids),
                finding_id=finding_id(NAME, None, group, config, seed),
                fix=(
                    "Seed every generator (python, numpy, torch, CUDA, data-loader workers) from the config, set "
                    "torch.use_deterministic_algorithms(True) and CUBLAS_WORKSPACE_CONFIG=:4096:8, and record the seed "
                    "actually used."
                ),
                expected_impact="Reruns of one configuration and seed reproduce the same curve, so differences mean something.",
                verify_by=f"Rerun configuration {label} twice with seed {seed} and check the curves match to {cfg.rtol}.",
            )
        )
    return findings
