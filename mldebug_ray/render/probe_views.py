"""What the data, confusion, robustness and deployment panels of report.html show: bounded reads of those tables.

Only the runs that get a full panel are read (scans filtered by run_id, render/report_data.py's
`scan_runs`), and every selection happens in the query or on per-class aggregates: a
run with 1,000 classes gives a confusion matrix of at most HtmlConfig.max_confusion_classes
rows and columns (the rest pooled as `other`), a label chart of at most
HtmlConfig.max_label_classes classes, the HtmlConfig.max_shifted_features most shifted
features and HtmlConfig.max_overlap_ids example ids per overlap row. A run without rows
in a table gets no view of it, so its panel is left out rather than drawn empty.
Nothing here computes evidence: it selects what the probes (probes/data.py,
probes/confusion.py, probes/adversarial.py, probes/deploy.py) wrote.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mldebug_ray.render.report_data import HtmlConfig, scan_runs

OTHER = "other"  # the pooled row/column of the classes a capped confusion matrix leaves out
NO_PREDICTION = "none"  # the column of examples without a prediction (NaN/Inf scores: a null pred_label)
_ROLE_ORDER = {"train": 0, "held_out": 1}


@dataclass
class LabelChart:
    """Share of each shown class per labelled split (None: the split has no row for the class)."""

    splits: list[str]
    labels: list[int]  # shown classes, ascending
    fracs: dict[str, list[float | None]]
    counts: dict[str, list[int | None]]
    n_labels_total: int
    max_ratio: float  # largest / smallest nonzero share within one split, over the shown classes
    n_zero: int  # (split, shown class) cells with count 0: classes missing from a split
    log: bool


@dataclass
class OverlapRow:
    """One held-out split against the train split: its exact and near duplicates (None: that test did not run)."""

    split_a: str
    split_b: str
    exact: dict[str, Any] | None
    near: dict[str, Any] | None


@dataclass
class DataView:
    splits: list[dict[str, Any]] = field(default_factory=list)  # data_splits rows, train first
    labels: LabelChart | None = None
    overlap: list[OverlapRow] = field(default_factory=list)
    shift: list[dict[str, Any]] = field(default_factory=list)  # the most shifted features, largest PSI first
    n_features_total: int = 0  # data_features rows of the run (all held-out splits)


@dataclass
class ConfusionView:
    step: int | None
    split: str | None
    row_labels: list[str]
    col_labels: list[str]
    counts: np.ndarray  # rows: true class, columns: predicted class (+ `none`)
    n_classes_total: int
    n_examples: int
    n_correct: int
    pooled: bool  # classes beyond the cap are pooled as OTHER
    worst: list[tuple[str, int, int]] = field(default_factory=list)  # (class, right, of), lowest accuracy first


@dataclass
class RobustnessView:
    step: int | None
    rows: list[dict[str, Any]]  # one per attack x epsilon at `step`
    n_steps: int  # probe steps in the table (only the newest is shown)


@dataclass
class ProbeView:
    """The per-run views of the probe tables that have rows for the run."""

    run_id: str
    data: DataView | None = None
    confusion: ConfusionView | None = None
    robustness: RobustnessView | None = None
    deployment: list[dict[str, Any]] = field(default_factory=list)  # newest checkpoints first
    n_deployment_rows: int = 0


def _newest_step(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Each run's rows of its largest step (a null step counts as older than any step)."""
    step = pl.col("step").fill_null(-1)
    return frame.filter(step == step.max().over("run_id"))


def load_probe_views(out_dir: Path, run_ids: list[str], cfg: HtmlConfig) -> dict[str, ProbeView]:
    """Data, confusion, robustness and deployment views of `run_ids` (only those with rows get a view)."""
    views = {rid: ProbeView(rid) for rid in run_ids}
    if not run_ids:
        return views
    _load_data(out_dir, run_ids, views, cfg)
    _load_confusion(out_dir, run_ids, views, cfg)
    _load_robustness(out_dir, run_ids, views, cfg)
    _load_deployment(out_dir, run_ids, views, cfg)
    return views


# ---- the data probe ------------------------------------------------------------------


def _data_view(views: dict[str, ProbeView], rid: str) -> DataView:
    if views[rid].data is None:
        views[rid].data = DataView()
    return views[rid].data


def _load_data(out_dir: Path, run_ids: list[str], views: dict[str, ProbeView], cfg: HtmlConfig) -> None:
    splits = scan_runs(out_dir, "data_splits", run_ids).collect()
    for (rid,), part in splits.group_by("run_id"):
        rows = sorted(part.to_dicts(), key=lambda r: (_ROLE_ORDER.get(r["role"], 2), r["split"]))
        _data_view(views, rid).splits = rows[: cfg.max_data_splits]
    _load_labels(out_dir, run_ids, views, cfg)
    overlap = (
        scan_runs(out_dir, "data_overlap", run_ids)
        .with_columns(
            pl.col("example_ids_a").list.head(cfg.max_overlap_ids),
            pl.col("example_ids_b").list.head(cfg.max_overlap_ids),
            pl.col("similarities").list.head(cfg.max_overlap_ids),
        )
        .collect()
    )
    for (rid,), part in overlap.group_by("run_id"):
        pairs: dict[tuple[str, str], OverlapRow] = {}
        for r in part.sort("split_b", "split_a").iter_rows(named=True):
            row = pairs.setdefault((r["split_a"], r["split_b"]), OverlapRow(r["split_a"], r["split_b"], None, None))
            if r["kind"] == "exact":
                row.exact = r
            elif r["kind"] == "near":
                row.near = r
        _data_view(views, rid).overlap = list(pairs.values())[: cfg.max_data_splits]
    features = scan_runs(out_dir, "data_features", run_ids)
    n_features = features.group_by("run_id").agg(pl.len().alias("n")).collect()
    top = (
        features.sort(["psi", "ks_stat"], descending=True, nulls_last=True)
        .group_by("run_id", maintain_order=True)
        .head(cfg.max_shifted_features)
        .collect()
    )
    for (rid,), part in top.group_by("run_id"):
        _data_view(views, rid).shift = part.to_dicts()
    for rid, n in n_features.iter_rows():
        _data_view(views, rid).n_features_total = int(n)


def _shown_labels(per_label: pl.DataFrame, cap: int) -> list[int]:
    """The classes a label chart shows: all when they fit, else the most frequent half and the rarest half.

    Classes missing from some split (count 0) rank as the rarest: a class absent from
    validation is the skew most worth seeing.
    """
    rows = sorted(per_label.iter_rows(named=True), key=lambda r: (-r["total"], r["label"]))
    if len(rows) <= cap:
        return sorted(r["label"] for r in rows)
    n_rare = cap // 2
    rare = sorted(rows, key=lambda r: (r["min_count"] > 0, r["total"], r["label"]))[:n_rare]
    chosen = {r["label"] for r in rare}
    for r in rows:
        if len(chosen) >= cap:
            break
        chosen.add(r["label"])
    return sorted(chosen)


def _load_labels(out_dir: Path, run_ids: list[str], views: dict[str, ProbeView], cfg: HtmlConfig) -> None:
    labels = scan_runs(out_dir, "data_labels", run_ids)
    per_label = (
        labels.group_by("run_id", "label")
        .agg(pl.col("count").sum().alias("total"), pl.col("count").min().alias("min_count"))
        .collect()
    )
    if per_label.height == 0:
        return
    chosen = []
    n_total: dict[str, int] = {}
    for (rid,), part in per_label.group_by("run_id"):
        n_total[rid] = part.height
        chosen += [{"run_id": rid, "label": lab} for lab in _shown_labels(part, cfg.max_label_classes)]
    selection = pl.DataFrame(chosen, schema={"run_id": pl.String, "label": pl.Int64})
    rows = labels.join(selection.lazy(), on=["run_id", "label"], how="inner").collect()
    for (rid,), part in rows.group_by("run_id"):
        shown = sorted(set(part["label"].to_list()))
        order = {r["split"]: i for i, r in enumerate(views[rid].data.splits)} if views[rid].data else {}
        split_names = sorted(set(part["split"].to_list()), key=lambda s: (order.get(s, len(order)), s))
        fracs: dict[str, list[float | None]] = {}
        counts: dict[str, list[int | None]] = {}
        max_ratio, n_zero = 1.0, 0
        for split in split_names:
            sub = part.filter(pl.col("split") == split)
            by_label = {r["label"]: r for r in sub.iter_rows(named=True)}
            total = sum(r["count"] for r in by_label.values()) or 1
            counts[split] = [by_label[lab]["count"] if lab in by_label else None for lab in shown]
            fracs[split] = [
                (by_label[lab]["frac"] if by_label[lab]["frac"] is not None else by_label[lab]["count"] / total) if lab in by_label else None
                for lab in shown
            ]
            positive = [f for f in fracs[split] if f is not None and f > 0]
            n_zero += sum(1 for c in counts[split] if c == 0)
            if positive:
                max_ratio = max(max_ratio, max(positive) / min(positive))
        log = max_ratio >= cfg.label_log_ratio
        _data_view(views, rid).labels = LabelChart(split_names, shown, fracs, counts, n_total[rid], max_ratio, n_zero, log)


# ---- confusion -----------------------------------------------------------------------


def _load_confusion(out_dir: Path, run_ids: list[str], views: dict[str, ProbeView], cfg: HtmlConfig) -> None:
    newest = _newest_step(scan_runs(out_dir, "confusion", run_ids))
    # One split per run: the first name (the probe writes the validation split only).
    newest = newest.filter(pl.col("split").fill_null("") == pl.col("split").fill_null("").min().over("run_id"))
    wrong = pl.col("pred_label").is_null() | (pl.col("pred_label") != pl.col("true_label"))
    as_true = newest.group_by("run_id", pl.col("true_label").alias("label")).agg(
        pl.col("count").sum().alias("support"), pl.col("count").filter(wrong).sum().alias("errors_out"),
        pl.col("count").filter(~wrong).sum().alias("right"),
    )
    as_pred = newest.filter(pl.col("pred_label").is_not_null()).group_by("run_id", pl.col("pred_label").alias("label")).agg(
        pl.col("count").filter(wrong).sum().alias("errors_in")
    )
    per_class = (
        as_true.join(as_pred, on=["run_id", "label"], how="full", coalesce=True)
        .with_columns(pl.col("support", "errors_out", "right", "errors_in").fill_null(0))
        .collect()
    )
    if per_class.height == 0:
        return
    cap = cfg.max_confusion_classes
    chosen = []
    meta: dict[str, tuple[int, list[tuple[str, int, int]]]] = {}
    for (rid,), part in per_class.group_by("run_id"):
        rows = part.to_dicts()
        if len(rows) <= cap:
            keep = [r["label"] for r in rows]
        else:  # the classes most involved in errors; the other cap - 1 slots' classes pool into OTHER
            keep = [r["label"] for r in sorted(rows, key=lambda r: (-(r["errors_out"] + r["errors_in"]), -r["support"], r["label"]))[: cap - 1]]
        chosen += [{"run_id": rid, "label": lab} for lab in keep]
        worst = sorted((r for r in rows if r["support"]), key=lambda r: (r["right"] / r["support"], -r["support"], r["label"]))[:3]
        meta[rid] = (len(rows), [(str(r["label"]), int(r["right"]), int(r["support"])) for r in worst])
    selection = pl.DataFrame(chosen, schema={"run_id": pl.String, "label": pl.Int64}).with_columns(pl.lit(True).alias("_shown"))
    pooled = (
        newest.join(selection.lazy().rename({"label": "true_label", "_shown": "_t"}), on=["run_id", "true_label"], how="left")
        .join(selection.lazy().rename({"label": "pred_label", "_shown": "_p"}), on=["run_id", "pred_label"], how="left")
        .with_columns(
            pl.when(pl.col("_t")).then(pl.col("true_label").cast(pl.String)).otherwise(pl.lit(OTHER)).alias("t"),
            pl.when(pl.col("pred_label").is_null()).then(pl.lit(NO_PREDICTION))
            .when(pl.col("_p")).then(pl.col("pred_label").cast(pl.String)).otherwise(pl.lit(OTHER)).alias("p"),
        )
        .group_by("run_id", "step", "split", "t", "p")
        .agg(pl.col("count").sum())
        .collect()
    )
    for (rid,), part in pooled.group_by("run_id"):
        n_classes, worst = meta[rid]
        shown = sorted({lab for lab in part["t"].to_list() + part["p"].to_list() if lab not in (OTHER, NO_PREDICTION)}, key=int)
        has_other = OTHER in set(part["t"].to_list()) | set(part["p"].to_list())
        rows_l = shown + ([OTHER] if has_other else [])
        cols_l = rows_l + ([NO_PREDICTION] if NO_PREDICTION in set(part["p"].to_list()) else [])
        ri, ci = {lab: i for i, lab in enumerate(rows_l)}, {lab: j for j, lab in enumerate(cols_l)}
        counts = np.zeros((len(rows_l), len(cols_l)))
        for t, p, n in part.select("t", "p", "count").iter_rows():
            counts[ri[t], ci[p]] += n
        # From the per-class rows, not the diagonal: a pooled OTHER -> OTHER cell holds right and wrong answers alike.
        n_correct = int(per_class.filter(pl.col("run_id") == rid)["right"].sum())
        first = part.row(0, named=True)
        views[rid].confusion = ConfusionView(
            first["step"], first["split"], rows_l, cols_l, counts, n_classes, int(counts.sum()), n_correct, has_other, worst,
        )


# ---- robustness and deployment -------------------------------------------------------


def _load_robustness(out_dir: Path, run_ids: list[str], views: dict[str, ProbeView], cfg: HtmlConfig) -> None:
    scan = scan_runs(out_dir, "robustness", run_ids)
    n_steps = scan.group_by("run_id").agg(pl.col("step").n_unique().alias("n")).collect()
    rows = _newest_step(scan).sort("run_id", "attack", "epsilon", nulls_last=True).collect()
    steps = dict(n_steps.iter_rows())
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows.iter_rows(named=True):
        by_run[r["run_id"]].append(r)
    for rid, rs in by_run.items():
        views[rid].robustness = RobustnessView(rs[0]["step"], rs[: cfg.max_robustness_rows], int(steps.get(rid, 1)))


def _load_deployment(out_dir: Path, run_ids: list[str], views: dict[str, ProbeView], cfg: HtmlConfig) -> None:
    scan = scan_runs(out_dir, "deployment", run_ids)
    n_rows = dict(scan.group_by("run_id").agg(pl.len()).collect().iter_rows())
    rows = (
        scan.sort("step", descending=True, nulls_last=True)
        .group_by("run_id", maintain_order=True)
        .head(cfg.max_deployment_rows)
        .collect()
    )
    for (rid,), part in rows.group_by("run_id"):
        views[rid].deployment = part.to_dicts()
        views[rid].n_deployment_rows = int(n_rows.get(rid, part.height))
