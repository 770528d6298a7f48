"""Activation statistics from forward hooks on the model's leaf modules (the `activations` table).

One row per leaf module (`layer` = its name in `named_modules()`) whose output is a
floating-point tensor, over the probe batch:

- mean, std: of the output elements (population std; float64, or see `_moments`);
- dead_frac, for ReLU-like modules (ReLU, ReLU6, LeakyReLU, RReLU, PReLU, ELU, CELU, SELU,
  GELU, SiLU, Mish; for all of them output > 0 exactly when the input is > 0): the share of
  units active (output > 0) for less than 1% of the batch positions (a unit with a NaN
  output is broken, not dead, and is left out; NaN when every unit is). SageMaker Debugger's
  DeadRelu rule calls a unit dead below 1% activity (threshold_inactivity=1.0) and a
  layer bad when more than 50% of its units are (threshold_layer=50, FIELD-NOTES); the
  50% is the detector's business, the 1% the probe's. A unit is a channel (dim 1) for
  outputs of 4 or more dims (NCHW convolutions) and the last dim otherwise (features of
  a Linear, hidden size of a transformer), every other dim being positions;
- saturated_frac, for Sigmoid and Tanh: the share of INPUT elements in the flat region
  where the output is pinned at its limit in float32: tanh outside +-9.4999, sigmoid
  below -23 or above 16.99999 (SageMaker's SaturatedActivation defaults, FIELD-NOTES).

Other modules have null dead/saturated shares. Activations written by functional calls
(`F.relu(x)` inside `forward`) have no module and are not seen. A module called several
times in one forward (a shared activation) has its calls pooled: moments merged, dead
units counted per call. Statistics stay on the device until `rows()` (one sync).
"""

from __future__ import annotations

import math
from typing import Any

DEAD_ACTIVITY_FRAC = 0.01
TANH_SATURATION = 9.4999
SIGMOID_SATURATION = (-23.0, 16.99999)

RELU_LIKE = ("ReLU", "ReLU6", "LeakyReLU", "RReLU", "PReLU", "ELU", "CELU", "SELU", "GELU", "SiLU", "Mish")
SATURATING = ("Sigmoid", "Tanh")


def _kind(module: Any) -> str | None:
    import torch.nn as nn

    for name in RELU_LIKE:
        cls = getattr(nn, name, None)
        if cls is not None and isinstance(module, cls):
            return "relu"
    if isinstance(module, nn.Sigmoid):
        return "sigmoid"
    if isinstance(module, nn.Tanh):
        return "tanh"
    return None


def _moments(y: Any) -> tuple[Any, Any]:
    """(mean, sum of squared deviations) in float64.

    On the CPU a float64 copy of every activation costs more than the layer that made it
    (fresh pages for each large temporary), so the fast path is the float32-accumulated
    sum and sum of squares (sum of squares minus n * mean^2), used when the variance is at
    least 1% of mean^2: then the float32 sums and the cancellation cost ~1e-6 of the std;
    otherwise, and on GPUs (where the copy is cheap and a branch would cost a sync), the
    two-pass float64 computation.
    """
    import torch

    n = y.numel()
    if y.device.type == "cpu" and n and y.dtype == torch.float32:
        mean = y.sum().to(torch.float64) / n
        m2 = torch.linalg.vector_norm(y).to(torch.float64) ** 2 - n * mean * mean
        if bool(torch.isfinite(m2)) and float(m2) >= 0.01 * n * float(mean) ** 2:
            return mean, m2
    y64 = y.to(torch.float64)
    mean = y64.mean()
    return mean, (y64 - mean).pow_(2).sum()


def call_stats(kind: str | None, inputs: Any, output: Any) -> Any:
    """Statistics of one module call as a float64 vector on the output's device:
    [n, mean, m2, dead_units, units, saturated, n_inputs]."""
    import torch

    y = output.detach()
    n = y.numel()
    mean, m2 = _moments(y)
    zero = torch.zeros((), dtype=torch.float64, device=y.device)
    dead = units = saturated = n_in = zero
    if kind == "relu" and n:
        axis = 1 if y.dim() >= 4 else y.dim() - 1
        by_unit = y.movedim(axis, -1).reshape(-1, y.shape[axis])
        # float passes (sign -> {0, 1} after the clamp; a column sum is NaN iff the unit output
        # a NaN) instead of boolean counts, which are ~5x slower on the CPU
        share = torch.sign(by_unit).clamp_(min=0).sum(0, dtype=torch.float64) / by_unit.shape[0]
        seen = ~torch.isnan(by_unit.sum(0))  # a unit with a NaN output is broken, not dead
        dead = ((share < DEAD_ACTIVITY_FRAC) & seen).sum().to(torch.float64)
        units = seen.sum().to(torch.float64)
    elif kind in ("sigmoid", "tanh") and inputs and isinstance(inputs[0], torch.Tensor):
        x = inputs[0].detach()
        if kind == "tanh":
            pinned = x.abs() > TANH_SATURATION
        else:
            pinned = (x < SIGMOID_SATURATION[0]) | (x > SIGMOID_SATURATION[1])
        saturated = pinned.sum().to(torch.float64)
        n_in = torch.tensor(float(x.numel()), dtype=torch.float64, device=y.device)
    return torch.stack([torch.tensor(float(n), dtype=torch.float64, device=y.device), mean, m2, dead, units, saturated, n_in])


class ActivationRecorder:
    """Forward hooks on every leaf module while in a `with` block; `rows()` afterwards."""

    def __init__(self, model: Any):
        self.model = model
        self.calls: dict[str, list[Any]] = {}
        self.kinds: dict[str, str | None] = {}
        self.order: list[str] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "ActivationRecorder":
        import torch

        for name, module in self.model.named_modules():
            if next(module.children(), None) is not None:
                continue
            kind = _kind(module)
            self.kinds[name] = kind

            def hook(_module, inputs, output, name=name, kind=kind):
                if isinstance(output, torch.Tensor) and output.is_floating_point():
                    if name not in self.calls:
                        self.calls[name] = []
                        self.order.append(name)
                    self.calls[name].append(call_stats(kind, inputs, output))

            self._handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def rows(self) -> list[dict[str, Any]]:
        """One row (without run_id/step) per leaf module seen, in forward order."""
        import torch

        if not self.order:
            return []
        flat = [s for name in self.order for s in self.calls[name]]
        values = torch.stack([s.to(flat[0].device) for s in flat]).cpu().tolist()
        rows, i = [], 0
        for name in self.order:
            count, mean, m2 = 0.0, 0.0, 0.0
            dead = units = saturated = n_in = 0.0
            for n, c_mean, c_m2, c_dead, c_units, c_sat, c_in in values[i : i + len(self.calls[name])]:
                if n:
                    merged = count + n
                    delta = c_mean - mean
                    mean += delta * n / merged
                    m2 += c_m2 + delta * delta * count * n / merged
                    count = merged
                dead, units, saturated, n_in = dead + c_dead, units + c_units, saturated + c_sat, n_in + c_in
            i += len(self.calls[name])
            kind = self.kinds.get(name)
            rows.append(
                {
                    "layer": name,
                    "dead_frac": (dead / units if units else math.nan) if kind == "relu" else None,
                    "saturated_frac": (saturated / n_in if n_in else math.nan) if kind in ("sigmoid", "tanh") else None,
                    "mean": mean if count else math.nan,
                    "std": math.sqrt(m2 / count) if count else math.nan,
                }
            )
        return rows
