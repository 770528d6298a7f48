"""Weights of checkpoints on the probe device: `layers` rows with fp16/bf16 cast shares and update ratios.

This is the fast path of the checkpoint scan. `checkpoint_scan.tensor_stats` stays the
plain reference (float64 on the CPU, one Python float per reduction); `weight_stats`
computes the same columns, plus the low-precision shares below, in one pass per chunk on
whatever device the probes run on, keeping every partial result on the device and
synchronising once per tensor. Tensors are read one at a time (safetensors `safe_open`,
torch files through `torch.load(weights_only=True, mmap=True)` of the checkpoints
reader, so the same refusals apply) and moved to the device chunk by chunk
(`CHUNK_ELEMENTS`), so neither host nor device ever holds more than one tensor's chunk
in float64.

Columns added to the `layers` table (all `_frac` of ALL the tensor's elements):

- fp16_overflow_frac: finite values that become +-Inf when cast to float16 (|x| >= 65520);
- fp16_underflow_frac: non-zero values that become 0 when cast to float16 (|x| <= 2^-25,
  flushed below half the smallest subnormal);
- bf16_overflow_frac / bf16_underflow_frac: the same for bfloat16 (range of float32,
  so these are non-zero only for float64 weights or subnormal float32 values).

The shares are measured by doing the cast (the device's own rounding), not by comparing
with thresholds, so they say exactly what autocast would do to these weights. Integer and
bool tensors have null shares.

- update_ratio: ||w_t - w_s|| / ||w_s|| between this checkpoint (step t) and the previous
  scanned one (step s = update_from_step), per tensor, in float64. Null for the oldest
  checkpoint, for tensors missing or reshaped in the previous one, for non-float tensors,
  when either side holds a NaN/Inf, and when ||w_s|| = 0 (a zero-initialised bias has no
  ratio). It spans t - s optimizer steps: SageMaker's WeightUpdateRatio is per step; see
  `detectors/update_ratio_anomaly.py` for how the thresholds carry over.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import polars as pl

from mldebug_ray.errors import ReadError
from mldebug_ray.probes.checkpoint_scan import CHUNK_ELEMENTS, LAYER_COLUMNS, module_type
from mldebug_ray.readers.checkpoints import (
    SAFETENSORS_INDEX,
    TORCH_INDEX,
    load_torch,
    named_tensors,
    safetensors_header,
    shard_files,
)

PRECISION_COLUMNS = {
    "fp16_overflow_frac": pl.Float64,
    "fp16_underflow_frac": pl.Float64,
    "bf16_overflow_frac": pl.Float64,
    "bf16_underflow_frac": pl.Float64,
}
UPDATE_COLUMNS = {"update_ratio": pl.Float64, "update_from_step": pl.Int64}
WEIGHT_COLUMNS = {**LAYER_COLUMNS, **PRECISION_COLUMNS, **UPDATE_COLUMNS}

# Positions in the per-chunk statistics vector.
_N, _N_FINITE, _MEAN, _M2, _SUM_SQ, _MAX_ABS, _ZEROS, _O16, _U16, _OBF, _UBF = range(11)

TensorSource = dict[str, Callable[[], Any]]


# ---------------------------------------------------------------- reading

@contextmanager
def checkpoint_tensors(run_dir: Path, rel_path: str, fmt: str) -> Iterator[TensorSource]:
    """name -> loader of each tensor of a checkpoint, read lazily, one tensor per call.

    `fmt` is the checkpoints table's format ('safetensors' or 'torch', single file or
    `*.index.json`); 'dcp' is refused (its data needs the pickled `.metadata`).
    Raises ReadError naming the file when it cannot be read.
    """
    path = Path(run_dir) / rel_path
    if fmt not in ("safetensors", "torch"):
        raise ReadError(f"{rel_path}: format {fmt!r} is not read (only safetensors and torch)")
    if path.name.lower().endswith((SAFETENSORS_INDEX, TORCH_INDEX)):
        try:
            files = shard_files(path)
        except ValueError as exc:
            raise ReadError(f"{rel_path}: {exc}") from None
    else:
        files = [path]
    source: TensorSource = {}
    with ExitStack() as stack:
        for file in files:
            if not file.is_file():
                raise ReadError(f"{file.name}: missing")
            if fmt == "safetensors":
                from safetensors import safe_open

                try:
                    safetensors_header(file)  # refuse a corrupt file before safe_open maps it
                except ValueError as exc:
                    raise ReadError(f"{file.name}: {exc}") from None
                handle = stack.enter_context(safe_open(str(file), framework="pt"))
                for key in handle.keys():
                    source[key] = lambda handle=handle, key=key: handle.get_tensor(key)
            else:
                try:
                    obj = load_torch(file)
                except ValueError as exc:
                    raise ReadError(f"{file.name}: {exc}") from None
                for name, tensor in named_tensors(obj):
                    source[name] = lambda tensor=tensor: tensor
        yield source


def load_state_dict(run_dir: Path, rel_path: str, fmt: str) -> dict[str, Any]:
    """The checkpoint's tensors as a state dict (torch files stay memory-mapped)."""
    with checkpoint_tensors(run_dir, rel_path, fmt) as source:
        return {name: get() for name, get in source.items()}


# ---------------------------------------------------------------- statistics

def _flat(tensor: Any) -> Any:
    import torch

    data = tensor.detach()
    if data.is_complex():
        data = torch.view_as_real(data)
    return data.reshape(-1)


def _chunk_stats(chunk: Any, cast_shares: bool) -> Any:
    """The statistics vector of one chunk (see the _N.. positions), on the chunk's device."""
    import torch

    x = chunk.to(torch.float64)
    finite = torch.isfinite(x)
    n_finite = finite.sum()
    xf = torch.where(finite, x, 0.0)
    mean = xf.sum() / n_finite.clamp_min(1)
    centred = torch.where(finite, x - mean, 0.0)
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    parts = [
        torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device),
        n_finite.to(torch.float64),
        mean,
        (centred * centred).sum(),
        (xf * xf).sum(),
        xf.abs().max() if x.numel() else zero,
        (x == 0).sum().to(torch.float64),
    ]
    if cast_shares:
        nonzero = (x != 0) & finite
        for dtype in (torch.float16, torch.bfloat16):
            low = chunk.to(dtype)  # cast from the stored dtype: one rounding, as autocast does
            parts.append((torch.isinf(low) & finite).sum().to(torch.float64))
            parts.append(((low == 0) & nonzero).sum().to(torch.float64))
    else:
        parts += [zero] * 4
    return torch.stack(parts)


# The smallest magnitude a cast to fp16 rounds to Inf (half-way from its max 65504 to
# 2^16); bf16 overflows only far above it (3.3961e38).
FP16_OVERFLOW_AT = 65520.0
# Below this variance / mean^2 the one-pass variance (sum of squares minus n * mean^2)
# loses more than ~1e-5 to cancellation in float32; such chunks take the exact path.
_MIN_VAR_TO_MEAN_SQ = 1e-2


class Scratch:
    """fp16/bf16 buffers reused across chunks and tensors: a fresh large temporary per
    chunk costs more (page faults) than the statistics themselves."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[Any, Any], Any] = {}

    def get(self, dtype: Any, n: int, device: Any) -> Any:
        import torch

        key = (dtype, str(device))
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = self.buffers[key] = torch.empty(max(n, 1), dtype=dtype, device=device)
        return buf[:n]


def _fast_chunk(chunk: Any, scratch: Scratch) -> Any:
    """[norm, min, max, nonzero, sum, nonzero_fp16, nonzero_bf16] of a float chunk, without
    float64 temporaries: float32-accumulated kernels and casts into reused buffers."""
    import torch

    c = chunk if chunk.dtype in (torch.float32, torch.float64) else chunk.float()
    low, high = torch.aminmax(c)
    f16 = scratch.get(torch.float16, chunk.numel(), chunk.device)
    bf16 = scratch.get(torch.bfloat16, chunk.numel(), chunk.device)
    f16.copy_(chunk)  # from the stored dtype: one rounding, as autocast does
    bf16.copy_(chunk)
    parts = [
        torch.linalg.vector_norm(c), low, high, torch.count_nonzero(c), c.sum(),
        torch.count_nonzero(f16), torch.count_nonzero(bf16),
    ]
    return torch.stack([p.to(torch.float64) for p in parts])


def _from_fast(f: list[float], n: int) -> list[float] | None:
    """The statistics vector from `_fast_chunk`'s numbers, or None when the chunk needs the exact path:
    a NaN/Inf (the norm is not finite), a value the casts may overflow, or a variance lost to cancellation."""
    norm, low, high, nonzero, total, nonzero16, nonzero_bf = f
    if not math.isfinite(norm):
        return None
    max_abs = max(-low, high)
    if max_abs >= FP16_OVERFLOW_AT:
        return None  # overflow counts need the casts themselves
    mean = total / n
    m2 = norm * norm - n * mean * mean
    if m2 < _MIN_VAR_TO_MEAN_SQ * n * mean * mean:
        return None
    return [float(n), float(n), mean, m2, norm * norm, max_abs, n - nonzero, 0.0, nonzero - nonzero16, 0.0, nonzero - nonzero_bf]


def _merge(per_chunk: list[list[float]]) -> list[float]:
    """Chunk statistics merged with Chan et al.'s pairwise update (stable std across chunks)."""
    total = [0.0] * 11
    total[_MAX_ABS] = -math.inf
    count = 0.0
    for s in per_chunk:
        total[_N] += s[_N]
        for i in (_SUM_SQ, _ZEROS, _O16, _U16, _OBF, _UBF):
            total[i] += s[i]
        n = s[_N_FINITE]
        if not n:
            continue
        total[_MAX_ABS] = max(total[_MAX_ABS], s[_MAX_ABS])
        merged = count + n
        delta = s[_MEAN] - total[_MEAN]
        total[_MEAN] += delta * n / merged
        total[_M2] += s[_M2] + delta * delta * count * n / merged
        count = merged
    total[_N_FINITE] = count
    return total


def weight_stats(name: str, tensor: Any, device: Any = None, scratch: Scratch | None = None) -> dict[str, Any]:
    """One `layers` row (without run_id/step/update columns) for `tensor`, computed on `device`.

    Same definitions as `checkpoint_scan.tensor_stats` (moments over the finite elements,
    zero/nonfinite shares of all elements) plus the fp16/bf16 cast shares of the module
    docstring. `device` None keeps the tensor where it is.

    Float chunks take the fast path (`_fast_chunk`: norm, min/max, non-zero counts, sum
    and the two casts, accumulated in float32 for float32 weights, so moments carry
    ~1e-6 relative error); a chunk holding a NaN/Inf, a value the casts may overflow, or a
    variance under 1% of mean^2 is redone exactly in float64 (`_chunk_stats`). Integer
    and bool tensors always take the exact path.
    """
    import torch

    n = int(tensor.numel())
    row: dict[str, Any] = {
        "layer": name,
        "module_type": module_type(name),
        "n_params": n,
        "dtype": str(tensor.dtype).removeprefix("torch."),
    }
    nan = math.nan
    cast_shares = tensor.is_floating_point() or tensor.is_complex()
    if n == 0:
        return row | {c: nan for c in ("norm_l2", "mean", "std", "max_abs", "zero_frac", "nonfinite_frac")} | {
            c: (nan if cast_shares else None) for c in PRECISION_COLUMNS
        }
    flat = _flat(tensor)
    scratch = scratch or Scratch()
    fast = flat.is_floating_point()
    chunks, parts = [], []
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):
        chunk = flat[start : start + CHUNK_ELEMENTS]
        if device is not None:
            chunk = chunk.to(device, non_blocking=False)
        chunks.append(chunk)
        parts.append(_fast_chunk(chunk, scratch) if fast else _chunk_stats(chunk, cast_shares))
    values = torch.stack(parts).cpu().tolist()  # the one synchronisation per tensor (on the fast path)
    if fast:
        values = [_from_fast(v, chunks[i].numel()) for i, v in enumerate(values)]
        exact = [i for i, v in enumerate(values) if v is None]
        if exact:
            fixed = torch.stack([_chunk_stats(chunks[i], True) for i in exact]).cpu().tolist()
            for i, v in zip(exact, fixed):
                values[i] = v
    s = _merge(values)
    total, count = s[_N], s[_N_FINITE]
    out = row | {
        "norm_l2": math.sqrt(s[_SUM_SQ]) if count else nan,
        "mean": s[_MEAN] if count else nan,
        "std": math.sqrt(s[_M2] / count) if count else nan,
        "max_abs": s[_MAX_ABS] if count else nan,
        "zero_frac": s[_ZEROS] / total,
        "nonfinite_frac": (total - count) / total,
    }
    for column, i in zip(PRECISION_COLUMNS, (_O16, _U16, _OBF, _UBF)):
        out[column] = s[i] / total if cast_shares else None
    return out


def update_ratio(previous: Any, current: Any, device: Any = None, scratch: Scratch | None = None) -> float | None:
    """||current - previous|| / ||previous||, chunked; None where it is undefined.

    Undefined: shapes differ, either tensor is not floating point, either side holds a
    NaN/Inf, or ||previous|| = 0. float32 pairs are differenced into a reused float32
    buffer and their norms accumulated in float32 (the difference of two float32 values is
    exact when they are within 2x of each other, so the ratio carries ~1e-7 relative
    error); other dtypes go through float64.
    """
    import torch

    if tuple(previous.shape) != tuple(current.shape):
        return None
    if not (previous.is_floating_point() and current.is_floating_point()):
        return None
    a_flat, b_flat = _flat(previous), _flat(current)
    same32 = a_flat.dtype == torch.float32 and b_flat.dtype == torch.float32
    scratch = scratch or Scratch()
    acc = []
    for start in range(0, a_flat.numel(), CHUNK_ELEMENTS):
        a = a_flat[start : start + CHUNK_ELEMENTS]
        b = b_flat[start : start + CHUNK_ELEMENTS]
        if device is not None:
            a, b = a.to(device), b.to(device)
        if same32:
            d = torch.sub(b, a, out=scratch.get(torch.float32, a.numel(), a.device))
        else:
            a, b = a.to(torch.float64), b.to(torch.float64)
            d = b - a
        acc.append(torch.stack([torch.linalg.vector_norm(d).to(torch.float64) ** 2, torch.linalg.vector_norm(a).to(torch.float64) ** 2, torch.linalg.vector_norm(b).to(torch.float64)]))
    if not acc:
        return None
    diff_sq, prev_sq, b_norms = torch.stack(acc).sum(0).cpu().tolist()
    if not (math.isfinite(diff_sq) and math.isfinite(prev_sq) and math.isfinite(b_norms)) or prev_sq <= 0.0:
        return None
    return math.sqrt(diff_sq) / math.sqrt(prev_sq)


def weights_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """`layers` rows (no run_id/step) as a frame with the weight columns."""
    return pl.DataFrame(rows, schema=WEIGHT_COLUMNS) if rows else pl.DataFrame(schema=WEIGHT_COLUMNS)


def scan_weights(
    run_dir: Path,
    rel_path: str,
    fmt: str,
    device: Any = None,
    previous: tuple[str, str, int | None] | None = None,
) -> pl.DataFrame:
    """`layers` rows (no run_id, no step) of one checkpoint with cast shares and, when
    `previous` = (rel_path, fmt, step) of the previous checkpoint is given, update ratios.

    Raises ReadError naming the file when a checkpoint cannot be read.
    """
    rows = []
    with ExitStack() as stack:
        current = stack.enter_context(checkpoint_tensors(run_dir, rel_path, fmt))
        before: TensorSource = {}
        if previous is not None:
            before = stack.enter_context(checkpoint_tensors(run_dir, previous[0], previous[1]))
        scratch = Scratch()
        for name, get in current.items():
            tensor = get()
            row = weight_stats(name, tensor, device, scratch)
            row["update_ratio"] = None
            row["update_from_step"] = None
            if name in before:
                ratio = update_ratio(before[name](), tensor, device, scratch)
                if ratio is not None:
                    row["update_ratio"] = ratio
                    row["update_from_step"] = previous[2]
            rows.append(row)
            del tensor
    return weights_frame(rows)
