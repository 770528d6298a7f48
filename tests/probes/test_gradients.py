"""Per-parameter gradient statistics against torch.autograd.grad, one parameter at a time."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mldebug_ray.probes.gradients import gradient_rows


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, 11), nn.ReLU(), nn.Linear(11, 5), nn.Tanh(), nn.Linear(5, 3))


def _oracle(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, dict[str, float]]:
    """Each parameter's gradient from its own torch.autograd.grad call, statistics in Python floats."""
    out = {}
    for name, param in model.named_parameters():
        loss = nn.functional.cross_entropy(model(x), y)
        (g,) = torch.autograd.grad(loss, [param])
        values = [float(v) for v in g.reshape(-1).tolist()]
        out[name] = {
            "grad_norm_l2": math.sqrt(sum(v * v for v in values)),
            "grad_max_abs": max(abs(v) for v in values),
            "zero_frac": sum(v == 0 for v in values) / len(values),
            "nonfinite_frac": sum(not math.isfinite(v) for v in values) / len(values),
        }
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gradient_rows_equal_autograd_grad_per_parameter(seed):
    model = _model(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 7, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    want = _oracle(model, x, y)
    nn.functional.cross_entropy(model(x), y).backward()
    rows = {r["layer"]: r for r in gradient_rows(model)}
    assert set(rows) == set(want)
    for name, stats in want.items():
        for key, value in stats.items():
            assert rows[name][key] == pytest.approx(value, rel=1e-6, abs=1e-12), (name, key)


def test_a_parameter_off_the_loss_path_counts_as_zero_gradient_and_frozen_ones_are_skipped():
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = _model(0), nn.Linear(2, 2)

        def forward(self, x):
            return self.used(x)

    model = WithUnused()
    model.used[0].bias.requires_grad_(False)
    model(torch.randn(4, 7)).sum().backward()
    rows = {r["layer"]: r for r in gradient_rows(model)}
    assert "used.0.bias" not in rows and "used.0.weight" in rows
    assert rows["unused.weight"] == {"layer": "unused.weight", "grad_norm_l2": 0.0, "grad_max_abs": 0.0, "zero_frac": 1.0, "nonfinite_frac": 0.0}


def test_nonfinite_gradients_show_in_norm_and_share():
    model = _model(1)
    model(torch.randn(4, 7)).sum().backward()
    model[4].weight.grad[0, :2] = float("inf")
    model[4].weight.grad[1, 0] = float("nan")
    row = {r["layer"]: r for r in gradient_rows(model)}["4.weight"]
    assert row["nonfinite_frac"] == pytest.approx(3 / 15)
    assert math.isnan(row["grad_norm_l2"]) and math.isnan(row["grad_max_abs"])


@pytest.mark.gpu
def test_gradient_rows_on_the_gpu_equal_autograd_grad(cuda):
    model = _model(5).to(cuda)
    x, y = torch.randn(16, 7, device=cuda), torch.randint(0, 3, (16,), device=cuda)
    want = _oracle(model, x, y)
    nn.functional.cross_entropy(model(x), y).backward()
    rows = {r["layer"]: r for r in gradient_rows(model)}
    for name, stats in want.items():
        for key, value in stats.items():
            assert rows[name][key] == pytest.approx(value, rel=1e-5, abs=1e-12), (name, key)
