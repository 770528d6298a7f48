"""NaN/Inf: a loss or metric became NaN or infinite."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt, is_timing_key, metric_ref, metric_role, split_of
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import Finding

# Roles whose first NaN/Inf means the training itself broke.
CORE_ROLES = ("loss", "grad_norm", "layer_grad_norm", "lr")


@dataclass
class NanInfConfig:
    """Settings of the `nan_inf` detector (keys `detectors.nan_inf.*`)."""

    max_families: int = 8
    """Key families (role x split) reported per run; the earliest first."""
    isolated_frac: float = 0.1
    """A family whose values after the first NaN/Inf are non-finite less often than this, and
    that ends finite, had isolated non-finite points (e.g. fp16 overflow steps that the
    loss scaler skipped): reported one severity lower."""

    def __post_init__(self) -> None:
        if self.max_families < 1:
            raise ConfigError(f"detectors.nan_inf.max_families must be >= 1, got {self.max_families}")
        if not 0.0 <= self.isolated_frac <= 1.0:
            raise ConfigError(f"detectors.nan_inf.isolated_frac must be in [0, 1], got {self.isolated_frac}")


def _family(key: str, split: str | None) -> tuple[str, str]:
    role = metric_role(key) or "other"
    return role, split_of(key, split) or ("train" if role in ("loss", "grad_norm", "lr", "loss_scale") else "-")


@detector("nan_inf")
def nan_inf(ev: RunEvidence, cfg: NanInfConfig) -> list[Finding]:
    """A loss, metric or gradient norm became NaN or Inf (SPEC §5 `nan_inf`).

    Evidence: every metric key except timing keys (`step_avg`, `*_time*`, `*_ms`: modded-
    nanogpt prints `step_avg:nanms` at step 0, which is not a NaN loss, FIELD-NOTES). Keys
    are grouped into families (role x split: train loss, validation loss, grad norm, ...);
    per family one finding at its first non-finite row, citing that row and the last
    finite row before it. No threshold: any NaN/Inf counts, like SageMaker Debugger's
    ExplodingTensor rule. Severity is `critical` when the family stays non-finite to its
    end, one lower when the NaN/Inf points are isolated and the series recovers.
    Unrecognised keys count only when they were finite before (a metric that is NaN
    everywhere was never computed).
    """
    m = ev.metrics
    if m.height == 0:
        return []
    bad = m.filter(pl.col("value").is_nan() | pl.col("value").is_infinite())
    if bad.height == 0:
        return []
    split_col = "split" if "split" in m.columns else None
    pairs = bad.select(["key"] + ([split_col] if split_col else [])).unique().sort(pl.all(), nulls_last=True)
    families: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
    for row in pairs.iter_rows(named=True):
        if is_timing_key(row["key"]):
            continue
        split = row[split_col] if split_col else None
        families.setdefault(_family(row["key"], split), []).append((row["key"], split))

    rid = ev.run_id
    found = []
    for (role, split), members in families.items():
        first = None  # (step, key, value, last finite row, series)
        for key, split_value in members:
            rows = m.filter(pl.col("key") == key)
            if split_col:
                rows = rows.filter(pl.col(split_col).is_null() if split_value is None else pl.col(split_col) == split_value)
            rows = rows.filter(pl.col("value").is_not_null()).sort("step", maintain_order=True)
            nonfinite = ~rows["value"].is_finite()
            idx = int(nonfinite.arg_true()[0])
            if role == "other" and idx == 0:
                continue
            step = int(rows["step"][idx])
            if first is None or step < first[0]:
                first = (step, key, float(rows["value"][idx]), idx, rows, nonfinite)
        if first is not None:
            found.append((role, split, first))
    found.sort(key=lambda f: f[2][0])

    out = []
    for role, split, (step, key, value, idx, rows, nonfinite) in found[: cfg.max_families]:
        after = nonfinite[idx:]
        stays = bool(nonfinite[-1])
        isolated = not stays and float(after.mean()) < cfg.isolated_frac
        if stays:
            severity = "critical"
        elif role in CORE_ROLES and not isolated:
            severity = "critical" if role == "loss" else "high"
        else:
            severity = "high" if role == "loss" else "medium"
        evidence = []
        if idx > 0:
            prev_step, prev_val = int(rows["step"][idx - 1]), float(rows["value"][idx - 1])
            evidence.append(metric_ref(rid, prev_step, key, prev_val, f"last finite `{key}` before: {fmt(prev_val)} at step {prev_step}"))
        evidence.append(metric_ref(rid, step, key, value, f"first non-finite `{key}`: {fmt(value)} at step {step}"))
        n_bad = int(after.sum())
        name = f"{'' if split in ('-', 'train') else split + ' '}{role.replace('_', ' ')}"
        tail = (
            "and stays non-finite to the end"
            if stays
            else f"({n_bad} non-finite of {after.len()} points from there; the series recovers)"
        )
        out.append(
            Finding(
                kind="nan_inf",
                severity=severity,
                confidence=0.99,
                summary=f"{name} `{key}` became {fmt(value)} at step {step} {tail}",
                evidence=tuple(evidence),
                detector="nan_inf",
                run_id=rid,
                finding_id=finding_id("nan_inf", rid, role, split),
                onset_step=step,
                end_step=int(rows["step"][-1]),
                fix=(
                    "Lower the learning rate (or lengthen the warm-up) and clip the global grad norm; if it runs in "
                    "fp16, use bf16 or a dynamic loss scaler; check for log(0), division by zero or sqrt of a "
                    f"negative in the loss, and for bad samples in the batches before step {step}."
                    if role in CORE_ROLES
                    else f"Check how `{key}` is computed (empty denominators, log(0)) and whether the model's outputs "
                    f"were already non-finite at step {step}."
                ),
                expected_impact=f"`{key}` stays finite through step {step} and the run trains to its end.",
                verify_by=(
                    f"Rerun from the last checkpoint before step {step} with torch.autograd.set_detect_anomaly(True) "
                    f"for a few steps and check `{key}` is finite at every step."
                ),
            )
        )
    return out
