"""Oscillation: the loss (or accuracy) swings up and down without settling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.roles import logs_role
from mldebug_ray.detectors.series import MAD_TO_SIGMA, finding_id, fmt, metric_ref, pick_series, rolling_median, running_min
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import Finding


@dataclass
class OscillationConfig:
    """Thresholds of the `oscillation` detector (keys `detectors.oscillation.*`)."""

    min_swing_frac: float = 0.1
    """A loss swing counts when it moves by this share of the loss's running minimum ..."""
    min_range_frac: float = 0.05
    """... and by this share of the series' 5-95% range (no swings out of the noise of a loss near 0)."""
    min_acc_swing: float = 0.03
    """An accuracy swing counts from this absolute size (AutoTrainer's peak-to-trough 0.03)."""
    min_cycles: int = 3
    """Swings in the wrong direction (loss up, accuracy down) that came back, needed ..."""
    late_frac: float = 1 / 3
    """... with the last one peaking in this final share of the logged steps (not settled)."""
    min_points: int = 8
    """Fewest points of a series."""
    smooth_frac: float = 0.05
    """Per-step train losses are rolling-median smoothed over this share of their points ..."""
    smooth_min_window: int = 5
    """... and over at least this many points."""
    noise_k: float = 3.0
    """A swing must also exceed this many times the noise left after smoothing."""
    max_points: int = 400
    """Longer series are median-smoothed and thinned to about this many points."""

    def __post_init__(self) -> None:
        for name in ("min_swing_frac", "min_range_frac", "min_acc_swing"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"detectors.oscillation.{name} must be in (0, 1), got {getattr(self, name)}")
        if self.min_cycles < 2:
            raise ConfigError(f"detectors.oscillation.min_cycles must be >= 2, got {self.min_cycles}")
        if not 0.0 < self.late_frac <= 1.0:
            raise ConfigError(f"detectors.oscillation.late_frac must be in (0, 1], got {self.late_frac}")
        if self.min_points < 4:
            raise ConfigError(f"detectors.oscillation.min_points must be >= 4, got {self.min_points}")
        if not 0.0 < self.smooth_frac < 0.5:
            raise ConfigError(f"detectors.oscillation.smooth_frac must be in (0, 0.5), got {self.smooth_frac}")
        if self.smooth_min_window < 1:
            raise ConfigError(f"detectors.oscillation.smooth_min_window must be >= 1, got {self.smooth_min_window}")
        if self.noise_k < 0:
            raise ConfigError(f"detectors.oscillation.noise_k must be >= 0, got {self.noise_k}")
        if self.max_points < 20:
            raise ConfigError(f"detectors.oscillation.max_points must be >= 20, got {self.max_points}")


def zigzag(x: np.ndarray, threshold: np.ndarray) -> list[int]:
    """Indices of the alternating extremes of x: a new extreme is confirmed once the series has
    moved back from it by at least threshold[extreme]. The last (unconfirmed) extreme ends the list."""
    n = x.size
    if n == 0:
        return []
    pivots = [0]
    trend = 0
    hi = lo = ext = 0
    for i in range(1, n):
        if trend == 0:
            hi = i if x[i] > x[hi] else hi
            lo = i if x[i] < x[lo] else lo
            if x[hi] - x[lo] >= threshold[min(hi, lo)]:
                trend = 1 if hi > lo else -1
                pivots = [min(hi, lo)]
                ext = max(hi, lo)
        elif trend == 1:
            if x[i] > x[ext]:
                ext = i
            elif x[ext] - x[i] >= threshold[ext]:
                pivots.append(ext)
                trend, ext = -1, i
        else:
            if x[i] < x[ext]:
                ext = i
            elif x[i] - x[ext] >= threshold[ext]:
                pivots.append(ext)
                trend, ext = 1, i
    if ext != pivots[-1]:
        pivots.append(ext)
    return pivots


@detector("oscillation")
def oscillation(ev: RunEvidence, cfg: OscillationConfig) -> list[Finding]:
    """Loss or accuracy swings up and down without settling (SPEC §5 `oscillation`).

    Evidence: the validation loss (the train loss when no validation loss is logged), else the
    validation accuracy. A per-step train loss is rolling-median smoothed over 5% of its points
    (at least 5) and a swing must also exceed 3x the noise left after smoothing, so the noise of
    a small batch and one-step spikes never count; series longer than 400 points are thinned.
    A run whose series turns NaN/Inf is left to the divergence detectors. Swings are the legs
    between alternating extremes (a zig-zag filter): a loss leg counts when it rises by >= 10%
    of the loss's running minimum and >= 5% of its 5-95% range and is then undone by as much;
    an accuracy leg when it falls by >= 0.03 (AutoTrainer's oscillation threshold, ICSE 2021,
    FIELD-NOTES) and comes back. Fires on >= 3 such swings with the last one peaking in the
    final third of the logged steps: a run that swung early and then settled is not
    oscillating. A single excursion that recovers is a loss spike, not an oscillation.
    Severity `medium` for the loss, `low` for accuracy only.
    """
    rid = ev.run_id
    val_loss = pick_series(ev.metrics, "loss", "val") if logs_role(ev.metrics, "loss", "val") else None
    loss = ("loss", "val", val_loss) if val_loss is not None and val_loss.height >= cfg.min_points else ("loss", "train", None)
    for role, split, series in (loss, ("accuracy", "val", None)):
        if series is None:
            if not logs_role(ev.metrics, role, split):
                continue
            series = pick_series(ev.metrics, role, split)
        if series.height and not series["value"].is_finite().all():
            return []  # NaN/Inf: the run diverged, and swings on the way there are the divergence's
        if series.height < cfg.min_points:
            continue
        found = _oscillating(rid, series, role, split, cfg)
        if found is not None:
            return [found]
    return []


def _oscillating(rid: str, series: pl.DataFrame, role: str, split: str, cfg: OscillationConfig) -> Finding | None:
    key = series["key"][0]
    steps = series["step"].to_numpy()
    raw = series["value"].to_numpy()
    x, idx = raw, np.arange(raw.size)
    averaged = 1  # raw points behind each point of x
    sigma = 0.0  # robust per-point noise of the raw series
    if raw.size > cfg.max_points:
        # Bin medians first: a rolling median over 143k points would cost minutes.
        per_bin = int(np.ceil(raw.size / cfg.max_points))
        n_bins = raw.size // per_bin
        bins = raw[: n_bins * per_bin].reshape(n_bins, per_bin)
        x = np.median(bins, axis=1)
        idx = np.arange(n_bins) * per_bin + per_bin // 2
        dev = bins - x[:, None]
        sigma = MAD_TO_SIGMA * float(np.median(np.abs(dev)))
        averaged = per_bin
    # Per-step training losses are noisy by nature (small batches): smooth them over ~5% of
    # the run; evaluation series are averages already.
    if split == "train" and role == "loss":
        window = max(cfg.smooth_min_window, int(round(x.size * cfg.smooth_frac)))
        window += 1 - window % 2
        smooth = rolling_median(x, window, center=True)
        if averaged == 1:
            resid = x - smooth
            sigma = MAD_TO_SIGMA * float(np.median(np.abs(resid - np.median(resid))))
        x = smooth
        averaged *= window
    # Noise left in a median of k points: about 1.25 sigma / sqrt(k).
    noise = 1.25 * sigma / np.sqrt(averaged)
    if role == "loss":
        scale = np.abs(running_min(x))
        lo, hi = np.percentile(x, [5, 95])
        threshold = np.maximum(cfg.min_swing_frac * scale, cfg.min_range_frac * (hi - lo))
        bad_up = True
    else:
        unit = 100.0 if np.nanmax(x) > 1.5 else 1.0  # accuracy in percent
        threshold = np.full(x.size, cfg.min_acc_swing * unit)
        bad_up = False
    threshold = np.maximum(threshold, cfg.noise_k * noise)
    threshold = np.maximum(threshold, 1e-12)
    pivots = zigzag(x, threshold)
    # Confirmed legs in the wrong direction: each needs a pivot after it (it was undone).
    legs = []
    for a, b, c in zip(pivots, pivots[1:], pivots[2:]):
        if (x[b] > x[a]) == bad_up:
            legs.append((a, b, c))
    if len(legs) < cfg.min_cycles:
        return None
    span = steps[-1] - steps[0]
    last_peak = steps[idx[legs[-1][1]]]
    if span <= 0 or last_peak < steps[0] + (1 - cfg.late_frac) * span:
        return None
    word = {"val": "validation", "train": "train"}[split]
    name = f"{word} {role}"

    def ref(i, text):
        j = int(idx[i])
        return metric_ref(rid, steps[j], key, raw[j], text)

    (a0, b0, _), (a1, b1, _) = legs[0], legs[-1]
    sizes = [abs(x[b] - x[a]) for a, b, _ in legs]
    evidence = [
        ref(a0, f"{name} {fmt(x[a0])} at step {int(steps[idx[a0]])}: start of the first swing"),
        ref(b0, f"{name} {fmt(x[b0])} at step {int(steps[idx[b0]])}"),
        ref(a1, f"{name} {fmt(x[a1])} at step {int(steps[idx[a1]])}: start of the last swing"),
        ref(b1, f"{name} {fmt(x[b1])} at step {int(steps[idx[b1]])}"),
    ]
    direction = "rises" if bad_up else "drops"
    return Finding(
        kind="oscillation",
        severity="medium" if role == "loss" else "low",
        confidence=0.75 if role == "loss" else 0.6,
        summary=(
            f"{name} `{key}` oscillates: {len(legs)} swings ({direction} of {fmt(min(sizes))}-{fmt(max(sizes))} that came back) "
            f"from step {int(steps[idx[a0]])}, the last at step {int(steps[idx[a1]])}: it does not settle"
            + (" (smoothed: per-step noise removed)" if raw.size > cfg.max_points else "")
        ),
        evidence=tuple(evidence),
        detector="oscillation",
        run_id=rid,
        finding_id=finding_id("oscillation", rid, key),
        onset_step=int(steps[idx[a0]]),
        end_step=int(steps[idx[legs[-1][2]]]),
        fix=(
            "Lower the learning rate (or decay it), raise the batch size or add gradient clipping; if the swings "
            "follow epochs, shuffle the training data; check optimizer betas/momentum."
        ),
        expected_impact=f"The {name} decreases steadily and settles; no swings of {fmt(min(sizes))} late in training.",
        verify_by=f"Rerun with the lower LR and count swings of the {name} in the final third of the run: fewer than {cfg.min_cycles}.",
    )
