"""Per-run outcomes: the outcome key by role, final and best levels, failures, steps to target."""

import math

import numpy as np
import polars as pl
import pytest

from mldebug_ray.errors import ConfigError
from mldebug_ray.sweep.grouping import GroupingConfig
from mldebug_ray.sweep.outcomes import OutcomeConfig
from mldebug_ray.sweep.view import build_view

from synthetic import Run, curve


def _view(sweep, runs, **outcome):
    return build_view(sweep(runs), GroupingConfig(), OutcomeConfig(**outcome))


def test_validation_loss_is_the_outcome_and_final_is_its_last_point(sweep):
    runs = [Run(f"g/seed{s}", val=curve(1.0 + 0.1 * s), train=list(np.linspace(3, 0.5, 200))) for s in range(3)]
    v = _view(sweep, runs)
    assert v.chosen["key"].to_list() == ["val/loss"]
    row = v.runs.filter(pl.col("run_id") == "g/seed1").row(0, named=True)
    assert row["final"] == pytest.approx(1.1)
    assert row["final_step"] == 1000 and row["final_value"] == pytest.approx(1.1)
    assert row["best"] == pytest.approx(1.1) and not row["failed"]


def test_train_loss_is_the_fallback_and_final_is_a_smoothed_tail(sweep):
    rng = np.random.default_rng(0)
    runs = [Run(f"g/seed{s}", train=list(2.0 + 0.1 * s + 0.05 * rng.normal(size=1000))) for s in range(3)]
    v = _view(sweep, runs)
    assert v.chosen["kind"].to_list() == ["train"]
    row = v.runs.filter(pl.col("run_id") == "g/seed2").row(0, named=True)
    tail = [r.train for r in runs][2][-20:]  # 2% of 1000 points
    assert row["final"] == pytest.approx(np.mean(tail))
    assert row["best"] == pytest.approx(min(np.mean(runs[2].train[i:i + 20]) for i in range(0, 1000, 20)))


def test_nan_end_critical_finding_unreadable_and_missing_metric_are_failures(sweep):
    runs = [
        Run("g/seed0", val=curve(1.0)),
        Run("g/seed1", val=curve(1.0)[:5] + [math.nan] * 5),
        Run("g/seed2", val=curve(1.0), findings=[("divergence", "critical", 300)]),
        Run("g/seed3", val=curve(1.0), findings=[("loss_spike", "medium", 300)]),
        Run("g/seed4", status="unreadable"),
        Run("g/seed5", train=[2.0, 1.9]),
    ]
    v = _view(sweep, runs)
    reasons = dict(zip(v.runs["run_id"].to_list(), v.runs["fail_reason"].to_list()))
    assert reasons["g/seed0"] is None and reasons["g/seed3"] is None
    assert "NaN/Inf from step 600" in reasons["g/seed1"]
    assert reasons["g/seed2"].startswith("divergence finding at step 300")
    assert reasons["g/seed4"] == "run unreadable"
    assert reasons["g/seed5"] == "never logged the outcome metric"
    failed = v.runs.filter(pl.col("failed"))
    assert failed.height == 4 and np.isinf(failed["y_final"].to_numpy()).all()


def test_a_score_outcome_is_oriented_so_lower_is_better(sweep):
    runs = [Run(f"g/seed{s}", val=[0.5, 0.7 + 0.1 * s], val_key="val/accuracy") for s in range(2)]
    v = _view(sweep, runs, metric_keys=["val/accuracy"], higher_is_better=True)
    ys = v.runs.sort("run_id")["y_final"].to_list()
    assert ys == pytest.approx([-0.7, -0.8])
    assert v.runs.sort("run_id")["best"].to_list() == pytest.approx([0.7, 0.8])


def test_steps_to_target_is_the_first_step_at_the_target(sweep):
    runs = [Run("g/seed0", val=[3, 2, 1.5, 1.2, 1.0]), Run("g/seed1", val=[3, 2.5, 2.2, 2.0, 1.9])]
    v = _view(sweep, runs, target_value=1.5)
    got = dict(zip(v.runs["run_id"].to_list(), v.runs["steps_to_target"].to_list()))
    assert got == {"g/seed0": 300, "g/seed1": None}


@pytest.mark.parametrize("field, value", [("tail_frac", 0.0), ("fail_severities", ["fatal"]), ("higher_is_better", True)])
def test_bad_outcome_settings_name_their_key(field, value):
    with pytest.raises(ConfigError, match=f"outcome.{field}"):
        OutcomeConfig(**{field: value})
