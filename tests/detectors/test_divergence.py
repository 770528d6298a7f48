"""divergence: a final excursion far above the running min that never comes back."""

import math

import numpy as np
import pytest

from mldebug_ray.detectors.divergence import DivergenceConfig, divergence
from mldebug_ray.errors import ConfigError


def healthy_curve(n, seed=0, noise=0.02):
    rng = np.random.default_rng(seed)
    steps = np.arange(n)
    return 1.0 + 4.0 * np.exp(-steps / 15.0) + noise * rng.standard_normal(n)


def test_loss_rising_and_staying_up_is_divergence_with_onset_at_the_rise(make_ev, rows, well_formed):
    loss = healthy_curve(120)
    loss[80:] = 1.0 + np.linspace(0.9, 4.0, 40)  # from step 80 the loss climbs to ~5x its minimum
    grad = np.full(120, 0.5)
    grad[80] = 9.0
    ev = make_ev(rows(loss) + rows(grad, "grad_norm"))
    found = divergence(ev, DivergenceConfig())
    assert len(found) == 1
    f = found[0]
    assert f.kind == "divergence" and f.severity in ("critical", "high")
    assert 78 <= f.onset_step <= 82
    assert any(ref.where["key"] == "grad_norm" and ref.where["step"] == 80 for ref in f.evidence)
    well_formed(ev, found)


def test_explosion_into_nan_is_critical(make_ev, rows, well_formed):
    loss = list(healthy_curve(60)) + [3.0, 40.0, 1e6, math.nan, math.nan]
    ev = make_ev(rows(loss))
    found = divergence(ev, DivergenceConfig())
    assert len(found) == 1 and found[0].severity == "critical"
    assert found[0].onset_step == 60 and found[0].end_step == 63
    well_formed(ev, found)


def test_one_step_spike_that_recovers_is_not_divergence(make_ev, rows):
    loss = healthy_curve(200)
    loss[150] = 10.0
    assert divergence(make_ev(rows(loss)), DivergenceConfig()) == []


def test_val_loss_is_used_when_no_train_loss_is_logged(make_ev, rows):
    val = list(np.linspace(3.0, 1.0, 20)) + [2.5, 3.0, 3.5]
    found = divergence(make_ev(rows(val, "val/loss", every=100)), DivergenceConfig())
    assert len(found) == 1 and found[0].onset_step == 2000


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.divergence.factor"):
        DivergenceConfig(factor=0.5)
    with pytest.raises(ConfigError, match="detectors.divergence.onset_ratio"):
        DivergenceConfig(onset_ratio=3.0)
