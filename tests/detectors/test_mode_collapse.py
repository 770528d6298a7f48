"""mode_collapse: one output for every input, from logged diversity metrics or the outputs probe."""

import pytest

from events_frames import with_table
from mldebug_ray.detectors.mode_collapse import ModeCollapseConfig, mode_collapse
from mldebug_ray.errors import ConfigError


def evals(values, key="val_top1_share", every=20):
    return [((i + 1) * every, key, v, "val") for i, v in enumerate(values)]


def test_collapse_from_diverse_outputs_is_high_with_onset_after_the_last_diverse_eval(make_ev, well_formed):
    ev = make_ev(evals([0.16, 0.14, 1.0, 1.0, 1.0, 1.0]))
    found = mode_collapse(ev, ModeCollapseConfig())
    assert [(f.severity, f.onset_step, f.end_step) for f in found] == [("high", 60, 120)]
    assert [ref.where["step"] for ref in found[0].evidence] == [40, 60, 120]
    well_formed(ev, found)


def test_collapse_that_recovers_is_medium(make_ev):
    ev = make_ev(evals([0.2, 0.95, 0.3, 0.25], key="top1_frac"))
    assert [f.severity for f in mode_collapse(ev, ModeCollapseConfig())] == ["medium"]


def test_one_output_from_the_first_eval_is_low(make_ev):
    # A model that never learned (vanishing gradients): its plateau is the story.
    ev = make_ev(evals([1.0] * 5, key="val/top1_frac"))
    assert [(f.severity, f.onset_step) for f in mode_collapse(ev, ModeCollapseConfig())] == [("low", 20)]


def test_diverse_outputs_and_nan_loss_steps_stay_silent(make_ev):
    assert mode_collapse(make_ev(evals([0.2, 0.3, 0.25, 0.4])), ModeCollapseConfig()) == []
    # argmax over NaN logits is index 0 for every input: not a collapse of the model's outputs
    ev = make_ev(evals([0.2, 0.3, 1.0, 1.0]) + evals([2.0, 1.9, float("nan"), float("nan")], key="val_loss"))
    assert mode_collapse(ev, ModeCollapseConfig()) == []


def test_distinct_output_share_falling_fivefold(make_ev, well_formed):
    ev = make_ev(evals([0.6, 0.55, 0.05, 0.04], key="eval/distinct_frac"))
    found = mode_collapse(ev, ModeCollapseConfig())
    assert [(f.severity, f.onset_step) for f in found] == [("high", 60)]
    well_formed(ev, found)


def test_outputs_probe_table(make_ev, well_formed):
    ev = with_table(make_ev([(0, "loss", 1.0)]), "outputs", [
        {"step": 100, "distinct_frac": 0.5, "top1_frac": 0.2, "entropy_bits": 3.0},
        {"step": 200, "distinct_frac": 0.01, "top1_frac": 0.97, "entropy_bits": 0.1},
    ])
    found = mode_collapse(ev, ModeCollapseConfig())
    assert [f.onset_step for f in found] == [200] and found[0].evidence[0].table == "outputs"
    well_formed(ev, found)


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.mode_collapse"):
        ModeCollapseConfig(min_top1_frac=0.4, diverse_top1_frac=0.5)
    with pytest.raises(ConfigError, match="detectors.mode_collapse.distinct_drop"):
        ModeCollapseConfig(distinct_drop=1.0)
