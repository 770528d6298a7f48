"""loss_spike: jumps far above the recent median that come back."""

import numpy as np
import pytest

from mldebug_ray.detectors.loss_spike import LossSpikeConfig, loss_spike
from mldebug_ray.errors import ConfigError


def curve(n, seed=0, noise=0.02):
    rng = np.random.default_rng(seed)
    return 3.0 + 8.0 * np.exp(-np.arange(n) / 40.0) + noise * rng.standard_normal(n)


def test_one_step_spike_is_found_at_its_step_with_low_severity(make_ev, rows, well_formed):
    loss = curve(400)
    loss[250] *= 1.4  # like modded-nanogpt's data-induced spikes (~1.35x a 20-step median)
    ev = make_ev(rows(loss))
    found = loss_spike(ev, LossSpikeConfig())
    assert [(f.kind, f.onset_step, f.severity) for f in found] == [("loss_spike", 250, "low")]
    well_formed(ev, found)


def test_spike_recovering_over_several_points_is_medium(make_ev, rows, well_formed):
    loss = curve(300)
    loss[200:204] = [9.0, 7.0, 5.0, 3.2]
    ev = make_ev(rows(loss))
    found = loss_spike(ev, LossSpikeConfig())
    assert len(found) == 1 and found[0].severity == "medium" and found[0].onset_step == 200
    well_formed(ev, found)


def test_noisy_small_batch_run_without_spikes_stays_silent(make_ev, rows):
    # 12% noise: single points reach 1.3x the median; the MAD-scaled line rises with it.
    loss = curve(2000, seed=3, noise=0.36)
    assert loss_spike(make_ev(rows(loss)), LossSpikeConfig()) == []


def test_level_shift_that_does_not_come_back_is_not_a_spike(make_ev, rows):
    loss = np.concatenate([curve(200)[:100], np.full(100, 8.0)])
    assert loss_spike(make_ev(rows(loss)), LossSpikeConfig()) == []


def test_many_spikes_report_the_largest_and_one_summary(make_ev, rows, well_formed):
    loss = curve(1000)
    for i, step in enumerate(range(200, 1000, 100)):
        loss[step] *= 1.5 + 0.1 * i
    ev = make_ev(rows(loss))
    found = loss_spike(ev, LossSpikeConfig(max_reported=3))
    assert len(found) == 4
    assert sorted(f.onset_step for f in found[:3]) == [700, 800, 900]
    assert "5 more spike(s)" in found[3].summary
    well_formed(ev, found)


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.loss_spike.min_ratio"):
        LossSpikeConfig(min_ratio=1.0)
    with pytest.raises(ConfigError, match="detectors.loss_spike.splits"):
        LossSpikeConfig(splits=["holdout"])
