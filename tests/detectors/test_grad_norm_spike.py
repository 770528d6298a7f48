"""grad_norm_spike: grad norm far above its running median; placeholders ignored."""

import numpy as np
import pytest

from mldebug_ray.detectors.grad_norm_spike import GradNormSpikeConfig, grad_norm_spike
from mldebug_ray.errors import ConfigError


def noisy(n, level, seed=0, rel=0.1):
    rng = np.random.default_rng(seed)
    return level * (1 + rel * rng.standard_normal(n))


def test_tenfold_grad_norm_jump_is_a_spike(make_ev, rows, well_formed):
    grad = noisy(200, 0.3)
    grad[120] = 3.0
    ev = make_ev(rows(grad, "grad_norm"))
    found = grad_norm_spike(ev, GradNormSpikeConfig())
    assert [(f.onset_step, f.severity) for f in found] == [(120, "medium")]
    well_formed(ev, found)


def test_isolated_blip_the_loss_ignores_is_low(make_ev, rows, well_formed):
    grad = noisy(200, 0.3)
    grad[120] = 3.0
    ev = make_ev(rows(grad, "grad_norm") + rows(noisy(200, 2.0, seed=1, rel=0.01)))
    found = grad_norm_spike(ev, GradNormSpikeConfig())
    assert [(f.onset_step, f.severity) for f in found] == [(120, "low")]
    well_formed(ev, found)


def test_placeholder_zero_grad_norms_stay_silent(make_ev, rows):
    # Megatron prints `grad norm: 0.000` when it does not compute the norm.
    grad = np.zeros(50)
    grad[20] = 5.0
    assert grad_norm_spike(make_ev(rows(grad, "grad norm") + rows(noisy(50, 2.7, rel=0.01), "lm loss")), GradNormSpikeConfig()) == []


def test_moderate_jump_counts_only_together_with_a_loss_jump(make_ev, rows, well_formed):
    grad = noisy(100, 1.0, rel=0.05)
    grad[60] = 2.5
    loss = noisy(100, 3.0, seed=2, rel=0.01)
    assert grad_norm_spike(make_ev(rows(grad, "grad_norm") + rows(loss)), GradNormSpikeConfig()) == []
    loss[60] = 4.5
    ev = make_ev(rows(grad, "grad_norm") + rows(loss))
    found = grad_norm_spike(ev, GradNormSpikeConfig())
    assert [f.onset_step for f in found] == [60]
    assert any(ref.where["key"] == "loss" for ref in found[0].evidence)
    well_formed(ev, found)


def test_spike_followed_by_divergence_is_high(make_ev, rows):
    grad = list(noisy(50, 1.0, rel=0.05)) + [50.0, 500.0, 5000.0]
    loss = list(noisy(50, 2.0, seed=4, rel=0.01)) + [3.0, 9.0, float("nan")]
    found = grad_norm_spike(make_ev(rows(grad, "grad_norm") + rows(loss)), GradNormSpikeConfig())
    assert [(f.onset_step, f.severity) for f in found] == [(50, "high")]


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.grad_norm_spike.factor"):
        GradNormSpikeConfig(factor=0.9)
    with pytest.raises(ConfigError, match="detectors.grad_norm_spike.max_zero_frac"):
        GradNormSpikeConfig(max_zero_frac=1.5)
