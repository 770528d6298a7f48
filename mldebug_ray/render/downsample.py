"""Bounded-size curves: min/max per step bucket, with NaN/Inf kept as markers, never dropped silently.

A chart is a few hundred pixels wide; a pythia run logs 143k steps. Each series is cut
into `n_buckets` equal step ranges and each bucket keeps its finite minimum and maximum
(in step order), so a spike that lasts one step still reaches the plot (an average or a
stride would hide it, and spikes are what a debugger is looking for). A curve therefore
has at most 2 * n_buckets points whatever the run's length.

Non-finite values cannot be drawn on a y axis. Each bucket records the first step that
held a NaN, a +Inf and a -Inf; the chart draws them as markers. A bucket with no finite
value but a non-finite one becomes a gap (a NaN point), so the line breaks where the run
broke instead of joining across it.

`downsample` works on one series in memory (numpy); `downsample_scan` does the same inside
one lazy polars query for many series at once, so the driver only ever holds the bucket
rows. Tests check the query against `downsample`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

DEFAULT_MAX_POINTS = 600  # ~2 points per horizontal pixel of a 300-px plot area


@dataclass
class Curve:
    """A drawable series: x (steps) and y with NaN meaning 'break the line here', plus non-finite markers."""

    x: np.ndarray
    y: np.ndarray
    nan_x: np.ndarray = field(default_factory=lambda: np.empty(0))
    posinf_x: np.ndarray = field(default_factory=lambda: np.empty(0))
    neginf_x: np.ndarray = field(default_factory=lambda: np.empty(0))

    @property
    def n_points(self) -> int:
        return int(self.x.size)

    def finite_y(self) -> np.ndarray:
        return self.y[np.isfinite(self.y)]


def _buckets(steps: np.ndarray, n_buckets: int) -> np.ndarray:
    lo, hi = int(steps.min()), int(steps.max())
    return ((steps - lo) * n_buckets // (hi - lo + 1)).astype(np.int64)


def downsample(steps, values, max_points: int = DEFAULT_MAX_POINTS) -> Curve:
    """At most `max_points` points of (steps, values): finite min and max of each of max_points // 2 step buckets.

    Points keep their own step and come out in step order; null/None values are dropped,
    NaN/Inf become markers (and a gap where a bucket holds nothing finite).
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    if not isinstance(values, np.ndarray):  # a list may hold None: a cell nobody wrote, not a NaN
        keep = [v is not None for v in values]
        steps = [s for s, k in zip(steps, keep) if k]
        values = [v for v in values if v is not None]
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=float)
    if steps.size == 0:
        return Curve(np.empty(0), np.empty(0))
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    bucket = _buckets(steps, max_points // 2)
    xs: list[float] = []
    ys: list[float] = []
    nan_x: list[int] = []
    pos_x: list[int] = []
    neg_x: list[int] = []
    bounds = np.flatnonzero(np.diff(bucket)) + 1
    for idx in np.split(np.arange(steps.size), bounds):
        s, v = steps[idx], values[idx]
        fin = np.isfinite(v)
        for mask, out in ((np.isnan(v), nan_x), (np.isposinf(v), pos_x), (np.isneginf(v), neg_x)):
            if mask.any():
                out.append(int(s[mask][0]))
        if fin.any():
            fs, fv = s[fin], v[fin]
            i_min, i_max = int(np.argmin(fv)), int(np.argmax(fv))
            picks = sorted({i_min, i_max}, key=lambda i: (fs[i], i))
            for i in picks:
                xs.append(float(fs[i]))
                ys.append(float(fv[i]))
        elif (~fin).any():
            xs.append(float(s[~fin][0]))
            ys.append(np.nan)
    return Curve(np.asarray(xs), np.asarray(ys), np.asarray(nan_x, float), np.asarray(pos_x, float), np.asarray(neg_x, float))


def downsample_scan(frame: pl.LazyFrame, n_buckets: pl.Expr | int, range_key: str = "sid") -> pl.DataFrame:
    """Bucket rows of many series in one query: `frame` has columns sid, step, value (and n_buckets if an expr).

    Buckets split the step range of each `range_key` group (a series by default; a run's
    whole range makes the buckets of its series line up, as heatmap columns must).
    Returns one row per (sid, bucket) with _lo/_hi (the range), vmin/vmin_step and
    vmax/vmax_step (finite values only), nan_step, posinf_step, neginf_step and
    nonfinite_step; turn them into Curves with `curves_from_buckets`.
    """
    nb = pl.lit(n_buckets) if isinstance(n_buckets, int) else n_buckets
    frame = frame.filter(pl.col("value").is_not_null() & pl.col("step").is_not_null())
    ranges = frame.group_by(range_key).agg(pl.col("step").min().alias("_lo"), pl.col("step").max().alias("_hi"))
    fin = pl.col("value").is_finite()
    by_value = pl.col("value").filter(fin)
    return (
        frame.join(ranges, on=range_key, how="inner")
        .with_columns(((pl.col("step") - pl.col("_lo")) * nb // (pl.col("_hi") - pl.col("_lo") + 1)).alias("bucket"))
        .group_by("sid", "bucket")
        .agg(
            pl.col("_lo").first(),
            pl.col("_hi").first(),
            by_value.min().alias("vmin"),
            pl.col("step").filter(fin).sort_by(by_value, pl.col("step").filter(fin)).first().alias("vmin_step"),
            by_value.max().alias("vmax"),
            pl.col("step").filter(fin).sort_by(by_value, pl.col("step").filter(fin), descending=[True, False]).first().alias("vmax_step"),
            pl.col("step").filter(pl.col("value").is_nan()).min().alias("nan_step"),
            pl.col("step").filter(pl.col("value") == float("inf")).min().alias("posinf_step"),
            pl.col("step").filter(pl.col("value") == float("-inf")).min().alias("neginf_step"),
            pl.col("step").filter(~fin).min().alias("nonfinite_step"),
        )
        .sort("sid", "bucket")
        .collect()
    )


def curves_from_buckets(buckets: pl.DataFrame) -> dict[str, Curve]:
    """`downsample_scan`'s rows as one Curve per sid (same points as `downsample` would give)."""
    out: dict[str, Curve] = {}
    if buckets.height == 0:
        return out
    for (sid,), part in buckets.group_by("sid", maintain_order=True):
        xs: list[float] = []
        ys: list[float] = []
        for r in part.iter_rows(named=True):
            if r["vmin"] is not None:
                pts = {(r["vmin_step"], r["vmin"]), (r["vmax_step"], r["vmax"])}
                for s, v in sorted(pts, key=lambda p: p[0]):
                    xs.append(float(s))
                    ys.append(float(v))
            elif r["nonfinite_step"] is not None:
                xs.append(float(r["nonfinite_step"]))
                ys.append(np.nan)

        markers = [part[name].drop_nulls().cast(pl.Float64).to_numpy() for name in ("nan_step", "posinf_step", "neginf_step")]
        out[str(sid)] = Curve(np.asarray(xs), np.asarray(ys), *markers)
    return out
