"""Metric series by role (loss, grad norm, lr, ...) and the robust statistics detectors share."""

from __future__ import annotations

import hashlib
import re
from typing import Iterable

import numpy as np
import polars as pl

from mldebug_ray.findings import EvidenceRef

ROLES = ("loss", "grad_norm", "lr", "loss_scale", "accuracy", "layer_grad_norm", "epoch")
SPLITS = ("train", "val", "test")

# Scales a median absolute deviation to the standard deviation of normal noise.
MAD_TO_SIGMA = 1.4826

# Preferred spellings per role: a key spelled exactly like one of these wins over any
# other spelling of the same role (e.g. `train/loss` over `aux_loss`).
CANONICAL: dict[str, frozenset[str]] = {
    "loss": frozenset(
        {
            "loss", "train/loss", "train_loss", "lm loss", "lm_loss", "train/lm_loss", "trl",
            "eval_loss", "eval/loss", "val_loss", "val/loss", "validation/loss", "validation_loss",
            "test/loss", "test_loss", "tel",
        }
    ),
    "grad_norm": frozenset({"grad_norm", "train/grad_norm", "grad norm", "gradient_norm", "norm"}),
    "lr": frozenset({"lr", "learning_rate", "train/lr", "train/learning_rate", "learning rate"}),
    "loss_scale": frozenset({"loss_scale", "loss scale", "scaler/scale", "train/loss_scale"}),
    "accuracy": frozenset({"accuracy", "acc", "val/accuracy", "eval_accuracy", "train/accuracy", "val_acc", "train_acc"}),
    "epoch": frozenset({"epoch", "train/epoch"}),
    "layer_grad_norm": frozenset(),
}

_SPLIT_WORDS = {
    "train": "train", "training": "train", "trn": "train",
    "val": "val", "valid": "val", "validation": "val", "eval": "val", "dev": "val",
    "test": "test",
}
_SPLIT_PREFIX = re.compile(r"^(train|training|trn|val|valid|validation|eval|dev|test)[/_ .]")
_SPLIT_SUFFIX = re.compile(r"[/_ .](train|training|val|valid|validation|eval|dev|test)$")
_LAYER_GRAD = re.compile(r"^(?:(?:train|training)[/_.])?(?:grad_norm|grad norm|gradient_norm)/(.+)$")
# llm.c prints `trl` (train loss) and `tel` (test/eval loss, used as validation).
_SHORT_KEYS = {"trl": ("loss", "train"), "tel": ("loss", "val")}

_LOSS_BASES = frozenset({"loss", "lm_loss", "nll", "nll_loss", "ce_loss", "cross_entropy", "xent", "total_loss"})
_GRAD_BASES = frozenset(
    {"grad_norm", "gradient_norm", "norm", "grad_norm_l2", "global_grad_norm", "total_grad_norm",
     "gradnorm", "grad_l2_norm", "global_norm", "grad_global_norm"}
)
_LR_BASES = frozenset({"lr", "learning_rate", "learningrate"})
_SCALE_BASES = frozenset({"loss_scale", "lossscale", "grad_scale", "scaler_scale", "scaler/scale"})
_ACC_BASES = frozenset({"accuracy", "acc", "top1", "acc1", "top1_acc", "top_1_accuracy", "accuracy_top1", "top1_accuracy"})

# Keys that time the run, never a training quantity (modded-nanogpt prints `step_avg:nanms`
# at step 0: that is not a NaN loss, FIELD-NOTES).
_TIMING = re.compile(
    r"(step_avg|_time|time_|^time$|_ms$|_s$|^elapsed|elapsed_|throughput|per_second|per_sec|samples_per|"
    r"tokens_per|tflops|mfu|wall|duration|timestamp|^runtime$|_runtime$)"
)


def _normal(key: str) -> str:
    return " ".join(key.strip().lower().split())


def _base(key: str) -> str:
    """The key without its split marker and namespace, separators unified to `_`."""
    k = _normal(key)
    if k in ("scaler/scale",):
        return "loss_scale"
    k = _SPLIT_PREFIX.sub("", k, count=1)
    k = _SPLIT_SUFFIX.sub("", k, count=1)
    k = k.rsplit("/", 1)[-1].replace(" ", "_").replace("-", "_").replace(".", "_")
    # Lightning logs `train_loss_step` / `train_loss_epoch` for one metric.
    for suffix in ("_step", "_epoch"):
        if k.endswith(suffix) and len(k) > len(suffix):
            k = k[: -len(suffix)]
            k = _SPLIT_PREFIX.sub("", k, count=1)
            break
    return k


def is_timing_key(key: str) -> bool:
    """True for keys that measure time or throughput (never a sign of a numeric fault)."""
    return bool(_TIMING.search(_normal(key)))


def metric_role(key: str) -> str | None:
    """The role of a metric key: one of ROLES, or None when the key is not recognised."""
    k = _normal(key)
    if k in _SHORT_KEYS:
        return _SHORT_KEYS[k][0]
    m = _LAYER_GRAD.match(k)
    if m and m.group(1).strip():
        return "layer_grad_norm"
    for role, names in CANONICAL.items():
        if k in names:
            return role
    base = _base(k)
    if base in _SCALE_BASES or base.endswith("loss_scale"):
        return "loss_scale"
    if base in _LOSS_BASES or (base.endswith("loss") and not is_timing_key(k)):
        return "loss"
    if base in _GRAD_BASES:
        return "grad_norm"
    if base in _LR_BASES or base.startswith("lr_") or base.startswith("learning_rate_"):
        return "lr"
    if base in _ACC_BASES or base.endswith("_accuracy") or base.endswith("_acc"):
        return "accuracy"
    if base == "epoch":
        return "epoch"
    return None


def split_of(key: str, split_column_value: str | None = None) -> str | None:
    """`train`/`val`/`test` for a metric row: the row's `split` column if set, else what the key says.

    A key with no split marker (`loss`, `lm loss`) gives None; callers asking for the
    train split accept None, since unmarked losses are training losses by convention.
    """
    if split_column_value:
        s = _SPLIT_WORDS.get(split_column_value.strip().lower())
        if s:
            return s
    k = _normal(key)
    if k in _SHORT_KEYS:
        return _SHORT_KEYS[k][1]
    m = _SPLIT_PREFIX.match(k)
    if m:
        return _SPLIT_WORDS[m.group(1)]
    m = _SPLIT_SUFFIX.search(k)
    if m:
        return _SPLIT_WORDS[m.group(1)]
    if k.startswith("validation ") or k.startswith("eval "):
        return "val"
    return None


def _split_matches(found: str | None, wanted: str | None) -> bool:
    if wanted is None:
        return True
    if wanted == "train":
        return found in ("train", None)
    return found == wanted


# The per-key counts of the frame asked about last: every detector asks keys_for_role
# about the same run's metrics, so one group-by serves them all. Holding the last frame
# (one run's metrics, in one process) is the price; `is` keeps it exact.
_counts_cache: tuple[pl.DataFrame | None, pl.DataFrame | None] = (None, None)


def _key_counts(metrics: pl.DataFrame) -> pl.DataFrame:
    """Finite points, rows and last step per (key[, split]) of `metrics`."""
    global _counts_cache
    frame, counts = _counts_cache
    if frame is metrics and counts is not None:
        return counts
    cols = ["key", "split"] if "split" in metrics.columns else ["key"]
    counts = (
        metrics.select(cols + ["value", "step"])
        .group_by(cols)
        .agg(
            pl.col("value").is_finite().sum().alias("n_finite"),
            pl.len().alias("n"),
            pl.col("step").max().alias("last_step"),
        )
    )
    _counts_cache = (metrics, counts)
    return counts


def keys_for_role(metrics: pl.DataFrame, role: str, split: str | None) -> list[tuple[str, str | None]]:
    """(key, split column value) pairs of `metrics` with `role` in `split`, best first.

    Best: a key spanning at least half the run, then a canonical spelling, then the most
    finite points (the per-step `loss` of AlgoPerf beats its per-eval `train/loss` when
    both span the run; HF's one-row run-average `train_loss` loses to per-step `loss`),
    then a key that states the wanted split.
    """
    if role not in ROLES:
        raise ValueError(f"unknown metric role {role!r}; known: {ROLES}")
    if metrics.height == 0:
        return []
    has_split = "split" in metrics.columns
    counts = _key_counts(metrics)
    ranked = []
    for row in counts.iter_rows(named=True):
        key = row["key"]
        split_value = row["split"] if has_split else None
        if metric_role(key) != role:
            continue
        found = split_of(key, split_value)
        if not _split_matches(found, split):
            continue
        tier = 0 if _normal(key) in CANONICAL[role] else 1
        stated = 0 if (split is None or found == split) else 1
        ranked.append(((tier, -(row["n_finite"] or 0), stated, -row["n"], key), (key, split_value), row["last_step"]))
    # A key logged only over a short prefix of the run (AlgoPerf's per-step `loss` of
    # steps 0-99 next to eval-row `train/loss` up to step 9000) loses to one that spans it.
    longest = max((r[2] for r in ranked if r[2] is not None), default=None)
    if longest is not None and longest > 0:
        ranked = [(((r[2] or 0) < 0.5 * longest,) + r[0], r[1], r[2]) for r in ranked]
    ranked.sort(key=lambda item: item[0])
    return [pair for _, pair, _ in ranked]


def series_of(metrics: pl.DataFrame, key: str, split_value: str | None = None) -> pl.DataFrame:
    """One key's rows as [step, value, key], one row per step (the last logged wins), sorted by step."""
    frame = metrics.filter(pl.col("key") == key)
    if "split" in metrics.columns:
        frame = frame.filter(pl.col("split").is_null() if split_value is None else pl.col("split") == split_value)
    return (
        frame.select(pl.col("step").cast(pl.Int64), pl.col("value").cast(pl.Float64), pl.col("key"))
        .filter(pl.col("value").is_not_null() & pl.col("step").is_not_null())
        .unique(subset=["step"], keep="last", maintain_order=True)
        .sort("step")
    )


def pick_series(metrics: pl.DataFrame, role: str, split: str | None) -> pl.DataFrame:
    """The best-matching series of `role` in `split` as [step, value, key], sorted by step; empty if none.

    `split` is "train" (also accepts unmarked keys), "val", "test", or None for any.
    Values keep NaN/Inf; null values (a cell nobody wrote) are dropped.
    """
    for key, split_value in keys_for_role(metrics, role, split):
        series = series_of(metrics, key, split_value)
        if series.height:
            return series
    return pl.DataFrame(schema={"step": pl.Int64, "value": pl.Float64, "key": pl.String})


# ---- robust statistics -------------------------------------------------------------

_CHUNK = 16384


def adaptive_window(n: int, *, frac: float, lo: int, hi: int, odd: bool = False) -> int:
    """A window of about `frac` of a series of `n` points, clipped to [lo, hi]."""
    w = int(min(hi, max(lo, round(n * frac))))
    if odd and w % 2 == 0:
        w = w + 1 if w < hi else w - 1
    return max(1, w)


def _window_medians(x: np.ndarray, window: int) -> np.ndarray:
    """Median of every full window x[i:i+window], computed in chunks to bound memory."""
    views = np.lib.stride_tricks.sliding_window_view(x, window)
    out = np.empty(views.shape[0])
    for start in range(0, views.shape[0], _CHUNK):
        out[start : start + _CHUNK] = np.median(views[start : start + _CHUNK], axis=1)
    return out


def rolling_median(x: Iterable[float], window: int, *, center: bool = True) -> np.ndarray:
    """Rolling median; near the edges the window shrinks to the points that exist.

    center=True: window centred on each point (smoothing); False: the point and the
    window-1 before it (causal).
    """
    x = np.asarray(x, dtype=float)
    n = x.size
    if n == 0 or window <= 1:
        return x.copy()
    window = min(window, n)
    out = np.empty(n)
    full = _window_medians(x, window)
    if center:
        left = window // 2
        right = window - 1 - left
        out[left : n - right] = full
        for i in range(left):
            out[i] = np.median(x[: i + right + 1])
        for i in range(n - right, n):
            out[i] = np.median(x[i - left :])
    else:
        out[window - 1 :] = full
        for i in range(window - 1):
            out[i] = np.median(x[: i + 1])
    return out


def trailing_median_mad(x: Iterable[float], window: int, *, min_periods: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD (unscaled) of the `window` points BEFORE each point (the point excluded).

    NaN where fewer than `min_periods` earlier points exist. Vectorised over full windows;
    only the first `window` points are computed one by one.
    """
    x = np.asarray(x, dtype=float)
    n = x.size
    med = np.full(n, np.nan)
    mad = np.full(n, np.nan)
    if n < 2 or window < 1:
        return med, mad
    w = min(window, n - 1)
    for i in range(max(min_periods, 1), min(w, n)):
        prev = x[:i]
        m = np.median(prev)
        med[i] = m
        mad[i] = np.median(np.abs(prev - m))
    if n > w and w >= min_periods:
        views = np.lib.stride_tricks.sliding_window_view(x[:-1], w)  # views[j] = x[j:j+w] -> point j+w
        for start in range(0, views.shape[0], _CHUNK):
            block = views[start : start + _CHUNK]
            m = np.median(block, axis=1)
            med[w + start : w + start + block.shape[0]] = m
            mad[w + start : w + start + block.shape[0]] = np.median(np.abs(block - m[:, None]), axis=1)
    return med, mad


def running_min(x: Iterable[float]) -> np.ndarray:
    """Minimum of all points up to and including each point (NaN ignored)."""
    x = np.asarray(x, dtype=float)
    return np.fmin.accumulate(x) if x.size else x.copy()


def mad(x: Iterable[float]) -> float:
    """Median absolute deviation from the median (unscaled; multiply by MAD_TO_SIGMA for a sigma)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan")
    return float(np.median(np.abs(x - np.median(x))))


def runs_of_true(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) inclusive index ranges of consecutive True values."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(s), int(e) - 1) for s, e in zip(edges[::2], edges[1::2])]


# ---- evidence ----------------------------------------------------------------------


def metric_ref(run_id: str, step: int, key: str, value: float | None, text: str) -> EvidenceRef:
    """A reference to one `metrics` row (run_id, step, key)."""
    return EvidenceRef("metrics", {"run_id": run_id, "step": int(step), "key": key}, value, text)


def fmt(x: float | None) -> str:
    """A number for a summary line: 4 significant digits, NaN/Inf spelled out."""
    if x is None:
        return "null"
    x = float(x)
    if not np.isfinite(x):
        return "NaN" if np.isnan(x) else ("Inf" if x > 0 else "-Inf")
    return f"{x:.4g}"


def finding_id(detector: str, run_id: str | None, *parts: object) -> str:
    """A stable id for a finding from its detector, run and what tells it apart (key, step)."""
    basis = "|".join([detector, str(run_id)] + [str(p) for p in parts])
    return hashlib.sha1(basis.encode()).hexdigest()[:12]
