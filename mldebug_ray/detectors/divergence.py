"""Divergence: the loss rises far above its running best and never comes back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import (
    adaptive_window,
    finding_id,
    fmt,
    metric_ref,
    pick_series,
    rolling_median,
    running_min,
    runs_of_true,
    trailing_median_mad,
)
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import Finding


@dataclass
class DivergenceConfig:
    """Thresholds of the `divergence` detector (keys `detectors.divergence.*`)."""

    factor: float = 2.0
    """The run diverged when its smoothed loss ends above factor x its running minimum."""
    onset_ratio: float = 1.8
    """The final excursion is the last run of smoothed points above onset_ratio x running min;
    its first point is the onset, and dropping back under this line counts as a recovery."""
    min_points: int = 2
    """Points the final excursion must span, unless the loss ends non-finite (a single
    high last point may still come back)."""
    smooth_frac: float = 0.01
    """Centred rolling-median window as a share of the series length (clipped to 1..max_smooth)."""
    max_smooth: int = 51
    """Largest smoothing window, in points."""
    grad_jump_ratio: float = 2.0
    """A grad-norm row near the onset is cited when it is this many times its earlier median."""

    def __post_init__(self) -> None:
        if not self.factor > 1.0:
            raise ConfigError(f"detectors.divergence.factor must be > 1, got {self.factor}")
        if not 1.0 < self.onset_ratio <= self.factor:
            raise ConfigError(
                f"detectors.divergence.onset_ratio must be in (1, factor={self.factor}], got {self.onset_ratio}"
            )
        if self.min_points < 1:
            raise ConfigError(f"detectors.divergence.min_points must be >= 1, got {self.min_points}")
        if not 0.0 <= self.smooth_frac < 0.5:
            raise ConfigError(f"detectors.divergence.smooth_frac must be in [0, 0.5), got {self.smooth_frac}")
        if self.max_smooth < 1:
            raise ConfigError(f"detectors.divergence.max_smooth must be >= 1, got {self.max_smooth}")
        if not self.grad_jump_ratio > 1.0:
            raise ConfigError(f"detectors.divergence.grad_jump_ratio must be > 1, got {self.grad_jump_ratio}")


@detector("divergence")
def divergence(ev: RunEvidence, cfg: DivergenceConfig) -> list[Finding]:
    """Loss rose far above its running best and did not come back (SPEC §5 `divergence`).

    Evidence: the train loss series (the validation loss when no train loss is logged),
    optionally the grad-norm series. The loss is smoothed with a centred rolling median
    (window ~1% of the series, 1..51 points) so one-step spikes cannot count. The run
    diverged when the final excursion (the last run of smoothed points above
    `onset_ratio` x running min) reaches the end of the finite series and either the loss
    then turns NaN/Inf, or it ends above `factor` x running min.

    Thresholds: `factor` 2.0 is the corpus labelling rule ("final excursion above 2x the
    running-min train loss", shared/corpus/README.md). `onset_ratio` 1.8 places the onset
    where the final rise starts: on the AlgoPerf criteo NaN trials the loss swings to
    1.4-1.7x its minimum for a step and comes back before the fatal rise (e.g.
    generalized_adam study_4 trial_1: 1.71x at step 76, 15x at 77), and a line under those
    swings moved 3 of the 6 labelled onsets before the rise. Losses <= 0 are skipped (a
    ratio to the minimum means nothing there); exact zeros are dropped as placeholders.
    """
    series = pick_series(ev.metrics, "loss", "train")
    which = "train"
    if series.height == 0:
        series = pick_series(ev.metrics, "loss", "val")
        which = "validation"
    if series.height < 2:
        return []
    series = series.filter(pl.col("value") != 0.0)
    steps = series["step"].to_numpy()
    values = series["value"].to_numpy()
    key = series["key"][0]
    finite = np.isfinite(values)
    if not finite.any():
        return []
    ends_nonfinite = not finite[-1]
    # The finite points before the terminal non-finite run (a NaN that comes back is nan_inf's).
    first_bad = int(np.flatnonzero(finite)[-1]) + 1 if ends_nonfinite else values.size
    keep = finite[:first_bad]
    x = values[:first_bad][keep]
    st = steps[:first_bad][keep]
    if x.size < 2 or np.min(x) <= 0:
        return []
    window = adaptive_window(x.size, frac=cfg.smooth_frac, lo=1, hi=cfg.max_smooth, odd=True)
    smooth = rolling_median(x, window, center=True)
    best = running_min(smooth)
    excursions = runs_of_true(smooth > cfg.onset_ratio * best)
    if not excursions or excursions[-1][1] != x.size - 1:
        return []
    start, end = excursions[-1]
    if start == 0:
        return []  # never below the line: nothing to diverge from
    floor = float(best[start])
    final_ratio = float(smooth[-1] / floor)
    span = end - start + 1
    if not ends_nonfinite and (final_ratio <= cfg.factor or span < cfg.min_points):
        return []

    rid = ev.run_id
    i_min = int(np.argmin(smooth[: start + 1]))
    i_peak = start + int(np.argmax(x[start:]))
    onset_step = int(st[start])
    evidence = [
        metric_ref(rid, st[start], key, x[start], f"{which} loss {fmt(x[start])} at step {onset_step}: start of the final excursion ({fmt(x[start] / floor)}x the running min)"),
        metric_ref(rid, st[i_min], key, x[i_min], f"running min of the smoothed {which} loss {fmt(floor)} (step {int(st[i_min])})"),
    ]
    if i_peak != start:
        evidence.append(metric_ref(rid, st[i_peak], key, x[i_peak], f"peak {fmt(x[i_peak])} at step {int(st[i_peak])} ({fmt(x[i_peak] / floor)}x the running min)"))
    if ends_nonfinite:
        bad_step = int(steps[first_bad])
        evidence.append(metric_ref(rid, bad_step, key, values[first_bad], f"{which} loss {fmt(values[first_bad])} from step {bad_step} to the end"))
        end_step = bad_step
    else:
        if x.size - 1 not in (start, i_peak):
            evidence.append(metric_ref(rid, st[-1], key, x[-1], f"last logged {which} loss {fmt(x[-1])} (smoothed {fmt(smooth[-1])}, {fmt(final_ratio)}x the running min)"))
        end_step = int(st[-1])
    grad = _grad_norm_near(ev, rid, st, start, cfg)
    if grad is not None:
        evidence.append(grad)

    critical = ends_nonfinite or final_ratio > 10 * cfg.factor
    confidence = 0.95 if ends_nonfinite else (0.85 if span >= 5 else 0.7)
    how = (
        f"then turned {fmt(values[first_bad])} at step {int(steps[first_bad])}"
        if ends_nonfinite
        else f"and ends at {fmt(final_ratio)}x it (smoothed) without coming back under {cfg.onset_ratio}x"
    )
    summary = (
        f"{which} loss `{key}` diverged: from step {onset_step} it rose above {cfg.onset_ratio}x its running min "
        f"{fmt(floor)} (peak {fmt(x[i_peak])}) {how}"
        + (f"; grad norm jumped near the onset ({grad.text})" if grad is not None else "")
    )
    return [
        Finding(
            kind="divergence",
            severity="critical" if critical else "high",
            confidence=confidence,
            summary=summary,
            evidence=tuple(evidence),
            detector="divergence",
            run_id=rid,
            finding_id=finding_id("divergence", rid, key, onset_step),
            onset_step=onset_step,
            end_step=end_step,
            fix=(
                "Restart from the last checkpoint before step "
                f"{onset_step} with a lower peak learning rate (e.g. 0.5x) or a longer warm-up, and clip the "
                "global grad norm (e.g. max_norm=1.0); if the rise followed a schedule or data change at that "
                "step, undo that change."
            ),
            expected_impact=(
                f"The loss keeps falling past step {onset_step} instead of blowing up; the run reaches a final "
                f"loss near its pre-divergence minimum {fmt(floor)} or below."
            ),
            verify_by=(
                f"Rerun past step {end_step} and check that the smoothed {which} loss stays below "
                f"{cfg.onset_ratio}x its running min and stays finite, with no grad-norm jump at the onset."
            ),
        )
    ]


def _grad_norm_near(ev: RunEvidence, rid: str, loss_steps: np.ndarray, start: int, cfg: DivergenceConfig):
    """The largest grad-norm row from two loss points before the onset to two after, if it jumped."""
    grad = pick_series(ev.metrics, "grad_norm", "train")
    if grad.height == 0:
        return None
    grad = grad.filter(pl.col("value").is_finite() & (pl.col("value") != 0.0))
    if grad.height < 2:
        return None
    lo = int(loss_steps[max(0, start - 2)])
    hi = int(loss_steps[min(loss_steps.size - 1, start + 2)])
    g_steps = grad["step"].to_numpy()
    g_vals = grad["value"].to_numpy()
    inside = np.flatnonzero((g_steps >= lo) & (g_steps <= hi))
    if inside.size == 0:
        return None
    j = int(inside[np.argmax(g_vals[inside])])
    med, _ = trailing_median_mad(g_vals[: inside[0] + 1], 20, min_periods=1)
    base = med[-1]
    if not np.isfinite(base) or base <= 0 or g_vals[j] < cfg.grad_jump_ratio * base:
        return None
    return metric_ref(
        rid, g_steps[j], grad["key"][0], g_vals[j],
        f"grad norm {fmt(g_vals[j])} at step {int(g_steps[j])}, {fmt(g_vals[j] / base)}x its median {fmt(base)} before",
    )
