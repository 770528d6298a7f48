"""fp32 vs fp16/bf16 autocast: rows, overflow at the run's loss scale, and the recommended scale against a brute-force search."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mldebug_ray.probes.precision import DEFAULT_LOSS_SCALE, precision_rows


class Scaled(nn.Module):
    def __init__(self, scale: float, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.mlp = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
        self.scale = scale

    def forward(self, x):
        return self.mlp(x) * self.scale


def _batch(seed: int = 0, input_scale: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(64, 8, generator=gen) * input_scale, torch.randint(0, 4, (64,), generator=gen)


def _clean_at(model: nn.Module, batch, scale: float) -> bool:
    """Slow oracle: a fresh fp16 autocast forward and scaled backward; no Inf/NaN gradient?"""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = nn.functional.cross_entropy(model(batch[0]).float(), batch[1])
    (loss.float() * scale).backward()
    return all(torch.isfinite(p.grad).all() for p in model.parameters())


def _brute_force_scale(model: nn.Module, batch) -> float:
    for k in range(24, -25, -1):
        if _clean_at(model, batch, 2.0**k):
            return 2.0**k
    return math.nan


def test_a_benign_model_has_one_row_per_parameter_and_dtype_and_small_errors():
    model = Scaled(1.0)
    rows = precision_rows(model, _batch(), None, "cpu", None)
    names = [n for n, _ in model.named_parameters()]
    for dtype in ("float16", "bfloat16"):
        part = [r for r in rows if r["dtype"] == dtype]
        assert [r["layer"] for r in part] == [*names, None]
        assert all(r["overflow_frac"] == 0.0 for r in part)
        assert all(r["rel_err_vs_fp32"] < 0.05 for r in part if r["layer"] is not None)
        total = part[-1]
        assert 0 <= total["rel_err_vs_fp32"] < 0.01
    fp16_total = [r for r in rows if r["dtype"] == "float16"][-1]
    assert fp16_total["loss_scale"] == DEFAULT_LOSS_SCALE
    assert fp16_total["recommended_loss_scale"] == _brute_force_scale(model, _batch())
    assert "recommended_loss_scale" not in [r for r in rows if r["dtype"] == "bfloat16"][-1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_large_gradients_overflow_at_2_16_and_the_recommended_scale_is_the_largest_clean_one(seed):
    model = Scaled(300.0, seed)
    batch = _batch(seed, input_scale=30.0)
    rows = precision_rows(model, batch, None, "cpu", None)
    fp16 = [r for r in rows if r["dtype"] == "float16"]
    total = fp16[-1]
    assert total["overflow_frac"] > 0
    assert any(r["overflow_frac"] > 0 for r in fp16[:-1])
    assert math.isinf(max(r["rel_err_vs_fp32"] for r in fp16[:-1] if r["overflow_frac"] > 0))
    want = _brute_force_scale(model, batch)
    assert total["recommended_loss_scale"] == want and want < DEFAULT_LOSS_SCALE
    bf16 = [r for r in rows if r["dtype"] == "bfloat16"]
    assert all(r["overflow_frac"] == 0.0 for r in bf16) and bf16[-1]["loss_scale"] == 1.0


def test_the_runs_loss_scale_is_used_and_a_forward_overflow_has_no_recommended_scale():
    model = Scaled(1.0)
    rows = precision_rows(model, _batch(), None, "cpu", 8.0)
    assert {r["loss_scale"] for r in rows if r["dtype"] == "float16"} == {8.0}
    big = Scaled(1.0)
    with torch.no_grad():
        big.mlp[0].weight.mul_(1e4)
    rows = precision_rows(big, _batch(input_scale=1e3), None, "cpu", None)
    total = [r for r in rows if r["dtype"] == "float16"][-1]
    assert math.isnan(total["recommended_loss_scale"])
    assert math.isinf(total["rel_err_vs_fp32"])
    assert all(p.grad is None for p in big.parameters())


@pytest.mark.gpu
def test_precision_rows_on_the_gpu_find_the_same_recommended_scale(cuda):
    model = Scaled(300.0, 0)
    batch = _batch(0, input_scale=30.0)
    cpu = precision_rows(model, batch, None, "cpu", None)[len(list(model.parameters()))]
    gpu = precision_rows(model.to(cuda), (batch[0].to(cuda), batch[1].to(cuda)), None, cuda, None)[len(list(model.parameters()))]
    assert gpu["layer"] is None and gpu["overflow_frac"] > 0
    assert abs(math.log2(gpu["recommended_loss_scale"]) - math.log2(cpu["recommended_loss_scale"])) <= 1
