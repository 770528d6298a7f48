"""fp16_overflow: bursts of overflow-skipped steps from events or skip counters."""

import pytest

from events_frames import with_events, with_table
from mldebug_ray.detectors.fp16_overflow import Fp16OverflowConfig, fp16_overflow, skip_key
from mldebug_ray.errors import ConfigError


def overflow(step, scale):
    return {"step": step, "kind": "overflow_skip", "text": f"[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: {scale}, reducing to {scale / 2}"}


def test_burst_of_overflow_lines_to_the_end_is_high(make_ev, well_formed):
    ev = with_events(make_ev([(s, "train_loss", 1.0) for s in range(1, 78)]), [overflow(60 + k, 65536 / 2**k) for k in range(1, 17)])
    found = fp16_overflow(ev, Fp16OverflowConfig())
    assert [(f.severity, f.onset_step, f.end_step) for f in found] == [("high", 61, 76)]
    well_formed(ev, found)


def test_three_skips_mid_run_that_stop_are_medium(make_ev):
    ev = with_events(make_ev([(s, "loss", 1.0) for s in range(0, 1000, 10)]), [overflow(s, 1024) for s in (500, 503, 507)])
    assert [(f.severity, f.onset_step) for f in fp16_overflow(ev, Fp16OverflowConfig())] == [("medium", 500)]


def test_calibration_and_isolated_skips_stay_silent(make_ev):
    calibration = [overflow(k, 2.0**32 / 2**k) for k in range(1, 17)]
    isolated = [overflow(s, 65536) for s in (2100, 4300, 6500, 8800)]
    ev = with_events(make_ev([(s, "loss", 1.0) for s in range(0, 10000, 100)]), calibration + isolated)
    assert fp16_overflow(ev, Fp16OverflowConfig()) == []


def test_cumulative_skip_counter_gives_the_skipped_steps(make_ev, well_formed):
    rows = [(s, "skipped", 0.0) for s in range(1, 50)] + [(50 + k, "skipped", float(k + 1)) for k in range(6)]
    ev = make_ev(rows)
    found = fp16_overflow(ev, Fp16OverflowConfig())
    assert [(f.onset_step, f.end_step) for f in found] == [(50, 55)]
    well_formed(ev, found)


def test_megatron_interval_counter_counts_its_interval(make_ev):
    # `number of skipped iterations: N` per 10-iteration logging interval; the BigScience
    # tr8b excerpt logs 0 despite the skips, which proves nothing either way.
    ev = make_ev([(s, "number of skipped iterations", 0.0) for s in range(1000, 1100, 10)] + [(1100, "number of skipped iterations", 4.0)])
    assert [f.onset_step for f in fp16_overflow(ev, Fp16OverflowConfig())] == [1100]
    assert skip_key("number of skipped iterations") and not skip_key("skipped_tokens_frac")


def test_precision_probe_overflow_fraction(make_ev, well_formed):
    ev = with_table(make_ev([(0, "loss", 1.0)]), "precision", [{"step": 200, "dtype": "float16", "layer": "mlp.0", "overflow_frac": 0.02}])
    found = fp16_overflow(ev, Fp16OverflowConfig())
    assert [f.onset_step for f in found] == [200] and found[0].evidence[0].table == "precision"
    well_formed(ev, found)


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.fp16_overflow.min_burst"):
        Fp16OverflowConfig(min_burst=1)
    with pytest.raises(ConfigError, match="detectors.fp16_overflow.high_burst"):
        Fp16OverflowConfig(min_burst=4, high_burst=3)
