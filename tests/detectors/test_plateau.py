"""plateau: the loss never gets meaningfully below its start, or sits at chance level."""

import math

import numpy as np
import pytest

from mldebug_ray.detectors.plateau import PlateauConfig, plateau
from mldebug_ray.errors import ConfigError


def test_loss_stuck_at_chance_fires_and_cites_the_class_count(make_ev, rows, well_formed):
    rng = np.random.default_rng(0)
    loss = math.log(10) + 0.01 * rng.standard_normal(100)
    ev = make_ev(rows(loss, "train/loss"), params={"model.num_classes": 10, "lr": 0.0})
    found = plateau(ev, PlateauConfig())
    assert len(found) == 1
    f = found[0]
    assert (f.kind, f.severity, f.onset_step) == ("plateau", "high", 0)
    assert any(ref.table == "params" and ref.where["key"] == "model.num_classes" for ref in f.evidence)
    assert f.confidence >= 0.9
    well_formed(ev, found)


def test_flat_loss_without_class_count_fires(make_ev, rows, well_formed):
    rng = np.random.default_rng(1)
    ev = make_ev(rows(0.7 + 0.005 * rng.standard_normal(50)))
    found = plateau(ev, PlateauConfig())
    assert len(found) == 1
    well_formed(ev, found)


def test_learning_run_stays_silent(make_ev, rows):
    loss = 2.3 * np.exp(-np.arange(100) / 30.0) + 0.1
    assert plateau(make_ev(rows(loss), params={"num_classes": 10}), PlateauConfig()) == []


def test_fast_converging_run_is_not_stuck(make_ev, rows):
    # Converged within the first few % of the log, flat afterwards (like Pythia or criteo).
    loss = np.concatenate([[11.0, 7.0, 5.0, 3.5], np.full(500, 2.9)])
    assert plateau(make_ev(rows(loss)), PlateauConfig()) == []


def test_resumed_run_log_is_not_judged_from_the_start(make_ev, rows):
    assert plateau(make_ev(rows(np.full(50, 2.0), start=5000, every=20)), PlateauConfig()) == []


def test_too_few_points_stay_silent(make_ev, rows):
    assert plateau(make_ev(rows(np.full(10, 2.0))), PlateauConfig()) == []


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.plateau.edge_frac"):
        PlateauConfig(edge_frac=0.0)


def test_class_count_prefers_n_classes_over_an_input_vocabulary(make_ev, rows):
    rng = np.random.default_rng(2)
    loss = math.log(8) + 0.01 * rng.standard_normal(60)
    found = plateau(make_ev(rows(loss), params={"data.vocab_size": 1024, "data.n_classes": 8}), PlateauConfig())
    assert any(ref.table == "params" and ref.where["key"] == "data.n_classes" for ref in found[0].evidence)
