"""update_ratio_anomaly: weights rewritten (ratio > 10) or frozen (< 1e-8 for most parameters) between checkpoints."""

from __future__ import annotations

import pytest

from mldebug_ray.detectors.update_ratio_anomaly import UpdateRatioAnomalyConfig, update_ratio_anomaly
from mldebug_ray.errors import ConfigError


def _layer(step, layer, ratio, n=1000, module_type="mlp", prev=100):
    return {"step": step, "layer": layer, "module_type": module_type, "n_params": n, "dtype": "float32", "norm_l2": 1.0, "mean": 0.0,
            "std": 1.0, "max_abs": 1.0, "zero_frac": 0.0, "nonfinite_frac": 0.0, "update_ratio": ratio,
            "update_from_step": prev if ratio is not None else None}


def test_a_weight_that_moved_far_more_than_its_norm_fires_high(make_ev, well_formed):
    ev = make_ev(layers=[_layer(100, "mlp.0.weight", None), _layer(200, "mlp.0.weight", 0.01), _layer(200, "mlp.2.weight", 35.0),
                         _layer(200, "mlp.2.bias", 500.0, n=1000), _layer(200, "norm.weight", 80.0, module_type="norm"),
                         _layer(200, "tiny.weight", 90.0, n=4)])
    (f,) = update_ratio_anomaly(ev, UpdateRatioAnomalyConfig())
    assert f.severity == "high" and f.onset_step == 100 and f.end_step == 200
    assert [e.where["layer"] for e in f.evidence] == ["mlp.2.weight"]  # biases, norms and tiny tensors are not judged
    assert "0.35 per step" in f.summary
    well_formed(ev, [f])


def test_most_weights_frozen_fires_medium_but_a_frozen_minority_is_silent(make_ev, well_formed):
    frozen = make_ev(layers=[_layer(200, "embed.weight", 0.0, n=8000), _layer(200, "mlp.0.weight", 1e-10, n=1000), _layer(200, "head.weight", 0.02, n=1000)])
    (f,) = update_ratio_anomaly(frozen, UpdateRatioAnomalyConfig())
    assert f.severity == "medium" and "90% of the judged weights did not change" in f.summary
    assert f.evidence[0].where["layer"] == "embed.weight"
    well_formed(frozen, [f])
    minority = make_ev(layers=[_layer(200, "embed.weight", 0.0, n=1000), _layer(200, "mlp.0.weight", 0.01, n=8000)])
    assert update_ratio_anomaly(minority, UpdateRatioAnomalyConfig()) == []


def test_healthy_ratios_and_missing_ratios_are_silent(make_ev):
    healthy = make_ev(layers=[_layer(200, f"mlp.{i}.weight", r) for i, r in enumerate([1e-4, 3e-3, 0.2, 2.0])])
    assert update_ratio_anomaly(healthy, UpdateRatioAnomalyConfig()) == []
    assert update_ratio_anomaly(make_ev(layers=[_layer(100, "w", None)]), UpdateRatioAnomalyConfig()) == []
    assert update_ratio_anomaly(make_ev(), UpdateRatioAnomalyConfig()) == []
    with pytest.raises(ConfigError):
        UpdateRatioAnomalyConfig(min_ratio=20.0)
