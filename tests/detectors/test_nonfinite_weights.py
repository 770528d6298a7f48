"""nonfinite_weights: any NaN/Inf in a scanned checkpoint is critical; finite checkpoints are silent."""

from __future__ import annotations

import pytest

from mldebug_ray.detectors.nonfinite_weights import NonfiniteWeightsConfig, nonfinite_weights
from mldebug_ray.errors import ConfigError


def _layer(step, layer, nonfinite, n=100):
    return {"step": step, "layer": layer, "module_type": "mlp", "n_params": n, "dtype": "float32", "norm_l2": 1.0, "mean": 0.0,
            "std": 1.0, "max_abs": 1.0, "zero_frac": 0.0, "nonfinite_frac": nonfinite}


def test_fires_at_the_first_checkpoint_with_nan_and_cites_the_worst_tensors(make_ev, well_formed):
    ev = make_ev(layers=[_layer(100, "a.weight", 0.0), _layer(200, "a.weight", 0.25), _layer(200, "b.weight", 1.0, 10),
                         _layer(300, "a.weight", 0.5), _layer(300, "b.weight", 0.0, 10)])
    (f,) = nonfinite_weights(ev, NonfiniteWeightsConfig())
    assert f.kind == "nonfinite_weights" and f.severity == "critical" and f.onset_step == 200 and f.end_step == 300
    assert [e.where["layer"] for e in f.evidence] == ["b.weight", "a.weight"]
    assert "~35 elements" in f.summary and "newest checkpoint still does" in f.summary
    well_formed(ev, [f])


def test_a_clean_newest_checkpoint_is_said_and_finite_runs_are_silent(make_ev):
    (f,) = nonfinite_weights(make_ev(layers=[_layer(1, "w", 0.1), _layer(2, "w", 0.0)]), NonfiniteWeightsConfig())
    assert "newest checkpoint is clean" in f.summary
    assert nonfinite_weights(make_ev(layers=[_layer(1, "w", 0.0), _layer(2, "w", 0.0)]), NonfiniteWeightsConfig()) == []
    assert nonfinite_weights(make_ev(), NonfiniteWeightsConfig()) == []
    with pytest.raises(ConfigError):
        NonfiniteWeightsConfig(max_cited_layers=0)
