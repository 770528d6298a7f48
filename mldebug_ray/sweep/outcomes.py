"""Per-run outcomes of a sweep: best and final validation metric, failure, steps to a target.

The outcome metric of a comparison group is one key for all its runs: the validation
loss (by role, `detectors.series.metric_role`) logged by most runs of the group, else
the train loss when fewer than half the runs log a validation loss (Pythia's seeds log
only `train/lm_loss`). `OutcomeConfig.metric_keys` overrides the choice.

- final: the mean of the finite values among the last `tail_frac` of the run's points
  (at least one point): one point for an evaluation every few thousand steps, a smoothed
  level for a per-step train loss (2% of Pythia's 143,000 steps = 2,860 steps, close
  to the 1,000-step means the corpus labels quote).
- best: the lowest mean over consecutive blocks of as many points as 'final' averages
  (the lowest single value for sparse evaluations; highest for `higher_is_better`).
- failed: the run is unreadable, never logged the outcome metric (crashed before its
  first evaluation), ends on a NaN/Inf outcome value, or carries a run-level finding of
  a kind in `fail_kinds` at a severity in `fail_severities` (critical nan_inf /
  divergence). A failed run is a failure, not missing data: its oriented outcome is
  +inf, which ranks last in every comparison.
- steps_to_target: the first step at which the metric reaches the target: a fixed
  `target_value`, or per run the param named by `target_param` (AlgoPerf's
  `workload.validation_target_value`).

Only per-run aggregates are collected: the metrics scan is filtered to the chosen key
per run and reduced with a group_by inside the lazy query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import polars as pl

from mldebug_ray.detectors.series import CANONICAL, metric_role, split_of
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import SEVERITIES

VAL, TRAIN = "val", "train"


@dataclass
class OutcomeConfig:
    """What a run's outcome is (keys `detectors.<name>.outcome.*`)."""

    metric_keys: list[str] = field(default_factory=list)
    """Outcome metric keys to use, first one present in a group wins; empty: the validation loss by role."""
    higher_is_better: bool = False
    """True when `metric_keys` name a score (accuracy, BLEU) rather than a loss."""
    tail_frac: float = 0.02
    """'final' is the mean of the last tail_frac of a run's points of the outcome metric (at least one)."""
    min_val_frac: float = 0.5
    """The validation loss is the outcome when at least this share of a group's runs log it; else the train loss."""
    fail_kinds: list[str] = field(default_factory=lambda: ["nan_inf", "divergence"])
    """Run-level finding kinds that make a run count as failed ..."""
    fail_severities: list[str] = field(default_factory=lambda: ["critical"])
    """... at these severities."""
    target_value: Optional[float] = None
    """Steps to target: the first step the metric reaches this value (null: use target_param)."""
    target_param: Optional[str] = None
    """A param holding each run's own target, e.g. AlgoPerf's `workload.validation_target_value` (only when
    its `workload.target_metric_name` is the outcome metric: for ogbg it is a mAP, not a loss); null: none."""

    def __post_init__(self) -> None:
        if not 0.0 < self.tail_frac <= 0.5:
            raise ConfigError(f"detectors.<sweep detector>.outcome.tail_frac must be in (0, 0.5], got {self.tail_frac}")
        if not 0.0 < self.min_val_frac <= 1.0:
            raise ConfigError(f"detectors.<sweep detector>.outcome.min_val_frac must be in (0, 1], got {self.min_val_frac}")
        bad = [s for s in self.fail_severities if s not in SEVERITIES]
        if bad:
            raise ConfigError(f"detectors.<sweep detector>.outcome.fail_severities: unknown severities {bad}; known: {SEVERITIES}")
        if self.higher_is_better and not self.metric_keys:
            raise ConfigError("detectors.<sweep detector>.outcome.higher_is_better needs outcome.metric_keys (the default outcome is a loss)")
        if self.target_value is not None and not math.isfinite(self.target_value):
            raise ConfigError(f"detectors.<sweep detector>.outcome.target_value must be finite, got {self.target_value}")

    def key(self) -> tuple:
        return (
            tuple(self.metric_keys), self.higher_is_better, self.tail_frac, self.min_val_frac,
            tuple(self.fail_kinds), tuple(self.fail_severities), self.target_value, self.target_param,
        )


OUTCOME_SCHEMA = {
    "run_id": pl.String,
    "key": pl.String,
    "split": pl.String,
    "n_points": pl.UInt32,
    "last_step": pl.Int64,
    "final": pl.Float64,
    "final_step": pl.Int64,
    "final_value": pl.Float64,
    "best": pl.Float64,
    "best_step": pl.Int64,
    "best_value": pl.Float64,
    "first_nonfinite_step": pl.Int64,
    "first_nonfinite_value": pl.Float64,
    "ends_nonfinite": pl.Boolean,
    "steps_to_target": pl.Int64,
    "target": pl.Float64,
}


def key_candidates(metric_stats: pl.DataFrame, cfg: OutcomeConfig) -> pl.DataFrame:
    """(key, split) pairs that can be an outcome: kind (val/train), tier (0 canonical spelling, or position in metric_keys)."""
    rows = []
    for key, split in metric_stats.select("key", "split").unique().iter_rows():
        if cfg.metric_keys:
            if key in cfg.metric_keys:
                rows.append((key, split, VAL, cfg.metric_keys.index(key)))
            continue
        if metric_role(key) != "loss":
            continue
        found = split_of(key, split)
        kind = VAL if found == "val" else TRAIN if found in ("train", None) else None
        if kind is None:
            continue
        tier = 0 if " ".join(key.strip().lower().split()) in CANONICAL["loss"] else 1
        rows.append((key, split, kind, tier))
    return pl.DataFrame(rows, schema={"key": pl.String, "split": pl.String, "kind": pl.String, "tier": pl.Int64}, orient="row")


def choose_keys(metric_stats: pl.DataFrame, run_groups: pl.DataFrame, cfg: OutcomeConfig) -> pl.DataFrame:
    """One outcome (key, split) per group: group, key, split, kind."""
    cands = key_candidates(metric_stats, cfg)
    empty = pl.DataFrame(schema={"group": pl.String, "key": pl.String, "split": pl.String, "kind": pl.String})
    if cands.height == 0:
        return empty
    sizes = run_groups.group_by("group").agg(pl.len().alias("group_size"))
    per = (
        metric_stats.filter(pl.col("n_finite") > 0)
        .join(cands, on=["key", "split"], how="inner", nulls_equal=True)
        .join(run_groups, on="run_id", how="inner")
        .group_by("group", "key", "split", "kind", "tier")
        .agg(pl.col("run_id").n_unique().alias("n_runs"), pl.col("n_finite").sum().alias("n_finite"))
        .join(sizes, on="group")
    )
    if cfg.metric_keys:
        usable = per.with_columns(pl.lit(0).alias("kind_rank"))
    else:
        # The validation loss wins when enough runs log it; otherwise the train loss.
        usable = per.with_columns(
            pl.when((pl.col("kind") == VAL) & (pl.col("n_runs") >= cfg.min_val_frac * pl.col("group_size")))
            .then(0)
            .when(pl.col("kind") == TRAIN)
            .then(1)
            .otherwise(2)
            .alias("kind_rank")
        )
    return (
        usable.sort(["group", "kind_rank", "n_runs", "tier", "n_finite", "key"], descending=[False, False, True, False, True, False])
        .group_by("group", maintain_order=True)
        .first()
        .select("group", "key", "split", "kind")
    )


def run_outcomes(scan_metrics: pl.LazyFrame, chosen: pl.DataFrame, targets: pl.DataFrame, cfg: OutcomeConfig) -> pl.DataFrame:
    """Per-run aggregates of each run's outcome series (OUTCOME_SCHEMA).

    `chosen`: run_id, key, split (the run's outcome key); `targets`: run_id, target.
    Values are oriented so that lower is better before the aggregates (best = min).
    """
    if chosen.height == 0:
        return pl.DataFrame(schema=OUTCOME_SCHEMA)
    sign = -1.0 if cfg.higher_is_better else 1.0
    v = pl.col("y")
    finite = v.is_finite()
    tail_k = (pl.col("n_run").cast(pl.Float64) * cfg.tail_frac).ceil().clip(lower_bound=1.0)
    lf = (
        scan_metrics.select("run_id", "step", "key", "split", "value")
        .join(chosen.lazy(), on=["run_id", "key", "split"], how="semi", nulls_equal=True)
        .filter(pl.col("value").is_not_null())
        .join(targets.lazy(), on="run_id", how="left")
        .with_columns((pl.col("value") * sign).alias("y"), (pl.col("target") * sign).alias("y_target"))
        .sort("run_id", "step")
        .with_columns(
            pl.int_range(pl.len()).over("run_id").alias("pos"),
            pl.len().over("run_id").alias("n_run"),
        )
    )
    # best: the lowest mean over consecutive blocks of tail_k points (one point for sparse
    # evaluations; a smoothed level for a per-step train loss, where the lowest single
    # point is noise), cited at the block's lowest point.
    blocks = (
        lf.filter(finite)
        .with_columns((pl.col("pos").cast(pl.Float64) / tail_k).floor().alias("block"))
        .group_by("run_id", "block")
        .agg(
            v.mean().alias("block_mean"),
            pl.col("step").sort_by(v).first().alias("block_step"),
            pl.col("value").sort_by(v).first().alias("block_value"),
        )
        .sort("block_mean", "block")
        .group_by("run_id")
        .agg(
            (pl.col("block_mean").first() * sign).alias("best"),
            pl.col("block_step").first().alias("best_step"),
            pl.col("block_value").first().alias("best_value"),
        )
    )
    agg = lf.group_by("run_id").agg(
        pl.col("key").first(),
        pl.col("split").first(),
        pl.len().alias("n_points"),
        pl.col("step").max().alias("last_step"),
        (v.filter(finite & (pl.col("pos") >= pl.col("n_run") - tail_k)).mean() * sign).alias("final"),
        pl.col("step").filter(finite).max().alias("final_step"),
        pl.col("value").filter(finite).last().alias("final_value"),
        pl.col("step").filter(~finite).min().alias("first_nonfinite_step"),
        pl.col("value").filter(~finite).first().alias("first_nonfinite_value"),
        (~v.last().is_finite()).alias("ends_nonfinite"),
        pl.col("step").filter(finite & (v <= pl.col("y_target"))).min().alias("steps_to_target"),
        pl.col("target").first(),
    )
    out = agg.join(blocks, on="run_id", how="left").collect()
    return out.select([pl.col(c).cast(t) for c, t in OUTCOME_SCHEMA.items()])
