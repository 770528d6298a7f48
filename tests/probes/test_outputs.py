"""Output diversity against a Counter over Python argmaxes."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from mldebug_ray.probes.outputs import output_diversity


def _oracle(logits: torch.Tensor) -> dict[str, float]:
    rows = logits.reshape(-1, logits.shape[-1]).tolist()
    preds = [max(range(len(r)), key=r.__getitem__) for r in rows if all(math.isfinite(v) for v in r)]
    counts = Counter(preds)
    n = len(preds)
    return {
        "distinct_frac": len(counts) / n,
        "top1_frac": max(counts.values()) / n,
        "entropy_bits": -sum(c / n * math.log2(c / n) for c in counts.values()),
    }


@pytest.mark.parametrize("shape", [(200, 7), (16, 9, 11), (3, 4, 5, 6)])
def test_diversity_equals_the_counter_oracle_on_random_scores(shape):
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    got = output_diversity(logits)
    for key, value in _oracle(logits).items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12)


def test_a_collapsed_model_has_top1_one_and_zero_entropy():
    logits = torch.randn(100, 5)
    logits[:, 2] += 100.0
    got = output_diversity(logits)
    assert got == {"distinct_frac": pytest.approx(0.01), "top1_frac": 1.0, "entropy_bits": 0.0}


def test_nonfinite_rows_are_left_out_and_non_scores_give_none():
    logits = torch.randn(10, 4)
    logits[:3, 0] = float("nan")
    assert output_diversity(logits) == pytest.approx(_oracle(logits[3:]))
    assert output_diversity(torch.full((5, 3), float("nan"))) is None
    assert output_diversity(torch.randn(10)) is None
    assert output_diversity(torch.randn(10, 1)) is None
    assert output_diversity(torch.randint(0, 3, (10, 3))) is None
