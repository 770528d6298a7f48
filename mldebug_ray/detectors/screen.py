"""All runs at once: a vectorised polars screen over the whole sweep's tables, then the exact
per-run detectors on the runs the screen cannot clear.

The per-run detectors (`run_detectors`) are the definition of every finding; this module
only decides, with polars over all runs together (group by run and series), which runs
*could* produce one. Each test below is a necessary condition of some detector firing,
derived from that detector's own rule and config (never a separate threshold): a run that
passes none of them yields no finding from any detector, so it is skipped, and the
findings are exactly those of running every detector on every run. Tests that would need
the detector's full computation (thinned oscillation legs, a param-dependent rule) make
the run a candidate instead: the screen may keep too many runs, never too few.
`tests/detectors/test_screen.py` checks the equality against the per-run loop on random
sweeps with planted faults.

Why it is fast: the expensive part of the detectors is rolling medians over every point
of every run; the screen replaces them by bounds that cost one pass (a rolling minimum is
a lower bound of a rolling median; the k-th smallest value of a series bounds the median
of any of its windows from below; the median of the last full window bounds the smallest
rolling median from above), so a healthy run costs a few vector operations.

Where it is loose: runs whose params name something a run detector reads (a class count, a
planned length, a schedule: every `*_keys` list of their configs), runs with metrics of
other roles (accuracy, loss scale, memory, per-layer norms) or rows in other tables, and
runs without a validation loss (oscillation smooths and thins the train loss) are always
candidates. The pipeline itself still detects per run inside its Ray tasks (each task
holds one run's evidence); this path is for detection over a whole `metrics` table at
once (benchmarks/detector_speed.py, re-detecting an existing out_dir).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Mapping

import numpy as np
import polars as pl

from mldebug_ray import schema
from mldebug_ray.detectors import DETECTORS, EVIDENCE_TABLES, DetectorsConfig, RunEvidence, run_detectors
from mldebug_ray.detectors.series import adaptive_window, is_timing_key, metric_role, split_of
from mldebug_ray.findings import Finding

SCREENED_ROLES = ("loss", "grad_norm", "lr")
"""Metric roles the screen tests series by series (validation accuracy too, in `_accuracy_tests`);
keys of roles no run detector reads are ignored (`_key_table`), any other makes its run a candidate."""

# Tables other than runs/params/metrics: any row there feeds a detector (events, probes, the
# data probe). Taken from RunEvidence so a table added there is never screened out unseen.
_OTHER_TABLES = tuple(t for t in EVIDENCE_TABLES if t not in ("runs", "params", "metrics"))

# Plateau's smoothing window is capped at 51 points and its start is a median of at most 5.
_PLATEAU_MAX_WINDOW = 51


def _param_keys(cfg: DetectorsConfig) -> set[str]:
    """Param names (last dotted part) the enabled run detectors read: every `*_keys` list of their configs."""
    names: set[str] = set()
    for name in cfg.enabled:
        entry = DETECTORS.get(name)
        sub = getattr(cfg, entry.config_key) if entry is not None else None
        if not dataclasses.is_dataclass(sub):
            continue
        for g in dataclasses.fields(sub):
            value = getattr(sub, g.name)
            if g.name.endswith("_keys") and isinstance(value, list):
                names.update(str(v).lower() for v in value)
    return names


def _read_by_name(key: str) -> bool:
    """True when a run detector picks this key by its name rather than its role: output
    diversity (mode_collapse), per-task metrics and task ids (catastrophic_forgetting),
    memory (memory_pressure), skipped-step counters (fp16_overflow). Their own patterns."""
    from mldebug_ray.detectors.catastrophic_forgetting import _TASK, _TASK_ID
    from mldebug_ray.detectors.fp16_overflow import skip_key
    from mldebug_ray.detectors.memory_pressure import _MEMORY
    from mldebug_ray.detectors.mode_collapse import _DISTINCT, _TOP1

    k = " ".join(key.strip().lower().split())
    return bool(_TOP1.search(k) or _DISTINCT.search(k) or _TASK.search(key) or _TASK_ID.match(key.strip())
                or _MEMORY.search(key.lower()) or skip_key(key))


def _key_table(metrics: pl.DataFrame) -> pl.DataFrame:
    """[key, split, role, family] for every (key, split) of `metrics`; family is train/val/test.

    Role `ignored`: a key no run detector reads beyond what the screen tests for every key
    (NaN/Inf, equal held-out and train values): a train/test accuracy, an epoch counter
    (read only against a planned epoch count, a param that makes the run a candidate),
    counters such as consumed_samples. Role `named`: read by its name (`_read_by_name`).
    """
    pairs = metrics.select("key", "split").unique()
    rows = []
    for key, split in pairs.iter_rows():
        role = metric_role(key)
        found = split_of(key, split)
        if role not in ("loss", "grad_norm", "lr") and _read_by_name(key):
            role = "named"
        elif role is None and is_timing_key(key):
            role = "timing"
        elif role is None or role == "epoch" or (role == "accuracy" and found != "val"):
            role = "ignored"
        rows.append({"key": key, "split": split, "role": role, "family": found or "train"})
    return pl.DataFrame(rows, schema={"key": pl.String, "split": pl.String, "role": pl.String, "family": pl.String})


def screen_runs(tables: Mapping[str, pl.DataFrame], cfg: DetectorsConfig) -> pl.DataFrame:
    """[run_id, reason]: the runs some detector could fire on, one row per run (first reason).

    `tables` maps table names to all runs' rows (SPEC §4 schemas; `metrics` needs run_id,
    step, key, value, split). Missing tables count as empty.
    """
    metrics = tables.get("metrics", schema.empty("metrics"))
    reasons: list[pl.DataFrame] = []

    def add(frame: pl.DataFrame, reason: str) -> None:
        reasons.append(_tag(frame, reason))

    for name in _OTHER_TABLES:
        frame = tables.get(name)
        if frame is not None and frame.height:
            add(frame, f"has {name} rows")
    runs = tables.get("runs")
    if runs is not None and runs.height:
        add(runs.filter(pl.col("status") != "ok"), "run status is not ok")
        add(runs.join(metrics.select("run_id").unique(), on="run_id", how="anti"), "no metrics")
    params = tables.get("params")
    if params is not None and params.height:
        leaf = pl.col("key").str.to_lowercase().str.split(".").list.last()
        add(params.filter(leaf.is_in(sorted(_param_keys(cfg)))), "a param some detector reads")
    if metrics.height:
        reasons += _metric_tests(metrics, cfg)
    if not reasons:
        return pl.DataFrame(schema={"run_id": pl.String, "reason": pl.String})
    return pl.concat(reasons).unique(subset=["run_id"], keep="first", maintain_order=True).sort("run_id")


def _segments(metrics: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows, segments): each series (run_id, key, split) as one contiguous block of rows.

    rows: [seg, step, value] with `seg` the block number (0, 1, ..., sorted); segments: one
    row per block [run_id, key, split, seg, n]. Tables written run by run hold each series
    in one block already; otherwise they are sorted once (stable, so each series keeps its
    logged order). Contiguous blocks let every test below run as one pass over the whole
    column instead of a window per group: a row is in the same block as the row k before
    it exactly when their `seg` are equal.
    """
    m = metrics.select("run_id", "key", "split", "step", "value")
    for attempt in range(2):
        seg = m.select(pl.struct("run_id", "key", "split").rle_id().cast(pl.Int64)).to_series().set_sorted()
        # The first row of each block, by a mask (a gather on a many-chunk frame copies it whole).
        segs = m.select("run_id", "key", "split").filter(seg != seg.shift(1, fill_value=-1))
        if attempt == 0 and segs.is_duplicated().any():
            m = m.sort("run_id", "key", "split", maintain_order=True, nulls_last=True)
            continue
        break
    segs = segs.with_columns(pl.Series("seg", np.arange(segs.height, dtype=np.int64)), pl.Series("n", seg.unique_counts().to_numpy().astype(np.int64)))
    return pl.DataFrame({"seg": seg, "step": m["step"], "value": m["value"]}), segs


def _same_block(k: int) -> pl.Expr:
    """True where the row k rows before is in the same block (the row's position is >= k)."""
    return (pl.col("seg") == pl.col("seg").shift(k)).fill_null(False)


def _metric_tests(metrics: pl.DataFrame, cfg: DetectorsConfig) -> list[pl.DataFrame]:
    rows, segs = _segments(metrics)
    # One pass over every series: non-finite values, exact zeros, steps not increasing.
    flags = (
        rows.lazy()
        .with_columns(
            (~pl.col("value").is_finite()).alias("nonfinite"),
            (pl.col("value") == 0.0).alias("zero"),
            ((pl.col("step") <= pl.col("step").shift(1)) & _same_block(1)).alias("bad_order"),
        )
        .group_by("seg")
        .agg(pl.col("nonfinite").any(), pl.col("zero").any(), pl.col("bad_order").any())
        .collect()
    )
    stats = segs.join(flags, on="seg").join(_key_table(segs), on=["key", "split"], nulls_equal=True, how="left").sort("seg")
    out = [
        _tag(stats.filter(~pl.col("role").is_in([*SCREENED_ROLES, "timing", "ignored", "accuracy"])), "a metric the screen does not judge"),
        _tag(stats.filter(pl.col("nonfinite")), "NaN/Inf value"),
    ]
    screened = stats.filter(pl.col("role").is_in(SCREENED_ROLES))
    # The tests below run on every series of a role, so the detectors' choice of one key per
    # role and split is covered, except oscillation's: with several validation losses it may
    # pick one too short to judge and fall back to the train loss, which is not bounded here.
    val_losses = screened.filter((pl.col("role") == "loss") & (pl.col("family") == "val"))
    out.append(_tag(val_losses.group_by("run_id").agg(pl.len().alias("k")).filter(pl.col("k") > 1), "several validation losses"))
    out.append(_tag(stats.filter(pl.col("bad_order") & pl.col("role").is_in([*SCREENED_ROLES, "accuracy"])), "repeated or unsorted steps"))
    out.append(_tag(screened.filter(pl.col("zero") & (pl.col("role") == "loss")), "a loss of exactly 0"))
    # oscillation reads the train loss when no validation loss of >= min_points is logged;
    # its smoothed, thinned legs are not bounded here, so such runs are checked per run.
    losses = screened.filter(pl.col("role") == "loss")
    has_val = losses.filter((pl.col("family") == "val") & (pl.col("n") >= cfg.oscillation.min_points))
    out.append(_tag(losses.join(has_val.select("run_id"), on="run_id", how="anti"), "oscillation: no validation loss, the train loss is judged per run"))

    def rows_of(frame: pl.DataFrame) -> pl.DataFrame:
        if frame.height == 0:  # no pass over the whole column for a role nobody logged
            return rows.clear()
        return rows.filter(pl.col("seg").is_in(frame["seg"].implode()))

    gs = cfg.grad_norm_spike
    out += _loss_tests(rows_of(losses), losses, cfg)
    out += _spike_tests(rows_of(screened.filter(pl.col("role") == "grad_norm")), stats, gs.window, min(gs.factor, gs.factor_with_loss_jump),
                        "grad_norm_spike: a point above the lower factor x the median before it")
    out += _lr_tests(rows_of(screened.filter(pl.col("role") == "lr")), stats, cfg)
    out += _eval_on_train_tests(rows, stats, cfg)
    out += _accuracy_tests(rows_of(stats.filter(pl.col("role") == "accuracy")), stats, cfg)
    return out


def _accuracy_tests(rows: pl.DataFrame, stats: pl.DataFrame, cfg: DetectorsConfig) -> list[pl.DataFrame]:
    """oscillation on a validation accuracy: a leg falls by >= min_acc_swing (x100 for a
    percentage) below an earlier value, so the drop below the running maximum is at least that.
    Series longer than max_points (thinned by the detector) are checked per run."""
    if rows.height == 0:
        return []
    osc = cfg.oscillation
    agg = rows.group_by("seg").agg(
        pl.len().alias("n"),
        pl.col("value").max().alias("max"),
        (pl.col("value").cum_max() - pl.col("value")).max().alias("drop"),
    )
    unit = pl.when(pl.col("max") > 1.5).then(100.0).otherwise(1.0)
    found = agg.filter((pl.col("n") > osc.max_points) | (pl.col("drop") >= osc.min_acc_swing * unit))
    return [_by_seg(found, stats, "oscillation: the validation accuracy drops by a swing")]


def _by_seg(found: pl.DataFrame, stats: pl.DataFrame, reason: str) -> pl.DataFrame:
    """The runs of the blocks in `found` (a frame with `seg`), tagged with `reason`."""
    return _tag(stats.join(found.select("seg").unique(), on="seg", how="semi"), reason)


def _spike_tests(rows: pl.DataFrame, stats: pl.DataFrame, window: int, ratio: float, reason: str) -> list[pl.DataFrame]:
    """Blocks where some nonzero point exceeds `ratio` x the median of the points before it
    (the spike detectors' trailing window: min(window, max(3, n // 5)) points, at least 3
    when n >= 20). First a one-pass bound: a minimum is never above the median of the same
    or a shorter trailing window, so only blocks with a point over ratio x the trailing
    minimum of `window` points can qualify; their exact medians are computed afterwards."""
    x = rows.filter(pl.col("value") != 0.0)  # the detectors drop exact zeros (placeholders)
    if x.height == 0:
        return []
    # One rolling minimum over the whole column, used where a row has `window` nonzero rows of
    # its own block before it; the first rows of each block get a per-block running minimum
    # (a small pass). A base <= 0 (a negative loss) keeps the block.
    base = pl.col("value").rolling_min(window_size=window, min_samples=1).shift(1)
    hit = (pl.col("base") <= 0) | (pl.col("value") > ratio * pl.col("base"))
    x = x.with_columns(_same_block(window).alias("late"))
    late_hits = x.with_columns(base.alias("base")).filter(pl.col("late") & hit)
    head = x.filter(~pl.col("late")).with_columns(pl.col("value").cum_min().shift(1).over("seg").alias("base"))
    head_hits = head.filter(pl.col("base").is_not_null() & hit)
    maybe = pl.concat([late_hits.select("seg"), head_hits.select("seg")]).unique()
    if maybe.height == 0:
        return []
    x = x.filter(pl.col("seg").is_in(maybe["seg"].implode()))
    n = pl.len().over("seg")
    x = x.with_columns(pl.min_horizontal(pl.lit(window), pl.max_horizontal(pl.lit(3), n // 5)).alias("w"), (n >= 20).alias("long"))
    hits = []
    for (w, long), part in x.partition_by("w", "long", as_dict=True).items():
        med = pl.col("value").rolling_median(window_size=int(w), min_samples=3 if long else 1).shift(1).over("seg")
        hits.append(part.filter((med > 0) & (pl.col("value") > ratio * med)))
    return [_by_seg(pl.concat(hits), stats, reason)]


def _loss_tests(rows: pl.DataFrame, losses: pl.DataFrame, cfg: DetectorsConfig) -> list[pl.DataFrame]:
    ls, dv, pl_cfg, of, osc = cfg.loss_spike, cfg.divergence, cfg.plateau, cfg.overfitting, cfg.oscillation
    spike_segs = losses.filter(pl.col("family").is_in(ls.splits))
    out = _spike_tests(rows.filter(pl.col("seg").is_in(spike_segs["seg"].implode())), losses, ls.window, ls.min_ratio,
                       "loss_spike: a point above min_ratio x the median before it")
    x = rows.filter(pl.col("value") != 0.0)
    if x.height == 0:
        return out
    agg = x.group_by("seg").agg(
        pl.len().alias("n"),
        pl.col("value").min().alias("min"),
        pl.col("value").bottom_k(13).alias("low"),
        pl.col("value").tail(dv.max_smooth // 2 + 1).alias("tail_div"),
        pl.col("value").head(5).alias("head"),
        pl.col("value").tail(_PLATEAU_MAX_WINDOW).alias("tail"),
        pl.col("value").tail(of.tail_points).max().alias("tail_max"),
        (pl.col("value") - pl.col("value").cum_min()).max().alias("rise_over_cummin"),
    ).join(losses.select("seg", "run_id", "family"), on="seg")
    # divergence and plateau read the train loss, the validation loss only when none is logged.
    with_train = set(agg.filter(pl.col("family") == "train")["run_id"].to_list())
    rows_out = []
    for r in agg.iter_rows(named=True):
        main_series = r["family"] == "train" or (r["family"] == "val" and r["run_id"] not in with_train)
        reasons = []
        # divergence: the smoothed loss ends above onset_ratio x its smallest smoothed value.
        # The last smoothed point is the median of the last window//2+1 points; every smoothing
        # window holds >= window//2+1 points, so its median is at least the
        # ceil((window//2+1)/2)-th smallest point of the whole series.
        w = adaptive_window(r["n"], frac=dv.smooth_frac, lo=1, hi=dv.max_smooth, odd=True)
        half = w // 2 + 1
        low = sorted(r["low"])
        floor = low[min(-(-half // 2), len(low)) - 1]
        tail = sorted(r["tail_div"][-half:])
        last_upper = tail[len(tail) // 2]  # >= the median of the last `half` points
        if main_series and (r["min"] <= 0 or last_upper > dv.onset_ratio * floor):
            reasons.append("divergence: the end level is far above the lowest level")
        # plateau (stuck): its smoothed best is at most the median of its last full window,
        # and its start is the median of its first min(5, 10%) points: the detector's windows.
        k = max(1, int(round(r["n"] * pl_cfg.edge_frac)))
        start = float(np.median(r["head"][: min(k, 5)]))
        w = adaptive_window(r["n"], frac=pl_cfg.edge_frac, lo=3, hi=_PLATEAU_MAX_WINDOW, odd=True)
        end_window = float(np.median(r["tail"][-w:])) if w <= r["n"] else float("inf")
        if main_series and r["n"] >= pl_cfg.min_points and (start <= 0 or end_window > (1 - pl_cfg.min_rel_decrease) * start):
            reasons.append("plateau: the loss may be stuck")
        # overfitting: the final held-out level (median of <= tail_points last points) above
        # (1 + stall_frac) x its minimum is needed by both of its signals.
        if r["family"] in ("val", "test") and (r["min"] <= 0 or r["tail_max"] > (1 + min(of.rise_frac, of.stall_frac)) * r["min"]):
            reasons.append("overfitting: the held-out loss ends above its minimum")
        # oscillation on a raw validation loss: a loss leg rises by >= min_swing_frac x the
        # running minimum (for a positive loss >= the series minimum) from a trough that is
        # >= the running minimum at the peak. Thinned (longer) series: per run.
        if r["family"] == "val" and (r["n"] > osc.max_points or r["min"] <= 0
                                     or r["rise_over_cummin"] >= osc.min_swing_frac * r["min"]):
            reasons.append("oscillation: the validation loss rises by a swing")
        if reasons:
            rows_out.append({"run_id": r["run_id"], "reason": reasons[0]})
    if rows_out:
        out.append(pl.DataFrame(rows_out, schema={"run_id": pl.String, "reason": pl.String}))
    return out


def _lr_tests(lr: pl.DataFrame, stats: pl.DataFrame, cfg: DetectorsConfig) -> list[pl.DataFrame]:
    if lr.height == 0:
        return []
    c = cfg.lr_schedule_anomaly
    lr = lr.filter(pl.col("value").is_finite())
    # Blocks are numbered 0..S-1, so a per-block value reaches its rows by a gather, not a join.
    n_segs = int(stats["seg"].max()) + 1
    peak = lr.group_by("seg").agg(pl.col("value").max())
    per_seg = np.full(n_segs, np.nan)
    per_seg[peak["seg"].to_numpy()] = peak["value"].to_numpy()
    seg = lr["seg"].to_numpy()
    # Zero, negative or collapsed (<= floor_frac x peak). A run of such values at the start is
    # the warm-up from 0, which the detector ignores: a low value counts when a higher one came
    # before it in its block, when every value is low, or when it is negative.
    values = lr["value"].to_numpy()
    is_low = values <= c.floor_frac * per_seg[seg]
    flags = pl.DataFrame({"seg": lr["seg"], "low": is_low, "i": np.arange(values.size)}).group_by("seg").agg(
        pl.col("i").filter(~pl.col("low")).min().alias("first_high"),
        pl.col("i").filter(pl.col("low")).max().alias("last_low"),
        pl.col("low").all().alias("all_low"),
    )
    low = pl.concat([
        flags.filter(pl.col("all_low") | (pl.col("last_low") > pl.col("first_high"))).select("seg"),
        lr.filter(pl.col("value") < 0).select("seg"),
    ])
    # A jump: after the LR settled (a run of settle_points non-increasing points ended
    # before it, within its block), a point above jump_factor x every earlier value, hence
    # above jump_factor x the point just before it: the test below, one pass for all blocks.
    no_increase = ((pl.col("value") <= pl.col("value").shift(1)) & _same_block(1)).fill_null(False).cast(pl.Int32)
    lr = lr.with_columns(pl.int_range(pl.len()).alias("i"), (no_increase.rolling_sum(window_size=c.settle_points, min_samples=1) >= c.settle_points).alias("run"))
    settle = lr.filter(pl.col("run")).group_by("seg").agg(pl.col("i").min())
    per_seg = np.full(n_segs, np.iinfo(np.int64).max)
    per_seg[settle["seg"].to_numpy()] = settle["i"].to_numpy()
    settled = pl.Series(lr["i"].to_numpy() > per_seg[seg])
    jump = lr.filter(settled & _same_block(1) & (pl.col("value") > c.jump_factor * pl.col("value").shift(1)) & (pl.col("value") > 0))
    return [_by_seg(low, stats, "lr_schedule_anomaly: an LR at or below floor_frac x its peak"),
            _by_seg(jump, stats, "lr_schedule_anomaly: an LR above jump_factor x the one before, after it settled")]


def _eval_on_train_tests(rows: pl.DataFrame, stats: pl.DataFrame, cfg: DetectorsConfig) -> list[pl.DataFrame]:
    """eval_on_train pairs a held-out series with a train series at the same steps; one pair of
    values equal within rel_tol at one step is necessary for its >= 90% identical pairs."""
    tol = cfg.eval_on_train.rel_tol
    held = stats.filter(pl.col("family").is_in(["val", "test"]))
    if held.height == 0:
        return []
    train = stats.filter((pl.col("family") == "train") & pl.col("run_id").is_in(held["run_id"].implode()))
    h = rows.filter(pl.col("seg").is_in(held["seg"].implode())).join(held.select("seg", "run_id"), on="seg")
    t = rows.filter(pl.col("seg").is_in(train["seg"].implode()) & pl.col("step").is_in(h["step"].unique().implode()))
    t = t.join(train.select("seg", "run_id"), on="seg")
    pairs = h.select("run_id", "step", pl.col("value").alias("held")).join(t.select("run_id", "step", "value"), on=["run_id", "step"], how="inner")
    same = pairs.filter((pl.col("held") - pl.col("value")).abs() <= tol * pl.max_horizontal(pl.col("held").abs(), pl.col("value").abs(), pl.lit(1e-12)))
    return [_tag(same, "eval_on_train: a held-out value equals a train value at the same step")]


def _tag(frame: pl.DataFrame, reason: str) -> pl.DataFrame:
    return frame.select(pl.col("run_id").cast(pl.String)).unique().with_columns(pl.lit(reason).alias("reason"))


@dataclasses.dataclass
class ScreenedResult:
    """What `run_detectors_all` found and how much per-run work it did."""

    findings: list[Finding]
    problems: list[str]
    """"<run_id>: <detector>: <error>" for detectors that raised (the others still ran)."""
    candidates: pl.DataFrame
    """[run_id, reason] of the runs the exact detectors ran on."""
    n_runs: int
    screen_s: float = 0.0
    """Wall seconds of the screen; the rest of the call ran the exact detectors."""


def run_detectors_all(tables: Mapping[str, pl.DataFrame], cfg: DetectorsConfig) -> ScreenedResult:
    """Every run-level detector over all runs of `tables`: screen all runs at once, then run
    the exact detectors only on the candidates (same findings as `run_detectors` per run)."""
    t0 = time.perf_counter()
    candidates = screen_runs(tables, cfg)
    screen_s = time.perf_counter() - t0
    run_ids = set()
    for name in ("runs", "metrics", "params", *_OTHER_TABLES):
        frame = tables.get(name)
        if frame is not None and frame.height:
            run_ids.update(frame["run_id"].unique().to_list())
    wanted = candidates["run_id"].to_list()
    parts: dict[str, dict[str, pl.DataFrame]] = {rid: {} for rid in wanted}
    for name, frame in tables.items():
        if name not in EVIDENCE_TABLES or frame.height == 0:
            continue
        sub = frame.filter(pl.col("run_id").is_in(wanted))
        for (rid,), part in sub.partition_by("run_id", as_dict=True, maintain_order=True).items():
            parts[rid][name] = part
    findings: list[Finding] = []
    problems: list[str] = []
    for rid in wanted:
        ev = RunEvidence(rid, **{name: _full(name, frame) for name, frame in parts[rid].items()})
        found, bad = run_detectors(ev, cfg)
        findings.extend(found)
        problems.extend(f"{rid}: {p}" for p in bad)
    return ScreenedResult(findings, problems, candidates, len(run_ids), screen_s)


def _full(table: str, frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with every column of `table`'s schema (missing optional ones as nulls)."""
    missing = [c for c in schema.TABLES[table] if c not in frame.columns]
    if missing:
        frame = frame.with_columns(pl.lit(None, dtype=schema.TABLES[table][c]).alias(c) for c in missing)
    return frame.select(list(schema.TABLES[table])).cast(schema.TABLES[table])
