"""hp_instability_boundary: the value beyond which runs fail, with runs cited on both sides."""

import math

import numpy as np
import pytest

from mldebug_ray.errors import ConfigError
from mldebug_ray.sweep.hp_instability_boundary import HpInstabilityBoundaryConfig, hp_instability_boundary

from synthetic import Run, curve

NAN_TAIL = [math.nan] * 5


def lr_sweep(fail_above=1.0, seeds=3, crash=False):
    runs = []
    for lr in (1e-3, 3e-3, 1e-2, 1.0, 3.0):
        for s in range(seeds):
            rid = f"sw/lr{lr}_seed{s}"
            if lr >= fail_above and crash:
                runs.append(Run(rid, params={"lr": lr, "seed": s}, status="unreadable"))
            elif lr >= fail_above:
                runs.append(Run(rid, params={"lr": lr, "seed": s}, val=curve(2.0)[:5] + NAN_TAIL))
            else:
                runs.append(Run(rid, params={"lr": lr, "seed": s}, val=curve(2.0 + lr)))
    return runs


def test_learning_rate_above_which_runs_diverge_is_found_with_both_sides_cited(sweep, evidence_holds, tmp_path):
    found = hp_instability_boundary(sweep(lr_sweep()), HpInstabilityBoundaryConfig())
    assert len(found) == 1
    f = found[0]
    assert (f.kind, f.scope, f.severity) == ("hp_instability_boundary", "sweep", "high")
    assert "lr ≥ 1 fail: 6/6" in f.summary and "0/9 runs with lr ≤ 0.01 fail" in f.summary
    assert "Fisher exact p" in f.summary
    params = [(e.where["run_id"], e.value) for e in f.evidence if e.table == "params"]
    assert {v for _, v in params} == {1.0, 0.01}
    assert len(f.run_ids) == 6
    evidence_holds(tmp_path / "out", found)


def test_crashed_runs_count_as_failures(sweep):
    found = hp_instability_boundary(sweep(lr_sweep(crash=True)), HpInstabilityBoundaryConfig())
    assert len(found) == 1 and "run unreadable" in found[0].summary


def test_failures_scattered_across_values_are_not_a_boundary(sweep):
    runs = lr_sweep(fail_above=99)
    for r in runs:
        if r.run_id in ("sw/lr0.001_seed0", "sw/lr1.0_seed1"):
            r.val = curve(2.0)[:5] + NAN_TAIL
    assert hp_instability_boundary(sweep(runs), HpInstabilityBoundaryConfig()) == []


def test_one_failed_run_is_an_accident_not_a_boundary(sweep):
    runs = lr_sweep(fail_above=99)
    runs[-1].val = curve(2.0)[:5] + NAN_TAIL
    assert hp_instability_boundary(sweep(runs), HpInstabilityBoundaryConfig()) == []


def test_a_lower_boundary_is_found_too(sweep):
    runs = []
    for warmup in (0, 10, 100, 1000):
        for s in range(3):
            val = curve(2.0)[:3] + NAN_TAIL if warmup <= 10 else curve(2.0)
            runs.append(Run(f"w/warmup{warmup}_seed{s}", params={"warmup_steps": warmup, "seed": s}, val=val))
    found = hp_instability_boundary(sweep(runs), HpInstabilityBoundaryConfig())
    assert len(found) == 1 and "warmup_steps ≤ 10 fail: 6/6" in found[0].summary


def test_confounded_keys_are_named_with_the_learning_rate_first(sweep, evidence_holds, tmp_path):
    """AlgoPerf shampoo-like: trial_3 (learning_rate 4.2, one_minus_beta1 1.0, grafting SGD) diverges in every study."""
    trials = {1: (1.7e-3, 0.067, "ADAM"), 2: (1.4e-3, 0.025, "ADAM"), 3: (4.199, 1.0, "SGD"), 4: (1.2e-3, 0.017, "ADAM"), 5: (1.3e-3, 0.027, "ADAM")}
    rng = np.random.default_rng(0)
    runs = []
    for study in range(5):
        for t, (lr, b1, graft) in trials.items():
            val = curve(2.0)[:4] + NAN_TAIL if t == 3 else curve(0.124 + 0.0002 * rng.normal())
            runs.append(Run(f"shampoo/study_{study}/criteo/trial_{t}",
                            params={"learning_rate": lr, "one_minus_beta1": b1, "grafting_type": graft}, val=val,
                            findings=[("nan_inf", "critical", 60)] if t == 3 else []))
    found = hp_instability_boundary(sweep(runs), HpInstabilityBoundaryConfig())
    assert len(found) == 1
    f = found[0]
    assert "learning_rate ≥ 4.199 fail: 5/5" in f.summary and "0/20" in f.summary
    assert "In 5 of 5 repeats" in f.summary
    assert "one_minus_beta1" in f.summary and "grafting_type=SGD" in f.summary
    assert [e.where["key"] for e in f.evidence if e.table == "params"][:2] == ["learning_rate", "learning_rate"]
    assert any(e.table == "findings" for e in f.evidence)  # the failing runs' nan_inf findings
    evidence_holds(tmp_path / "out", found)


@pytest.mark.parametrize("field, value", [("min_failures", 0), ("min_fail_frac", 1.5), ("max_fail_frac_inside", 0.9), ("alpha", 1.0)])
def test_bad_settings_name_their_key(field, value):
    with pytest.raises(ConfigError, match=f"detectors.hp_instability_boundary.{field}"):
        HpInstabilityBoundaryConfig(**{field: value})
