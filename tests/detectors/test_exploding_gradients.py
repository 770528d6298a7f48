"""exploding_gradients: per-layer norms growing without bound, or an extreme first/last ratio."""

import numpy as np
import pytest

from events_frames import with_table
from mldebug_ray.detectors.exploding_gradients import ExplodingGradientsConfig, exploding_gradients
from mldebug_ray.errors import ConfigError

LAYERS = ["embed.weight", "mlp.0.weight", "mlp.2.weight", "head.weight", "head.bias"]


def layer_rows(values_by_layer):
    rows = []
    for layer, values in values_by_layer.items():
        rows += [(i + 1, f"grad_norm/{layer}", float(v), None) for i, v in enumerate(values)]
    return rows


def steady(n, level, seed):
    return level * (1 + 0.05 * np.random.default_rng(seed).standard_normal(n))


def test_layer_norms_growing_a_hundredfold_then_nan_are_critical(make_ev, well_formed):
    n = 120
    growth = np.concatenate([np.ones(40), np.geomspace(1, 2000, n - 50), np.full(10, np.nan)])
    values = {name: steady(n, 1.0 + i, i) * growth for i, name in enumerate(LAYERS)}
    ev = make_ev(layer_rows(values))
    found = exploding_gradients(ev, ExplodingGradientsConfig())
    assert [f.severity for f in found] == ["critical"]
    f = found[0]
    assert 40 <= f.onset_step <= 60, f.onset_step
    assert f.end_step == 111  # first NaN
    assert any(ref.where["key"].startswith("grad_norm/") for ref in f.evidence)
    well_formed(ev, found)


def test_sustained_growth_without_nan_is_high(make_ev):
    n = 100
    growth = np.geomspace(1, 500, n)
    ev = make_ev(layer_rows({name: steady(n, 1.0, i) * growth for i, name in enumerate(LAYERS)}))
    assert [f.severity for f in exploding_gradients(ev, ExplodingGradientsConfig())] == ["high"]


def test_first_layer_seventy_times_the_last_is_exploding_by_ratio(make_ev, well_formed):
    n = 60
    ev = make_ev(layer_rows({"mlp.0.weight": steady(n, 100.0, 1), "mlp.4.weight": steady(n, 10.0, 2), "head.weight": steady(n, 1.0, 3)}))
    found = exploding_gradients(ev, ExplodingGradientsConfig())
    assert [(f.severity, f.onset_step) for f in found] == [("high", 1)]
    assert "mlp.0.weight" in found[0].summary and "head.weight" in found[0].summary
    well_formed(ev, found)


def test_healthy_layers_a_warmup_rise_and_a_one_step_blip_stay_silent(make_ev):
    n = 200
    values = {name: steady(n, 1.0 + i, i) * np.linspace(1, 3, n) for i, name in enumerate(LAYERS)}
    values["mlp.2.weight"][120] = 5000.0  # a single spike: the grad_norm_spike detector's case
    assert exploding_gradients(make_ev(layer_rows(values)), ExplodingGradientsConfig()) == []


def test_placeholder_zero_layer_norms_are_ignored(make_ev):
    n = 50
    values = {name: np.zeros(n) for name in LAYERS}
    values["mlp.0.weight"][-1] = 1000.0
    assert exploding_gradients(make_ev(layer_rows(values)), ExplodingGradientsConfig()) == []


def test_gradient_probe_table_is_used_when_no_metric_logs_layers(make_ev):
    ev = make_ev([(s, "loss", 1.0) for s in range(10)])
    rows = []
    for step, scale in zip(range(0, 1000, 100), np.geomspace(1, 1e4, 10)):
        rows += [{"step": step, "layer": layer, "grad_norm_l2": float(scale)} for layer in LAYERS]
    with_table(ev, "gradients", rows)
    found = exploding_gradients(ev, ExplodingGradientsConfig(min_points=5))
    assert found and all(ref.table == "gradients" for ref in found[0].evidence)


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.exploding_gradients.growth_factor"):
        ExplodingGradientsConfig(growth_factor=0.5)
    with pytest.raises(ConfigError, match="detectors.exploding_gradients.growth_factor_nonfinite"):
        ExplodingGradientsConfig(growth_factor=10.0, growth_factor_nonfinite=50.0)
    with pytest.raises(ConfigError, match="detectors.exploding_gradients.min_points"):
        ExplodingGradientsConfig(min_points=1)
