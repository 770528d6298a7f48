"""Per-parameter gradient statistics after a probe backward pass (the `gradients` table).

One row per parameter that requires grad (`layer` = its name in `named_parameters()`,
which is its checkpoint key), computed on the parameter's device and synchronised once
for the whole model:

- grad_norm_l2: the plain L2 norm of the gradient (NaN/Inf as soon as one element is,
  as a logged `clip_grad_norm_` value would be), accumulated in float32 (float64 for
  float64 gradients; bf16/fp16 gradients are upcast);
- grad_max_abs: the largest |element| (NaN if any element is NaN);
- zero_frac: share of elements exactly 0; nonfinite_frac: share of NaN/Inf elements.

A parameter that received no gradient at all (`.grad is None`: not on the loss's path)
gets norm 0 and zero_frac 1: as far as training goes it is frozen.
`update_ratio` is filled by the caller from the weights scan (same step, same name).
"""

from __future__ import annotations

import math
from typing import Any

GRADIENT_COLUMNS = ("layer", "grad_norm_l2", "grad_max_abs", "zero_frac", "nonfinite_frac")


def _exact(g: Any) -> list[float]:
    """The slow path, for gradients holding NaN/Inf (or squares beyond float32): float64, explicit counts."""
    import torch

    g64 = g.to(torch.float64)
    n = g.numel()
    return [
        float(torch.linalg.vector_norm(g64)),
        float(g64.abs().max()),
        float((g == 0).sum()) / n,
        float((~torch.isfinite(g)).sum()) / n,
    ]


def gradient_rows(model: Any) -> list[dict[str, Any]]:
    """The rows (without run_id/step/update_ratio) for every trainable parameter of `model`.

    Fast path, per parameter: the float32-accumulated norm, `aminmax` for the largest
    |element| and `count_nonzero` for the zeros (three passes that allocate nothing of the
    gradient's size), stacked and synchronised once. A finite norm means every element is
    finite; a parameter whose norm is not finite goes through `_exact` instead.
    """
    import torch

    names, grads, stats = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        names.append(name)
        grad = param.grad
        if grad is None or grad.numel() == 0:
            grads.append(None)
            stats.append(None)
            continue
        g = grad.detach().reshape(-1)
        if g.dtype not in (torch.float32, torch.float64):
            g = g.float()
        low, high = torch.aminmax(g)
        grads.append(g)
        stats.append(
            torch.stack(
                [
                    torch.linalg.vector_norm(g).to(torch.float64),
                    torch.maximum(-low, high).to(torch.float64),
                    torch.count_nonzero(g).to(torch.float64),
                ]
            )
        )
    present = [s for s in stats if s is not None]
    values = iter(torch.stack([s.to(present[0].device) for s in present]).cpu().tolist() if present else [])
    rows = []
    for name, g, s in zip(names, grads, stats):
        if s is None:
            rows.append({"layer": name, "grad_norm_l2": 0.0, "grad_max_abs": 0.0, "zero_frac": 1.0, "nonfinite_frac": 0.0})
            continue
        norm, max_abs, nonzero = next(values)
        if math.isfinite(norm):
            zero, nonfinite = 1.0 - nonzero / g.numel(), 0.0
        else:
            norm, max_abs, zero, nonfinite = _exact(g)
        rows.append({"layer": name, "grad_norm_l2": norm, "grad_max_abs": max_abs, "zero_frac": zero, "nonfinite_frac": nonfinite})
    return rows
