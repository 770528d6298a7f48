"""saturated_activations: fires on sigmoid/tanh layers pinned at their limits, silent otherwise."""

from __future__ import annotations

import polars as pl
import pytest

from mldebug_ray import schema
from mldebug_ray.detectors.base import RunEvidence
from mldebug_ray.detectors.saturated_activations import SaturatedActivationsConfig, saturated_activations
from mldebug_ray.errors import ConfigError

RID = "sweep/run-0"


def _ev(rows: list[tuple]) -> RunEvidence:
    frame = pl.DataFrame(
        [{"run_id": RID, "step": s, "layer": l, "dead_frac": None, "saturated_frac": sat, "mean": 0.0, "std": 1.0} for s, l, sat in rows],
        schema=schema.schema_of("activations"),
    )
    return RunEvidence(run_id=RID, activations=frame)


def test_fires_when_most_inputs_are_in_the_flat_region(well_formed):
    ev = _ev([(10, "enc.tanh", 0.55), (20, "enc.tanh", 0.97), (20, "dec.sigmoid", 0.6), (20, "dec.other", 0.1)])
    (f,) = saturated_activations(ev, SaturatedActivationsConfig())
    assert f.kind == "saturated_activations" and f.severity == "high" and f.onset_step == 10
    assert [e.where["layer"] for e in f.evidence[:2]] == ["enc.tanh", "dec.sigmoid"]
    assert "2 of 3" in f.summary
    well_formed(ev, [f])


def test_silent_below_half_and_without_the_probe():
    assert saturated_activations(_ev([(10, "t", 0.2), (20, "t", 0.49)]), SaturatedActivationsConfig()) == []
    assert saturated_activations(_ev([(10, "t", 0.9), (20, "t", 0.1)]), SaturatedActivationsConfig()) == []
    assert saturated_activations(RunEvidence(run_id=RID), SaturatedActivationsConfig()) == []
    with pytest.raises(ConfigError, match="high_saturated_frac"):
        SaturatedActivationsConfig(max_saturated_frac=0.6, high_saturated_frac=0.5)
