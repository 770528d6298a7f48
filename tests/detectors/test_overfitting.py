"""overfitting: validation rises from its minimum while train keeps falling."""

import numpy as np
import pytest

from mldebug_ray.detectors.overfitting import OverfittingConfig, overfitting
from mldebug_ray.errors import ConfigError


def train_rows(rows, n=200):
    return rows(1.0 * np.exp(-np.arange(n) / 60.0) + 0.05, "train/loss")


def test_val_rising_after_its_minimum_while_train_falls_fires(make_ev, rows, well_formed):
    val = [1.0, 0.7, 0.5, 0.45, 0.44, 0.47, 0.52, 0.58, 0.63, 0.66]  # min at step 80
    ev = make_ev(train_rows(rows) + rows(val, "val/loss", every=20))
    found = overfitting(ev, OverfittingConfig())
    assert len(found) == 1
    f = found[0]
    assert (f.kind, f.onset_step) == ("overfitting", 80)
    assert f.severity in ("medium", "high")
    well_formed(ev, found)


def test_val_and_train_both_falling_stay_silent(make_ev, rows):
    val = list(np.linspace(1.0, 0.3, 10))
    assert overfitting(make_ev(train_rows(rows) + rows(val, "val/loss", every=20)), OverfittingConfig()) == []


def test_val_rising_while_train_rises_too_is_not_overfitting(make_ev, rows):
    train = rows(np.linspace(0.5, 0.8, 200), "train/loss")
    val = [1.0, 0.7, 0.5, 0.45, 0.44, 0.47, 0.52, 0.58, 0.63, 0.66]
    assert overfitting(make_ev(train + rows(val, "val/loss", every=20)), OverfittingConfig()) == []


def test_stalled_val_with_wide_gap_is_a_low_severity_signal(make_ev, rows):
    val = [1.0, 0.7, 0.5, 0.45, 0.44, 0.45, 0.46, 0.47, 0.475, 0.48]
    found = overfitting(make_ev(train_rows(rows) + rows(val, "val/loss", every=20)), OverfittingConfig())
    assert [f.severity for f in found] == ["low"]


def test_two_val_points_are_not_enough(make_ev, rows):
    assert overfitting(make_ev(train_rows(rows) + rows([0.4, 0.9], "val/loss", every=100)), OverfittingConfig()) == []


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.overfitting.rise_frac"):
        OverfittingConfig(rise_frac=-0.1)


def test_negative_train_loss_is_not_judged(make_ev, rows):
    # NLL on unnormalised logits goes negative: ratios to a minimum mean nothing there.
    val = [30.0, 25.0, 32.0, 60.0, 120.0]
    train = rows(-np.linspace(1, 4000, 100), "train/loss")
    assert overfitting(make_ev(train + rows(val, "val/loss", every=20)), OverfittingConfig()) == []
