"""Architecture imbalance: one module type holds a disproportionate share of the parameters."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding

FIXES = {
    "embedding": (
        "Shrink the vocabulary (or the embedding width via a factorised/low-rank embedding), tie the input "
        "embedding and the output head, or give the model more depth/width so the body is not dwarfed."
    ),
    "head": "Tie the output head to the input embedding, or reduce the number of output classes / vocabulary.",
    "norm": "Check the normalisation layers: affine parameters should be a tiny share; a norm over a huge dimension or a mis-typed layer is likely.",
    "attention": "Check the attention projections (number of heads x head dim vs model width); the MLP usually holds about 2/3 of a block.",
    "mlp": "Check the MLP expansion factor; a balanced block has about 2/3 of its parameters in the MLP.",
    "other": "Check which layers were classified as 'other'; a single huge layer outside the usual blocks is suspicious.",
}


@dataclass
class ArchitectureImbalanceConfig:
    """Per-module-type parameter-share limits (keys `detectors.architecture_imbalance.*`).
    A limit of 1.0 turns the check off for that type."""

    embedding_max_share: float = 0.5
    """Input embeddings: GPT-2 124M holds ~31% there (38.6M of 124M, tied head)."""
    head_max_share: float = 0.5
    """Output head (untied); like the embedding."""
    norm_max_share: float = 0.1
    """Normalisation affine parameters: well under 1% in any standard network."""
    attention_max_share: float = 0.6
    """Attention: ~1/3 of a standard transformer block."""
    mlp_max_share: float = 1.0
    """MLP: off by default (MLP-only nets and mixture-of-experts models are legitimately >90% MLP)."""
    other_max_share: float = 1.0
    """Unclassified layers: off by default (CNNs, RNNs land here)."""
    min_params: int = 1000
    """Models smaller than this are not judged (toy fixtures)."""

    def __post_init__(self) -> None:
        for t in FIXES:
            value = getattr(self, f"{t}_max_share")
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"detectors.architecture_imbalance.{t}_max_share must be in (0, 1], got {value}")
        if self.min_params < 0:
            raise ConfigError(f"detectors.architecture_imbalance.min_params must be >= 0, got {self.min_params}")


@detector("architecture_imbalance")
def architecture_imbalance(ev: RunEvidence, cfg: ArchitectureImbalanceConfig) -> list[Finding]:
    """One module type holds a disproportionate share of parameters (SPEC §5 `architecture_imbalance`).

    Evidence: the `layers` table at its newest step (n_params by module_type). Each type
    with a limit is checked against its own share of all parameters.

    Thresholds: in a balanced transformer the MLP holds ~2/3 and attention ~1/3 of the
    non-embedding parameters; embeddings are a minority except for tiny models with a
    large vocabulary (GPT-2 124M: ~31%). Above 50% the model spends most of its capacity
    on a lookup table (the demo's broken architecture has ~79% there). Norms are far
    under 1%, so 10% means a mis-built layer. MLP and unclassified types have no limit:
    MLP-only nets, MoE models and CNNs legitimately concentrate parameters there.
    """
    layers = ev.layers
    if layers.height == 0:
        return []
    step_col = layers["step"]
    step = step_col.max() if step_col.null_count() < layers.height else None
    current = layers.filter(pl.col("step") == step) if step is not None else layers.filter(pl.col("step").is_null())
    shares = (
        current.filter(pl.col("module_type").is_not_null())
        .group_by("module_type")
        .agg(pl.col("n_params").fill_null(0).sum().alias("n"))
    )
    total = int(current["n_params"].fill_null(0).sum())
    if total < max(1, cfg.min_params):
        return []
    rid = ev.run_id
    out = []
    for row in shares.sort("n", descending=True).iter_rows(named=True):
        mtype = row["module_type"]
        limit = getattr(cfg, f"{str(mtype).lower()}_max_share", None)
        if limit is None or limit >= 1.0:
            continue
        share = row["n"] / total
        if share <= limit:
            continue
        where = {"run_id": rid, "module_type": mtype}
        if step is not None:
            where["step"] = int(step)
        biggest = current.filter(pl.col("module_type") == mtype).sort("n_params", descending=True, nulls_last=True).head(3)
        evidence = [EvidenceRef("layers", where, share, f"{mtype} layers hold {fmt(100 * share)}% of {total:,} parameters (limit {fmt(100 * limit)}%)")]
        for layer in biggest.iter_rows(named=True):
            lw = {"run_id": rid, "layer": layer["layer"]}
            if step is not None:
                lw["step"] = int(step)
            evidence.append(EvidenceRef("layers", lw, float(layer["n_params"] or 0), f"{layer['layer']}: {int(layer['n_params'] or 0):,} parameters"))
        out.append(
            Finding(
                kind="architecture_imbalance",
                severity="medium",
                confidence=min(0.95, 0.7 + (share - limit)),
                summary=f"{mtype} layers hold {fmt(100 * share)}% of the model's {total:,} parameters (limit {fmt(100 * limit)}%)",
                evidence=tuple(evidence),
                detector="architecture_imbalance",
                run_id=rid,
                finding_id=finding_id("architecture_imbalance", rid, mtype),
                onset_step=int(step) if step is not None else None,
                fix=FIXES[str(mtype).lower()],
                expected_impact=f"More of the parameter budget in the layers that compute; {mtype} share under {fmt(100 * limit)}% at a similar or better loss per parameter.",
                verify_by=f"Recount parameters by module type after the change ({mtype} share < {fmt(100 * limit)}%) and compare the validation loss at equal training compute.",
            )
        )
    return out
