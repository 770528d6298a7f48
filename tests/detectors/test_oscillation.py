"""oscillation: loss swings that do not settle; small-batch noise and single spikes do not count."""

import numpy as np
import pytest

from mldebug_ray.detectors.oscillation import OscillationConfig, oscillation, zigzag
from mldebug_ray.errors import ConfigError


def test_validation_loss_swinging_to_the_end_oscillates(make_ev, well_formed):
    t = np.arange(60)
    val = 2.0 + 0.4 * np.sin(t / 3.0)
    ev = make_ev([(50 * (i + 1), "val_loss", v, "val") for i, v in enumerate(val)])
    found = oscillation(ev, OscillationConfig())
    assert [f.severity for f in found] == ["medium"]
    assert found[0].onset_step < 1000
    well_formed(ev, found)


def test_slow_swings_under_small_batch_noise_are_found_after_smoothing(make_ev):
    rng = np.random.default_rng(1)
    train = 2.0 + 0.3 * np.sin(np.arange(2000) / 60.0) + 0.3 * rng.standard_normal(2000)
    assert [f.kind for f in oscillation(make_ev([(i, "train_loss", v) for i, v in enumerate(train)]), OscillationConfig())] == ["oscillation"]


def test_small_batch_noise_on_a_falling_loss_is_not_oscillation(make_ev):
    rng = np.random.default_rng(2)
    steps = np.arange(2000)
    train = 1.0 + 2.0 * np.exp(-steps / 500) + 0.3 * rng.standard_normal(2000)
    assert oscillation(make_ev([(int(s), "train_loss", v) for s, v in zip(steps, train)]), OscillationConfig()) == []
    # a short noisy run (100 points, batch 64) too
    short = 3.5 - 1.5 * (1 - np.exp(-np.arange(100) / 20)) + 0.15 * rng.standard_normal(100)
    assert oscillation(make_ev([(i, "train_loss", v) for i, v in enumerate(short)]), OscillationConfig()) == []


def test_early_swings_that_settle_and_a_recovered_spike_stay_silent(make_ev):
    val = [11.8, 6.4, 5.3, 5.2, 5.5, 4.8, 5.7, 4.1, 3.4, 4.3, 3.2, 3.0, 5.9, 5.2, 4.7, 4.4, 3.6] + list(np.linspace(3.3, 2.6, 40))
    assert oscillation(make_ev([(i * 2000, "validation/loss", v, "val") for i, v in enumerate(val)]), OscillationConfig()) == []
    spike = [3.0 - 0.01 * i for i in range(40)]
    spike[20] = 6.0
    assert oscillation(make_ev([(i * 100, "val_loss", v, "val") for i, v in enumerate(spike)]), OscillationConfig()) == []


def test_a_run_that_ends_in_nan_is_left_to_the_divergence_detectors(make_ev):
    val = list(2.0 + 0.4 * np.sin(np.arange(40) / 3.0)) + [float("nan")]
    assert oscillation(make_ev([(i, "val_loss", v, "val") for i, v in enumerate(val)]), OscillationConfig()) == []


def test_zigzag_finds_alternating_extremes():
    x = np.array([0.0, 1.0, 0.2, 1.2, 0.1, 1.1])
    assert zigzag(x, np.full(x.size, 0.5)) == [0, 1, 2, 3, 4, 5]
    assert zigzag(x, np.full(x.size, 5.0)) == [0]


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.oscillation.min_cycles"):
        OscillationConfig(min_cycles=1)
    with pytest.raises(ConfigError, match="detectors.oscillation.smooth_frac"):
        OscillationConfig(smooth_frac=0.7)
