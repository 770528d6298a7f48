"""Dead units: most of a layer's ReLU-like units never activate on the probe batch."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mldebug_ray.detectors.activation_layers import layer_share_evidence
from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import Finding


@dataclass
class DeadUnitsConfig:
    """Thresholds of the `dead_units` detector (keys `detectors.dead_units.*`)."""

    max_dead_frac: float = 0.5
    """A layer with more than this share of dead units is dead (SageMaker DeadRelu threshold_layer=50%)."""
    high_dead_frac: float = 0.9
    """At or above this share the layer passes almost no signal: severity `high`."""

    def __post_init__(self) -> None:
        if not 0.0 < self.max_dead_frac < 1.0:
            raise ConfigError(f"detectors.dead_units.max_dead_frac must be in (0, 1), got {self.max_dead_frac}")
        if not self.max_dead_frac <= self.high_dead_frac <= 1.0:
            raise ConfigError(f"detectors.dead_units.high_dead_frac must be in [max_dead_frac, 1], got {self.high_dead_frac}")


@detector("dead_units")
def dead_units(ev: RunEvidence, cfg: DeadUnitsConfig) -> list[Finding]:
    """A large share of ReLU-like units never activate (SPEC §5 `dead_units`).

    Evidence: the `activations` probe table, `dead_frac` of ReLU-like layers: the share of
    units active on less than 1% of the probe batch's positions (the probe's cut,
    SageMaker DeadRelu threshold_inactivity=1%). Fires when a layer's share exceeds 50%,
    SageMaker DeadRelu's threshold_layer (FIELD-NOTES): half a layer that never fires
    passes neither signal forward nor gradient back, and ReLU units do not come back by
    themselves. Judged at the newest probed checkpoint (a layer dead earlier and alive now
    recovered); the onset is the first probed step at which that layer was already dead.
    """
    acts = ev.activations
    if acts.height == 0 or "dead_frac" not in acts.columns:
        return []
    rows = acts.filter(pl.col("dead_frac").is_not_null() & pl.col("dead_frac").is_finite() & pl.col("step").is_not_null())
    if rows.height == 0:
        return []
    newest = rows["step"].max()
    dead = rows.filter((pl.col("step") == newest) & (pl.col("dead_frac") > cfg.max_dead_frac)).sort("dead_frac", descending=True)
    if dead.height == 0:
        return []
    rid = ev.run_id
    n_relu = rows.filter(pl.col("step") == newest).height
    worst = dead.row(0, named=True)
    onset, evidence = layer_share_evidence(rows, dead, "dead_frac", cfg.max_dead_frac, newest, rid, "dead", "of units")
    severity = "high" if worst["dead_frac"] >= cfg.high_dead_frac else "medium"
    return [
        Finding(
            kind="dead_units",
            severity=severity,  # type: ignore[arg-type]
            confidence=0.85 if severity == "high" else 0.75,
            summary=(
                f"{dead.height} of {n_relu} ReLU-like layer(s) have more than {fmt(100 * cfg.max_dead_frac)}% dead units at step {newest}; "
                f"worst `{worst['layer']}` with {fmt(100 * worst['dead_frac'])}% of its units active on under 1% of the probe batch"
            ),
            evidence=tuple(evidence),
            detector="dead_units",
            run_id=rid,
            finding_id=finding_id("dead_units", rid, worst["layer"]),
            onset_step=onset,
            end_step=int(newest),
            fix=(
                "Lower the learning rate (a large update pushes biases so negative the unit never fires again), use "
                "He/Kaiming initialisation, or switch to LeakyReLU/GELU, whose units keep a gradient when inactive; "
                "check for inputs that are not normalised."
            ),
            expected_impact=f"Under {fmt(100 * cfg.max_dead_frac)}% dead units per layer; the layer's capacity is used and the loss keeps falling.",
            verify_by="Rerun the activations probe on a checkpoint of the fixed run: dead_frac below the threshold for every ReLU-like layer.",
        )
    ]
