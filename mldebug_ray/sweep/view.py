"""The sweep as the sweep detectors see it: runs with group, configuration, repeat and outcome, built once.

Every sweep detector asks `sweep_view(tables, grouping_cfg, outcome_cfg)`; the result is
cached per `SweepTables` object and settings, so six detectors with the default settings
scan the tables once. Only small frames are collected: runs, params, per-(run, key)
metric counts, per-run outcome aggregates and the run-level findings.
"""

from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass
from typing import Iterator

import polars as pl

from mldebug_ray.detectors.base import SWEEP_DETECTORS, SweepTables
from mldebug_ray.detectors.series import fmt
from mldebug_ray.findings import EvidenceRef
from mldebug_ray.sweep.grouping import Grouping, GroupingConfig, build_grouping
from mldebug_ray.sweep.outcomes import OUTCOME_SCHEMA, OutcomeConfig, choose_keys, run_outcomes

_CACHE: "weakref.WeakKeyDictionary[SweepTables, dict]" = weakref.WeakKeyDictionary()

SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}


@dataclass
class SweepView:
    """Runs of the sweep with their group, configuration, repeat, outcome and failure."""

    grouping: Grouping
    runs: pl.DataFrame
    """grouping.runs + OUTCOME_SCHEMA columns + failed, fail_reason, fail_finding_id, y_final, y_best."""
    chosen: pl.DataFrame
    """group, key, split, kind: each group's outcome metric."""
    findings: pl.DataFrame
    """Run-scope findings: run_id, finding_id, kind, severity, onset_step."""
    params: pl.DataFrame
    """run_id, key, value, value_num of every param (for evidence references)."""
    higher_is_better: bool
    _by_group: dict | None = None

    # ---- groups -----------------------------------------------------------------------

    def groups(self, min_runs: int = 2) -> Iterator[tuple[str, pl.DataFrame]]:
        """(group key, its runs) for groups with at least `min_runs` runs, in a fixed order."""
        if self._by_group is None:
            self._by_group = {k[0]: v.sort("run_id") for k, v in self.runs.partition_by("group", as_dict=True).items()}
        for group in sorted(self._by_group):
            if self._by_group[group].height >= min_runs:
                yield group, self._by_group[group]

    def outcome_key(self, group: str) -> tuple[str | None, str]:
        """(metric key, 'validation'/'train'/'outcome') of a group's outcome."""
        row = self.chosen.filter(pl.col("group") == group)
        if row.height == 0:
            return None, "outcome"
        kind = row["kind"][0]
        return row["key"][0], ("validation" if kind == "val" else "train")

    def outcome_name(self, group: str, which: str = "final") -> str:
        key, kind = self.outcome_key(group)
        return f"{which} {kind} `{key}`" if key else f"{which} outcome"

    def group_label(self, group: str) -> str:
        """The group key as a reader sees it: repeat parts shown as `*`."""
        text = re.sub(r"(^|/)~", r"\1", group).replace("~", "-")
        return text.replace("<id>", "*").replace("#", "*")

    # ---- evidence ------------------------------------------------------------------------

    def final_ref(self, row: dict, text: str = "") -> EvidenceRef | None:
        """The run's last finite point of its outcome metric (or its first NaN/Inf when it has none)."""
        if row.get("final_step") is not None:
            value = row["final_value"]
            return EvidenceRef(
                "metrics", {"run_id": row["run_id"], "step": int(row["final_step"]), "key": row["key"]}, value,
                text or f"{row['key']} = {fmt(value)} at step {row['final_step']} (last finite point)",
            )
        return self.nonfinite_ref(row, text)

    def best_ref(self, row: dict, text: str = "") -> EvidenceRef | None:
        if row.get("best_step") is None:
            return None
        return EvidenceRef(
            "metrics", {"run_id": row["run_id"], "step": int(row["best_step"]), "key": row["key"]}, row["best_value"],
            text or f"best {row['key']} level {fmt(row['best'])} (point {fmt(row['best_value'])} at step {row['best_step']})",
        )

    def nonfinite_ref(self, row: dict, text: str = "") -> EvidenceRef | None:
        if row.get("first_nonfinite_step") is None:
            return None
        value = row["first_nonfinite_value"]
        return EvidenceRef(
            "metrics", {"run_id": row["run_id"], "step": int(row["first_nonfinite_step"]), "key": row["key"]}, value,
            text or f"{row['key']} = {fmt(value)} at step {row['first_nonfinite_step']}",
        )

    def failure_ref(self, row: dict) -> EvidenceRef:
        """What made a failed run fail: its NaN/Inf point, the finding, or the run row."""
        if row.get("fail_finding_id"):
            return EvidenceRef("findings", {"finding_id": row["fail_finding_id"]}, None, f"{row['run_id']}: {row['fail_reason']}")
        ref = self.nonfinite_ref(row, f"{row['run_id']}: {row['fail_reason']}")
        return ref or self.run_ref(row["run_id"], row["fail_reason"] or "failed")

    def param_ref(self, run_id: str, key: str, text: str = "") -> EvidenceRef | None:
        hit = self.params.filter((pl.col("run_id") == run_id) & (pl.col("key") == key))
        if hit.height == 0:
            return None
        value, number = hit["value"][0], hit["value_num"][0]
        return EvidenceRef("params", {"run_id": run_id, "key": key}, number, text or f"{key} = {value} in {run_id}")

    def run_ref(self, run_id: str, text: str = "") -> EvidenceRef:
        return EvidenceRef("runs", {"run_id": run_id}, None, text or run_id)

    def finding_ref(self, finding_id: str, text: str = "") -> EvidenceRef:
        return EvidenceRef("findings", {"finding_id": finding_id}, None, text)

    def outcome_text(self, value: float) -> str:
        """An oriented outcome back in the metric's units, 'failed' for +inf."""
        if value is None or (isinstance(value, float) and math.isinf(value)):
            return "failed"
        return fmt(-value if self.higher_is_better else value)


def _failure_columns(frame: pl.DataFrame, sign: float) -> pl.DataFrame:
    reason = (
        pl.when(pl.col("status") == "unreadable").then(pl.lit("run unreadable"))
        .when(pl.col("n_points").is_null()).then(pl.lit("never logged the outcome metric"))
        .when(pl.col("ends_nonfinite")).then(
            pl.format("{} is NaN/Inf from step {}", pl.col("key"), pl.col("first_nonfinite_step").cast(pl.String))
        )
        .when(pl.col("fail_finding_id").is_not_null()).then(
            pl.format("{} finding at step {}", pl.col("fail_kind"), pl.col("fail_onset").cast(pl.String).fill_null("?"))
        )
        .when(pl.col("final").is_null()).then(pl.lit("no finite value of the outcome metric"))
        .otherwise(None)
    )
    frame = frame.with_columns(reason.alias("fail_reason"))
    failed = pl.col("fail_reason").is_not_null()
    return frame.with_columns(
        failed.alias("failed"),
        pl.when(failed).then(float("inf")).otherwise(pl.col("final") * sign).alias("y_final"),
        pl.when(failed).then(float("inf")).otherwise(pl.col("best") * sign).alias("y_best"),
    )


def build_view(tables: SweepTables, gcfg: GroupingConfig, ocfg: OutcomeConfig) -> SweepView:
    runs = tables.scan("runs").select("run_id", "status").unique("run_id", keep="last").collect()
    params = tables.scan("params").select("run_id", "key", "value", "value_num").collect()
    grouping = build_grouping(runs, params, gcfg)
    run_groups = grouping.runs.select("run_id", "group")

    stats = (
        tables.scan("metrics")
        .group_by("run_id", "key", "split")
        .agg(pl.len().alias("n"), pl.col("value").is_finite().sum().alias("n_finite"))
        .collect()
    )
    chosen = choose_keys(stats, run_groups, ocfg)
    per_run = run_groups.join(chosen, on="group", how="inner").select("run_id", "key", "split")
    if ocfg.target_value is not None:
        targets = runs.select("run_id").with_columns(pl.lit(float(ocfg.target_value)).alias("target"))
    elif ocfg.target_param:
        targets = params.filter(pl.col("key") == ocfg.target_param).select("run_id", pl.col("value_num").alias("target"))
    else:
        targets = pl.DataFrame(schema={"run_id": pl.String, "target": pl.Float64})
    targets = targets.unique("run_id")
    outcomes = run_outcomes(tables.scan("metrics"), per_run, targets, ocfg)

    # Run-level findings only: a sweep part left by an earlier invocation in the same
    # out_dir holds this package's own run-scope findings (seed outliers), not symptoms.
    findings = (
        tables.scan("findings")
        .filter((pl.col("scope") == "run") & ~pl.col("detector").is_in(list(SWEEP_DETECTORS)))
        .select("run_id", "finding_id", "kind", "severity", "onset_step")
        .collect()
    )
    fail = (
        findings.filter(pl.col("kind").is_in(ocfg.fail_kinds) & pl.col("severity").is_in(ocfg.fail_severities))
        .sort("onset_step", nulls_last=True)
        .group_by("run_id", maintain_order=True)
        .first()
        .select("run_id", pl.col("finding_id").alias("fail_finding_id"), pl.col("kind").alias("fail_kind"),
                pl.col("onset_step").alias("fail_onset"))
    )
    frame = grouping.runs.join(outcomes, on="run_id", how="left").join(fail, on="run_id", how="left")
    sign = -1.0 if ocfg.higher_is_better else 1.0
    frame = _failure_columns(frame, sign)
    # A run of a group with no outcome metric at all has no outcome key: fill it from the group.
    frame = frame.join(chosen.select("group", pl.col("key").alias("group_key")), on="group", how="left").with_columns(
        pl.coalesce("key", "group_key").alias("key")
    ).drop("group_key")
    assert set(OUTCOME_SCHEMA) <= set(frame.columns)
    return SweepView(grouping, frame.sort("run_id"), chosen, findings, params, ocfg.higher_is_better)


def sweep_view(tables: SweepTables, gcfg: GroupingConfig, ocfg: OutcomeConfig) -> SweepView:
    """The cached view of `tables` for these settings."""
    per_tables = _CACHE.setdefault(tables, {})
    key = (gcfg.key(), ocfg.key())
    if key not in per_tables:
        per_tables[key] = build_view(tables, gcfg, ocfg)
    return per_tables[key]
