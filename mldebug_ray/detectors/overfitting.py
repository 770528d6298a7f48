"""Overfitting: validation loss rises after its minimum while train loss keeps falling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt, metric_ref, pick_series
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import Finding


@dataclass
class OverfittingConfig:
    """Thresholds of the `overfitting` detector (keys `detectors.overfitting.*`)."""

    rise_frac: float = 0.25
    """Validation loss at the end above (1 + rise_frac) x its minimum ..."""
    min_train_drop_frac: float = 0.05
    """... while the train loss at the end is at least this share below its level at the
    validation minimum."""
    gap_frac: float = 0.1
    """Second, weaker signal: (val - train) / train at the end above this, with the
    validation loss no longer improving (SageMaker Debugger's Overfit rule)."""
    stall_frac: float = 0.05
    """'No longer improving' for the gap signal: final val above (1 + stall_frac) x its min."""
    min_val_points: int = 3
    """Fewest finite validation points needed."""
    tail_points: int = 3
    """End levels are the median of this many last points (val) / last 5% of points (train)."""

    def __post_init__(self) -> None:
        for name in ("rise_frac", "gap_frac", "stall_frac"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"detectors.overfitting.{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_train_drop_frac < 1.0:
            raise ConfigError(f"detectors.overfitting.min_train_drop_frac must be in [0, 1), got {self.min_train_drop_frac}")
        if self.stall_frac > self.rise_frac:
            raise ConfigError(f"detectors.overfitting.stall_frac must be <= rise_frac={self.rise_frac}, got {self.stall_frac}")
        if self.min_val_points < 3:
            raise ConfigError(f"detectors.overfitting.min_val_points must be >= 3, got {self.min_val_points}")
        if self.tail_points < 1:
            raise ConfigError(f"detectors.overfitting.tail_points must be >= 1, got {self.tail_points}")


def _level(x: np.ndarray, upto: int, k: int) -> tuple[float, int]:
    """Median of the k points ending at index `upto`, and the index of the point nearest it."""
    seg = x[max(0, upto - k + 1) : upto + 1]
    level = float(np.median(seg))
    return level, max(0, upto - k + 1) + int(np.argmin(np.abs(seg - level)))


@detector("overfitting")
def overfitting(ev: RunEvidence, cfg: OverfittingConfig) -> list[Finding]:
    """Train keeps improving while validation worsens (SPEC §5 `overfitting`).

    Evidence: the validation loss (test loss if none) and the train loss. Fires when the
    validation loss ends above (1 + `rise_frac`) x its minimum while the train loss at the
    end is below its level at the step of the validation minimum; onset is that step.
    A weaker signal (severity low) is SageMaker Debugger's Overfit rule, (val - train) /
    train > 0.1 at the end, counted only when validation has stopped improving and train
    still falls, since a fixed gap alone is normal generalisation error.

    Thresholds: 0.25 is the corpus labelling rule (final validation/loss > 1.25x its
    minimum; AlgoPerf ogbg baseline trial_2 rises 0.045 -> 0.061, 1.34-1.37x, while its
    healthy siblings stay under 1.2x). The train drop of 5% keeps noise in a flat
    train loss from counting as "still improving".
    """
    val = pick_series(ev.metrics, "loss", "val")
    which = "validation"
    if val.height == 0:
        val = pick_series(ev.metrics, "loss", "test")
        which = "test"
    val = val.filter(pl.col("value").is_finite())
    train = pick_series(ev.metrics, "loss", "train").filter(pl.col("value").is_finite())
    if val.height < cfg.min_val_points or train.height < 2:
        return []
    v_steps, v = val["step"].to_numpy(), val["value"].to_numpy()
    t_steps, t = train["step"].to_numpy(), train["value"].to_numpy()
    i_min = int(np.argmin(v))
    if i_min >= v.size - 1 or v[i_min] <= 0 or t.min() < 0:
        return []  # ratios of a loss that goes negative (e.g. NLL on unnormalised logits) mean nothing
    min_step = int(v_steps[i_min])
    k_val = min(cfg.tail_points, v.size - 1 - i_min)
    v_end, i_v_end = _level(v, v.size - 1, k_val)
    at_min = np.flatnonzero(t_steps <= min_step)
    if at_min.size == 0:
        return []
    k_train = max(1, int(round(0.05 * t.size)))
    t_at_min, i_t_min = _level(t, int(at_min[-1]), k_train)
    t_end, i_t_end = _level(t, t.size - 1, k_train)
    if i_t_end <= i_t_min or not t_end < (1 - cfg.min_train_drop_frac) * t_at_min:
        return []
    rise = v_end / v[i_min]
    gap = (v_end - t_end) / abs(t_end) if t_end != 0 else float("inf")
    primary = rise > 1 + cfg.rise_frac
    secondary = not primary and rise > 1 + cfg.stall_frac and gap > cfg.gap_frac
    if not (primary or secondary):
        return []

    rid = ev.run_id
    vkey, tkey = val["key"][0], train["key"][0]
    evidence = (
        metric_ref(rid, v_steps[i_min], vkey, v[i_min], f"{which} loss minimum {fmt(v[i_min])} at step {min_step}"),
        metric_ref(rid, v_steps[i_v_end], vkey, v[i_v_end], f"{which} loss {fmt(v[i_v_end])} near the end ({fmt(rise)}x its minimum)"),
        metric_ref(rid, t_steps[i_t_min], tkey, t[i_t_min], f"train loss {fmt(t[i_t_min])} at the {which} minimum"),
        metric_ref(rid, t_steps[i_t_end], tkey, t[i_t_end], f"train loss {fmt(t[i_t_end])} near the end ({fmt(t_end / t_at_min)}x)"),
    )
    if primary:
        severity = "high" if rise > 1 + 2 * cfg.rise_frac else "medium"
        confidence = 0.85
        summary = (
            f"{which} loss `{vkey}` rose from its minimum {fmt(v[i_min])} at step {min_step} to {fmt(v_end)} "
            f"({fmt(rise)}x) while train loss `{tkey}` fell from {fmt(t_at_min)} to {fmt(t_end)}"
        )
    else:
        severity, confidence = "low", 0.45
        summary = (
            f"{which} loss `{vkey}` stopped improving after step {min_step} ({fmt(rise)}x its minimum at the end) "
            f"while train loss kept falling; the gap (val - train) / train is {fmt(gap)} (> {cfg.gap_frac})"
        )
    return [
        Finding(
            kind="overfitting",
            severity=severity,
            confidence=confidence,
            summary=summary,
            evidence=evidence,
            detector="overfitting",
            run_id=rid,
            finding_id=finding_id("overfitting", rid, vkey),
            onset_step=min_step,
            end_step=int(v_steps[-1]),
            fix=(
                f"Keep the checkpoint at step {min_step} (early stopping on {which} loss); for longer training add "
                "regularisation (weight decay, dropout, data augmentation), more data, or a smaller model / lower LR."
            ),
            expected_impact=f"Final {which} loss near its minimum {fmt(v[i_min])} instead of {fmt(v_end)}.",
            verify_by=(
                f"Rerun with early stopping or the added regularisation and check that the {which} loss at the end is "
                f"within {fmt(100 * cfg.rise_frac)}% of its minimum."
            ),
        )
    ]
