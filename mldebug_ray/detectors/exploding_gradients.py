"""Exploding gradients: per-layer gradient norms grow without bound, or the first layer's dwarfs the last's."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.layer_grads import (
    LayerGrads,
    drop_placeholders,
    first_and_last,
    is_weight,
    pair_first_last,
    sources,
    sustained_onset,
)
from mldebug_ray.detectors.series import finding_id, fmt
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import Finding


@dataclass
class ExplodingGradientsConfig:
    """Thresholds of the `exploding_gradients` detector (keys `detectors.exploding_gradients.*`)."""

    growth_factor: float = 100.0
    """A layer's smoothed grad norm that reaches this many times its early level, and is
    still near its peak at the end, grows without bound."""
    growth_factor_nonfinite: float = 10.0
    """Lower growth that is enough when the layer's norms then turn NaN/Inf."""
    ratio_max: float = 70.0
    """First-layer / last-layer grad-norm ratio above this is extreme (AutoTrainer)."""
    sustain_frac: float = 0.5
    """The ratio condition must hold on at least this share of the points from its onset on."""
    early_frac: float = 0.1
    """The early level is the median of this share of a layer's first points (at least 3)."""
    smooth_frac: float = 0.05
    """Rolling-median window, as a share of a layer's points (at least 3), that smooths the growth."""
    onset_ratio: float = 2.0
    """Growth starts where the smoothed norm rises above onset_ratio x its early level for good."""
    min_points: int = 5
    """Fewest points per layer (or paired first/last points) needed to judge."""
    max_zero_frac: float = 0.5
    """Layers whose norms are mostly exact zeros were not measured and are skipped."""

    def __post_init__(self) -> None:
        for name in ("growth_factor", "growth_factor_nonfinite", "ratio_max", "onset_ratio"):
            if not getattr(self, name) > 1.0:
                raise ConfigError(f"detectors.exploding_gradients.{name} must be > 1, got {getattr(self, name)}")
        if self.growth_factor_nonfinite > self.growth_factor:
            raise ConfigError(
                "detectors.exploding_gradients.growth_factor_nonfinite must be <= growth_factor="
                f"{self.growth_factor}, got {self.growth_factor_nonfinite}"
            )
        if self.onset_ratio > self.growth_factor_nonfinite:
            raise ConfigError(
                f"detectors.exploding_gradients.onset_ratio must be <= growth_factor_nonfinite={self.growth_factor_nonfinite}, got {self.onset_ratio}"
            )
        for name in ("sustain_frac", "early_frac", "smooth_frac", "max_zero_frac"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"detectors.exploding_gradients.{name} must be in (0, 1], got {value}")
        if self.min_points < 3:
            raise ConfigError(f"detectors.exploding_gradients.min_points must be >= 3, got {self.min_points}")


FIX = (
    "Clip the global grad norm (e.g. max_norm=1.0) and lower the learning rate; check the loss is bounded "
    "(e.g. log_softmax before nll_loss) and the initialisation scale (Kaiming/Xavier gain, residual scaling), "
    "and add normalisation layers to deep stacks."
)


@detector("exploding_gradients")
def exploding_gradients(ev: RunEvidence, cfg: ExplodingGradientsConfig) -> list[Finding]:
    """Per-layer gradient norms grow without bound, or the layer-to-layer ratio is extreme (SPEC §5).

    Evidence: per-layer gradient norms, logged as `grad_norm/<layer>` metrics (role
    `layer_grad_norm`) or measured by the gradient probe (`gradients` table). The global
    grad norm is the `grad_norm_spike`/`divergence` detectors' evidence, not this one's.

    Growth: a layer's rolling-median norm rises to >= `growth_factor` (100x) its early level
    (median of its first 10% of points) and is still within 2x of that peak at the end, or
    rises >= `growth_factor_nonfinite` (10x) and then turns NaN/Inf. Two orders of magnitude
    is what "without bound" means here: healthy runs move a layer's norm by a few times
    (a warm-up, the rise late in LLM training), and a one-off jump is a spike (median-smoothed
    away). The onset is where the smoothed norm last rose above 2x its early level.
    Ratio: AutoTrainer (ICSE 2021, FIELD-NOTES) calls gradients exploding when the first
    layer's norm exceeds the last layer's by 70x; here it must hold on at least half of the
    points from its onset to the end. Exact zeros are dropped (`grad norm: 0.000` placeholders).
    Severity: `critical` when the norms end NaN/Inf, else `high`.
    """
    out: list[Finding] = []
    for source in sources(ev):
        frame = drop_placeholders(source.frame, cfg.max_zero_frac)
        if frame.height == 0:
            continue
        growth = _growth(ev.run_id, source, frame, cfg)
        if growth is not None:
            out.append(growth)
        ratio = _ratio(ev.run_id, source, frame, cfg)
        if ratio is not None:
            out.append(ratio)
        if out:
            break  # logged metrics and probe tables tell the same story; one source is enough
    return out


def _growth(run_id: str, source: LayerGrads, frame: pl.DataFrame, cfg: ExplodingGradientsConfig) -> Finding | None:
    finite = frame.filter(pl.col("value").is_finite())
    if finite.height == 0:
        return None
    n_max = int(finite.group_by("layer").len()["len"].max())
    window = max(3, int(round(cfg.smooth_frac * n_max)))
    per_point = finite.with_columns(
        pl.int_range(pl.len()).over("layer").alias("i"),
        pl.len().over("layer").alias("n"),
        pl.col("value").rolling_median(window, min_samples=1).over("layer").alias("smooth"),
    )
    k_early = pl.max_horizontal(pl.lit(3), (pl.col("n") * cfg.early_frac).ceil().cast(pl.Int64))
    stats = (
        per_point.group_by("layer")
        .agg(
            pl.len().alias("n"),
            pl.col("value").filter(pl.col("i") < k_early).median().alias("early"),
            pl.col("smooth").max().alias("peak"),
            pl.col("smooth").last().alias("end"),
            pl.col("step").last().alias("last_finite_step"),
        )
        .join(
            frame.group_by("layer").agg(
                (~pl.col("value").last().is_finite()).alias("ends_nonfinite"),
            ),
            on="layer",
        )
        .filter((pl.col("n") >= cfg.min_points) & (pl.col("early") > 0))
        .with_columns((pl.col("peak") / pl.col("early")).alias("growth"))
    )
    grown = stats.filter(
        ((pl.col("growth") >= cfg.growth_factor) & (pl.col("end") >= 0.5 * pl.col("peak")))
        | ((pl.col("growth") >= cfg.growth_factor_nonfinite) & pl.col("ends_nonfinite"))
    )
    if grown.height == 0:
        return None
    # Headline a weight matrix when one grew: biases and norm scales follow their layer.
    grown = grown.with_columns(
        pl.col("layer").map_elements(is_weight, return_dtype=pl.Boolean).alias("weight")
    ).sort(["weight", "growth"], descending=[True, True])
    if grown.height == 0:
        return None
    top = grown.row(0, named=True)
    layer = top["layer"]
    rows = per_point.filter(pl.col("layer") == layer).sort("step")
    steps = rows["step"].to_numpy()
    values = rows["value"].to_numpy()
    smooth = rows["smooth"].to_numpy()
    early = float(top["early"])
    below = np.flatnonzero(smooth <= cfg.onset_ratio * early)
    onset_i = int(below[-1]) + 1 if below.size else 0
    onset_i = min(onset_i, steps.size - 1)
    i_early = int(np.argmin(np.abs(values[: max(3, math.ceil(cfg.early_frac * values.size))] - early)))
    i_peak = int(np.argmax(values))
    evidence = [
        source.ref(run_id, steps[i_early], layer, values[i_early], f"`{layer}` grad norm {fmt(values[i_early])} early on (early median {fmt(early)})"),
        source.ref(run_id, steps[onset_i], layer, values[onset_i], f"rising for good from step {int(steps[onset_i])}: {fmt(values[onset_i])}"),
        source.ref(run_id, steps[i_peak], layer, values[i_peak], f"largest finite norm {fmt(values[i_peak])} at step {int(steps[i_peak])}, {fmt(values[i_peak] / early)}x the early level"),
    ]
    nonfinite_step = None
    if top["ends_nonfinite"]:
        bad = frame.filter((pl.col("layer") == layer) & ~pl.col("value").is_finite()).sort("step").row(0, named=True)
        nonfinite_step = int(bad["step"])
        evidence.append(source.ref(run_id, bad["step"], layer, bad["value"], f"`{layer}` grad norm {fmt(bad['value'])} at step {nonfinite_step}"))
    n_grown = grown.height
    others = [name for name in grown["layer"].to_list()[1:4]]
    summary = (
        f"gradients explode: `{layer}` grad norm grows without bound from step {int(steps[onset_i])}: early median "
        f"{fmt(early)}, rolling median up to {fmt(top['growth'])}x that, largest finite {fmt(values[i_peak])} at step {int(steps[i_peak])}"
        + (f", then NaN/Inf at step {nonfinite_step}" if nonfinite_step is not None else "")
        + (f"; {n_grown} layer(s) grew >= {fmt(cfg.growth_factor_nonfinite)}x" if n_grown > 1 else "")
        + (f" (also {', '.join(others)})" if others else "")
    )
    return Finding(
        kind="exploding_gradients",
        severity="critical" if nonfinite_step is not None else "high",
        confidence=0.9,
        summary=summary,
        evidence=tuple(evidence),
        detector="exploding_gradients",
        run_id=run_id,
        finding_id=finding_id("exploding_gradients", run_id, "growth", source.table, layer),
        onset_step=int(steps[onset_i]),
        end_step=nonfinite_step if nonfinite_step is not None else int(steps[-1]),
        fix=FIX,
        expected_impact=f"Per-layer gradient norms stay within a few times their early level (about {fmt(early)} for `{layer}`); no NaN/Inf.",
        verify_by=(
            f"Rerun with the fix and check `{layer}`'s grad norm at step {int(steps[i_peak])} stays below "
            f"{fmt(cfg.onset_ratio * early * 5)} and every layer's norm stays finite."
        ),
    )


def _ratio(run_id: str, source: LayerGrads, frame: pl.DataFrame, cfg: ExplodingGradientsConfig) -> Finding | None:
    ends = first_and_last(frame["layer"].unique().to_list())
    if ends is None:
        return None
    first, last = ends
    paired = pair_first_last(frame, first, last)
    if paired.height < cfg.min_points:
        return None
    steps = paired["step"].to_numpy()
    f = paired["first"].to_numpy()
    l = paired["last"].to_numpy()
    ratio = f / l
    onset = sustained_onset(ratio > cfg.ratio_max, cfg.sustain_frac, max(cfg.min_points, steps.size // 4))
    if onset is None:
        return None
    i_max = onset + int(np.argmax(ratio[onset:]))
    share = float(np.mean(ratio[onset:] > cfg.ratio_max))
    evidence = [
        source.ref(run_id, steps[onset], first, f[onset], f"first layer `{first}` grad norm {fmt(f[onset])} at step {int(steps[onset])}"),
        source.ref(run_id, steps[onset], last, l[onset], f"last layer `{last}` grad norm {fmt(l[onset])}: ratio {fmt(ratio[onset])}"),
        source.ref(run_id, steps[i_max], first, f[i_max], f"largest first/last ratio {fmt(ratio[i_max])} at step {int(steps[i_max])}"),
    ]
    return Finding(
        kind="exploding_gradients",
        severity="high",
        confidence=0.75,
        summary=(
            f"first layer `{first}` receives {fmt(np.median(ratio[onset:]))}x (median) the gradient norm of the last layer "
            f"`{last}` from step {int(steps[onset])} on ({fmt(100 * share)}% of points above {fmt(cfg.ratio_max)}x)"
        ),
        evidence=tuple(evidence),
        detector="exploding_gradients",
        run_id=run_id,
        finding_id=finding_id("exploding_gradients", run_id, "ratio", source.table, first, last),
        onset_step=int(steps[onset]),
        end_step=int(steps[-1]),
        fix=FIX,
        expected_impact=f"First/last-layer grad-norm ratio within {fmt(cfg.ratio_max)}x; early layers no longer dominate the update.",
        verify_by=f"Log `{first}` and `{last}` grad norms in a rerun and check their ratio stays under {fmt(cfg.ratio_max)} after step {int(steps[onset])}.",
    )
