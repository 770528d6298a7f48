"""Activation statistics from hooks against a slow per-unit oracle on random models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mldebug_ray.probes.activations import SIGMOID_SATURATION, TANH_SATURATION, ActivationRecorder


def _oracle_dead(y: torch.Tensor) -> float:
    """Per unit, in Python: the share of positions with output > 0; dead below 1%."""
    axis = 1 if y.dim() >= 4 else y.dim() - 1
    units = y.movedim(axis, 0).reshape(y.shape[axis], -1)
    dead = 0
    for unit in units:
        values = unit.tolist()
        if sum(v > 0 for v in values) / len(values) < 0.01:
            dead += 1
    return dead / units.shape[0]


def _record(model: nn.Module, x: torch.Tensor) -> tuple[dict, dict]:
    """The recorder's rows and, from separate plain hooks, every leaf's (input, output)."""
    seen = {}
    handles = [
        m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, (inp[0].detach(), out.detach())))
        for name, m in model.named_modules()
        if next(m.children(), None) is None
    ]
    with ActivationRecorder(model) as recorder, torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return {r["layer"]: r for r in recorder.rows()}, seen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dead_saturated_mean_std_equal_the_slow_oracle(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 20), nn.Sigmoid(), nn.Linear(20, 10), nn.GELU())
    with torch.no_grad():
        model[0].bias[:25] = -50.0  # 25 of 40 ReLU units never fire
        model[2].weight.mul_(100.0)  # drive tanh inputs into the flat region
        model[4].weight.mul_(100.0)
    x = torch.randn(300, 6)
    rows, seen = _record(model, x)
    assert list(rows) == [str(i) for i in range(8)]
    for name, (inp, out) in seen.items():
        row = rows[name]
        values = out.double().reshape(-1)
        spread = float(values.abs().max())
        assert row["mean"] == pytest.approx(float(values.mean()), rel=1e-5, abs=1e-6 * spread)
        assert row["std"] == pytest.approx(float(values.std(unbiased=False)), rel=1e-5, abs=1e-12)
        module = model[int(name)]
        if isinstance(module, (nn.ReLU, nn.GELU)):
            assert row["dead_frac"] == pytest.approx(_oracle_dead(out))
        else:
            assert row["dead_frac"] is None
        if isinstance(module, nn.Tanh):
            pinned = sum(abs(v) > TANH_SATURATION for v in inp.reshape(-1).tolist())
            assert row["saturated_frac"] == pytest.approx(pinned / inp.numel())
        elif isinstance(module, nn.Sigmoid):
            lo, hi = SIGMOID_SATURATION
            pinned = sum(v < lo or v > hi for v in inp.reshape(-1).tolist())
            assert row["saturated_frac"] == pytest.approx(pinned / inp.numel())
        else:
            assert row["saturated_frac"] is None
    assert rows["1"]["dead_frac"] >= 25 / 40
    assert rows["3"]["saturated_frac"] > 0.1


@pytest.mark.parametrize(("mean", "std"), [(0.5, 0.06), (1000.0, 1e-3), (0.0, 1.0), (1.0, 0.0)])
def test_moments_stay_accurate_when_the_mean_dwarfs_the_spread(mean, std):
    y = torch.randn(300, 50, generator=torch.Generator().manual_seed(0)) * std + mean
    with ActivationRecorder(nn.Sequential(nn.Identity())) as recorder:
        recorder.model(y)
    (row,) = recorder.rows()
    y64 = y.double()
    assert row["mean"] == pytest.approx(float(y64.mean()), rel=1e-9, abs=1e-6 * (std + abs(mean)))
    assert row["std"] == pytest.approx(float(y64.std(unbiased=False)), rel=1e-4, abs=1e-12)


def test_units_with_only_nonfinite_outputs_are_not_called_dead():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    with torch.no_grad():
        model[0].bias[:] = torch.tensor([-100.0, 100.0, float("nan"), -100.0])
    rows, _ = _record(model, torch.randn(20, 3))
    assert rows["1"]["dead_frac"] == pytest.approx(2 / 3)
    with torch.no_grad():
        model[0].bias[:] = float("nan")
    rows, _ = _record(model, torch.randn(20, 3))
    assert math.isnan(rows["1"]["dead_frac"])


def test_convolution_units_are_channels():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3)
    with torch.no_grad():
        conv.bias[:6] = -100.0
    model = nn.Sequential(conv, nn.ReLU())
    rows, seen = _record(model, torch.randn(4, 3, 10, 10))
    assert rows["1"]["dead_frac"] == pytest.approx(6 / 8) == pytest.approx(_oracle_dead(seen["1"][1]))


def test_a_shared_activation_module_pools_its_calls_and_hooks_are_removed():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.act = nn.Linear(4, 5), nn.Linear(5, 5), nn.ReLU()

        def forward(self, x):
            return self.act(self.b(self.act(self.a(x))))

    torch.manual_seed(1)
    model = Shared()
    with torch.no_grad():
        model.a.bias[:] = -100.0  # first call: every unit dead
        model.b.bias[:] = 100.0  # second call: every unit alive
    rows, _ = _record(model, torch.randn(50, 4))
    assert rows["act"]["dead_frac"] == pytest.approx(0.5)
    assert all(not m._forward_hooks for m in model.modules())
    assert math.isfinite(rows["act"]["std"])


@pytest.mark.gpu
def test_activation_rows_on_the_gpu_equal_the_cpu_ones(cuda):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 30), nn.Tanh())
    x = torch.randn(200, 6) * 20
    cpu, _ = _record(model, x)
    gpu, _ = _record(model.to(cuda), x.to(cuda))
    for name, row in cpu.items():
        for key, value in row.items():
            if isinstance(value, float):
                assert gpu[name][key] == pytest.approx(value, rel=1e-5, abs=1e-9), (name, key)
