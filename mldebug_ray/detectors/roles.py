"""Which metric roles a run logs, found from its distinct keys (cheap) before a series is picked."""

from __future__ import annotations

import polars as pl

from mldebug_ray.detectors.series import _split_matches, metric_role, split_of

# The distinct (key, split) pairs of the last metrics frame asked about: the detectors of one
# run ask in turn about the same frame, and a distinct over 143k rows costs ~20 ms.
_last: tuple[pl.DataFrame, list[tuple[str, str | None]]] | None = None


def key_splits(metrics: pl.DataFrame) -> list[tuple[str, str | None]]:
    """The distinct (key, split column value) pairs of a metrics frame."""
    global _last
    if _last is not None and _last[0] is metrics:
        return _last[1]
    if "split" in metrics.columns:
        pairs = list(metrics.select("key", "split").unique().iter_rows())
    else:
        pairs = [(k, None) for k in metrics["key"].unique().to_list()]
    _last = (metrics, pairs)
    return pairs


def logs_role(metrics: pl.DataFrame, role: str, split: str | None) -> bool:
    """True when some (key, split) of `metrics` has `role` in `split` (same matching as pick_series).

    Looks at distinct (key, split) pairs only: pick_series groups every row, which costs
    tens of milliseconds on a 143k-step run, so detectors ask this first.
    """
    if metrics.height == 0:
        return False
    return any(metric_role(k) == role and _split_matches(split_of(k, s), split) for k, s in key_splits(metrics))
