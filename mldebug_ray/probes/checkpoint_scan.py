"""Per-tensor weight statistics of one checkpoint (the `layers` table), read one tensor at a time.

`scan_checkpoint` opens safetensors files with `safe_open(framework="pt")` and torch
files with `torch.load(weights_only=True, mmap=True)` (via the checkpoints reader, so
the same refusals apply), and computes, per tensor, in float64:

- n_params: element count; dtype: the stored dtype (`float32`, `bfloat16`, ...);
- nonfinite_frac: share of NaN/Inf elements;
- norm_l2, mean, std (population, ddof=0), max_abs: over the FINITE elements only, so
  one Inf does not hide the rest of the tensor (NaN when no element is finite);
- zero_frac: share of elements exactly 0 (of all elements).

Large tensors are processed in chunks of `CHUNK_ELEMENTS` and the chunk moments merged
with Chan et al.'s pairwise update, so memory stays bounded and std does not suffer
the cancellation of sum-of-squares formulas. `module_type` classifies a tensor by its
name; `module_shares` sums parameters per module type at the newest step.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import polars as pl

from mldebug_ray.errors import ReadError
from mldebug_ray.readers.checkpoints import (
    SAFETENSORS_INDEX,
    TORCH_INDEX,
    load_torch,
    named_tensors,
    safetensors_header,
    shard_files,
)

CHUNK_ELEMENTS = 1 << 22

LAYER_COLUMNS = {
    "layer": pl.String,
    "module_type": pl.String,
    "n_params": pl.Int64,
    "dtype": pl.String,
    "norm_l2": pl.Float64,
    "mean": pl.Float64,
    "std": pl.Float64,
    "max_abs": pl.Float64,
    "zero_frac": pl.Float64,
    "nonfinite_frac": pl.Float64,
}

MODULE_TYPES = ("embedding", "attention", "mlp", "norm", "head", "other")

# A name part boundary: start/end of the name or a separator ('.', '_', '/', '-') or digit.
_B = r"(?:^|[._/\-])"
_E = r"(?:$|[._/\-\d])"
# Checked in this order: norm first (`post_attention_layernorm` is a norm, not attention),
# head next (a ResNet's top-level `fc` is its classifier, GPT-NeoX's `embed_out` its LM head).
_MODULE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("norm", re.compile(rf"norm|{_B}ln(?:_?f|_?\d+)?{_E}|{_B}bn\d*{_E}")),
    (
        "head",
        re.compile(
            rf"{_B}(?:lm_)?head{_E}|classifier|^output\.(?:weight|bias)$|^fc\.(?:weight|bias)$"
            rf"|^score\.(?:weight|bias)$|^embed_out\."
        ),
    ),
    ("embedding", re.compile(rf"embed|{_B}wte{_E}|{_B}wpe{_E}")),
    ("attention", re.compile(rf"attn|attention|{_B}[qkvo]_proj{_E}|qkv|{_B}(?:query|key|value){_E}")),
    (
        "mlp",
        re.compile(
            rf"mlp|ffn|feed_forward|dense_h_to_4h|dense_4h_to_h|{_B}c_fc{_E}|{_B}fc\d*{_E}"
            rf"|{_B}(?:gate|up|down)_proj{_E}|{_B}intermediate{_E}|layer\.\d+\.output\.dense"
        ),
    ),
)


def module_type(name: str) -> str:
    """The module type a parameter name suggests.

    embedding (`embed`, `wte`, `wpe`, `tok_embeddings`, `word_embeddings`,
    `position_embeddings`), attention (`attn`, `attention`, `q_proj`/`k_proj`/`v_proj`/
    `o_proj`, `qkv`), mlp (`mlp`, `ffn`, `fc`, `feed_forward`, `dense_h_to_4h`,
    `dense_4h_to_h`, `c_fc`, `gate/up/down_proj`), norm (`norm`, `ln_`, `layernorm`,
    `bn`), head (`head`, `lm_head`, `classifier`, a top-level `output.weight`, `fc`,
    `score` or `embed_out`), else `other`. Norm is checked first, so
    `post_attention_layernorm` is a norm; head before embedding and mlp.
    """
    lowered = name.lower()
    for kind, pattern in _MODULE_RULES:
        if pattern.search(lowered):
            return kind
    return "other"


def tensor_stats(name: str, tensor: Any) -> dict[str, Any]:
    """One `layers` row (without run_id/step) for a torch tensor; see the module docstring."""
    import torch

    n = int(tensor.numel())
    row: dict[str, Any] = {
        "layer": name,
        "module_type": module_type(name),
        "n_params": n,
        "dtype": str(tensor.dtype).removeprefix("torch."),
    }
    nan = math.nan
    if n == 0:
        return row | {"norm_l2": nan, "mean": nan, "std": nan, "max_abs": nan, "zero_frac": nan, "nonfinite_frac": nan}
    data = tensor.detach()
    if data.is_complex():
        data = torch.view_as_real(data)
    flat = data.reshape(-1)
    count = 0  # finite elements seen
    mean = 0.0
    m2 = 0.0
    sum_sq = 0.0
    max_abs = -math.inf
    zeros = 0
    nonfinite = 0
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):
        x = flat[start : start + CHUNK_ELEMENTS].to(torch.float64)
        zeros += int((x == 0).sum())
        finite = torch.isfinite(x)
        n_finite = int(finite.sum())
        if n_finite < x.numel():
            nonfinite += x.numel() - n_finite
            x = x[finite]
        if not n_finite:
            continue
        chunk_mean = float(x.mean())
        chunk_m2 = float(((x - chunk_mean) ** 2).sum())
        sum_sq += float((x * x).sum())
        max_abs = max(max_abs, float(x.abs().max()))
        total = count + n_finite
        delta = chunk_mean - mean
        mean += delta * n_finite / total
        m2 += chunk_m2 + delta * delta * count * n_finite / total
        count = total
    flat_n = flat.numel()
    return row | {
        "norm_l2": math.sqrt(sum_sq) if count else nan,
        "mean": mean if count else nan,
        "std": math.sqrt(m2 / count) if count else nan,
        "max_abs": max_abs if count else nan,
        "zero_frac": zeros / flat_n,
        "nonfinite_frac": nonfinite / flat_n,
    }


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=LAYER_COLUMNS) if rows else pl.DataFrame(schema=LAYER_COLUMNS)


def _scan_safetensors(path: Path) -> list[dict[str, Any]]:
    from safetensors import safe_open

    try:
        safetensors_header(path)  # refuse a corrupt file before safe_open maps it
    except ValueError as exc:
        raise ReadError(f"{path.name}: {exc}") from None
    rows = []
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            rows.append(tensor_stats(key, handle.get_tensor(key)))
    return rows


def _scan_torch(path: Path) -> list[dict[str, Any]]:
    try:
        obj = load_torch(path)
    except ValueError as exc:
        raise ReadError(f"{path.name}: {exc}") from None
    return [tensor_stats(name, tensor) for name, tensor in named_tensors(obj)]


def scan_checkpoint(run_dir: Path, rel_path: str, fmt: str) -> pl.DataFrame:
    """`layers` rows (no run_id, no step) of the checkpoint at `run_dir/rel_path` in format `fmt`.

    `fmt` is the checkpoints table's format: 'safetensors' or 'torch' (a single file or
    a `*.index.json` of shards). 'dcp' is refused: reading its data would need its
    pickled `.metadata` unpickled. Raises ReadError naming the file when it cannot be read.
    """
    path = Path(run_dir) / rel_path
    if fmt not in ("safetensors", "torch"):
        raise ReadError(f"{rel_path}: format {fmt!r} is not scanned (only safetensors and torch)")
    if path.name.lower().endswith((SAFETENSORS_INDEX, TORCH_INDEX)):
        try:
            files = shard_files(path)
        except ValueError as exc:
            raise ReadError(f"{rel_path}: {exc}") from None
    else:
        files = [path]
    rows: list[dict[str, Any]] = []
    for file in files:
        if not file.is_file():
            raise ReadError(f"{file.name}: missing")
        rows.extend(_scan_safetensors(file) if fmt == "safetensors" else _scan_torch(file))
    return _frame(rows)


def module_shares(layers: pl.DataFrame) -> pl.DataFrame:
    """Parameters per module type at the newest step: (module_type, n_params, share_frac).

    `layers` is the `layers` table (or scan_checkpoint's output). Only the rows of the
    newest step are counted (rows with a null step only when no step is known); with a
    `run_id` column the shares are per run and the output keeps `run_id`.
    share_frac = n_params of the type / n_params of all types. Largest share first.
    """
    keys = ["run_id"] if "run_id" in layers.columns else []
    frame = layers
    if "step" in frame.columns:
        newest = pl.col("step").max().over(keys) if keys else pl.col("step").max()
        frame = frame.filter(pl.col("step").eq_missing(newest))
    by_type = frame.group_by(*keys, "module_type").agg(pl.col("n_params").sum().cast(pl.Int64))
    total = pl.col("n_params").sum().over(keys) if keys else pl.col("n_params").sum()
    return by_type.with_columns((pl.col("n_params") / total).cast(pl.Float64).alias("share_frac")).sort(
        [*keys, "n_params", "module_type"], descending=[*([False] * len(keys)), True, False]
    )
