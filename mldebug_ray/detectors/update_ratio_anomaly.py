"""Update-ratio anomaly: weights moved far more than their own size between checkpoints, or not at all."""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding

# Biases and normalisation parameters start at 0 or 1 and move on another scale than weight
# matrices; SageMaker's rule is about weights.
_NOT_A_WEIGHT = re.compile(r"(^|[._/])(bias|b|beta|gamma|running_mean|running_var|num_batches_tracked)$")


@dataclass
class UpdateRatioAnomalyConfig:
    """Thresholds of the `update_ratio_anomaly` detector (keys `detectors.update_ratio_anomaly.*`)."""

    max_ratio: float = 10.0
    """A weight tensor whose change between checkpoints exceeds this multiple of its norm was rewritten, not trained (SageMaker WeightUpdateRatio large_threshold=10)."""
    min_ratio: float = 1e-8
    """A tensor whose change is below this share of its norm did not train (SageMaker WeightUpdateRatio small_threshold=1e-8) ..."""
    min_frozen_share: float = 0.5
    """... and the run's weights did not train when tensors holding this share of the parameters did not."""
    min_params: int = 100
    """Tensors smaller than this are not judged (their norm is dominated by a few elements)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.min_ratio < self.max_ratio:
            raise ConfigError(f"detectors.update_ratio_anomaly: need 0 < min_ratio < max_ratio, got {self.min_ratio}, {self.max_ratio}")
        if not 0.0 < self.min_frozen_share <= 1.0:
            raise ConfigError(f"detectors.update_ratio_anomaly.min_frozen_share must be in (0, 1], got {self.min_frozen_share}")
        if self.min_params < 1:
            raise ConfigError(f"detectors.update_ratio_anomaly.min_params must be >= 1, got {self.min_params}")


def _ref(rid: str, r: dict, text: str) -> EvidenceRef:
    return EvidenceRef("layers", {"run_id": rid, "step": int(r["step"]), "layer": r["layer"]}, r["update_ratio"], text)


@detector("update_ratio_anomaly")
def update_ratio_anomaly(ev: RunEvidence, cfg: UpdateRatioAnomalyConfig) -> list[Finding]:
    """Update-to-weight ratio far too large or too small (SPEC §5 `update_ratio_anomaly`).

    Evidence: `layers.update_ratio` = ||w_t - w_s|| / ||w_s|| of each weight tensor between
    consecutive scanned checkpoints s < t (`update_from_step` = s), from probes/weights.py.

    Thresholds are SageMaker Debugger's WeightUpdateRatio defaults (FIELD-NOTES): large
    10, small 1e-8. SageMaker applies them per step; here the ratio spans t - s steps,
    which keeps both sides conservative. Large: by the triangle inequality the interval
    ratio is at most the sum of the per-step ratios, so a tensor above 10 moved more than
    ten times its own norm in total: it was overwritten or blew up, not trained (healthy
    training moves weights by a fraction of their norm even from initialisation). Small:
    below 1e-8 the tensor is unchanged to float32 precision (eps 1.2e-7 per element) over
    the whole interval; it is judged over the run (tensors holding >= 50% of the judged
    parameters) because freezing some layers on purpose (fine-tuning a head) is common,
    and a frozen majority means the optimizer was not stepping (lr 0, every step skipped
    for overflow, a checkpoint saved from the wrong model copy). Biases, norm parameters
    and tensors under 100 elements are not judged.
    """
    layers = ev.layers
    if layers.height == 0 or "update_ratio" not in layers.columns:
        return []
    rows = layers.filter(
        pl.col("update_ratio").is_not_null()
        & pl.col("update_ratio").is_finite()
        & pl.col("step").is_not_null()
        & (pl.col("n_params") >= cfg.min_params)
        & (pl.col("module_type") != "norm")
        & ~pl.col("layer").str.to_lowercase().str.contains(_NOT_A_WEIGHT.pattern)
    )
    if rows.height == 0:
        return []
    rid = ev.run_id
    out: list[Finding] = []
    large = rows.filter(pl.col("update_ratio") > cfg.max_ratio).sort(["step", "update_ratio"], descending=[False, True])
    if large.height:
        first = large.row(0, named=True)
        steps = max(1, int(first["step"]) - int(first["update_from_step"] or 0))
        evidence = [_ref(rid, r, f"{r['layer']}: changed by {fmt(r['update_ratio'])}x its norm between steps {r['update_from_step']} and {r['step']}") for r in large.head(3).iter_rows(named=True)]
        out.append(
            Finding(
                kind="update_ratio_anomaly",
                severity="high",
                confidence=0.85,
                summary=(
                    f"{large.height} weight tensor(s) changed by more than {fmt(cfg.max_ratio)}x their own norm between checkpoints; "
                    f"`{first['layer']}` by {fmt(first['update_ratio'])}x from step {first['update_from_step']} to {first['step']} "
                    f"(~{fmt(first['update_ratio'] / steps)} per step over {steps} steps)"
                ),
                evidence=tuple(evidence),
                detector="update_ratio_anomaly",
                run_id=rid,
                finding_id=finding_id("update_ratio_anomaly", rid, "large", first["step"]),
                onset_step=int(first["update_from_step"]) if first["update_from_step"] is not None else int(first["step"]),
                end_step=int(first["step"]),
                fix=(
                    "Lower the learning rate or warm it up, clip gradients (max_grad_norm ~1), and check that nothing "
                    "writes into the weights outside the optimizer (a reload, a wrong state-dict key mapping)."
                ),
                expected_impact="Per-checkpoint update ratios well below 1 for weight matrices; the loss stops jumping between checkpoints.",
                verify_by="Scan consecutive checkpoints of the fixed run: every weight's update_ratio below the threshold.",
            )
        )
    for (step,), part in rows.group_by("step", maintain_order=True):
        frozen = part.filter(pl.col("update_ratio") < cfg.min_ratio)
        total = int(part["n_params"].sum())
        share = int(frozen["n_params"].sum()) / total if total else 0.0
        if frozen.height == 0 or share < cfg.min_frozen_share:
            continue
        first = frozen.sort("n_params", descending=True).row(0, named=True)
        evidence = [_ref(rid, r, f"{r['layer']}: update ratio {fmt(r['update_ratio'])} between steps {r['update_from_step']} and {r['step']}") for r in frozen.sort("n_params", descending=True).head(3).iter_rows(named=True)]
        out.append(
            Finding(
                kind="update_ratio_anomaly",
                severity="medium",
                confidence=0.8 if share >= 0.99 else 0.7,
                summary=(
                    f"{fmt(100 * share)}% of the judged weights did not change between steps {first['update_from_step']} and {step} "
                    f"(update ratio below {fmt(cfg.min_ratio)}); the optimizer was not updating them"
                ),
                evidence=tuple(evidence),
                detector="update_ratio_anomaly",
                run_id=rid,
                finding_id=finding_id("update_ratio_anomaly", rid, "frozen", step),
                onset_step=int(first["update_from_step"]) if first["update_from_step"] is not None else int(step),
                end_step=int(step),
                fix=(
                    "Check the learning rate and its schedule (0 or ~1e-12 after a bad warmup/decay), that the optimizer got "
                    "the model's parameters (requires_grad, a re-created model after the optimizer was built), that steps are "
                    "not all skipped for fp16 overflow, and that the checkpoint saves the trained copy of the model."
                ),
                expected_impact="Weights change between checkpoints (update ratios of order 1e-4..1e-1) and the loss moves.",
                verify_by="Scan two consecutive checkpoints of the fixed run: update_ratio above the threshold for the weight matrices.",
            )
        )
        break
    return out
