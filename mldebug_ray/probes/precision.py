"""The same batch in fp32 and under fp16 / bf16 autocast (the `precision` table).

In eval mode (no dropout noise between the passes), on the probe device:

1. fp32 forward + backward: the reference loss and parameter gradients g32;
2. for float16 at the run's loss scale S (its last logged `loss_scale` at or before the
   checkpoint's step, else GradScaler's default 2^16, FIELD-NOTES) and for bfloat16 at
   S = 1 (same exponent range as fp32: no scaling): forward under
   `torch.autocast(device_type, dtype)` and backward of S * loss, exactly what
   GradScaler's scaled backward does. Parameter gradients of autocast are fp32 but are
   computed through fp16/bf16 matmuls, so an fp16 overflow shows up as Inf/NaN in them
   (GradScaler's `found_inf`) and an underflow as a zero where g32 is not.

Rows per dtype: one per parameter (`layer` = name) with
- rel_err_vs_fp32: ||g/S - g32|| / ||g32|| (Inf when g holds a NaN/Inf; null when g32 is all zero);
- overflow_frac: share of the gradient's elements that are NaN/Inf at scale S;
- underflow_frac: share whose g32 is non-zero but whose scaled low-precision gradient is 0;
and one total row (`layer` null) with the loss's relative error |loss - loss32| / |loss32|
and the two shares over all parameters. Every row carries `loss_scale` = S; the float16
total row also `recommended_loss_scale`: the largest power of two (at most 2^24) at which
the fp16 backward of this batch has no Inf/NaN gradient. The search starts at
2^floor(log2(65504 / max|g32|)) (a larger scale overflows the largest parameter
gradient itself) and halves on overflow, as GradScaler backs off, for at most
`MAX_BACKOFFS` halvings, re-running only the backward (the fp16 graph is kept). It is
NaN when the fp16 forward already overflows (no loss scale helps: keep the layer in
fp32 or use bf16) or no scale in the search is clean.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from mldebug_ray.probes.model_loop import compute_loss

DEFAULT_LOSS_SCALE = 2.0**16
MAX_LOSS_SCALE = 2.0**24
FP16_MAX = 65504.0
MAX_BACKOFFS = 24


def _trainable(model: Any) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _grads(params: list[tuple[str, Any]]) -> dict[str, Any]:
    import torch

    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for n, p in params}


def _has_overflow(params: list[tuple[str, Any]]) -> bool:
    import torch

    flags = [(~torch.isfinite(p.grad)).any() for _, p in params if p.grad is not None]
    return bool(torch.stack(flags).any().item()) if flags else False


def _rows(dtype: str, scale: float, grads: dict[str, Any], ref: dict[str, Any], loss: float, loss32: float) -> list[dict[str, Any]]:
    import torch

    names = list(ref)
    stats = []
    for name in names:
        g, r = grads[name].reshape(-1).to(torch.float64), ref[name].reshape(-1).to(torch.float64)
        stats.append(
            torch.stack(
                [
                    torch.linalg.vector_norm(g / scale - r),
                    torch.linalg.vector_norm(r),
                    (~torch.isfinite(g)).sum().to(torch.float64),
                    ((g == 0) & (r != 0)).sum().to(torch.float64),
                    torch.tensor(float(g.numel()), dtype=torch.float64, device=g.device),
                ]
            )
        )
    values = torch.stack([s.to(stats[0].device) for s in stats]).cpu().tolist() if stats else []
    rows = []
    over_total = under_total = n_total = 0.0
    for name, (err, norm, over, under, n) in zip(names, values):
        over_total, under_total, n_total = over_total + over, under_total + under, n_total + n
        rows.append(
            {
                "dtype": dtype,
                "layer": name,
                "rel_err_vs_fp32": math.inf if over else (err / norm if norm > 0 else None),
                "overflow_frac": over / n if n else None,
                "underflow_frac": under / n if n else None,
                "loss_scale": scale,
            }
        )
    rel = abs(loss - loss32) / abs(loss32) if loss32 != 0.0 and math.isfinite(loss32) else math.nan
    rows.append(
        {
            "dtype": dtype,
            "layer": None,
            "rel_err_vs_fp32": rel if math.isfinite(loss) else math.inf,
            "overflow_frac": over_total / n_total if n_total else None,
            "underflow_frac": under_total / n_total if n_total else None,
            "loss_scale": scale,
        }
    )
    return rows


def recommended_scale_start(ref: dict[str, Any]) -> float:
    """2^floor(log2(65504 / max|g32|)), clamped to [2^-24, 2^24]: the largest power of two at
    which the largest finite fp32 parameter gradient still fits fp16."""
    import torch

    finite_max = [torch.where(torch.isfinite(g), g.abs(), 0).max() for g in ref.values() if g.numel()]
    gmax = float(torch.stack([m.to(finite_max[0].device) for m in finite_max]).max().item()) if finite_max else 0.0
    if gmax <= 0.0:
        return MAX_LOSS_SCALE
    return float(min(MAX_LOSS_SCALE, max(2.0**-24, 2.0 ** math.floor(math.log2(FP16_MAX / gmax)))))


def precision_rows(model: Any, batch: Any, loss_fn: Callable | None, device: Any, loss_scale: float | None) -> list[dict[str, Any]]:
    """The `precision` rows (without run_id/step) of `model` on `batch`; see the module docstring."""
    import torch

    scale16 = float(loss_scale) if loss_scale and math.isfinite(loss_scale) and loss_scale > 0 else DEFAULT_LOSS_SCALE
    model.eval()
    params = _trainable(model)
    if not params:
        return []
    model.zero_grad(set_to_none=True)
    loss32_t, _ = compute_loss(model, batch, loss_fn)
    loss32_t.float().backward()
    ref = _grads(params)
    loss32 = float(loss32_t.detach().float().item())
    rows: list[dict[str, Any]] = []
    device_type = torch.device(device).type
    for dtype, scale in ((torch.float16, scale16), (torch.bfloat16, 1.0)):
        name = str(dtype).removeprefix("torch.")
        model.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=dtype):
            loss_t, _ = compute_loss(model, batch, loss_fn)
        loss = float(loss_t.detach().float().item())
        scaled = loss_t.float() * scale
        keep = dtype == torch.float16 and math.isfinite(loss)
        scaled.backward(retain_graph=keep)
        part = _rows(name, scale, _grads(params), ref, loss, loss32)
        if dtype == torch.float16:
            part[-1]["recommended_loss_scale"] = _recommend(loss_t, params, ref) if keep else math.nan
        rows.extend(part)
        del loss_t, scaled
    model.zero_grad(set_to_none=True)
    return rows


def _recommend(loss_t: Any, params: list[tuple[str, Any]], ref: dict[str, Any]) -> float:
    """GradScaler-style backoff from the fp32 bound; re-runs only the fp16 backward."""
    scale = recommended_scale_start(ref)
    for attempt in range(MAX_BACKOFFS + 1):
        for _, p in params:
            p.grad = None
        last = attempt == MAX_BACKOFFS
        (loss_t.float() * scale).backward(retain_graph=not last)
        if not _has_overflow(params):
            return scale  # the kept graph is released with loss_t by the caller
        scale /= 2.0
    return math.nan
