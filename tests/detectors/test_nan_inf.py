"""nan_inf: the first NaN/Inf per key family, timing keys ignored."""

import math

import pytest

from mldebug_ray.detectors.nan_inf import NanInfConfig, nan_inf
from mldebug_ray.errors import ConfigError


def test_loss_turning_nan_is_critical_with_last_finite_and_first_nan_rows(make_ev, rows, well_formed):
    ev = make_ev(rows([2.0, 1.5, 1.2, 1.1, math.nan, math.nan]))
    found = nan_inf(ev, NanInfConfig())
    assert len(found) == 1
    f = found[0]
    assert (f.kind, f.severity, f.onset_step) == ("nan_inf", "critical", 4)
    assert [ref.where["step"] for ref in f.evidence] == [3, 4]
    well_formed(ev, found)


def test_timing_nan_and_finite_losses_stay_silent(make_ev, rows):
    ev = make_ev(rows([3.0, 2.5, 2.0]) + [(0, "step_avg", math.nan), (0, "train_time_ms", math.inf)])
    assert nan_inf(ev, NanInfConfig()) == []


def test_isolated_inf_grad_norm_with_finite_loss_is_not_critical(make_ev, rows, well_formed):
    grad = [1.0] * 30
    grad[10] = math.inf  # one fp16 overflow step skipped by the loss scaler
    ev = make_ev(rows([2.0 - 0.01 * i for i in range(30)]) + rows(grad, "grad_norm"))
    found = nan_inf(ev, NanInfConfig())
    assert [(f.severity, f.onset_step) for f in found] == [("medium", 10)]
    well_formed(ev, found)


def test_families_are_reported_separately(make_ev, rows):
    ev = make_ev(rows([2.0, math.nan], "train/loss") + rows([2.1, 2.0, math.inf], "val/loss", every=1))
    kinds = sorted((f.onset_step, f.evidence[-1].where["key"]) for f in nan_inf(ev, NanInfConfig()))
    assert kinds == [(1, "train/loss"), (2, "val/loss")]


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.nan_inf.max_families"):
        NanInfConfig(max_families=0)
