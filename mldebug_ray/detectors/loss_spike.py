"""Loss spike: the loss jumps far above its recent level and comes back."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import MAD_TO_SIGMA, finding_id, fmt, metric_ref, pick_series, trailing_median_mad
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import Finding

SPLIT_WORDS = {"train": "train", "val": "validation", "test": "test"}


@dataclass
class LossSpikeConfig:
    """Thresholds of the `loss_spike` detector (keys `detectors.loss_spike.*`)."""

    window: int = 20
    """Points before a candidate whose median and MAD are its baseline (fewer on short series)."""
    min_ratio: float = 1.25
    """A spike is at least min_ratio x the baseline median ..."""
    mad_k: float = 6.0
    """... and at least the median + mad_k robust sigmas of the local noise (MAD of the
    point-to-point differences in the window, scaled to a sigma)."""
    recover_frac: float = 0.25
    """Recovered once the loss is back below baseline + recover_frac x (peak - baseline)."""
    recover_points: int = 10
    """Points after the jump within which it must recover; otherwise it is a level shift."""
    onset_ratio: float = 1.1
    """Walking back from the first flagged point, earlier points above onset_ratio x baseline
    belong to the same spike (its onset is the first of them)."""
    max_unrecovered_ratio: float = 2.0
    """A jump the log ends before seeing recover is reported only while its last point is
    under this many times the baseline; above, it is the divergence detector's case."""
    max_reported: int = 3
    """Largest spikes reported one by one per series; the rest go into one summary finding."""
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    """Loss series examined: train and/or val and/or test."""

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ConfigError(f"detectors.loss_spike.window must be >= 1, got {self.window}")
        if not self.min_ratio > 1.0:
            raise ConfigError(f"detectors.loss_spike.min_ratio must be > 1, got {self.min_ratio}")
        if self.mad_k < 0:
            raise ConfigError(f"detectors.loss_spike.mad_k must be >= 0, got {self.mad_k}")
        if not 0.0 < self.recover_frac < 1.0:
            raise ConfigError(f"detectors.loss_spike.recover_frac must be in (0, 1), got {self.recover_frac}")
        if self.recover_points < 1:
            raise ConfigError(f"detectors.loss_spike.recover_points must be >= 1, got {self.recover_points}")
        if not 1.0 <= self.onset_ratio <= self.min_ratio:
            raise ConfigError(
                f"detectors.loss_spike.onset_ratio must be in [1, min_ratio={self.min_ratio}], got {self.onset_ratio}"
            )
        if not self.max_unrecovered_ratio > 1.0:
            raise ConfigError(f"detectors.loss_spike.max_unrecovered_ratio must be > 1, got {self.max_unrecovered_ratio}")
        if self.max_reported < 1:
            raise ConfigError(f"detectors.loss_spike.max_reported must be >= 1, got {self.max_reported}")
        bad = [s for s in self.splits if s not in SPLIT_WORDS]
        if bad:
            raise ConfigError(f"detectors.loss_spike.splits must be among {sorted(SPLIT_WORDS)}, got {bad}")


@dataclass(frozen=True)
class Spike:
    """One spike on a series of points (indices into the finite series)."""

    onset: int
    peak: int
    end: int  # last elevated point
    baseline: float
    recovered_after: int | None  # points from the peak until back; None: not seen (series ended)

    def ratio(self, x: np.ndarray) -> float:
        return float(x[self.peak] / self.baseline)


def noise_sigma(x: np.ndarray, window: int) -> np.ndarray:
    """Robust noise level before each point: MAD of the point-to-point differences over the
    `window` differences before it, scaled to a sigma (/sqrt 2 for a difference of two
    noisy points). Differences ignore the trend, so a loss still falling fast early in
    training does not look noisy (a level MAD there hid a 2x AlgoPerf wmt eval spike)."""
    sigma = np.full(x.size, np.nan)
    if x.size < 3:
        return sigma
    _, mad_d = trailing_median_mad(np.diff(x), window, min_periods=1)
    sigma[1:] = MAD_TO_SIGMA * mad_d / np.sqrt(2.0)  # diffs up to x[i-1] describe point i
    return sigma


def find_spikes(x: np.ndarray, cfg: LossSpikeConfig) -> list[Spike]:
    """Spikes of a finite, positive series. Vectorised candidate test; loops only over candidates."""
    n = x.size
    if n < 2:
        return []
    window = min(cfg.window, max(3, n // 5))
    min_periods = 1 if n < 20 else 3
    med, _ = trailing_median_mad(x, window, min_periods=min_periods)
    sigma = noise_sigma(x, window)
    with np.errstate(invalid="ignore"):
        threshold = np.maximum(med * cfg.min_ratio, med + cfg.mad_k * np.nan_to_num(sigma, nan=0.0))
        flagged = np.flatnonzero((med > 0) & (x > threshold))
    spikes: list[Spike] = []
    skip_until = -1
    for i in flagged:
        i = int(i)
        if i <= skip_until:
            continue
        base = float(med[i])
        onset = i
        while onset - 1 > max(skip_until, i - window) and x[onset - 1] > cfg.onset_ratio * base:
            onset -= 1
        seg = x[i : min(n, i + cfg.recover_points + 1)]
        peak_so_far = np.maximum.accumulate(seg)
        back = np.flatnonzero(seg[1:] <= base + cfg.recover_frac * (peak_so_far[1:] - base))
        if back.size:
            k = int(back[0]) + 1
            peak = i + int(np.argmax(seg[:k]))
            spikes.append(Spike(onset, peak, i + k - 1, base, i + k - peak))
            skip_until = i + k - 1
        elif i + cfg.recover_points >= n - 1 and x[-1] < cfg.max_unrecovered_ratio * base:
            peak = i + int(np.argmax(seg))
            spikes.append(Spike(onset, peak, n - 1, base, None))
            skip_until = n - 1
        else:
            skip_until = i + cfg.recover_points  # a level shift, not a spike
    return spikes


@detector("loss_spike")
def loss_spike(ev: RunEvidence, cfg: LossSpikeConfig) -> list[Finding]:
    """Loss jumped far above its recent level and came back (SPEC §5 `loss_spike`).

    Evidence: the loss series of each configured split. A point is a candidate when it is
    above both `min_ratio` x the median of the `window` points before it and that median +
    `mad_k` robust sigmas of the local noise (MAD of the point-to-point differences in the
    same window), so the line rises with the run's own noise (small-batch runs swing more)
    but not with its trend. A candidate that is back below baseline +
    `recover_frac` x (peak - baseline) within `recover_points` points is a spike; one
    that stays up is a level shift (the divergence detector's business), unless the log
    ends first while the loss is under `max_unrecovered_ratio` x baseline (then reported
    with low confidence). Severity is low when the very next logged step is back, medium
    otherwise.

    Thresholds: the modded-nanogpt records' data-induced spikes are 1.34-1.41x their
    20-step median (4.95 vs 3.68 at step 919, 5.19 vs 3.67 at 947) while the same logs'
    ordinary step-to-step noise is about +-2%, and Pythia-70m's largest jump above a
    200-step median is 1.04x (shared/corpus/README.md): 1.25x sits between. 6 robust
    sigmas keeps a false alarm rate below ~1e-6 per point for Gaussian-ish noise. The
    20-point window is the corpus labels' own baseline; recovery within 25% of the jump
    accepts BigScience tr8's 11.42 -> 7.16 from 6.44 as "came back".
    """
    findings: list[Finding] = []
    for split in cfg.splits:
        series = pick_series(ev.metrics, "loss", split)
        if series.height < 3:
            continue
        ends_nonfinite = not np.isfinite(series["value"][-1])
        series = series.filter(pl.col("value").is_finite() & (pl.col("value") != 0.0))
        steps = series["step"].to_numpy()
        x = series["value"].to_numpy()
        if x.size < 3:
            continue
        spikes = find_spikes(x, cfg)
        if ends_nonfinite:
            # An unrecovered jump right before the loss turns NaN is a divergence, not a spike.
            spikes = [s for s in spikes if s.recovered_after is not None]
        findings.extend(_report(ev.run_id, series["key"][0], SPLIT_WORDS[split], steps, x, spikes, cfg))
    return findings


def _report(rid: str, key: str, which: str, steps: np.ndarray, x: np.ndarray, spikes: list[Spike], cfg: LossSpikeConfig) -> list[Finding]:
    if not spikes:
        return []
    ranked = sorted(spikes, key=lambda s: s.ratio(x), reverse=True)
    spacing = float(np.median(np.diff(steps))) if steps.size > 1 else 1.0
    out = []
    for s in ranked[: cfg.max_reported]:
        onset_step, peak_step = int(steps[s.onset]), int(steps[s.peak])
        evidence = [
            metric_ref(rid, steps[s.peak], key, x[s.peak], f"{which} loss {fmt(x[s.peak])} at step {peak_step}, {fmt(s.ratio(x))}x the median {fmt(s.baseline)} of the points before"),
        ]
        if s.onset != s.peak:
            evidence.insert(0, metric_ref(rid, steps[s.onset], key, x[s.onset], f"rise starts: {fmt(x[s.onset])} at step {onset_step}"))
        if s.onset > 0:
            evidence.insert(0, metric_ref(rid, steps[s.onset - 1], key, x[s.onset - 1], f"last point before the spike: {fmt(x[s.onset - 1])}"))
        if s.recovered_after is not None:
            back = s.peak + s.recovered_after
            evidence.append(metric_ref(rid, steps[back], key, x[back], f"back to {fmt(x[back])} at step {int(steps[back])}"))
            how = f"recovered {s.recovered_after} point(s) later (step {int(steps[back])})"
            # "Recovers in one step": the next logged point, and no gap in the log between.
            one_step = s.recovered_after == 1 and steps[back] - steps[s.peak] <= 1.5 * spacing
            severity, confidence = ("low" if one_step else "medium"), 0.85
            end_step = int(steps[back])
        else:
            how = f"still {fmt(x[-1])} when the log ends at step {int(steps[-1])} (recovery not seen)"
            severity, confidence = "medium", 0.55
            end_step = int(steps[-1])
        out.append(
            Finding(
                kind="loss_spike",
                severity=severity,
                confidence=confidence,
                summary=f"{which} loss `{key}` spiked to {fmt(x[s.peak])} at step {peak_step} ({fmt(s.ratio(x))}x its recent median {fmt(s.baseline)}); {how}",
                evidence=tuple(evidence),
                detector="loss_spike",
                run_id=rid,
                finding_id=finding_id("loss_spike", rid, key, peak_step),
                onset_step=onset_step,
                end_step=end_step,
                fix=(
                    f"Check the batches consumed at steps {onset_step}-{peak_step} (bad or duplicated samples, "
                    "an abrupt domain change); if spikes recur, clip the global grad norm (e.g. 1.0), lower the "
                    "peak LR or raise Adam's epsilon / lower beta2 (e.g. 0.95)."
                ),
                expected_impact="Fewer and smaller loss spikes; no lost progress after them and less risk that one turns into a divergence.",
                verify_by=(
                    f"Rerun over steps {max(0, onset_step - 10)}-{end_step} (same data order) and check that "
                    f"the {which} loss stays within {cfg.min_ratio}x of its recent median there."
                ),
            )
        )
    rest = ranked[cfg.max_reported :]
    if rest:
        shown = sorted(rest, key=lambda s: s.peak)[:8]
        out.append(
            Finding(
                kind="loss_spike",
                severity="low",
                confidence=0.6,
                summary=(
                    f"{which} loss `{key}`: {len(rest)} more spike(s) above {cfg.min_ratio}x the recent median, at steps "
                    + ", ".join(str(int(steps[s.peak])) for s in shown)
                    + (" ..." if len(rest) > len(shown) else "")
                ),
                evidence=tuple(
                    metric_ref(rid, steps[s.peak], key, x[s.peak], f"{fmt(s.ratio(x))}x the recent median") for s in shown
                ),
                detector="loss_spike",
                run_id=rid,
                finding_id=finding_id("loss_spike", rid, key, "more"),
                onset_step=int(steps[min(s.onset for s in rest)]),
                end_step=int(steps[max(s.end for s in rest)]),
                fix="Recurring spikes point at the data stream or an aggressive optimizer: inspect the batches at these steps; clip gradients and lower the LR if they persist.",
                expected_impact="A smoother loss curve and lower risk of divergence.",
                verify_by=f"Count the {which}-loss points above {cfg.min_ratio}x their 20-point median in a rerun.",
            )
        )
    return out
