"""loss_scale_collapse: the loss scale halving step after step or reaching its minimum."""

import pytest

from events_frames import with_events
from mldebug_ray.detectors.loss_scale_collapse import LossScaleCollapseConfig, loss_scale_collapse
from mldebug_ray.errors import ConfigError

MIN_SCALE_TB = (
    "Traceback (most recent call last): | File \"deepspeed/runtime/fp16/loss_scaler.py\", line 176, in update_scale | "
    "Exception: Current loss scale already at minimum - cannot decrease scale anymore. Exiting run."
)


def scale_rows(values, start=1, key="loss_scale"):
    return [(start + i, key, float(v)) for i, v in enumerate(values)]


def test_halving_every_step_down_to_the_minimum_is_critical(make_ev, well_formed):
    scales = [65536.0] * 60 + [65536.0 / 2**k for k in range(1, 17)]
    ev = make_ev(scale_rows(scales), params={"train.min_loss_scale": 1.0})
    found = loss_scale_collapse(ev, LossScaleCollapseConfig())
    assert [(f.severity, f.onset_step, f.end_step) for f in found] == [("critical", 61, 76)]
    assert any(ref.table == "params" for ref in found[0].evidence)
    well_formed(ev, found)


def test_megatron_collapse_of_five_halvings_still_falling_is_high(make_ev, well_formed):
    # BigScience tr8b-104B: 1048576 -> 32768 in 6 iterations (hysteresis holds one step).
    scales = [1048576.0, 1048576.0, 1048576.0, 524288.0, 262144.0, 131072.0, 131072.0, 65536.0, 32768.0]
    ev = make_ev(scale_rows(scales, start=17060, key="loss scale"))
    found = loss_scale_collapse(ev, LossScaleCollapseConfig())
    assert [(f.severity, f.onset_step) for f in found] == [("high", 17063)]
    well_formed(ev, found)


def test_first_overflow_event_dates_the_onset(make_ev, well_formed):
    scales = [1048576.0, 1048576.0, 1048576.0, 524288.0, 262144.0, 131072.0]
    ev = with_events(make_ev(scale_rows(scales, start=17060, key="loss scale")), [
        {"step": 17061, "kind": "overflow_skip", "text": "[deepscale] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 1048576.0, reducing to 1048576.0"},
        {"step": 17062, "kind": "overflow_skip", "text": "[deepscale] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 1048576.0, reducing to 524288.0"},
    ])
    found = loss_scale_collapse(ev, LossScaleCollapseConfig())
    assert [f.onset_step for f in found] == [17061]
    well_formed(ev, found)


def test_initial_calibration_and_isolated_backoffs_stay_silent(make_ev):
    # DeepSpeed starts at 2^32 and halves from the first step until one does not overflow;
    # later a GradScaler-style equilibrium: one backoff, growth after a clean stretch.
    calibration = [2.0**32 / 2**k for k in range(16)]
    steady = [65536.0] * 100 + [32768.0] * 100 + [65536.0] * 100 + [32768.0] * 50
    ev = make_ev(scale_rows(calibration + steady))
    assert loss_scale_collapse(ev, LossScaleCollapseConfig()) == []


def test_scaler_giving_up_is_critical_even_without_a_scale_metric(make_ev, well_formed):
    ev = with_events(make_ev(scale_rows([1.0, 1.0], key="lm loss")), [{"step": 77, "kind": "traceback", "text": MIN_SCALE_TB}])
    found = loss_scale_collapse(ev, LossScaleCollapseConfig())
    assert [(f.severity, f.onset_step) for f in found] == [("critical", 77)]
    assert "already at minimum" in found[0].evidence[-1].text
    well_formed(ev, found)


def test_scale_values_are_read_from_overflow_lines_when_not_logged_as_metric(make_ev):
    rows = [
        {"step": 100 + k, "kind": "overflow_skip", "text": f"Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to {65536.0 / 2**(k + 1)}"}
        for k in range(5)
    ]
    found = loss_scale_collapse(with_events(make_ev([(s, "loss", 2.0) for s in range(90, 110)]), rows), LossScaleCollapseConfig())
    assert len(found) == 1 and found[0].evidence[0].table == "events"


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.loss_scale_collapse.high_halvings"):
        LossScaleCollapseConfig(min_halvings=4, high_halvings=3)
    with pytest.raises(ConfigError, match="detectors.loss_scale_collapse.window_steps"):
        LossScaleCollapseConfig(window_steps=0)
