"""Loss-scale collapse: the mixed-precision loss scale halves step after step or reaches its minimum."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.roles import logs_role
from mldebug_ray.detectors.fp16_overflow import OVERFLOW_TEXT
from mldebug_ray.detectors.known_error import SIGNATURES
from mldebug_ray.detectors.log_events import event_ref, matching, one_line, where_text
from mldebug_ray.detectors.series import finding_id, fmt, metric_ref, pick_series
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding

MINIMUM_TEXT = next(s.pattern for s in SIGNATURES if s.name == "loss_scale_minimum")
# `Attempted loss scale: 8.0, reducing to 4.0` (DeepSpeed), `reducing loss scale to 32768.0` (Apex).
_REDUCED_TO = re.compile(r"reducing (?:loss scale )?to:?\s*([0-9.eE+-]+)", re.IGNORECASE)


@dataclass
class LossScaleCollapseConfig:
    """Thresholds of the `loss_scale_collapse` detector (keys `detectors.loss_scale_collapse.*`)."""

    min_halvings: int = 3
    """The scale falling this many halvings (8x) below its peak ..."""
    window_steps: int = 100
    """... within this many steps (or between two consecutive logged points) is a collapse."""
    high_halvings: int = 5
    """A collapse of at least this many halvings, or one still falling at the end of the log, is `high`."""
    calibration_steps: int = 10
    """A log whose first step is <= this starts with the run; its first backoffs, until the scale
    holds for two consecutive points, are the scaler finding its initial scale (ignored unless
    it reaches the minimum)."""
    default_min_scale: float = 1.0
    """The scaler's minimum when no param states it (DeepSpeed's min_loss_scale default)."""
    min_scale_keys: list[str] = field(default_factory=lambda: ["min_loss_scale", "min_scale", "loss_scale_min", "minimum_loss_scale"])
    """Param names (last dotted part) that state the scaler's minimum."""

    def __post_init__(self) -> None:
        if self.min_halvings < 1:
            raise ConfigError(f"detectors.loss_scale_collapse.min_halvings must be >= 1, got {self.min_halvings}")
        if self.high_halvings < self.min_halvings:
            raise ConfigError(
                f"detectors.loss_scale_collapse.high_halvings must be >= min_halvings={self.min_halvings}, got {self.high_halvings}"
            )
        if self.window_steps < 1:
            raise ConfigError(f"detectors.loss_scale_collapse.window_steps must be >= 1, got {self.window_steps}")
        if self.calibration_steps < 0:
            raise ConfigError(f"detectors.loss_scale_collapse.calibration_steps must be >= 0, got {self.calibration_steps}")
        if not self.default_min_scale > 0:
            raise ConfigError(f"detectors.loss_scale_collapse.default_min_scale must be > 0, got {self.default_min_scale}")


def _scale_series(ev: RunEvidence) -> tuple[np.ndarray, np.ndarray, object] | None:
    """(steps, scales, ref(i, text)) from the loss_scale metric, else from `reducing to X` log lines."""
    series = (
        pick_series(ev.metrics, "loss_scale", None).filter(pl.col("value").is_finite() & (pl.col("value") > 0))
        if logs_role(ev.metrics, "loss_scale", None)
        else pl.DataFrame()
    )
    if series.height >= 2:
        key = series["key"][0]
        steps, values = series["step"].to_numpy(), series["value"].to_numpy()
        return steps, values, lambda i, text: metric_ref(ev.run_id, steps[i], key, values[i], text)
    lines = matching(ev.events, OVERFLOW_TEXT, kinds=("overflow_skip",)).filter(pl.col("step").is_not_null())
    rows = []
    for r in lines.iter_rows(named=True):
        m = _REDUCED_TO.search(r["text"] or "")
        if m:
            try:
                rows.append((int(r["step"]), float(m.group(1)), r))
            except ValueError:
                continue
    if len(rows) < 2:
        return None
    steps = np.array([r[0] for r in rows])
    values = np.array([r[1] for r in rows])

    def ref(i, text):
        return event_ref(ev.run_id, rows[i][2], f"{where_text(rows[i][2])}: {one_line(rows[i][2]['text'])} ({text})")

    return steps, values, ref


def _min_scale(ev: RunEvidence, cfg: LossScaleCollapseConfig) -> tuple[float, EvidenceRef | None]:
    p = ev.params
    if p.height:
        names = {k.lower() for k in cfg.min_scale_keys}
        for r in p.filter(pl.col("value_num").is_not_null()).iter_rows(named=True):
            if r["key"].lower().rsplit(".", 1)[-1] in names and r["value_num"] > 0:
                return float(r["value_num"]), EvidenceRef("params", {"run_id": ev.run_id, "key": r["key"]}, r["value_num"], f"{r['key']} = {r['value']}")
    return cfg.default_min_scale, None


@detector("loss_scale_collapse")
def loss_scale_collapse(ev: RunEvidence, cfg: LossScaleCollapseConfig) -> list[Finding]:
    """The mixed-precision loss scale keeps backing off or hits its minimum (SPEC §5 `loss_scale_collapse`).

    Evidence: the loss-scale metric (`loss_scale`, `loss scale`, `scaler/scale`), else the
    `reducing to X` values of DeepSpeed/Apex overflow lines; overflow events (to date the
    first skipped step); the `Current loss scale already at minimum` message; the scaler's
    minimum from params (`min_loss_scale`, default 1).

    A dynamic scaler halves the scale on an overflow and doubles it after 2000 clean steps
    (torch.amp GradScaler defaults; FIELD-NOTES), so a healthy scale moves about one halving
    per thousands of steps. A collapse is the scale ending >= 3 halvings (8x) below its peak
    of the previous 100 steps (or of the previous logged point when logs are sparser):
    BigScience tr8b-104B fell 1048576 -> 32768 (5 halvings) in 6 iterations before its
    divergence. When the log starts with the run, the backoffs before the scale first holds
    for two consecutive points are the initial calibration (DeepSpeed starts at 2^32 and
    overflows from the first step) and are ignored unless the scale reaches the minimum. Onset: the first overflow-skipped step of the streak when logged,
    else the first logged point below the peak. Severity: `critical` when the scale reaches its
    minimum or the scaler gives up; `high` for >= 5 halvings or a scale still falling at the end
    of the log; else `medium`.
    """
    rid = ev.run_id
    min_scale, min_ref = _min_scale(ev, cfg)
    gave_up = matching(ev.events, MINIMUM_TEXT)
    got = _scale_series(ev)
    if got is None and gave_up.height == 0:
        return []
    evidence: list[EvidenceRef] = []
    onset = end = None
    summary = ""
    severity = None
    if got is not None:
        steps, x, ref = got
        collapse = _collapse(steps, x, cfg)
        at_min = np.flatnonzero(x <= min_scale)
        if collapse is None and at_min.size:
            collapse = (max(0, int(at_min[0]) - 1), int(at_min[0]), int(at_min[0]))
        if collapse is not None:
            peak, first_drop, last = collapse
            halvings = math.log2(x[peak] / x[last])
            since = steps[peak - 1] if peak > 0 else steps[peak]
            onset = _first_overflow(ev, since, steps[first_drop]) or int(steps[first_drop])
            end = int(steps[last])
            still_falling = last == x.size - 1
            reached_min = bool(x[last] <= min_scale)
            evidence += [
                ref(peak, f"loss scale {fmt(x[peak])} at step {int(steps[peak])} before the collapse"),
                ref(first_drop, f"first backoff: {fmt(x[first_drop])} at step {int(steps[first_drop])}"),
            ]
            if last != first_drop:
                evidence.append(ref(last, f"loss scale {fmt(x[last])} at step {end}: {fmt(halvings)} halvings in {end - int(steps[peak])} steps"))
            if reached_min and min_ref is not None:
                evidence.append(min_ref)
            severity = "critical" if reached_min else ("high" if halvings >= cfg.high_halvings or still_falling else "medium")
            summary = (
                f"loss scale collapsed from {fmt(x[peak])} (step {int(steps[peak])}) to {fmt(x[last])} (step {end}), "
                f"{fmt(halvings)} halvings in {end - int(steps[peak])} steps"
                + (f", reaching the scaler's minimum {fmt(min_scale)}" if reached_min else "")
                + (" and still falling at the end of the log" if still_falling and not reached_min else "")
            )
    if gave_up.height:
        r = gave_up.row(0, named=True)
        evidence.append(event_ref(rid, r, f"{where_text(r)}: {one_line(r['match'] or r['text'])}"))
        severity = "critical"
        if onset is None:
            onset = int(r["step"]) if r["step"] is not None else None
            end = onset
            summary = f"the loss scaler gave up at its minimum scale: \"{one_line(r['match'] or r['text'])}\""
        else:
            summary += "; the scaler then gave up (\"already at minimum\")"
    if severity is None:
        return []
    return [
        Finding(
            kind="loss_scale_collapse",
            severity=severity,  # type: ignore[arg-type]
            confidence=0.9,
            summary=summary,
            evidence=tuple(evidence),
            detector="loss_scale_collapse",
            run_id=rid,
            finding_id=finding_id("loss_scale_collapse", rid, onset),
            onset_step=onset,
            end_step=end,
            fix=(
                "Find the source of the Inf/NaN that every step overflows on (unnormalised inputs or a bad data shard, "
                "exploding activations/logits, a too-high LR); train in bf16 or keep softmax/norms/loss in fp32, clip "
                f"gradients, and resume from a checkpoint before step {onset}."
            ),
            expected_impact="The loss scale stays within a halving or two of its pre-collapse level; no streak of skipped steps.",
            verify_by=(
                f"Rerun through step {end} and check the logged loss scale never falls {cfg.min_halvings} halvings "
                f"within {cfg.window_steps} steps and no OVERFLOW/skip lines cluster there."
            ),
        )
    ]


def _collapse(steps: np.ndarray, x: np.ndarray, cfg: LossScaleCollapseConfig) -> tuple[int, int, int] | None:
    """(peak index, first index below the peak, last index of the streak) of the first collapse."""
    n = x.size
    if n < 2:
        return None
    # Peak of the previous window_steps (the previous point always counts), vectorised by step.
    frame = pl.DataFrame({"step": steps, "x": x}).with_columns(
        pl.col("x").rolling_max_by("step", window_size=f"{cfg.window_steps + 1}i").alias("win_max")
    )
    win_max = np.maximum(frame["win_max"].to_numpy(), np.concatenate(([x[0]], x[:-1])))
    with np.errstate(divide="ignore", invalid="ignore"):
        halvings = np.log2(win_max / x)
    settled = _calibration_end(steps, x, cfg)
    for i in np.flatnonzero(halvings >= cfg.min_halvings - 1e-9):
        i = int(i)
        # The peak: the last point at the window's maximum before i.
        lo = max(min(int(np.searchsorted(steps, steps[i] - cfg.window_steps)), i - 1), settled)
        if lo >= i:
            continue
        window = x[lo:i]
        peak = lo + int(np.flatnonzero(window == window.max())[-1])
        if math.log2(x[peak] / x[i]) >= cfg.min_halvings - 1e-9:
            break
    else:
        return None
    first_drop = peak + 1
    # The streak lasts while the scale does not grow again.
    last = i
    while last + 1 < n and x[last + 1] <= x[last]:
        last += 1
    # Stop at the last actual decrease (a plateau after the streak is not part of it).
    while last > i and x[last] == x[last - 1]:
        last -= 1
    return peak, first_drop, last


def _calibration_end(steps: np.ndarray, x: np.ndarray, cfg: LossScaleCollapseConfig) -> int:
    """Index where the scaler's initial calibration ends: when the log starts with the run
    (first step <= calibration_steps), the first point of the first stretch where the scale
    held for two consecutive points; 0 for a log that starts mid-run."""
    if steps[0] > cfg.calibration_steps or x.size < 3:
        return 0
    held = np.flatnonzero((x[2:] >= x[1:-1]) & (x[1:-1] >= x[:-2]))
    return int(held[0]) if held.size else x.size


def _first_overflow(ev: RunEvidence, since_step: int, first_drop_step: int) -> int | None:
    """The first overflow-skipped step from the point before the pre-collapse peak to the first
    lower scale (DeepSpeed's hysteresis skips a step before it first lowers the scale)."""
    hits = matching(ev.events, OVERFLOW_TEXT, kinds=("overflow_skip",)).filter(
        pl.col("step").is_not_null() & (pl.col("step") >= since_step) & (pl.col("step") <= first_drop_step)
    )
    return int(hits["step"].min()) if hits.height else None
