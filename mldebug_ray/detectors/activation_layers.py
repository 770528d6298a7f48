"""Shared by the activation-share detectors (dead_units, saturated_activations): onset and evidence."""

from __future__ import annotations

import polars as pl

from mldebug_ray.detectors.series import fmt
from mldebug_ray.findings import EvidenceRef


def layer_share_evidence(
    rows: pl.DataFrame, flagged: pl.DataFrame, column: str, threshold: float, newest: int, run_id: str, state: str, noun: str
) -> tuple[int, list[EvidenceRef]]:
    """(onset, evidence) for layers whose `column` exceeds `threshold` at step `newest`.

    The onset is the first probed step at which any of the flagged layers was already
    over the threshold; the evidence cites the three worst layers at `newest` and, when
    the trouble started earlier, the first such row.
    """
    earlier = rows.filter(pl.col("layer").is_in(flagged["layer"].to_list()) & (pl.col(column) > threshold)).sort("step")
    onset = int(earlier["step"][0])
    evidence = [
        EvidenceRef("activations", {"run_id": run_id, "step": int(newest), "layer": r["layer"]}, r[column],
                    f"{r['layer']}: {fmt(100 * r[column])}% {noun} {state} at step {newest}")
        for r in flagged.head(3).iter_rows(named=True)
    ]
    if onset != newest:
        first = earlier.row(0, named=True)
        evidence.append(EvidenceRef("activations", {"run_id": run_id, "step": onset, "layer": first["layer"]}, first[column],
                                    f"{first['layer']} already {fmt(100 * first[column])}% {state} at step {onset}"))
    return onset, evidence
