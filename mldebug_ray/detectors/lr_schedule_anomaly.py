"""LR schedule anomaly: the learning rate is zero, negative, stuck, jumps up, or collapses mid-run."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.roles import logs_role
from mldebug_ray.detectors.series import finding_id, fmt, metric_ref, pick_series, runs_of_true
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding

# Schedules that change the LR over a run (a constant LR under one of these was never stepped).
CHANGING_SCHEDULES = (
    "cosine", "linear", "polynomial", "poly", "exponential", "exp", "step", "multistep", "multi_step", "onecycle",
    "one_cycle", "inverse_sqrt", "rsqrt", "cosine_with_restarts", "cosine_with_min_lr", "warmup_cosine", "wsd",
    "warmup_stable_decay", "noam", "cyclic",
)


@dataclass
class LrScheduleAnomalyConfig:
    """Thresholds of the `lr_schedule_anomaly` detector (keys `detectors.lr_schedule_anomaly.*`)."""

    floor_frac: float = 1e-3
    """An LR at or below this share of its peak (zero included) is 'collapsed'."""
    min_dead_frac: float = 0.1
    """A collapse that lasts to the end is planned when it covers less than this share of the
    run's steps (a schedule decaying to 0 at the end), an anomaly when more."""
    min_dip_points: int = 2
    """A mid-run stretch at ~0 needs this many points; a single one is a warm restart's warm-up start."""
    jump_factor: float = 2.0
    """An LR rising to more than this many times every earlier value, after it had settled, jumped."""
    settle_points: int = 3
    """Points without an increase that mark the end of the warm-up (jumps before it are the warm-up)."""
    min_points: int = 3
    """Fewest finite LR points needed."""
    schedule_keys: list[str] = field(
        default_factory=lambda: [
            "lr_scheduler_type", "lr_scheduler", "scheduler", "schedule", "lr_schedule", "scheduler_type",
            "decay_style", "lr_decay_style", "lr_policy", "decay_lr",
        ]
    )
    """Param names (last dotted part) that name the configured LR schedule."""

    def __post_init__(self) -> None:
        if not 0.0 < self.floor_frac < 1.0:
            raise ConfigError(f"detectors.lr_schedule_anomaly.floor_frac must be in (0, 1), got {self.floor_frac}")
        if not 0.0 < self.min_dead_frac < 1.0:
            raise ConfigError(f"detectors.lr_schedule_anomaly.min_dead_frac must be in (0, 1), got {self.min_dead_frac}")
        if not self.jump_factor > 1.0:
            raise ConfigError(f"detectors.lr_schedule_anomaly.jump_factor must be > 1, got {self.jump_factor}")
        for name in ("settle_points", "min_points", "min_dip_points"):
            if getattr(self, name) < 1:
                raise ConfigError(f"detectors.lr_schedule_anomaly.{name} must be >= 1, got {getattr(self, name)}")


@detector("lr_schedule_anomaly")
def lr_schedule_anomaly(ev: RunEvidence, cfg: LrScheduleAnomalyConfig) -> list[Finding]:
    """Learning rate zero, negative, stuck, jumping, or collapsing mid-run (SPEC §5 `lr_schedule_anomaly`).

    Evidence: the logged learning rate (train split); params naming the schedule.
    - negative at any step: `critical`; zero (or <= 0.1% of its peak) at every step: `critical`.
    - collapsed: the LR falls to <= 0.1% of its peak and stays there for more than 10% of
      the run's steps (the schedule ended early, e.g. a cosine T_max shorter than the run), or
      drops there mid-run for >= 2 points and comes back (one point is a warm restart's
      warm-up from 0): `high`. A decay to ~0 at the very end is planned:
      cosine-to-zero spends the last ~2% of its steps under 0.1% of its peak, linear-to-zero
      0.1% (llm.c prints `lr:0.000000` at its last step); the classic ImageNet step schedule
      (0.1 -> 0.01 -> 0.001) stays at 1% of its peak, above the floor. A run of low values at
      the start is the warm-up from 0 (AlgoPerf logs lr 0 at step 0).
    - jump: after the LR settled (3 points without increase: the warm-up is over), a point
      above 2x every earlier value: `high`. Restarts (SGDR) return to the earlier peak and
      do not count; 2x matches the diagnosis rules' LR_JUMP_FACTOR.
    - stuck: the same LR at every point while params name a changing schedule (cosine,
      linear, step, ...): `medium`, the scheduler was never stepped.
    """
    if not logs_role(ev.metrics, "lr", "train"):
        return []
    series = pick_series(ev.metrics, "lr", "train").filter(pl.col("value").is_finite())
    if series.height < cfg.min_points:
        return []
    rid = ev.run_id
    key = series["key"][0]
    steps = series["step"].to_numpy()
    x = series["value"].to_numpy()
    ref = lambda i, text: metric_ref(rid, steps[i], key, x[i], text)  # noqa: E731
    out: list[Finding] = []

    negative = np.flatnonzero(x < 0)
    if negative.size:
        i = int(negative[0])
        out.append(_finding(
            rid, "critical", 0.95, f"learning rate `{key}` is negative ({fmt(x[i])}) at step {int(steps[i])} ({negative.size} point(s)): the optimizer climbs the loss",
            [ref(i, f"{key} {fmt(x[i])} at step {int(steps[i])}")], "negative", int(steps[i]), int(steps[negative[-1]]),
            fix="Fix the schedule that produces a negative LR (a linear decay run past its end, a warm-up/decay arithmetic error); clamp the LR at 0.",
            verify="Log the LR every step of a rerun: it is never negative.",
        ))
    peak = float(x.max())
    if peak <= 0:
        out.append(_finding(
            rid, "critical", 0.95, f"learning rate `{key}` is {fmt(peak)} at every one of its {x.size} points: nothing is learned",
            [ref(0, f"{key} {fmt(x[0])} at step {int(steps[0])}"), ref(x.size - 1, f"{key} {fmt(x[-1])} at step {int(steps[-1])}")],
            "zero", int(steps[0]), int(steps[-1]),
            fix="Set a positive learning rate (check the config value, a warm-up that never ends, or a scheduler multiplying by 0).",
            verify="The logged LR is positive from the first steps after warm-up and the loss falls.",
        ))
        return out

    low = x <= cfg.floor_frac * peak
    i_peak = int(np.argmax(x))
    run_last = _last_step(ev, int(steps[-1]))
    span = max(run_last - int(steps[0]), 1)
    for lo, hi in runs_of_true(low):
        if lo == 0:
            continue  # the warm-up starts from (about) zero
        if hi == x.size - 1:
            dead_steps = run_last - int(steps[lo])
            if dead_steps <= cfg.min_dead_frac * span:
                continue  # the planned decay to zero at the end
            out.append(_finding(
                rid, "high", 0.85,
                f"learning rate `{key}` collapsed to {fmt(x[lo])} (<= {fmt(100 * cfg.floor_frac)}% of its peak {fmt(peak)}) at step "
                f"{int(steps[lo])} and stays there for the last {fmt(100 * dead_steps / span)}% of the run: the schedule ended early",
                [ref(lo - 1, f"{key} {fmt(x[lo - 1])} at step {int(steps[lo - 1])}"), ref(lo, f"{key} {fmt(x[lo])} at step {int(steps[lo])}"), ref(i_peak, f"peak {fmt(peak)} at step {int(steps[i_peak])}")],
                "collapse", int(steps[lo]), int(steps[hi]),
                fix="Make the schedule's length match the run (cosine T_max / num_training_steps / lr_decay_iters = the real number of optimizer steps, counting gradient accumulation), or stop the run where the schedule ends.",
                verify=f"The logged LR stays above {fmt(cfg.floor_frac * peak)} until the last {fmt(100 * cfg.min_dead_frac)}% of the steps.",
            ))
        elif hi - lo + 1 >= cfg.min_dip_points:
            out.append(_finding(
                rid, "high", 0.8,
                f"learning rate `{key}` dropped to {fmt(x[lo:hi + 1].min())} (<= {fmt(100 * cfg.floor_frac)}% of its peak {fmt(peak)}) "
                f"at steps {int(steps[lo])}-{int(steps[hi])} and came back to {fmt(x[hi + 1])}",
                [ref(lo - 1, f"{key} {fmt(x[lo - 1])} before"), ref(lo, f"{key} {fmt(x[lo])} at step {int(steps[lo])}"), ref(hi + 1, f"{key} back to {fmt(x[hi + 1])} at step {int(steps[hi + 1])}")],
                f"dip-{int(steps[lo])}", int(steps[lo]), int(steps[hi]),
                fix="Check the scheduler around that step (a milestone multiplying by ~0, a reset, a resumed run that restarted its warm-up from 0).",
                verify=f"The logged LR follows the configured schedule through steps {int(steps[lo])}-{int(steps[hi])} in a rerun.",
            ))

    jump = _jump(x, cfg)
    if jump is not None:
        i = jump
        before = float(x[:i].max())
        out.append(_finding(
            rid, "high", 0.85,
            f"learning rate `{key}` jumped to {fmt(x[i])} at step {int(steps[i])}, {fmt(x[i] / before)}x any earlier value (was {fmt(x[i - 1])})",
            [ref(i - 1, f"{key} {fmt(x[i - 1])} at step {int(steps[i - 1])}"), ref(i, f"{key} {fmt(x[i])} at step {int(steps[i])}: {fmt(x[i] / before)}x the earlier maximum")],
            f"jump-{int(steps[i])}", int(steps[i]), int(steps[i]),
            fix=f"Check what changed the LR at step {int(steps[i])} (a curriculum/phase change, a resumed run with a new config, a scheduler multiplying instead of dividing); keep the LR at or below its earlier peak or warm up to the new value.",
            verify=f"Rerun through step {int(steps[i])}: the LR stays at or below {fmt(before)} (or ramps to the new value over many steps) and the loss does not jump.",
        ))

    stuck = _stuck(ev, x, cfg)
    if stuck is not None:
        out.append(_finding(
            rid, "medium", 0.7,
            f"learning rate `{key}` is {fmt(x[0])} at all {x.size} points although {stuck.text}: the scheduler was never stepped",
            [ref(0, f"{key} {fmt(x[0])} at step {int(steps[0])}"), ref(x.size - 1, f"{key} {fmt(x[-1])} at step {int(steps[-1])}"), stuck],
            "stuck", int(steps[0]), int(steps[-1]),
            fix="Call scheduler.step() once per optimizer step (after optimizer.step()), and pass the scheduler to the trainer if it manages the loop.",
            verify="The logged LR follows the configured schedule (warm-up, decay) in a rerun.",
        ))
    return out


def _finding(rid, severity, confidence, summary, evidence, tag, onset, end, *, fix, verify) -> Finding:
    return Finding(
        kind="lr_schedule_anomaly",
        severity=severity,
        confidence=confidence,
        summary=summary,
        evidence=tuple(evidence),
        detector="lr_schedule_anomaly",
        run_id=rid,
        finding_id=finding_id("lr_schedule_anomaly", rid, tag),
        onset_step=onset,
        end_step=end,
        fix=fix,
        expected_impact="The learning rate follows the intended schedule, so the optimisation makes the progress the config plans.",
        verify_by=verify,
    )


def _last_step(ev: RunEvidence, lr_last: int) -> int:
    m = ev.metrics
    return max(lr_last, int(m["step"].max())) if m.height else lr_last


def _jump(x: np.ndarray, cfg: LrScheduleAnomalyConfig) -> int | None:
    """Index of the first point above jump_factor x every earlier value after the LR settled."""
    n = x.size
    if n < cfg.settle_points + 2:
        return None
    no_increase = np.concatenate(([False], x[1:] <= x[:-1]))
    # settled[i]: some run of settle_points non-increasing points ended before i
    counts = np.convolve(no_increase.astype(int), np.ones(cfg.settle_points, dtype=int), mode="full")[:n]
    settled = np.maximum.accumulate(counts >= cfg.settle_points)
    settled = np.concatenate(([False], settled[:-1]))
    prev_max = np.concatenate(([np.inf], np.maximum.accumulate(x)[:-1]))
    hits = np.flatnonzero(settled & (prev_max > 0) & (x > cfg.jump_factor * prev_max))
    return int(hits[0]) if hits.size else None


def _stuck(ev: RunEvidence, x: np.ndarray, cfg: LrScheduleAnomalyConfig) -> EvidenceRef | None:
    """The param naming a changing schedule, when the LR never changed over >= 5 points."""
    if x.size < 5 or np.unique(x).size != 1 or ev.params.height == 0:
        return None
    names = {k.lower() for k in cfg.schedule_keys}
    for r in ev.params.iter_rows(named=True):
        leaf = r["key"].lower().rsplit(".", 1)[-1]
        if leaf not in names:
            continue
        value = str(r["value"]).strip().lower()
        if leaf == "decay_lr":
            changing = value in ("true", "1")
        else:
            changing = any(value == s or value.startswith(s + "_") or value.endswith("_" + s) for s in CHANGING_SCHEDULES)
        if changing:
            return EvidenceRef("params", {"run_id": ev.run_id, "key": r["key"]}, r["value_num"], f"{r['key']} = {r['value']}")
    return None
