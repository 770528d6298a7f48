"""Saturated activations: sigmoid/tanh units pinned at their limits on the probe batch."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mldebug_ray.detectors.activation_layers import layer_share_evidence
from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import Finding


@dataclass
class SaturatedActivationsConfig:
    """Thresholds of the `saturated_activations` detector (keys `detectors.saturated_activations.*`)."""

    max_saturated_frac: float = 0.5
    """A layer with more than this share of saturated inputs is saturated (SageMaker SaturatedActivation threshold_layer=50%)."""
    high_saturated_frac: float = 0.9
    """At or above this share almost no gradient passes the layer: severity `high`."""

    def __post_init__(self) -> None:
        if not 0.0 < self.max_saturated_frac < 1.0:
            raise ConfigError(f"detectors.saturated_activations.max_saturated_frac must be in (0, 1), got {self.max_saturated_frac}")
        if not self.max_saturated_frac <= self.high_saturated_frac <= 1.0:
            raise ConfigError(
                f"detectors.saturated_activations.high_saturated_frac must be in [max_saturated_frac, 1], got {self.high_saturated_frac}"
            )


@detector("saturated_activations")
def saturated_activations(ev: RunEvidence, cfg: SaturatedActivationsConfig) -> list[Finding]:
    """Sigmoid/tanh units pinned at their limits (SPEC §5 `saturated_activations`).

    Evidence: the `activations` probe table, `saturated_frac` of Sigmoid/Tanh layers: the
    share of their inputs beyond SageMaker's SaturatedActivation limits (tanh |x| > 9.4999,
    sigmoid x < -23 or x > 16.99999, where the float32 output equals its limit and the
    derivative is below 1e-7). Fires when a layer's share exceeds 50%, SageMaker's
    threshold_layer (FIELD-NOTES): most of the layer then passes no gradient, the
    mechanism behind vanishing gradients in sigmoid/tanh stacks. Judged at the newest
    probed checkpoint; onset as in `dead_units`.
    """
    acts = ev.activations
    if acts.height == 0 or "saturated_frac" not in acts.columns:
        return []
    rows = acts.filter(pl.col("saturated_frac").is_not_null() & pl.col("saturated_frac").is_finite() & pl.col("step").is_not_null())
    if rows.height == 0:
        return []
    newest = rows["step"].max()
    bad = rows.filter((pl.col("step") == newest) & (pl.col("saturated_frac") > cfg.max_saturated_frac)).sort("saturated_frac", descending=True)
    if bad.height == 0:
        return []
    rid = ev.run_id
    n_layers = rows.filter(pl.col("step") == newest).height
    worst = bad.row(0, named=True)
    onset, evidence = layer_share_evidence(rows, bad, "saturated_frac", cfg.max_saturated_frac, newest, rid, "saturated", "of inputs")
    severity = "high" if worst["saturated_frac"] >= cfg.high_saturated_frac else "medium"
    return [
        Finding(
            kind="saturated_activations",
            severity=severity,  # type: ignore[arg-type]
            confidence=0.85 if severity == "high" else 0.75,
            summary=(
                f"{bad.height} of {n_layers} sigmoid/tanh layer(s) have more than {fmt(100 * cfg.max_saturated_frac)}% of their inputs in the "
                f"flat region at step {newest}; worst `{worst['layer']}` with {fmt(100 * worst['saturated_frac'])}%"
            ),
            evidence=tuple(evidence),
            detector="saturated_activations",
            run_id=rid,
            finding_id=finding_id("saturated_activations", rid, worst["layer"]),
            onset_step=onset,
            end_step=int(newest),
            fix=(
                "Normalise the layer's inputs (LayerNorm/BatchNorm before the nonlinearity), scale the initialisation down "
                "(Xavier/Glorot for tanh/sigmoid), lower the learning rate, or use a non-saturating activation."
            ),
            expected_impact=f"Under {fmt(100 * cfg.max_saturated_frac)}% saturated inputs per layer; gradients reach the layers below again.",
            verify_by="Rerun the activations probe on a checkpoint of the fixed run: saturated_frac below the threshold for every sigmoid/tanh layer.",
        )
    ]
