"""architecture_imbalance: parameter share by module type against per-type limits."""

import pytest

from mldebug_ray.detectors.architecture_imbalance import ArchitectureImbalanceConfig, architecture_imbalance
from mldebug_ray.errors import ConfigError


def layer(step, name, mtype, n):
    return {"step": step, "layer": name, "module_type": mtype, "n_params": n, "dtype": "float32",
            "norm_l2": 1.0, "mean": 0.0, "std": 0.02, "max_abs": 0.1, "zero_frac": 0.0, "nonfinite_frac": 0.0}


def test_embedding_holding_most_parameters_fires_and_cites_the_module_type_rows(make_ev, well_formed):
    layers = [
        layer(100, "tok_emb.weight", "embedding", 790_000),
        layer(100, "blocks.0.attn.qkv.weight", "attention", 70_000),
        layer(100, "blocks.0.mlp.fc.weight", "mlp", 140_000),
        layer(0, "tok_emb.weight", "embedding", 10),  # an older checkpoint is ignored
    ]
    ev = make_ev(layers=layers)
    found = architecture_imbalance(ev, ArchitectureImbalanceConfig())
    assert len(found) == 1
    f = found[0]
    assert (f.kind, f.severity) == ("architecture_imbalance", "medium")
    assert f.evidence[0].where == {"run_id": ev.run_id, "module_type": "embedding", "step": 100}
    assert f.evidence[0].value == pytest.approx(0.79)
    well_formed(ev, found)


def test_gpt2_like_shares_stay_silent(make_ev):
    layers = [
        layer(5, "wte.weight", "embedding", 38_600_000),
        layer(5, "attn", "attention", 28_300_000),
        layer(5, "mlp", "mlp", 56_600_000),
        layer(5, "ln", "norm", 38_000),
    ]
    assert architecture_imbalance(make_ev(layers=layers), ArchitectureImbalanceConfig()) == []


def test_mlp_only_network_stays_silent(make_ev):
    layers = [layer(1, "fc1", "mlp", 100_000), layer(1, "fc2", "mlp", 50_000), layer(1, "out", "head", 5_000)]
    assert architecture_imbalance(make_ev(layers=layers), ArchitectureImbalanceConfig()) == []


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.architecture_imbalance.embedding_max_share"):
        ArchitectureImbalanceConfig(embedding_max_share=1.5)
