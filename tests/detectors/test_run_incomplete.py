"""run_incomplete: partial/unreadable runs and checkpoints, metrics short of a stated plan."""

import pytest

from mldebug_ray.detectors.run_incomplete import RunIncompleteConfig, run_incomplete
from mldebug_ray.errors import ConfigError


def ok_run(**kw):
    return {"path": "/runs/r0", "source_format": "jsonl", "status": "ok", "reason": None, "n_steps": 0, "last_step": None, **kw}


def test_metrics_stopping_well_short_of_max_steps_fire(make_ev, rows, well_formed):
    ev = make_ev(rows([2.0] * 40, every=10), params={"trainer.max_steps": 1000}, runs=[ok_run(n_steps=40, last_step=390)])
    found = run_incomplete(ev, RunIncompleteConfig())
    assert [(f.kind, f.severity, f.onset_step) for f in found] == [("run_incomplete", "medium", 390)]
    assert any(ref.table == "params" and ref.where["key"] == "trainer.max_steps" for ref in found[0].evidence)
    well_formed(ev, found)


def test_partial_run_and_unreadable_checkpoint_fire(make_ev, rows, well_formed):
    ev = make_ev(
        rows([2.0, 1.9]),
        runs=[ok_run(status="partial", reason="metrics.csv: truncated last line")],
        checkpoints=[{"step": 1, "path": "ckpt/last.ckpt", "format": "torch", "status": "unreadable", "reason": "weights_only load failed"}],
    )
    found = run_incomplete(ev, RunIncompleteConfig())
    assert sorted((f.severity, f.summary.split(" ")[0]) for f in found) == [("medium", "1"), ("medium", "run")]
    well_formed(ev, found)


def test_run_without_metrics_is_high(make_ev, well_formed):
    ev = make_ev(runs=[ok_run()])
    found = run_incomplete(ev, RunIncompleteConfig())
    assert [f.severity for f in found] == ["high"]
    well_formed(ev, found)


def test_short_run_without_a_stated_plan_stays_silent(make_ev, rows):
    # AlgoPerf trials stop when they reach the target: no plan, no finding.
    ev = make_ev(rows([2.0] * 10), params={"learning_rate": 0.1, "max_global_steps_hint": 10666}, runs=[ok_run()])
    assert run_incomplete(ev, RunIncompleteConfig()) == []


def test_run_that_reaches_its_plan_stays_silent(make_ev, rows):
    ev = make_ev(rows([2.0] * 100, every=10), params={"max_steps": 1000}, runs=[ok_run()])
    assert run_incomplete(ev, RunIncompleteConfig()) == []


def test_epoch_counter_short_of_num_train_epochs_fires(make_ev, rows, well_formed):
    ev = make_ev(rows([2.0] * 10) + rows([0.0, 0.5, 1.0, 1.5], "epoch"), params={"num_train_epochs": 10}, runs=[ok_run()])
    found = run_incomplete(ev, RunIncompleteConfig())
    assert len(found) == 1 and "epoch" in found[0].summary
    well_formed(ev, found)


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.run_incomplete.min_completed_frac"):
        RunIncompleteConfig(min_completed_frac=0.0)
