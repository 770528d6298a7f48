"""Vanishing gradients: the first layers receive (near) zero gradient compared with the last."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.layer_grads import drop_placeholders, first_and_last, pair_first_last, sources, sustained_onset
from mldebug_ray.detectors.series import finding_id, fmt
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding


@dataclass
class VanishingGradientsConfig:
    """Thresholds of the `vanishing_gradients` detector (keys `detectors.vanishing_gradients.*`)."""

    max_ratio: float = 1e-3
    """First-layer / last-layer grad-norm ratio below this (AutoTrainer) ..."""
    max_first_norm: float = 1e-4
    """... together with a first-layer grad norm below this (AutoTrainer)."""
    max_abs_grad: float = 1e-7
    """Probe evidence: a layer whose largest |gradient| is below this has a mean |gradient|
    below it too, SageMaker Debugger's VanishingGradient threshold."""
    sustain_frac: float = 0.5
    """The condition must hold on at least this share of the points from its onset on."""
    min_points: int = 3
    """Fewest paired first/last points needed to judge."""
    max_zero_frac: float = 0.5
    """Layers whose norms are mostly exact zeros were not measured and are skipped."""

    def __post_init__(self) -> None:
        for name in ("max_ratio", "max_first_norm", "max_abs_grad"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"detectors.vanishing_gradients.{name} must be > 0, got {getattr(self, name)}")
        if self.max_ratio >= 1.0:
            raise ConfigError(f"detectors.vanishing_gradients.max_ratio must be < 1, got {self.max_ratio}")
        for name in ("sustain_frac", "max_zero_frac"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"detectors.vanishing_gradients.{name} must be in (0, 1], got {getattr(self, name)}")
        if self.min_points < 1:
            raise ConfigError(f"detectors.vanishing_gradients.min_points must be >= 1, got {self.min_points}")


FIX = (
    "Use a non-saturating activation (ReLU/GELU instead of sigmoid/tanh) with He/Kaiming initialisation, add "
    "normalisation (LayerNorm/BatchNorm) or residual connections, or make the stack shallower."
)


@detector("vanishing_gradients")
def vanishing_gradients(ev: RunEvidence, cfg: VanishingGradientsConfig) -> list[Finding]:
    """Early layers receive (near) zero gradient (SPEC §5 `vanishing_gradients`).

    Evidence: per-layer gradient norms (`grad_norm/<layer>` metrics, or the `gradients`
    probe table with its `grad_max_abs`). Fires when the first layer's norm is below
    1e-3 x the last layer's AND below 1e-4 in absolute terms (AutoTrainer, ICSE 2021,
    FIELD-NOTES: both conditions, so a model whose gradients are all small but balanced is
    not called vanishing), on at least half of the points from the onset to the end; or,
    from the probe, when the first layer's largest |gradient| is below 1e-7 (SageMaker
    Debugger's VanishingGradient rule on mean |grad|: max below it implies mean below it).

    Layers are put in forward order by their names (embeddings/stem first, numbered layers by
    index, head last; weights preferred over biases and norm parameters). Exact zeros are
    never evidence: Megatron/DeepSpeed print `grad norm: 0.000` when the norm was not computed
    (FIELD-NOTES), frozen parameters log 0, and rounding prints small norms as 0.000; layers
    that are mostly zeros are skipped. The global `grad norm` is never used here.
    """
    out: list[Finding] = []
    for source in sources(ev):
        frame = drop_placeholders(source.frame, cfg.max_zero_frac)
        ends = first_and_last(frame["layer"].unique().to_list()) if frame.height else None
        if ends is None:
            continue
        first, last = ends
        paired = pair_first_last(frame, first, last)
        if paired.height < cfg.min_points:
            continue
        steps = paired["step"].to_numpy()
        f = paired["first"].to_numpy()
        l = paired["last"].to_numpy()
        ratio = f / l
        mask = (ratio < cfg.max_ratio) & (f < cfg.max_first_norm)
        onset = sustained_onset(mask, cfg.sustain_frac, max(cfg.min_points, steps.size // 4))
        if onset is None:
            continue
        rid = ev.run_id
        j = steps.size - 1
        share = float(np.mean(mask[onset:]))
        evidence = [
            source.ref(rid, steps[onset], first, f[onset], f"first layer `{first}` grad norm {fmt(f[onset])} at step {int(steps[onset])}"),
            source.ref(rid, steps[onset], last, l[onset], f"last layer `{last}` grad norm {fmt(l[onset])}: ratio {fmt(ratio[onset])}"),
        ]
        if j != onset:
            evidence += [
                source.ref(rid, steps[j], first, f[j], f"still {fmt(f[j])} at step {int(steps[j])}"),
                source.ref(rid, steps[j], last, l[j], f"last layer {fmt(l[j])} at step {int(steps[j])}: ratio {fmt(ratio[j])}"),
            ]
        out.append(
            Finding(
                kind="vanishing_gradients",
                severity="high",
                confidence=0.85 if share >= 0.9 else 0.75,
                summary=(
                    f"gradients vanish in the early layers: first layer `{first}` gets {fmt(np.median(f[onset:]))} "
                    f"(median), {fmt(np.median(ratio[onset:]))}x the last layer `{last}`, from step {int(steps[onset])} "
                    f"on ({fmt(100 * share)}% of points under both AutoTrainer thresholds)"
                ),
                evidence=tuple(evidence),
                detector="vanishing_gradients",
                run_id=rid,
                finding_id=finding_id("vanishing_gradients", rid, source.table, first, last),
                onset_step=int(steps[onset]),
                end_step=int(steps[j]),
                fix=FIX,
                expected_impact=(
                    f"The first layer's gradient norm within {fmt(1 / cfg.max_ratio)}x of the last layer's; "
                    "the loss leaves its plateau."
                ),
                verify_by=(
                    f"Rerun with the fix and log `{first}` and `{last}` grad norms: their ratio stays above "
                    f"{fmt(cfg.max_ratio)} and the training loss falls within the first epoch."
                ),
            )
        )
        break
    if not out:
        out.extend(_probe_max_abs(ev, cfg))
    return out


def _probe_max_abs(ev: RunEvidence, cfg: VanishingGradientsConfig) -> list[Finding]:
    """SageMaker's rule on the gradient probe: the first layer's largest |gradient| < 1e-7."""
    grads = getattr(ev, "gradients", None)
    if not isinstance(grads, pl.DataFrame) or grads.height == 0 or "grad_max_abs" not in grads.columns:
        return []
    rows = grads.filter(pl.col("grad_max_abs").is_finite() & (pl.col("grad_max_abs") > 0))
    ends = first_and_last(rows["layer"].unique().to_list()) if rows.height else None
    if ends is None:
        return []
    first = ends[0]
    layer_rows = rows.filter(pl.col("layer") == first).sort("step")
    tiny = layer_rows.filter(pl.col("grad_max_abs") < cfg.max_abs_grad)
    if tiny.height == 0 or tiny.height < cfg.sustain_frac * layer_rows.height:
        return []
    row = tiny.row(0, named=True)
    return [
        Finding(
            kind="vanishing_gradients",
            severity="high",
            confidence=0.8,
            summary=(
                f"gradients vanish in the first layer `{first}`: largest |gradient| {fmt(row['grad_max_abs'])} at step "
                f"{row['step']} (< {fmt(cfg.max_abs_grad)}) on {tiny.height} of {layer_rows.height} probes"
            ),
            evidence=(EvidenceRef("gradients", {"run_id": ev.run_id, "step": int(row["step"]), "layer": first}, row["grad_max_abs"], f"grad_max_abs {fmt(row['grad_max_abs'])}"),),
            detector="vanishing_gradients",
            run_id=ev.run_id,
            finding_id=finding_id("vanishing_gradients", ev.run_id, "probe", first),
            onset_step=int(row["step"]),
            fix=FIX,
            expected_impact=f"The first layer's gradients grow above {fmt(cfg.max_abs_grad)}; the early layers train.",
            verify_by=f"Rerun the gradient probe on the fixed model: `{first}` grad_max_abs above {fmt(cfg.max_abs_grad)}.",
        )
    ]
