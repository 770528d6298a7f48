"""reproducibility: runs whose recorded configuration has no seed or no data version (kind reproducibility_gap)."""

import pytest

from mldebug_ray.errors import ConfigError
from mldebug_ray.sweep.reproducibility import ReproducibilityConfig, reproducibility

from synthetic import Run, curve


def test_runs_without_a_seed_get_a_low_finding_listing_them(sweep, evidence_holds, tmp_path):
    runs = [Run(f"s/trial_{t}", params={"lr": 0.1 * t, "data.version": "v2"}, val=curve(1.0)) for t in range(3)]
    found = reproducibility(sweep(runs), ReproducibilityConfig())
    assert [(f.kind, f.severity) for f in found] == [("reproducibility_gap", "low")]
    assert "no seed" in found[0].summary and len(found[0].run_ids) == 3
    evidence_holds(tmp_path / "out", found)


def test_runs_with_seed_and_data_version_stay_silent(sweep):
    runs = [Run(f"s/trial_{t}", params={"lr": 0.1, "seed": t, "dataset_revision": "abc"}, val=curve(1.0)) for t in range(3)]
    assert reproducibility(sweep(runs), ReproducibilityConfig()) == []


def test_runs_with_no_params_at_all_and_no_data_version(sweep):
    runs = [Run(f"70m-seed{s}", val=curve(2.8)) for s in range(2)]
    found = {f.severity: f for f in reproducibility(sweep(runs), ReproducibilityConfig())}
    assert set(found) == {"low", "info"}
    assert "no configuration" in found["low"].summary and "name a seed in their folder name" in found["low"].summary
    assert "no data version" in found["info"].summary


def test_bad_settings_name_their_key():
    with pytest.raises(ConfigError, match="detectors.reproducibility.max_runs_cited"):
        ReproducibilityConfig(max_runs_cited=0)
