"""What report.html shows, read from diagnosis.json and the evidence tables: lazy scans, bounded results.

Only the runs that get a full panel have their metrics read (scans filtered by run_id),
and their curves are downsampled inside the query, so the driver holds at most
runs x series x buckets rows however long the runs are. The sweep panels read one
number per run (the last value of one loss key) and the hyperparameters of the runs
they plot. Nothing here computes evidence: it selects, aggregates for display and
downsamples.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mldebug_ray import paths, schema
from mldebug_ray.detectors.series import CANONICAL, metric_role, split_of
from mldebug_ray.evidence.io import scan_table
from mldebug_ray.findings import SEVERITIES
from mldebug_ray.render.downsample import DEFAULT_MAX_POINTS, Curve, curves_from_buckets, downsample_scan
from mldebug_ray.render.svg import Group

SEVERITY_ORDER = (*SEVERITIES, "none")
STATUS_ORDER = ("unreadable", "partial", "ok")
# Chart panels of a run, in page order: (panel id, metric role, title).
CURVE_PANELS = (
    ("loss", "loss", "Loss"),
    ("grad_norm", "grad_norm", "Gradient norm"),
    ("lr", "lr", "Learning rate"),
    ("loss_scale", "loss_scale", "Loss scale"),
    ("accuracy", "accuracy", "Accuracy"),
)
_LAYER_KEY = re.compile(r"^(?:(?:train|training)[/_.])?(?:grad_norm|grad norm|gradient_norm)/(.+)$", re.IGNORECASE)
_SEED = re.compile(r"seed", re.IGNORECASE)
# Parameter keys that describe the tool or the run's bookkeeping, never a hyperparameter.
_NOT_HP = re.compile(r"^(hydra\.|summary\.|_)|(^|\.)(score|preemption_count|run_name|output_dir|logging_dir|run_id|path)$", re.IGNORECASE)
_FAILED_KINDS = frozenset({"nan_inf", "divergence", "nonfinite_weights"})


@dataclass
class HtmlConfig:
    """How much report.html shows; every bound keeps the page size independent of the sweep size."""

    max_run_panels: int = 24
    """Runs that get a full panel (curves, heatmap, shares), worst first; the rest are rows of the paged table."""
    max_points: int = DEFAULT_MAX_POINTS
    """Most points per curve (min and max of max_points/2 step buckets)."""
    max_series_per_chart: int = 4
    """Most metric keys drawn in one chart (train before val before test, canonical names first)."""
    heatmap_max_layers: int = 48
    """Most layers (rows) in a gradient heatmap; more are thinned evenly in model order."""
    heatmap_columns: int = 80
    """Step buckets (columns) of a gradient heatmap."""
    page_size: int = 50
    """Rows per page of the table of all runs."""
    max_sweep_panels: int = 4
    """Most hyperparameter-vs-outcome plots."""
    max_evidence_rows: int = 8
    """Evidence references listed per root cause."""
    open_run_panels: int = 3
    """Run panels shown expanded when the page opens (the others are one line until clicked)."""
    max_label_classes: int = 24
    """Classes in a label-distribution chart; with more, the most frequent half and the rarest half
    (classes missing from a split first). 24 classes x 3 splits is 72 columns: about 7 px each in a
    560 px chart, the narrowest a column stays visible and hoverable."""
    label_log_ratio: float = 20.0
    """A label chart gets a log axis once the largest class share of a split is this many times its
    smallest: on a linear axis of the chart's ~160 px the smallest column would be 8 px, and at 1:100
    under 2 px, i.e. invisible, which is what a reader of a skewed split must see."""
    max_confusion_classes: int = 16
    """Rows/columns of a confusion heatmap; with more classes, the max_confusion_classes - 1 classes with
    the most errors (as true or predicted class) are shown and the rest pooled as `other`. 16 keeps
    cells of ~30 px in a 560 px panel, large enough for their counts."""
    max_shifted_features: int = 8
    """Features listed in a run's distribution-shift table (largest PSI first)."""
    max_overlap_ids: int = 3
    """Example ids (held-out ~ train pairs) shown per overlap row; the table keeps probes.data.max_ids."""
    max_data_splits: int = 8
    """Splits listed per run in the data panels (train first)."""
    max_robustness_rows: int = 12
    """Attack x epsilon rows shown of a run's newest robustness probe step."""
    max_deployment_rows: int = 4
    """Probed checkpoints (newest first) shown in a run's deployment panel."""

    def __post_init__(self) -> None:
        if self.open_run_panels < 0:
            raise ValueError(f"render.open_run_panels must be >= 0, got {self.open_run_panels}")
        for name in ("max_run_panels", "max_series_per_chart", "heatmap_max_layers", "heatmap_columns", "page_size", "max_sweep_panels", "max_evidence_rows",
                     "max_label_classes", "max_shifted_features", "max_data_splits", "max_robustness_rows", "max_deployment_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"render.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_points < 4:
            raise ValueError(f"render.max_points must be >= 4, got {self.max_points}")
        if self.max_confusion_classes < 2:
            raise ValueError(f"render.max_confusion_classes must be >= 2 (one class and `other`), got {self.max_confusion_classes}")
        if self.max_overlap_ids < 0:
            raise ValueError(f"render.max_overlap_ids must be >= 0, got {self.max_overlap_ids}")
        if not self.label_log_ratio > 1:
            raise ValueError(f"render.label_log_ratio must be > 1, got {self.label_log_ratio}")


def anchor(run_id: str) -> str:
    """A stable HTML id for a run (run ids hold '/', spaces, anything)."""
    return "r-" + hashlib.sha1(run_id.encode("utf-8", "surrogateescape")).hexdigest()[:10]


def worst_severity(entry: dict[str, Any]) -> str:
    sev = [c["severity"] for c in entry.get("root_causes", [])]
    return min(sev, key=SEVERITY_ORDER.index) if sev else "none"


def rank_runs(diagnosis: dict[str, Any]) -> list[str]:
    """Run ids worst first: severity, then unreadable/partial before ok, then confidence, then id."""

    def key(item: tuple[str, dict[str, Any]]):
        rid, e = item
        conf = max((c.get("confidence") or 0 for c in e.get("root_causes", [])), default=0.0)
        status = e.get("status", "ok")
        return (SEVERITY_ORDER.index(worst_severity(e)), STATUS_ORDER.index(status) if status in STATUS_ORDER else 0, -conf, rid)

    return [rid for rid, _ in sorted(diagnosis["runs"].items(), key=key)]


def _natural(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _in(col: str, values: list[str]) -> pl.Expr:
    return pl.col(col).is_in(pl.Series(values, dtype=pl.String).implode())


# Up to this many runs, their own part files are scanned instead of every part of the table.
MAX_RUNS_BY_PART_FILE = 1000


def scan_runs(out_dir: Path, table: str, run_ids: list[str], shared_parts: tuple[str, ...] = ()) -> pl.LazyFrame:
    """`table`'s rows of `run_ids`, opening as few part files as the layout allows.

    analyze_run writes each run's rows to part-<part_key(run_id)> of each table and always
    writes its `runs` part; an empty table writes no part. So when every run has its
    `runs` part, its rows of `table` are in its own part if anywhere (plus `shared_parts`,
    e.g. the sweep detectors' part): only those files are opened, and a 10,000-run
    sweep's 10,000 parts are not listed once per panel. Any other layout (batched or
    hand-written parts) scans every part and filters.
    """
    out_dir = Path(out_dir)
    scan = None
    if len(run_ids) <= MAX_RUNS_BY_PART_FILE and run_ids:
        keys = [paths.part_key(rid) for rid in run_ids]
        if all(paths.part_path(out_dir, "runs", k).is_file() for k in keys):
            files = [f for f in (paths.part_path(out_dir, table, k) for k in (*keys, *shared_parts)) if f.is_file()]
            scan = pl.scan_parquet([str(f) for f in files], schema=schema.schema_of(table)) if files else schema.empty(table).lazy()
    if scan is None:
        scan = scan_table(out_dir, table)
    return scan.filter(_in("run_id", run_ids))


# ---- per-run views -------------------------------------------------------------------


@dataclass
class HeatmapData:
    rows: list[str]
    col_edges: np.ndarray
    matrix: np.ndarray  # NaN: nothing logged in that column
    nonfinite: np.ndarray  # bool: a NaN/Inf was logged in that cell
    source: str  # "metrics" (grad_norm/<layer> keys) or "gradients" (the probe table)
    n_layers_total: int = 0
    col_steps: list[int] | None = None  # one probe step per column (equal-width columns), else None


@dataclass
class FindingMark:
    finding_id: str
    kind: str
    severity: str
    onset_step: int | None
    end_step: int | None
    summary: str
    metric_keys: tuple[str, ...]


@dataclass
class RunView:
    run_id: str
    charts: dict[str, list[tuple[str, Curve]]] = field(default_factory=dict)  # panel id -> (key, curve)
    chart_keys: dict[str, str] = field(default_factory=dict)  # metric key -> panel id
    n_points_logged: dict[str, int] = field(default_factory=dict)  # metric key -> rows before downsampling
    other_keys: int = 0
    heatmap: HeatmapData | None = None
    shares: list[tuple[str, int]] = field(default_factory=list)
    shares_step: int | None = None
    memory: list[dict[str, Any]] = field(default_factory=list)
    precision: list[dict[str, Any]] = field(default_factory=list)
    precision_layers: list[dict[str, Any]] = field(default_factory=list)
    marks: list[FindingMark] = field(default_factory=list)


def _series_id(run_id: str, key: str, split: str | None) -> str:
    return f"{run_id}\x1f{key}\x1f{split or ''}"


_SPLIT_RANK = {"train": 0, None: 1, "val": 2, "test": 3}


def _choose_series(
    inventory: pl.DataFrame, cfg: HtmlConfig
) -> tuple[dict[str, dict[str, list[tuple[str, str | None]]]], dict[str, int], dict[str, int]]:
    """Per run: panel id -> the (key, split) pairs to draw; how many keys go undrawn; how many layer keys exist."""
    chosen: dict[str, dict[str, list[tuple[str, str | None]]]] = defaultdict(lambda: defaultdict(list))
    other: dict[str, int] = Counter()
    n_layers: dict[str, int] = {}
    role_panel = {role: pid for pid, role, _ in CURVE_PANELS}
    rows = sorted(inventory.iter_rows(named=True), key=lambda r: (r["run_id"], r["key"], r["split"] or ""))
    for rid in dict.fromkeys(r["run_id"] for r in rows):
        candidates: dict[str, list[tuple[tuple, str, str | None]]] = defaultdict(list)
        layers: list[tuple[str, str | None]] = []
        for r in (r for r in rows if r["run_id"] == rid):
            role = metric_role(r["key"])
            if role == "layer_grad_norm":
                layers.append((r["key"], r["split"]))
            elif role in role_panel:
                split = split_of(r["key"], r["split"])
                canonical = 0 if " ".join(r["key"].lower().split()) in CANONICAL.get(role, ()) else 1
                candidates[role_panel[role]].append(((_SPLIT_RANK.get(split, 1), canonical, -r["n"], r["key"]), r["key"], r["split"]))
            else:
                other[rid] += 1
        for pid, cands in candidates.items():
            cands.sort(key=lambda c: c[0])
            chosen[rid][pid] = [(k, s) for _, k, s in cands[: cfg.max_series_per_chart]]
            other[rid] += max(0, len(cands) - cfg.max_series_per_chart)
        if layers:
            n_layers[rid] = len(layers)
            layers.sort(key=lambda ks: _natural(ks[0]))
            if len(layers) > cfg.heatmap_max_layers:
                idx = np.unique(np.linspace(0, len(layers) - 1, cfg.heatmap_max_layers).round().astype(int))
                layers = [layers[i] for i in idx]
            chosen[rid]["heatmap"] = layers
    return chosen, other, n_layers


def _layer_name(key: str) -> str:
    m = _LAYER_KEY.match(key.strip())
    return m.group(1) if m else key


def _heatmap_from_buckets(keys: list[tuple[str, str | None]], curves_buckets: pl.DataFrame, run_id: str, n_cols: int) -> HeatmapData | None:
    sids = [_series_id(run_id, k, s) for k, s in keys]
    part = curves_buckets.filter(_in("sid", sids))
    if part.height == 0:
        return None
    lo, hi = int(part["_lo"].min()), int(part["_hi"].max())
    matrix = np.full((len(sids), n_cols), np.nan)
    bad = np.zeros((len(sids), n_cols), bool)
    row_of = {sid: i for i, sid in enumerate(sids)}
    for r in part.iter_rows(named=True):
        i, b = row_of[r["sid"]], int(r["bucket"])
        if 0 <= b < n_cols:
            if r["vmax"] is not None:
                matrix[i, b] = r["vmax"]
            if r["nonfinite_step"] is not None:
                bad[i, b] = True
    edges = lo + np.arange(n_cols + 1) * (hi - lo + 1) / n_cols
    return HeatmapData([_layer_name(k) for k, _ in keys], edges, matrix, bad, "metrics")


def _heatmap_from_gradients(frame: pl.DataFrame, cfg: HtmlConfig) -> HeatmapData | None:
    """The gradients probe table (few probe steps x layers) as a heatmap."""
    frame = frame.filter(pl.col("grad_norm_l2").is_not_null())
    if frame.height == 0:
        return None
    layers = sorted(frame["layer"].unique().to_list(), key=_natural)
    total = len(layers)
    if len(layers) > cfg.heatmap_max_layers:
        idx = np.unique(np.linspace(0, len(layers) - 1, cfg.heatmap_max_layers).round().astype(int))
        layers = [layers[i] for i in idx]
    steps = sorted(frame["step"].drop_nulls().unique().to_list())
    if not steps:
        return None
    col_steps = None
    if len(steps) <= cfg.heatmap_columns:  # few probe steps: one column each
        col_of = {s: i for i, s in enumerate(steps)}
        edges = np.asarray(steps + [steps[-1] + 1], float)
        n_cols = len(steps)
        col_steps = steps
    else:
        lo, hi, n_cols = steps[0], steps[-1], cfg.heatmap_columns
        col_of = {s: int((s - lo) * n_cols // (hi - lo + 1)) for s in steps}
        edges = lo + np.arange(n_cols + 1) * (hi - lo + 1) / n_cols
    row_of = {l: i for i, l in enumerate(layers)}
    matrix = np.full((len(layers), n_cols), np.nan)
    bad = np.zeros((len(layers), n_cols), bool)
    for layer, step, value in frame.select("layer", "step", "grad_norm_l2").iter_rows():
        if layer not in row_of or step is None:
            continue
        i, j = row_of[layer], col_of[step]
        if math.isfinite(value):
            matrix[i, j] = value if math.isnan(matrix[i, j]) else max(matrix[i, j], value)
        else:
            bad[i, j] = True
    return HeatmapData(layers, edges, matrix, bad, "gradients", total, col_steps)


def load_run_views(out_dir: Path, run_ids: list[str], cfg: HtmlConfig) -> dict[str, RunView]:
    """Curves, heatmaps, parameter shares, memory and precision of `run_ids` only."""
    views = {rid: RunView(rid) for rid in run_ids}
    if not run_ids:
        return views
    metrics = scan_runs(out_dir, "metrics", run_ids)
    inventory = (
        metrics.group_by("run_id", "key", "split")
        .agg(pl.len().alias("n"))
        .collect()
    )
    chosen, other, n_layers = _choose_series(inventory, cfg)
    plan = []
    for rid, panels in chosen.items():
        for pid, keys in panels.items():
            for key, split in keys:
                is_layer = pid == "heatmap"
                plan.append({
                    "sid": _series_id(rid, key, split), "rk": rid if is_layer else _series_id(rid, key, split),
                    "nb": cfg.heatmap_columns if is_layer else cfg.max_points // 2,
                })
    n_by_sid = {_series_id(r["run_id"], r["key"], r["split"]): r["n"] for r in inventory.iter_rows(named=True)}
    buckets = pl.DataFrame(schema={"sid": pl.String, "bucket": pl.Int64})
    if plan:
        plan_df = pl.DataFrame(plan, schema={"sid": pl.String, "rk": pl.String, "nb": pl.Int64})
        series = (
            metrics.with_columns(pl.concat_str([pl.col("run_id"), pl.col("key"), pl.col("split").fill_null("")], separator="\x1f").alias("sid"))
            .join(plan_df.lazy(), on="sid", how="inner")
            .select("sid", "rk", "nb", "step", "value")
        )
        buckets = downsample_scan(series, pl.col("nb"), range_key="rk")
    curve_sids = {p["sid"] for p in plan if p["rk"] == p["sid"]}
    curves = curves_from_buckets(buckets.filter(_in("sid", sorted(curve_sids)))) if curve_sids else {}
    for rid, panels in chosen.items():
        view = views[rid]
        view.other_keys = other.get(rid, 0)
        for pid, keys in panels.items():
            if pid == "heatmap":
                view.heatmap = _heatmap_from_buckets(keys, buckets, rid, cfg.heatmap_columns)
                if view.heatmap is not None:
                    view.heatmap.n_layers_total = n_layers.get(rid, len(keys))
                continue
            drawn = []
            for key, split in keys:
                sid = _series_id(rid, key, split)
                if sid in curves:
                    label = key if not split or split_of(key) == split else f"{key} ({split})"
                    drawn.append((label, curves[sid]))
                    view.chart_keys[key] = pid
                    view.n_points_logged[key] = n_by_sid.get(sid, 0)
            if drawn:
                view.charts[pid] = drawn
    for rid, layers in chosen.items():
        for key, _ in layers.get("heatmap", []):
            views[rid].chart_keys[key] = "heatmap"
    _load_gradients(out_dir, run_ids, views, cfg)
    _load_shares(out_dir, run_ids, views)
    _order_heatmap_rows(out_dir, run_ids, views)
    _load_memory_precision(out_dir, run_ids, views)
    _load_marks(out_dir, run_ids, views)
    return views


def _load_gradients(out_dir: Path, run_ids: list[str], views: dict[str, RunView], cfg: HtmlConfig) -> None:
    need = [rid for rid in run_ids if views[rid].heatmap is None]
    if not need:
        return
    grads = scan_runs(out_dir, "gradients", need).select("run_id", "step", "layer", "grad_norm_l2").collect()
    for (rid,), part in grads.group_by("run_id"):
        views[rid].heatmap = _heatmap_from_gradients(part, cfg)


def _load_shares(out_dir: Path, run_ids: list[str], views: dict[str, RunView]) -> None:
    shares = (
        scan_runs(out_dir, "layers", run_ids)
        .filter(pl.col("n_params").is_not_null())
        .group_by("run_id", "step", pl.col("module_type").fill_null("other"))
        .agg(pl.col("n_params").sum())
        .collect()
    )
    for (rid,), part in shares.group_by("run_id"):
        steps = part["step"].drop_nulls()
        last = steps.max() if steps.len() else None
        rows = part.filter(pl.col("step") == last) if last is not None else part.filter(pl.col("step").is_null())
        views[rid].shares = sorted(((r["module_type"], int(r["n_params"])) for r in rows.iter_rows(named=True)), key=lambda t: -t[1])
        views[rid].shares_step = last


def _order_heatmap_rows(out_dir: Path, run_ids: list[str], views: dict[str, RunView]) -> None:
    """Heatmap rows in model order (the checkpoint's tensor order in `layers`), input layers on top."""
    need = [rid for rid in run_ids if views[rid].heatmap is not None]
    if not need:
        return
    order = (
        scan_runs(out_dir, "layers", need)
        .select("run_id", "layer")
        .with_row_index("pos")
        .group_by("run_id", "layer")
        .agg(pl.col("pos").min())
        .collect()
    )
    for (rid,), part in order.group_by("run_id"):
        pos = dict(zip(part["layer"].to_list(), part["pos"].to_list()))
        hm = views[rid].heatmap
        if hm is None or not any(r in pos for r in hm.rows):
            continue
        perm = sorted(range(len(hm.rows)), key=lambda i: (pos.get(hm.rows[i], math.inf), _natural(hm.rows[i])))
        hm.rows = [hm.rows[i] for i in perm]
        hm.matrix = hm.matrix[perm]
        hm.nonfinite = hm.nonfinite[perm]


def _load_memory_precision(out_dir: Path, run_ids: list[str], views: dict[str, RunView]) -> None:
    memory = (
        scan_runs(out_dir, "memory", run_ids)
        .group_by("run_id", "phase", "device")
        .agg(pl.col("peak_allocated_bytes").max(), pl.col("reserved_bytes").max(), pl.len().alias("n_probes"))
        .sort("run_id", "device", "phase")
        .collect()
    )
    phase_order = {"forward": 0, "backward": 1, "optimizer": 2}
    for (rid,), part in memory.group_by("run_id"):
        views[rid].memory = sorted(part.to_dicts(), key=lambda r: (r["device"] or "", phase_order.get(r["phase"], 9), r["phase"] or ""))
    precision = scan_runs(out_dir, "precision", run_ids)
    totals = (
        precision.group_by("run_id", "dtype")
        .agg(
            pl.col("rel_err_vs_fp32").max().alias("rel_err_max"),
            pl.col("rel_err_vs_fp32").median().alias("rel_err_median"),
            pl.col("overflow_frac").max().alias("overflow_frac_max"),
            pl.col("underflow_frac").max().alias("underflow_frac_max"),
            pl.col("layer").n_unique().alias("n_layers"),
        )
        .sort("run_id", "dtype")
        .collect()
    )
    for (rid,), part in totals.group_by("run_id"):
        views[rid].precision = part.to_dicts()
    worst = (
        precision.filter(pl.col("layer").is_not_null() & pl.col("rel_err_vs_fp32").is_not_null())
        .sort("rel_err_vs_fp32", descending=True)
        .group_by("run_id", "dtype", maintain_order=True)
        .head(5)
        .collect()
    )
    for (rid,), part in worst.group_by("run_id"):
        views[rid].precision_layers = part.to_dicts()


def _metric_keys(evidence: Any) -> tuple[str, ...]:
    keys = []
    for ev in evidence or ():
        if ev["table"] == "metrics":
            try:
                key = json.loads(ev["where"]).get("key")
            except (TypeError, ValueError):
                key = None
            if key:
                keys.append(str(key))
    return tuple(dict.fromkeys(keys))


def _load_marks(out_dir: Path, run_ids: list[str], views: dict[str, RunView]) -> None:
    found = (
        scan_runs(out_dir, "findings", run_ids, (paths.SWEEP_PART_KEY,))  # sweep detectors add run-scope findings there
        .select("finding_id", "run_id", "kind", "severity", "onset_step", "end_step", "summary", "evidence")
        .collect()
    )
    for r in found.iter_rows(named=True):
        views[r["run_id"]].marks.append(
            FindingMark(r["finding_id"], r["kind"], r["severity"], r["onset_step"], r["end_step"], r["summary"] or "", _metric_keys(r["evidence"]))
        )
    for view in views.values():
        view.marks.sort(key=lambda m: (SEVERITY_ORDER.index(m.severity) if m.severity in SEVERITY_ORDER else 9, m.onset_step if m.onset_step is not None else -1))


# ---- sweep panels --------------------------------------------------------------------


@dataclass
class Ranking:
    """Rank of each hyperparameter value (rows) within each repeat (columns); 1 is the lowest outcome."""

    values: list[float]
    repeats: list[str]
    ranks: list[list[int | None]]
    flips: bool


@dataclass
class HpPanel:
    key: str
    title: str
    note: str
    outcome_key: str
    groups: list[Group]
    n_runs: int
    boundary: float | None = None
    cause_index: int | None = None  # index into diagnosis["sweep"]["root_causes"]
    ranking: Ranking | None = None
    run_ids: list[str] = field(default_factory=list)


def _params_frame(out_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-key statistics over all runs, and the rows of the keys that can slice or be plotted."""
    params = scan_table(out_dir, "params").select("run_id", "key", "value", "value_num")
    stats = (
        params.group_by("key")
        .agg(
            pl.col("run_id").n_unique().alias("n_runs"),
            pl.col("value").n_unique().alias("n_values"),
            pl.col("value_num").is_not_null().sum().alias("n_num"),
            pl.len().alias("n"),
            pl.col("value").str.starts_with("[").any().alias("listlike"),
        )
        .collect()
    )
    keep = stats.filter((pl.col("n_values") >= 2) & ~pl.col("listlike") & ~pl.col("key").str.contains(r"^hydra\."))["key"].to_list()
    rows = params.filter(_in("key", keep)).collect() if keep else pl.DataFrame(schema={"run_id": pl.String, "key": pl.String, "value": pl.String, "value_num": pl.Float64})
    return stats, rows


OUTCOME_KEY_SAMPLE_RUNS = 64  # runs whose metric keys decide which loss is "the outcome"


def _outcome_key(out_dir: Path, run_ids: list[str]) -> tuple[str, str | None] | None:
    """The loss key (and split) most of a sample of the runs log, validation first."""
    if not run_ids:
        return None
    if len(run_ids) > OUTCOME_KEY_SAMPLE_RUNS:
        idx = np.unique(np.linspace(0, len(run_ids) - 1, OUTCOME_KEY_SAMPLE_RUNS).round().astype(int))
        run_ids = [run_ids[i] for i in idx]
    keys = scan_runs(out_dir, "metrics", run_ids).group_by("key", "split").agg(pl.col("run_id").n_unique().alias("n_runs")).collect()
    best = None
    for r in keys.iter_rows(named=True):
        if metric_role(r["key"]) != "loss":
            continue
        split = split_of(r["key"], r["split"])
        rank = (0 if split == "val" else 1 if split in ("train", None) else 2, -r["n_runs"], r["key"])
        if best is None or rank < best[0]:
            best = (rank, r["key"], r["split"])
    return None if best is None else (best[1], best[2])


def _last_values(out_dir: Path, run_ids: list[str], key: str, split: str | None) -> tuple[dict[str, float], dict[str, bool]]:
    """Each run's last finite value of `key`, and whether its very last value was non-finite."""
    if not run_ids:
        return {}, {}
    cond = (pl.col("key") == key) & (pl.col("split").is_null() if split is None else pl.col("split") == split)
    finite = pl.col("value").is_finite()
    last = (
        scan_runs(out_dir, "metrics", run_ids)
        .filter(cond & pl.col("value").is_not_null())
        .group_by("run_id")
        .agg(
            pl.col("value").sort_by("step").last().alias("last"),
            pl.col("value").filter(finite).sort_by(pl.col("step").filter(finite)).last().alias("last_finite"),
        )
        .collect()
    )
    values = {r["run_id"]: r["last_finite"] for r in last.iter_rows(named=True) if r["last_finite"] is not None}
    broken = {r["run_id"]: not (r["last"] is not None and math.isfinite(r["last"])) for r in last.iter_rows(named=True)}
    return values, broken


def _repeat_labels(run_ids: list[str], seeds: dict[str, str]) -> dict[str, str]:
    """What tells repeats of one configuration apart: the seed, else the run-id parts that differ."""
    if all(rid in seeds for rid in run_ids):
        return {rid: f"seed {seeds[rid]}" for rid in run_ids}
    parts = {rid: rid.split("/") for rid in run_ids}
    depth = {len(p) for p in parts.values()}
    if len(depth) != 1:
        return {rid: rid for rid in run_ids}
    n = depth.pop()
    differing = [i for i in range(n) if len({p[i] for p in parts.values()}) > 1]
    return {rid: "/".join(parts[rid][i] for i in differing) or rid for rid in run_ids}


def _ranking(groups: dict[float, list[str]], outcome: dict[str, float], failed: set[str], labels: dict[str, str]) -> Ranking | None:
    xs = sorted(groups)
    repeats = sorted({labels[r] for rs in groups.values() for r in rs}, key=_natural)
    if len(xs) < 2 or len(repeats) < 2 or len(repeats) > 12:
        return None
    table: dict[str, dict[float, float]] = defaultdict(dict)
    for x, rs in groups.items():
        for r in rs:
            table[labels[r]][x] = math.inf if r in failed else outcome.get(r, math.nan)
    shared = [rep for rep in repeats if sum(1 for x in xs if x in table[rep] and not math.isnan(table[rep][x])) >= 2]
    if len(shared) < 2:
        return None
    ranks: list[list[int | None]] = [[None] * len(shared) for _ in xs]
    orders = []
    for j, rep in enumerate(shared):
        present = sorted((table[rep][x], x) for x in xs if x in table[rep] and not math.isnan(table[rep][x]))
        orders.append(tuple(x for _, x in present))
        for rank, (_, x) in enumerate(present, start=1):
            ranks[xs.index(x)][j] = rank
    flips = len({o for o in orders}) > 1
    return Ranking(xs, shared, ranks, flips)


def _panel(
    key: str, run_ids: list[str], hp: dict[str, dict[str, float]], seeds: dict[str, str], outcome_key: str,
    outcome: dict[str, float], broken: dict[str, bool], failed_runs: set[str], title: str, note: str,
) -> HpPanel | None:
    by_x: dict[float, list[str]] = defaultdict(list)
    for rid in run_ids:
        x = hp.get(key, {}).get(rid)
        if x is not None and math.isfinite(x):
            by_x[x].append(rid)
    if len(by_x) < 2:
        return None
    failed = {rid for rids in by_x.values() for rid in rids if broken.get(rid) or rid in failed_runs or rid not in outcome}
    groups = []
    for x in sorted(by_x):
        ok = [rid for rid in by_x[x] if rid not in failed]
        groups.append(Group(x, [outcome[r] for r in ok], sum(1 for r in by_x[x] if r in failed), [f"{r}: {outcome[r]:.4g}" for r in ok]))
    if not any(g.values for g in groups):
        return None
    labels = _repeat_labels([r for rs in by_x.values() for r in rs], seeds)
    return HpPanel(key, title, note, outcome_key, groups, sum(len(v) for v in by_x.values()),
                   ranking=_ranking(dict(by_x), outcome, failed, labels), run_ids=sorted({r for rs in by_x.values() for r in rs}))


def _slice_label(skey: tuple, cat_keys: list[str], all_slices: list[tuple], max_keys: int = 2) -> str:
    """The categorical values that set this slice apart, rarest first (e.g. `scenario=lr_grid`)."""
    scored = []
    for i, (key, value) in enumerate(zip(cat_keys, skey)):
        if not value:
            continue
        shared = sum(1 for other in all_slices if other[i] == value)
        if shared < len(all_slices):  # a value every slice has says nothing
            scored.append((shared, i, f"{key}={value}"))
    return ", ".join(text for _, _, text in sorted(scored)[:max_keys])


def load_sweep_panels(out_dir: Path, diagnosis: dict[str, Any], cfg: HtmlConfig) -> list[HpPanel]:
    """Hyperparameter vs outcome plots: one per sweep finding that names a parameter, then slices of the sweep.

    A slice is the runs that share every categorical parameter (scenario, workload,
    optimizer name); within it a numeric parameter that takes several values is plotted
    against the last value of the loss, repeats (seeds) giving the spread.
    """
    stats, rows = _params_frame(out_dir)
    if rows.height == 0:
        return []
    n_runs_total = len(diagnosis["runs"])
    numeric = set(stats.filter((pl.col("n_num") == pl.col("n")) & (pl.col("n_values") >= 2))["key"].to_list())
    # The training seed first: `seed` beats `data.task_seed` (which picks the dataset, not the repeat).
    seed_keys = sorted(
        (k for k in numeric if _SEED.search(k.rsplit(".", 1)[-1])),
        key=lambda k: (k.rsplit(".", 1)[-1].lower() != "seed", bool(re.search(r"data|task|split", k, re.IGNORECASE)), len(k), k),
    )
    hp_keys = sorted(k for k in numeric if k not in seed_keys and not _NOT_HP.search(k))
    unique_per_run = set(stats.filter(pl.col("n_values") >= pl.col("n_runs") * 0.9)["key"].to_list()) if n_runs_total > 3 else set()
    cat_keys = sorted(
        set(stats.filter((pl.col("n_num") == 0))["key"].to_list()) - unique_per_run - {k for k in stats["key"].to_list() if _NOT_HP.search(k)}
    )
    hp: dict[str, dict[str, float]] = defaultdict(dict)
    cats: dict[str, dict[str, str]] = defaultdict(dict)
    for rid, key, value, num in rows.select("run_id", "key", "value", "value_num").iter_rows():
        if key in numeric and num is not None:
            hp[key][rid] = num
        if key in cat_keys:
            cats[rid][key] = value or ""
    seeds = {}
    if seed_keys:
        seeds = {rid: f"{v:g}" for rid, v in hp.get(seed_keys[0], {}).items()}
    failed_runs = {
        rid for rid, e in diagnosis["runs"].items()
        if e.get("status") == "unreadable" or any(c["kind"] in _FAILED_KINDS and c["severity"] == "critical" for c in e.get("root_causes", []))
    }
    wanted: list[tuple[str, list[str], str, str, int | None, float | None]] = []  # key, runs, title, note, cause, boundary
    # 1. sweep findings that cite a parameter: the detector chose the runs and the key.
    sweep_causes = diagnosis.get("sweep", {}).get("root_causes", [])
    sweep_rows = scan_table(out_dir, "findings").filter(pl.col("scope") == "sweep").select("kind", "summary", "run_ids").collect()
    runs_of = {(r["kind"], r["summary"]): list(r["run_ids"] or []) for r in sweep_rows.iter_rows(named=True)}
    for i, cause in enumerate(sweep_causes):
        refs = [e for e in cause.get("evidence", []) if e.get("table") == "params" and e.get("where", {}).get("key") in hp]
        if not refs:
            continue
        key = refs[0]["where"]["key"]
        runs = runs_of.get((cause["kind"], cause["issue"])) or sorted(hp[key])
        boundary = None
        if cause["kind"] == "hp_instability_boundary":
            # The detector cites the first failing value, then the largest safe one: the line goes between.
            vals = [float(e["value"]) for e in refs if e["where"]["key"] == key and isinstance(e.get("value"), (int, float))][:2]
            if len(vals) == 2 and min(vals) > 0:
                boundary = math.sqrt(vals[0] * vals[1])
            elif vals:
                boundary = sum(vals) / len(vals)
        wanted.append((key, runs, f"{key} vs outcome — {cause['kind']}", f"the runs the {cause['kind']} finding compares", i, boundary))
    # 2. slices by categorical parameters.
    slices: dict[tuple, list[str]] = defaultdict(list)
    for rid in diagnosis["runs"]:
        slices[tuple(cats.get(rid, {}).get(k, "") for k in cat_keys)].append(rid)
    lr_like = lambda k: k.rsplit(".", 1)[-1].lower() in ("lr", "learning_rate")  # noqa: E731
    candidates = []
    for skey, members in slices.items():
        if len(members) < 3:
            continue
        varying = [k for k in hp_keys if len({hp[k].get(r) for r in members if r in hp[k]}) >= 2]
        label = _slice_label(skey, cat_keys, list(slices))
        for k in varying:
            others = [o for o in varying if o != k]
            # Slices where runs failed first: the plot then shows where the failures start.
            n_failed = sum(1 for r in members if r in failed_runs and r in hp[k])
            candidates.append(((0 if lr_like(k) else 1, 0 if n_failed else 1, len(others), -len(members), k, label), k, members, others, label))
    candidates.sort(key=lambda c: c[0])
    per_key: Counter = Counter()
    from_findings = {(w[0], frozenset(w[1])) for w in wanted}
    for _, k, members, others, label in candidates:
        if per_key[k] >= 2 or (k, frozenset(members)) in from_findings:
            continue
        per_key[k] += 1
        note = ("runs with " + label if label else "all runs") + (f"; other hyperparameters vary too: {', '.join(others[:4])}" if others else "")
        wanted.append((k, sorted(members), f"{k} vs outcome" + (f" ({label})" if label else ""), note, None, None))
    # Outcomes are read panel by panel, so a sweep of 10,000 runs reads the runs it plots only.
    key_split = _outcome_key(out_dir, sorted({r for w in wanted[: cfg.max_sweep_panels] for r in w[1]}))
    if key_split is None:
        return []
    outcome: dict[str, float] = {}
    broken: dict[str, bool] = {}
    read: set[str] = set()
    panels: list[HpPanel] = []
    for key, runs, title, note, cause, boundary in wanted:
        todo = sorted(set(runs) - read)
        values, failed_last = _last_values(out_dir, todo, *key_split)
        outcome.update(values)
        broken.update(failed_last)
        read.update(todo)
        panel = _panel(key, runs, hp, seeds, key_split[0], outcome, broken, failed_runs, title, note)
        if panel is None:
            continue
        panel.boundary, panel.cause_index = boundary, cause
        panels.append(panel)
        if len(panels) >= cfg.max_sweep_panels:
            break
    return panels
