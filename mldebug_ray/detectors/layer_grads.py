"""Per-layer gradient norms for the gradient detectors: from `grad_norm/<layer>` metrics or the `gradients` table."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import RunEvidence
from mldebug_ray.detectors.series import metric_role
from mldebug_ray.findings import EvidenceRef

_LAYER_KEY = re.compile(r"^(?:(?:train|training)[/_.])?(?:grad_norm|grad norm|gradient_norm)/(.+)$", re.IGNORECASE)
_NUMBER = re.compile(r"\d+")
# Forward position of parameters that carry no layer index: embeddings and stems come
# first, heads last (`head.weight` sorts after `mlp.9.weight` although `h` < `m`).
_FIRST = re.compile(
    r"(^|[._/])(embed\w*|embeddings?|wte|wpe|tok_embeddings|word_embeddings|patch_embed\w*|stem|input\w*|conv_in)([._/]|$)"
)
_LAST = re.compile(r"(^|[._/])(lm_head|head|classifier|fc_out|output_layer|logits|final_layer|conv_out)([._/]|$)|^fc[._]")
# Normalisation scales and biases have gradients on another scale than the weight matrices;
# first/last-layer comparisons use weights when there are any.
_NORM_PART = re.compile(r"^(.*norm.*|ln(_?\w)?\d*|bn\d*|gn\d*|scale|gamma|beta)$")


@dataclass(frozen=True)
class LayerGrads:
    """One source of per-layer gradient norms of a run, as rows [step, layer, value, key]."""

    table: str  # "metrics" or "gradients"
    frame: pl.DataFrame

    def ref(self, run_id: str, step: int, layer: str, value: float | None, text: str) -> EvidenceRef:
        """A reference selecting the row of `layer` at `step` in this source's table."""
        if self.table == "metrics":
            key = self.frame.filter(pl.col("layer") == layer)["key"][0]
            return EvidenceRef("metrics", {"run_id": run_id, "step": int(step), "key": key}, value, text)
        return EvidenceRef("gradients", {"run_id": run_id, "step": int(step), "layer": layer}, value, text)


def probe_table(ev: RunEvidence, name: str) -> pl.DataFrame | None:
    """A probe table (gradients, outputs, memory, precision) if this evidence carries one with rows."""
    frame = getattr(ev, name, None)
    if isinstance(frame, pl.DataFrame) and frame.height:
        return frame
    return None


def layer_of_key(key: str) -> str | None:
    """`mlp.0.weight` for `grad_norm/mlp.0.weight` (also `train/grad_norm/...`); None for other keys."""
    m = _LAYER_KEY.match(key.strip())
    return m.group(1).strip() if m and m.group(1).strip() else None


def sources(ev: RunEvidence) -> list[LayerGrads]:
    """Per-layer gradient norms of the run: logged metrics first, then the gradient probe's table."""
    out = []
    m = ev.metrics
    if m.height:
        keys = [k for k in m["key"].unique().to_list() if metric_role(k) == "layer_grad_norm" and layer_of_key(k)]
        if keys:
            layer_names = pl.DataFrame({"key": keys, "layer": [layer_of_key(k) for k in keys]})
            frame = (
                m.filter(pl.col("key").is_in(keys) & pl.col("value").is_not_null())
                .select(pl.col("step").cast(pl.Int64), pl.col("key"), pl.col("value").cast(pl.Float64))
                .join(layer_names, on="key")
                .unique(subset=["step", "layer"], keep="last", maintain_order=True)
                .sort("layer", "step")
            )
            if frame.height:
                out.append(LayerGrads("metrics", frame))
    grads = probe_table(ev, "gradients")
    if grads is not None:
        frame = (
            grads.filter(pl.col("grad_norm_l2").is_not_null() & pl.col("layer").is_not_null())
            .select(
                pl.col("step").cast(pl.Int64),
                pl.col("layer").alias("key"),
                pl.col("grad_norm_l2").cast(pl.Float64).alias("value"),
                pl.col("layer"),
            )
            .unique(subset=["step", "layer"], keep="last", maintain_order=True)
            .sort("layer", "step")
        )
        if frame.height:
            out.append(LayerGrads("gradients", frame))
    return out


def layer_position(name: str) -> tuple:
    """A sort key placing parameters in forward order: embeddings/stem, numbered layers, head."""
    n = name.lower()
    numbers = tuple(int(x) for x in _NUMBER.findall(n))
    if not numbers and _FIRST.search(n):
        group = 0
    elif not numbers and _LAST.search(n):
        group = 2
    else:
        group = 1
    return (group, numbers, n)


def is_weight(name: str) -> bool:
    """True for weight matrices/kernels; False for biases and normalisation parameters."""
    parts = [p for p in re.split(r"[./]", name.lower()) if p]
    if not parts or parts[-1] in ("bias", "b"):
        return False
    return not any(_NORM_PART.match(p) for p in parts)


def first_and_last(layers: list[str]) -> tuple[str, str] | None:
    """The first and the last layer in forward order (weights preferred); None with < 2 layers."""
    weights = [name for name in layers if is_weight(name)]
    pool = weights if len(weights) >= 2 else list(layers)
    if len(pool) < 2:
        return None
    ordered = sorted(pool, key=layer_position)
    return ordered[0], ordered[-1]


def drop_placeholders(frame: pl.DataFrame, max_zero_frac: float) -> pl.DataFrame:
    """Rows with a positive norm (NaN/Inf kept), from layers whose norms are not mostly exact zeros.

    Exact zeros are not a measurement: Megatron/DeepSpeed print `grad norm: 0.000` when the
    norm was not computed (FIELD-NOTES), a frozen parameter logs 0, and a 3-decimal log
    rounds small norms to 0.000.
    """
    zero_share = frame.group_by("layer").agg((pl.col("value") == 0.0).mean().alias("zero_frac"))
    keep = zero_share.filter(pl.col("zero_frac") <= max_zero_frac)["layer"]
    return frame.filter(pl.col("layer").is_in(keep.implode()) & ((pl.col("value") > 0.0) | ~pl.col("value").is_finite()))


def sustained_onset(mask, min_frac: float, min_points: int) -> int | None:
    """First index i with mask[i] such that mask holds on >= min_frac of points i..end and
    that stretch has >= min_points points; None when there is none (a late blip is no trend)."""
    mask = np.asarray(mask, dtype=bool)
    n = mask.size
    if n == 0:
        return None
    suffix_true = np.cumsum(mask[::-1])[::-1]
    suffix_len = np.arange(n, 0, -1)
    ok = mask & (suffix_true >= min_frac * suffix_len) & (suffix_len >= min_points)
    hits = np.flatnonzero(ok)
    return int(hits[0]) if hits.size else None


def pair_first_last(frame: pl.DataFrame, first: str, last: str) -> pl.DataFrame:
    """[step, first, last] at the steps where both layers have a finite positive norm."""
    a = frame.filter(pl.col("layer") == first).select("step", pl.col("value").alias("first"))
    b = frame.filter(pl.col("layer") == last).select("step", pl.col("value").alias("last"))
    both = a.join(b, on="step", how="inner").sort("step")
    return both.filter(pl.col("first").is_finite() & pl.col("last").is_finite() & (pl.col("first") > 0) & (pl.col("last") > 0))
