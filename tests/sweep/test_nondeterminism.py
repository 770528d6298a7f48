"""nondeterminism: the same configuration and seed with curves that differ beyond tolerance."""

import pytest

from mldebug_ray.errors import ConfigError
from mldebug_ray.sweep.nondeterminism import NondeterminismConfig, nondeterminism

from synthetic import Run, curve


def reruns(second_final: float, seed2: int = 0):
    return [
        Run("exp/run_1", params={"lr": 0.1, "seed": 0}, val=curve(2.0)),
        Run("exp/run_2", params={"lr": 0.1, "seed": seed2}, val=curve(second_final)),
        Run("exp/run_3", params={"lr": 0.2, "seed": 0}, val=curve(2.5)),
    ]


def test_same_config_and_seed_with_different_curves_fires(sweep, evidence_holds, tmp_path):
    found = nondeterminism(sweep(reruns(2.1)), NondeterminismConfig())
    assert len(found) == 1
    f = found[0]
    assert f.kind == "nondeterminism" and set(f.run_ids) == {"exp/run_1", "exp/run_2"}
    assert f.severity == "medium"  # final values 5% apart
    assert [e.where["run_id"] for e in f.evidence] == ["exp/run_1", "exp/run_2"]
    evidence_holds(tmp_path / "out", found)


def test_bitwise_identical_reruns_stay_silent(sweep):
    assert nondeterminism(sweep(reruns(2.0)), NondeterminismConfig()) == []


def test_different_seeds_are_not_compared(sweep):
    assert nondeterminism(sweep(reruns(2.1, seed2=1)), NondeterminismConfig()) == []


def test_studies_are_repeats_not_seeds_so_they_are_never_compared(sweep):
    runs = [Run(f"sub/study_{s}/wl/trial_1", params={"lr": 0.1}, val=curve(2.0 + 0.1 * s)) for s in range(3)]
    assert nondeterminism(sweep(runs), NondeterminismConfig()) == []


@pytest.mark.parametrize("field, value", [("rtol", 0.0), ("min_common_steps", 0), ("final_rtol", -1.0)])
def test_bad_settings_name_their_key(field, value):
    with pytest.raises(ConfigError, match=f"detectors.nondeterminism.{field}"):
        NondeterminismConfig(**{field: value})
