"""seed_sensitivity: seed noise against configuration differences, and seeds that stray from their siblings."""

import math

import numpy as np
import pytest

from mldebug_ray.errors import ConfigError
from mldebug_ray.sweep.seed_sensitivity import SeedSensitivityConfig, seed_sensitivity

from synthetic import Run, curve


def grid(effect: float, noise: float, n_configs=4, n_seeds=4, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Run(f"exp/cfg{c}_seed{s}", params={"lr": 10.0 ** -c, "seed": s}, val=curve(1.0 + effect * c + noise * rng.normal()))
        for c in range(n_configs)
        for s in range(n_seeds)
    ]


def test_seed_noise_as_large_as_the_configuration_effects_fires(sweep, evidence_holds, tmp_path):
    found = seed_sensitivity(sweep(grid(effect=0.002, noise=0.05)), SeedSensitivityConfig())
    group = [f for f in found if f.scope == "sweep"]
    assert len(group) == 1
    f = group[0]
    assert f.kind == "seed_sensitivity" and len(f.run_ids) == 16
    assert "seed noise is" in f.summary and "bootstrap CI" in f.summary and "stays best in only" in f.summary
    evidence_holds(tmp_path / "out", found)


def test_configurations_far_apart_relative_to_seeds_stay_silent(sweep):
    assert seed_sensitivity(sweep(grid(effect=0.5, noise=0.01)), SeedSensitivityConfig()) == []


def test_a_seed_far_behind_its_siblings_gets_a_run_finding(sweep, evidence_holds, tmp_path):
    finals = {1: 2.796, 2: 3.171, 3: 2.888, 4: 2.932}  # Pythia 70m, mean of the last 1000 steps
    runs = [Run(f"pythia/70m-seed{s}", val=curve(v)) for s, v in finals.items()]
    found = seed_sensitivity(sweep(runs), SeedSensitivityConfig())
    per_run = [f for f in found if f.scope == "run"]
    assert [f.run_id for f in per_run] == ["pythia/70m-seed2"]
    assert "worse than the median" in per_run[0].summary
    sweep_level = [f for f in found if f.scope == "sweep"]
    assert len(sweep_level) == 1 and sweep_level[0].severity == "medium"
    assert "pythia/70m-seed2" in sweep_level[0].summary
    evidence_holds(tmp_path / "out", found)


def test_tight_seeds_of_one_configuration_stay_silent(sweep):
    runs = [Run(f"m/seed{s}", val=curve(v)) for s, v in enumerate([2.80, 2.81, 2.79, 2.805, 2.80])]
    assert seed_sensitivity(sweep(runs), SeedSensitivityConfig()) == []


def test_failed_runs_are_left_out_not_counted_as_outliers(sweep):
    runs = [Run(f"m/seed{s}", val=curve(v)) for s, v in enumerate([2.80, 2.81, 2.79, 2.805])]
    runs.append(Run("m/seed9", val=curve(2.8)[:5] + [math.nan] * 5))
    assert seed_sensitivity(sweep(runs), SeedSensitivityConfig()) == []


def test_two_siblings_are_too_few_to_call_an_outlier(sweep):
    runs = [Run(f"m/seed{s}", val=curve(v)) for s, v in enumerate([2.0, 2.01, 2.3])]
    found = seed_sensitivity(sweep(runs), SeedSensitivityConfig())
    assert [f for f in found if f.scope == "run"] == []
    assert [f.severity for f in found] == ["low"]  # the spread (14%) is still reported


@pytest.mark.parametrize("field, value", [("seed_share", 1.0), ("outlier_z", 0), ("measure", "mean"), ("n_boot", 10)])
def test_bad_settings_name_their_key(field, value):
    with pytest.raises(ConfigError, match=f"detectors.seed_sensitivity.{field}"):
        SeedSensitivityConfig(**{field: value})
