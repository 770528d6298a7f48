"""lr_schedule_anomaly: zero, negative, stuck, jumping or early-collapsing learning rates."""

import numpy as np
import pytest

from mldebug_ray.detectors.lr_schedule_anomaly import LrScheduleAnomalyConfig, lr_schedule_anomaly
from mldebug_ray.errors import ConfigError


def lr_rows(values, key="lr", start=0):
    return [(start + i, key, float(v)) for i, v in enumerate(values)]


def warmup_cosine(n, peak=6e-4, warmup=100, floor=0.0):
    s = np.arange(n)
    warm = peak * s / warmup
    progress = np.clip((s - warmup) / max(n - 1 - warmup, 1), 0, 1)
    return np.where(s < warmup, warm, floor + (peak - floor) * 0.5 * (1 + np.cos(np.pi * progress)))


def test_planned_schedules_stay_silent(make_ev):
    cfg = LrScheduleAnomalyConfig()
    # warm-up from 0, cosine to exactly 0 at the last step (llm.c prints lr:0.000000 there)
    assert lr_schedule_anomaly(make_ev(lr_rows(np.round(warmup_cosine(19560), 6))), cfg) == []
    # ImageNet step schedule 0.1 -> 0.01 -> 0.001 (1% of the peak for the last third)
    assert lr_schedule_anomaly(make_ev(lr_rows([0.1] * 30 + [0.01] * 30 + [0.001] * 30)), cfg) == []
    # SGDR warm restarts back to the earlier peak
    restarts = np.concatenate([warmup_cosine(300, warmup=10, floor=1e-5)] * 3)
    assert lr_schedule_anomaly(make_ev(lr_rows(restarts)), cfg) == []
    # AlgoPerf logs the first 100 steps of a linear warm-up from 0
    assert lr_schedule_anomaly(make_ev(lr_rows(np.linspace(0, 0.18, 100))), cfg) == []


def test_lr_jumping_a_hundredfold_after_it_settled(make_ev, well_formed):
    ev = make_ev(lr_rows([0.005] * 120 + [0.5] * 80, key="learning_rate", start=1))
    found = lr_schedule_anomaly(ev, LrScheduleAnomalyConfig())
    assert [(f.severity, f.onset_step) for f in found] == [("high", 121)]
    well_formed(ev, found)


def test_negative_and_all_zero_learning_rates_are_critical(make_ev, well_formed):
    ev = make_ev(lr_rows(list(np.linspace(1e-3, 0, 80)) + list(np.linspace(-1e-5, -1e-4, 20))))
    found = lr_schedule_anomaly(ev, LrScheduleAnomalyConfig())
    assert ("critical", 80) in [(f.severity, f.onset_step) for f in found]
    well_formed(ev, found)
    zero = lr_schedule_anomaly(make_ev(lr_rows([0.0] * 50)), LrScheduleAnomalyConfig())
    assert [f.severity for f in zero] == ["critical"]


def test_schedule_ending_at_a_third_of_the_run_is_a_collapse(make_ev, well_formed):
    lr = list(warmup_cosine(1000, warmup=50)) + [0.0] * 2000  # T_max set for 1000 of 3000 steps
    ev = make_ev(lr_rows(lr))
    found = lr_schedule_anomaly(ev, LrScheduleAnomalyConfig())
    assert [f.severity for f in found] == ["high"]
    assert 950 <= found[0].onset_step <= 1000
    well_formed(ev, found)


def test_lr_dropping_to_zero_mid_run_and_back(make_ev):
    lr = [1e-3] * 100 + [0.0] * 10 + [1e-3] * 100
    assert [(f.onset_step, f.end_step) for f in lr_schedule_anomaly(make_ev(lr_rows(lr)), LrScheduleAnomalyConfig())] == [(100, 109)]


def test_constant_lr_under_a_cosine_schedule_is_stuck(make_ev, well_formed):
    ev = make_ev(lr_rows([3e-4] * 50), params={"lr_scheduler_type": "cosine"})
    found = lr_schedule_anomaly(ev, LrScheduleAnomalyConfig())
    assert [f.severity for f in found] == ["medium"]
    assert any(ref.table == "params" for ref in found[0].evidence)
    well_formed(ev, found)
    assert lr_schedule_anomaly(make_ev(lr_rows([3e-4] * 50), params={"optimizer.schedule": "constant"}), LrScheduleAnomalyConfig()) == []


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.lr_schedule_anomaly.jump_factor"):
        LrScheduleAnomalyConfig(jump_factor=1.0)
    with pytest.raises(ConfigError, match="detectors.lr_schedule_anomaly.floor_frac"):
        LrScheduleAnomalyConfig(floor_frac=0.0)
