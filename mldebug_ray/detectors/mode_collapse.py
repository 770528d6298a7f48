"""Mode collapse: the model emits (nearly) the same output for any input."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.roles import logs_role
from mldebug_ray.detectors.layer_grads import probe_table
from mldebug_ray.detectors.series import finding_id, fmt, metric_ref, pick_series, split_of
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding

# Share of predictions equal to the most common prediction (`val_top1_share`, `top1_frac`).
_TOP1 = re.compile(
    r"(^|[/_ .])((top[-_ ]?1|mode|majority|most_common)[-_ ]?(pred(iction)?s?[-_ ]?|output[-_ ]?|token[-_ ]?)?(share|frac|fraction|ratio))$"
)
# Share of distinct outputs (`distinct_frac`, `distinct-1`, `unique_outputs_ratio`).
_DISTINCT = re.compile(r"(^|[/_ .])(distinct[-_ ]?(frac|fraction|ratio|share|\d)|unique[-_ ](pred(iction)?s?|outputs?|tokens?)[-_ ](frac|ratio|share))$")


@dataclass
class ModeCollapseConfig:
    """Thresholds of the `mode_collapse` detector (keys `detectors.mode_collapse.*`)."""

    min_top1_frac: float = 0.9
    """Outputs have collapsed when this share or more of them is the single most common output."""
    diverse_top1_frac: float = 0.5
    """The outputs were diverse when the top-1 share was at or below this; a collapse from a diverse
    state is `high`, one seen from the first point on is `low` (the model never learned)."""
    max_distinct_frac: float = 0.1
    """Distinct-output share at or below this ..."""
    distinct_drop: float = 5.0
    """... after having been this many times higher is a collapse."""
    min_points: int = 2
    """Fewest points of an output-diversity series needed."""

    def __post_init__(self) -> None:
        if not 0.0 < self.diverse_top1_frac < self.min_top1_frac <= 1.0:
            raise ConfigError(
                "detectors.mode_collapse: need 0 < diverse_top1_frac < min_top1_frac <= 1, got "
                f"diverse_top1_frac={self.diverse_top1_frac}, min_top1_frac={self.min_top1_frac}"
            )
        if not 0.0 < self.max_distinct_frac < 1.0:
            raise ConfigError(f"detectors.mode_collapse.max_distinct_frac must be in (0, 1), got {self.max_distinct_frac}")
        if not self.distinct_drop > 1.0:
            raise ConfigError(f"detectors.mode_collapse.distinct_drop must be > 1, got {self.distinct_drop}")
        if self.min_points < 1:
            raise ConfigError(f"detectors.mode_collapse.min_points must be >= 1, got {self.min_points}")


def _series(ev: RunEvidence) -> list[tuple[str, pl.DataFrame, object]]:
    """(kind, [step, value], name, ref(step, value, text)) per output-diversity series, validation first."""
    out = []
    m = ev.metrics
    if m.height:
        keys = m["key"].unique().to_list()
        found = []
        for key in keys:
            k = " ".join(key.strip().lower().split())
            kind = "top1" if _TOP1.search(k) else ("distinct" if _DISTINCT.search(k) else None)
            if kind:
                split = split_of(key)
                found.append(({"val": 0, "test": 1, None: 2, "train": 3}.get(split, 2), key, kind))
        for _, key, kind in sorted(found):
            s = (
                m.filter((pl.col("key") == key) & pl.col("value").is_finite())
                .select(pl.col("step").cast(pl.Int64), pl.col("value").cast(pl.Float64))
                .unique(subset=["step"], keep="last")
                .sort("step")
            )
            s = _drop_nonfinite_loss_steps(ev, s)
            out.append((kind, s, key, lambda step, value, text, key=key: metric_ref(ev.run_id, step, key, value, text)))
    probe = probe_table(ev, "outputs")
    if probe is not None:
        for column, kind in (("top1_frac", "top1"), ("distinct_frac", "distinct")):
            s = probe.filter(pl.col(column).is_finite()).select(pl.col("step").cast(pl.Int64), pl.col(column).alias("value")).unique(subset=["step"], keep="last").sort("step")
            out.append((kind, s, f"outputs.{column}", lambda step, value, text: EvidenceRef("outputs", {"run_id": ev.run_id, "step": int(step)}, value, text)))
    return out


def _drop_nonfinite_loss_steps(ev: RunEvidence, s: pl.DataFrame) -> pl.DataFrame:
    """Steps where the validation loss is NaN/Inf say nothing about diversity: argmax of NaN
    logits is always index 0."""
    loss = pick_series(ev.metrics, "loss", "val") if logs_role(ev.metrics, "loss", "val") else pl.DataFrame()
    if loss.height == 0:
        return s
    bad = loss.filter(~pl.col("value").is_finite())["step"]
    return s.filter(~pl.col("step").is_in(bad.implode())) if bad.len() else s


@detector("mode_collapse")
def mode_collapse(ev: RunEvidence, cfg: ModeCollapseConfig) -> list[Finding]:
    """The model emits (nearly) the same output for any input (SPEC §5 `mode_collapse`).

    Evidence: logged output-diversity metrics (the share of the most common prediction:
    `val_top1_share`, `top1_frac`; the share of distinct outputs: `distinct_frac`, `distinct-1`)
    and the outputs probe's table. Validation series are preferred; points where the
    validation loss is NaN/Inf are dropped (argmax over NaN logits always gives index 0).

    Fires when >= 90% of the outputs are one output (a healthy classifier's top-1 share is
    about its majority class's share, and a 90% majority is a class-imbalance problem of its
    own), or when the distinct-output share falls to <= 0.1 after being >= 5x higher.
    Severity: `high` when the outputs were diverse before (top-1 share <= 0.5) and stay
    collapsed to the end; `medium` when they recover; `low` when they were never diverse (one
    output from the first evaluation: the model never learned to use its input, which the
    plateau / vanishing-gradient findings explain). Onset: the first point after the last
    diverse one.
    """
    rid = ev.run_id
    for kind, s, what, ref in _series(ev):
        if s.height < cfg.min_points:
            continue
        steps, x = s["step"].to_numpy(), s["value"].to_numpy()
        if kind == "top1":
            collapsed = x >= cfg.min_top1_frac
            diverse = x <= cfg.diverse_top1_frac
        else:
            running_max = np.maximum.accumulate(x)
            collapsed = (x <= cfg.max_distinct_frac) & (running_max >= cfg.distinct_drop * np.maximum(x, 1e-12))
            diverse = x >= cfg.distinct_drop * cfg.max_distinct_frac
        hits = np.flatnonzero(collapsed)
        if hits.size == 0:
            continue
        first = int(hits[0])
        before = np.flatnonzero(diverse[:first])
        was_diverse = before.size > 0
        onset = int(before[-1]) + 1 if was_diverse else first
        last = x.size - 1
        stays = bool(collapsed[last])
        if not was_diverse:
            severity, confidence = "low", 0.6
        elif stays:
            severity, confidence = "high", 0.9
        else:
            severity, confidence = "medium", 0.8
        label = "top-1 output share" if kind == "top1" else "distinct-output share"
        evidence = []
        if was_diverse:
            d = int(before[-1])
            evidence.append(ref(steps[d], x[d], f"{what} {fmt(x[d])} at step {int(steps[d])}: outputs still diverse"))
        evidence.append(ref(steps[first], x[first], f"{what} {fmt(x[first])} at step {int(steps[first])}"))
        if last != first:
            evidence.append(ref(steps[last], x[last], f"{what} {fmt(x[last])} at the last point (step {int(steps[last])})"))
        summary = (
            f"outputs collapsed: {label} `{what}` reached {fmt(x[first])} at step {int(steps[first])}"
            + (
                f" (was {fmt(x[int(before[-1])])} at step {int(steps[int(before[-1])])})"
                if was_diverse
                else (" from the first point on" if first == 0 else f" after {fmt(x[:first].min())}-{fmt(x[:first].max())} before")
                + ": the outputs were never diverse (a model that never learned to use its input)"
            )
            + (f" and is {fmt(x[last])} at the end" if stays and last != first else "")
            + ("; it recovered later" if not stays else "")
        )
        return [
            Finding(
                kind="mode_collapse",
                severity=severity,  # type: ignore[arg-type]
                confidence=confidence,
                summary=summary,
                evidence=tuple(evidence),
                detector="mode_collapse",
                run_id=rid,
                finding_id=finding_id("mode_collapse", rid, what),
                onset_step=int(steps[onset]),
                end_step=int(steps[last]),
                fix=(
                    f"Inspect the training targets and batches from step {int(steps[onset])} on: a collate/label bug that "
                    "fills targets with one id (e.g. the pad token), a broken data shard or a loss that rewards one "
                    "output. Fix the data or loss and resume from a checkpoint before the collapse."
                ),
                expected_impact=f"The {label} stays near its pre-collapse level; validation loss and accuracy keep improving.",
                verify_by=(
                    f"Rerun from before step {int(steps[onset])} and log `{what}` at each eval: it stays "
                    + (f"below {fmt(cfg.min_top1_frac)}." if kind == "top1" else f"above {fmt(cfg.max_distinct_frac)}.")
                ),
            )
        ]
    return []
