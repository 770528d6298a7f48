"""vanishing_gradients: AutoTrainer's first/last ratio and first-layer norm; placeholders ignored."""

import numpy as np
import pytest

from events_frames import with_table
from mldebug_ray.detectors.vanishing_gradients import VanishingGradientsConfig, vanishing_gradients
from mldebug_ray.errors import ConfigError


def layer_rows(values_by_layer, key="grad_norm/{}"):
    rows = []
    for layer, values in values_by_layer.items():
        rows += [(i + 1, key.format(layer), float(v), None) for i, v in enumerate(values)]
    return rows


def test_first_layer_starved_of_gradient_fires_from_the_start(make_ev, well_formed):
    n = 50
    rng = np.random.default_rng(0)
    # Names sort `head` before `mlp` alphabetically: the order must come from the names' meaning.
    values = {
        "mlp.0.weight": 5e-10 * (1 + 0.1 * rng.standard_normal(n)),
        "mlp.0.bias": 5e-11 * np.ones(n),
        "mlp.10.weight": 1e-5 * np.ones(n),
        "mlp.2.weight": 3e-9 * np.ones(n),
        "head.weight": 0.3 * np.ones(n),
    }
    ev = make_ev(layer_rows(values))
    found = vanishing_gradients(ev, VanishingGradientsConfig())
    assert [(f.severity, f.onset_step) for f in found] == [("high", 1)]
    assert "mlp.0.weight" in found[0].summary and "head.weight" in found[0].summary
    well_formed(ev, found)


def test_small_but_balanced_gradients_are_not_vanishing(make_ev):
    # All norms ~1e-5: below AutoTrainer's first-layer bound but the ratio is ~1.
    values = {name: 1e-5 * np.ones(30) for name in ("mlp.0.weight", "mlp.2.weight", "head.weight")}
    assert vanishing_gradients(make_ev(layer_rows(values)), VanishingGradientsConfig()) == []


def test_megatron_placeholder_zero_norms_are_not_vanishing(make_ev):
    # `grad norm: 0.000` lines: the norm was not computed.
    zeros = {name: np.zeros(30) for name in ("layers.0.weight", "layers.1.weight", "output_layer.weight")}
    assert vanishing_gradients(make_ev(layer_rows(zeros)), VanishingGradientsConfig()) == []
    # and the global `grad norm` key is never per-layer evidence
    assert vanishing_gradients(make_ev([(s, "grad norm", 0.0) for s in range(30)]), VanishingGradientsConfig()) == []


def test_a_late_short_dip_is_not_a_vanishing_trend(make_ev):
    n = 100
    first = np.full(n, 0.1)
    first[95:] = 1e-6
    values = {"mlp.0.weight": first, "head.weight": np.full(n, 0.5)}
    assert vanishing_gradients(make_ev(layer_rows(values)), VanishingGradientsConfig()) == []


def test_probe_max_abs_below_sagemaker_threshold_fires(make_ev, well_formed):
    ev = make_ev([(0, "loss", 1.0)])
    with_table(ev, "gradients", [
        {"step": 100, "layer": "embed.weight", "grad_norm_l2": 0.0, "grad_max_abs": 5e-8},
        {"step": 100, "layer": "head.weight", "grad_norm_l2": 0.0, "grad_max_abs": 0.2},
    ])
    found = vanishing_gradients(ev, VanishingGradientsConfig())
    assert [f.onset_step for f in found] == [100] and found[0].evidence[0].table == "gradients"
    well_formed(ev, found)


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.vanishing_gradients.max_ratio"):
        VanishingGradientsConfig(max_ratio=2.0)
    with pytest.raises(ConfigError, match="detectors.vanishing_gradients.sustain_frac"):
        VanishingGradientsConfig(sustain_frac=0.0)
