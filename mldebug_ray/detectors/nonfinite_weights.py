"""Non-finite weights: a checkpoint holds NaN or Inf weights."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding


@dataclass
class NonfiniteWeightsConfig:
    """Settings of the `nonfinite_weights` detector (keys `detectors.nonfinite_weights.*`)."""

    max_cited_layers: int = 3
    """Layers cited as evidence (the most affected first)."""

    def __post_init__(self) -> None:
        if self.max_cited_layers < 1:
            raise ConfigError(f"detectors.nonfinite_weights.max_cited_layers must be >= 1, got {self.max_cited_layers}")


@detector("nonfinite_weights")
def nonfinite_weights(ev: RunEvidence, cfg: NonfiniteWeightsConfig) -> list[Finding]:
    """A checkpoint holds NaN/Inf weights (SPEC §5 `nonfinite_weights`).

    Evidence: the `layers` table's `nonfinite_frac` per tensor and checkpoint. No
    threshold: one NaN in a weight spreads to every output that uses it on the next
    forward, so any non-finite element is `critical` (SageMaker's ExplodingTensor rule
    fires on any NaN/Inf too, FIELD-NOTES). Onset: the first scanned checkpoint holding
    one; whether the newest still does is said in the summary (a NaN checkpoint followed
    by a clean one means the run was restored from an earlier one).
    """
    layers = ev.layers
    if layers.height == 0:
        return []
    bad = layers.filter(pl.col("nonfinite_frac").is_not_null() & (pl.col("nonfinite_frac") > 0))
    if bad.height == 0:
        return []
    rid = ev.run_id
    steps = bad["step"].drop_nulls()
    onset = int(steps.min()) if steps.len() else None
    first = bad.filter(pl.col("step").eq_missing(onset)).sort(["nonfinite_frac", "n_params"], descending=True)
    newest_all = layers["step"].drop_nulls()
    newest = int(newest_all.max()) if newest_all.len() else None
    still = newest is not None and bad.filter(pl.col("step") == newest).height > 0
    n_params_bad = int((first["nonfinite_frac"] * first["n_params"]).sum())
    evidence = []
    for r in first.head(cfg.max_cited_layers).iter_rows(named=True):
        where = {"run_id": rid, "layer": r["layer"]}
        if r["step"] is not None:
            where["step"] = int(r["step"])
        evidence.append(EvidenceRef("layers", where, r["nonfinite_frac"], f"{r['layer']}: {fmt(100 * r['nonfinite_frac'])}% NaN/Inf at step {r['step']}"))
    at = f"step {onset}" if onset is not None else "a checkpoint without a step"
    return [
        Finding(
            kind="nonfinite_weights",
            severity="critical",
            confidence=0.95,
            summary=(
                f"{first.height} tensor(s) of the checkpoint at {at} hold NaN/Inf weights (~{n_params_bad:,} elements), "
                f"worst `{first['layer'][0]}` ({fmt(100 * first['nonfinite_frac'][0])}%)"
                + ("; the newest checkpoint still does" if still and newest != onset else "")
                + ("; the newest checkpoint is clean" if not still and newest is not None and newest != onset else "")
            ),
            evidence=tuple(evidence),
            detector="nonfinite_weights",
            run_id=rid,
            finding_id=finding_id("nonfinite_weights", rid, onset),
            onset_step=onset,
            end_step=newest,
            fix=(
                "Resume from the last checkpoint with finite weights; find the first non-finite loss or gradient before it "
                "(lower the learning rate, clip gradients, keep overflow-prone ops in fp32) and stop saving checkpoints "
                "whose weights are not finite."
            ),
            expected_impact="Every checkpoint holds finite weights; the loss stays finite after the resume.",
            verify_by="Rescan the new checkpoints: nonfinite_frac 0 for every tensor of the `layers` table.",
        )
    ]
