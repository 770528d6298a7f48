"""dead_units: fires on a mostly dead ReLU layer in the activations probe table, silent otherwise."""

from __future__ import annotations

import polars as pl
import pytest

from mldebug_ray import schema
from mldebug_ray.detectors.base import RunEvidence
from mldebug_ray.detectors.dead_units import DeadUnitsConfig, dead_units
from mldebug_ray.errors import ConfigError

RID = "sweep/run-0"


def _ev(rows: list[tuple]) -> RunEvidence:
    """rows: (step, layer, dead_frac, saturated_frac)."""
    frame = pl.DataFrame(
        [{"run_id": RID, "step": s, "layer": l, "dead_frac": d, "saturated_frac": sat, "mean": 0.1, "std": 1.0} for s, l, d, sat in rows],
        schema=schema.schema_of("activations"),
    )
    return RunEvidence(run_id=RID, activations=schema.validate("activations", frame))


def test_fires_on_a_layer_with_most_units_dead_at_the_newest_step(well_formed):
    ev = _ev([(100, "mlp.1", 0.3, None), (100, "mlp.3", 0.6, None), (200, "mlp.1", 0.2, None), (200, "mlp.3", 0.95, None), (200, "mlp.2", None, None)])
    (f,) = dead_units(ev, DeadUnitsConfig())
    assert f.kind == "dead_units" and f.severity == "high" and f.onset_step == 100 and f.end_step == 200
    assert "mlp.3" in f.summary and "1 of 2" in f.summary
    assert f.evidence[0].where == {"run_id": RID, "step": 200, "layer": "mlp.3"} and f.evidence[0].value == 0.95
    well_formed(ev, [f])


def test_silent_when_layers_recovered_or_never_died_or_there_is_no_probe():
    assert dead_units(_ev([(100, "mlp.1", 0.9, None), (200, "mlp.1", 0.1, None)]), DeadUnitsConfig()) == []
    assert dead_units(_ev([(100, "mlp.1", 0.5, None)]), DeadUnitsConfig()) == []  # exactly SageMaker's 50% is not more than it
    assert dead_units(_ev([(100, "mlp.1", None, 0.9)]), DeadUnitsConfig()) == []
    assert dead_units(RunEvidence(run_id=RID), DeadUnitsConfig()) == []


def test_medium_below_the_high_share_and_config_checks():
    (f,) = dead_units(_ev([(5, "act", 0.7, None)]), DeadUnitsConfig())
    assert f.severity == "medium" and f.onset_step == 5
    with pytest.raises(ConfigError, match="detectors.dead_units.max_dead_frac"):
        DeadUnitsConfig(max_dead_frac=1.5)
