"""Grad-norm spike: the gradient norm jumps far above its running level."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt, metric_ref, pick_series, running_min, trailing_median_mad
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import Finding


@dataclass
class GradNormSpikeConfig:
    """Thresholds of the `grad_norm_spike` detector (keys `detectors.grad_norm_spike.*`)."""

    factor: float = 5.0
    """A grad norm above factor x the median of the points before it is a spike."""
    factor_with_loss_jump: float = 2.0
    """Lower factor that is enough when the loss jumps at the same step."""
    loss_jump_ratio: float = 1.3
    """The loss 'jumps' when it is this many times the median of its points before."""
    window: int = 20
    """Points before a candidate whose median is its baseline (fewer on short series)."""
    onset_ratio: float = 2.0
    """Neighbouring points above onset_ratio x baseline belong to the same spike."""
    divergence_factor: float = 2.0
    """The spike is `high` when the loss afterwards ends above this many times its running
    min before the spike (or turns NaN/Inf) and first gets there within followup_points."""
    followup_points: int = 10
    """The spike is followed by a divergence when the loss's final run above
    divergence_factor x its running min (or NaN/Inf) starts during the spike or within
    this many loss points after it."""
    max_zero_frac: float = 0.5
    """A series with more exact zeros than this was not computed (`grad norm: 0.000`)."""
    max_reported: int = 3
    """Largest spikes reported one by one; the rest go into one summary finding."""

    def __post_init__(self) -> None:
        for name in ("factor", "factor_with_loss_jump", "loss_jump_ratio", "onset_ratio", "divergence_factor"):
            if not getattr(self, name) > 1.0:
                raise ConfigError(f"detectors.grad_norm_spike.{name} must be > 1, got {getattr(self, name)}")
        if self.factor_with_loss_jump > self.factor:
            raise ConfigError(
                f"detectors.grad_norm_spike.factor_with_loss_jump must be <= factor={self.factor}, got {self.factor_with_loss_jump}"
            )
        if self.onset_ratio > self.factor_with_loss_jump:
            raise ConfigError(
                f"detectors.grad_norm_spike.onset_ratio must be <= factor_with_loss_jump={self.factor_with_loss_jump}, got {self.onset_ratio}"
            )
        for name in ("window", "followup_points", "max_reported"):
            if getattr(self, name) < 1:
                raise ConfigError(f"detectors.grad_norm_spike.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.max_zero_frac <= 1.0:
            raise ConfigError(f"detectors.grad_norm_spike.max_zero_frac must be in [0, 1], got {self.max_zero_frac}")


def _baseline(x: np.ndarray, window: int) -> np.ndarray:
    n = x.size
    med, _ = trailing_median_mad(x, min(window, max(3, n // 5)), min_periods=1 if n < 20 else 3)
    return med


@detector("grad_norm_spike")
def grad_norm_spike(ev: RunEvidence, cfg: GradNormSpikeConfig) -> list[Finding]:
    """Gradient norm jumped far above its running level (SPEC §5 `grad_norm_spike`).

    Evidence: the grad-norm series; the train loss at the same steps. A point is a spike
    when it is above `factor` x the median of the `window` points before it, or above
    `factor_with_loss_jump` x that median while the loss at the same step is above
    `loss_jump_ratio` x its own recent median. Exact zeros are dropped, and a series
    that is mostly zeros is skipped: Megatron/DeepSpeed print `grad norm: 0.000` when the
    norm was not computed (FIELD-NOTES; BigScience tr1-13B logs it on every line).

    Thresholds: 5x is far outside healthy step-to-step movement: in the llm.c GPT-2 124M
    log the grad norm stays within about 2x its 20-step median except one isolated blip
    (2.02 vs 0.27, 7.5x at step 9025), while real instabilities reach 4000x (BigScience
    tr11 176B: 0.242 -> 960 at the first loss spike). A joint grad-norm and loss jump is
    much rarer than either alone, so 2x suffices then: BigScience tr8-104B's glitch shows
    grad norm 98258 -> 219646 (2.2x) with lm loss 6.44 -> 11.42. Severity is `high` when
    the loss diverges right after the spike (the diagnosis joins both), `medium` when the
    loss jumps with it (or is not logged there, or the jump exceeds 10 x factor), `low`
    when the loss logged at the same steps did not react: 28 of the corpus's 158 healthy
    AlgoPerf/llm.c runs show such isolated 5-30x blips (e.g. llm.c step 9025).
    """
    grad = pick_series(ev.metrics, "grad_norm", "train")
    if grad.height < 2:
        return []
    grad = grad.filter(pl.col("value").is_finite())
    if grad.height < 2 or float((grad["value"] == 0.0).mean()) > cfg.max_zero_frac:
        return []
    grad = grad.filter(pl.col("value") > 0.0)
    steps = grad["step"].to_numpy()
    g = grad["value"].to_numpy()
    key = grad["key"][0]
    if g.size < 2:
        return []
    base = _baseline(g, cfg.window)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = g / base

    loss = pick_series(ev.metrics, "loss", "train")
    loss_steps = loss["step"].to_numpy()
    loss_vals = loss["value"].to_numpy()
    loss_ratio = np.full(g.size, np.nan)
    finite_loss = np.isfinite(loss_vals)
    if finite_loss.sum() >= 2:
        fl_steps, fl = loss_steps[finite_loss], loss_vals[finite_loss]
        with np.errstate(invalid="ignore", divide="ignore"):
            lr_all = fl / _baseline(fl, cfg.window)
        pos = np.searchsorted(fl_steps, steps)
        hit = (pos < fl_steps.size) & (fl_steps[np.minimum(pos, fl_steps.size - 1)] == steps)
        loss_ratio[hit] = lr_all[pos[hit]]
    with np.errstate(invalid="ignore"):
        flagged = np.flatnonzero(
            (ratio > cfg.factor) | ((ratio > cfg.factor_with_loss_jump) & (loss_ratio > cfg.loss_jump_ratio))
        )

    events = []  # (onset, peak, end, baseline)
    skip_until = -1
    for i in flagged:
        i = int(i)
        if i <= skip_until:
            continue
        b = float(base[i])
        lo = i
        while lo - 1 > skip_until and g[lo - 1] > cfg.onset_ratio * b:
            lo -= 1
        hi = i
        while hi + 1 < g.size and g[hi + 1] > cfg.onset_ratio * b:
            hi += 1
        peak = lo + int(np.argmax(g[lo : hi + 1]))
        events.append((lo, peak, hi, b))
        skip_until = hi
    if not events:
        return []

    rid = ev.run_id
    ranked = sorted(events, key=lambda e: g[e[1]] / e[3], reverse=True)
    out: list[Finding] = []
    for lo, peak, hi, b in ranked[: cfg.max_reported]:
        onset_step, peak_step = int(steps[lo]), int(steps[peak])
        evidence = []
        if lo > 0:
            evidence.append(metric_ref(rid, steps[lo - 1], key, g[lo - 1], f"grad norm {fmt(g[lo - 1])} before the spike"))
        if lo != peak:
            evidence.append(metric_ref(rid, steps[lo], key, g[lo], f"rise starts: {fmt(g[lo])} at step {onset_step}"))
        evidence.append(metric_ref(rid, steps[peak], key, g[peak], f"grad norm {fmt(g[peak])} at step {peak_step}, {fmt(g[peak] / b)}x the median {fmt(b)} of the points before"))
        joint = _loss_row_at(loss, steps[lo : hi + 1], loss_ratio[lo : hi + 1], cfg)
        if joint is not None:
            s, v, r = joint
            evidence.append(metric_ref(rid, s, loss["key"][0], v, f"loss {fmt(v)} at step {s}, {fmt(r)}x its recent median"))
        diverged = _diverges_after(loss_steps, loss_vals, steps[lo], steps[hi], cfg)
        if hi + 1 < g.size:
            evidence.append(metric_ref(rid, steps[hi + 1], key, g[hi + 1], f"grad norm back to {fmt(g[hi + 1])} at step {int(steps[hi + 1])}"))
        tail = "; the loss diverged right after" if diverged else ""
        loss_seen = bool(np.isfinite(loss_ratio[lo : hi + 1]).any())
        if diverged:
            severity = "high"
        elif joint is not None or not loss_seen or g[peak] / b > 10 * cfg.factor:
            severity = "medium"
        else:
            severity = "low"  # the loss, logged at the same steps, did not react
            tail = "; the loss did not react"
        out.append(
            Finding(
                kind="grad_norm_spike",
                severity=severity,
                confidence=0.9 if (joint is not None or g[peak] / b > 2 * cfg.factor) else 0.75,
                summary=(
                    f"grad norm `{key}` jumped to {fmt(g[peak])} at step {peak_step} ({fmt(g[peak] / b)}x its recent "
                    f"median {fmt(b)}), elevated over steps {onset_step}-{int(steps[hi])}"
                    + (" together with a loss jump" if joint is not None else "")
                    + tail
                ),
                evidence=tuple(evidence),
                detector="grad_norm_spike",
                run_id=rid,
                finding_id=finding_id("grad_norm_spike", rid, key, peak_step),
                onset_step=onset_step,
                end_step=int(steps[hi]),
                fix=(
                    "Clip the global grad norm (e.g. max_norm=1.0); if spikes coincide with loss jumps, lower the "
                    f"peak LR or lengthen the warm-up and inspect the batches around step {onset_step}."
                ),
                expected_impact="Grad-norm excursions bounded by the clip value; the loss no longer jumps with them.",
                verify_by=(
                    f"Rerun through step {int(steps[hi])} and check the logged grad norm stays under "
                    f"{cfg.factor}x its 20-point median and the loss shows no jump there."
                ),
            )
        )
    rest = ranked[cfg.max_reported :]
    if rest:
        shown = sorted(rest, key=lambda e: e[1])[:8]
        out.append(
            Finding(
                kind="grad_norm_spike",
                severity="low",
                confidence=0.6,
                summary=f"grad norm `{key}`: {len(rest)} more spike(s), at steps " + ", ".join(str(int(steps[e[1]])) for e in shown) + (" ..." if len(rest) > len(shown) else ""),
                evidence=tuple(metric_ref(rid, steps[e[1]], key, g[e[1]], f"{fmt(g[e[1]] / e[3])}x the recent median") for e in shown),
                detector="grad_norm_spike",
                run_id=rid,
                finding_id=finding_id("grad_norm_spike", rid, key, "more"),
                onset_step=int(steps[min(e[0] for e in rest)]),
                end_step=int(steps[max(e[2] for e in rest)]),
                fix="Clip the global grad norm; recurring spikes with a steady loss are usually harmless, with loss jumps lower the LR.",
                expected_impact="Bounded gradient norms and fewer loss jumps.",
                verify_by="Count grad-norm points above 5x their 20-point median in a rerun.",
            )
        )
    return out


def _loss_row_at(loss: pl.DataFrame, steps: np.ndarray, ratios: np.ndarray, cfg: GradNormSpikeConfig):
    """(step, loss, ratio) of the biggest loss jump at the spike's steps, if the loss jumped."""
    if not np.isfinite(ratios).any():
        return None
    j = int(np.nanargmax(ratios))
    if not ratios[j] > cfg.loss_jump_ratio:
        return None
    step = int(steps[j])
    value = float(loss.filter(pl.col("step") == step)["value"][0])
    return step, value, float(ratios[j])


def _diverges_after(loss_steps: np.ndarray, loss_vals: np.ndarray, onset_step: int, end_step: int, cfg: GradNormSpikeConfig) -> bool:
    """The loss ends NaN/Inf or above divergence_factor x its running min before the onset,
    and its final run up there starts before the spike ends or within followup_points loss
    points after."""
    before = loss_vals[(loss_steps < onset_step) & np.isfinite(loss_vals)]
    after = loss_vals[loss_steps >= onset_step]
    if before.size == 0 or after.size == 0:
        return False
    floor = float(running_min(before)[-1])
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(after)
        if floor > 0:  # a ratio to the minimum means nothing for a loss that goes negative
            bad |= after > cfg.divergence_factor * floor
    if not bad[-1]:
        return False
    good = np.flatnonzero(~bad)
    final_start = int(good[-1]) + 1 if good.size else 0
    during = int(np.count_nonzero(loss_steps[loss_steps >= onset_step] <= end_step))
    return final_start < during + cfg.followup_points
