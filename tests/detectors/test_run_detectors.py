"""The registry and runner: every detector registered, enabled ones run, a broken one is isolated."""

import pytest
from omegaconf import OmegaConf

from mldebug_ray.detectors import DETECTORS, SWEEP_DETECTORS, DetectorsConfig, run_detectors
from mldebug_ray.detectors.base import Detector
from mldebug_ray.errors import ConfigError

NAMES = [
    "nan_inf", "divergence", "loss_spike", "grad_norm_spike", "plateau", "overfitting", "architecture_imbalance",
    "run_incomplete", "exploding_gradients", "vanishing_gradients", "loss_scale_collapse", "fp16_overflow",
    "mode_collapse", "oscillation", "lr_schedule_anomaly", "eval_on_train", "catastrophic_forgetting",
    "memory_pressure", "known_error",
]


def test_every_detector_is_registered_with_a_config_field():
    cfg = DetectorsConfig()
    for name in NAMES:
        assert name in DETECTORS
        assert hasattr(cfg, DETECTORS[name].config_key)
    assert "slow_convergence" in SWEEP_DETECTORS
    assert cfg.enabled[: len(NAMES) + 1] == NAMES + ["slow_convergence"]
    for name in cfg.enabled:  # run-level or sweep-level, each with its config field
        entry = DETECTORS.get(name) or SWEEP_DETECTORS[name]
        assert hasattr(cfg, entry.config_key)


def test_a_detector_that_raises_is_reported_and_the_others_still_run(make_ev, rows, monkeypatch):
    def broken(ev, cfg):
        raise RuntimeError("boom")

    monkeypatch.setitem(DETECTORS, "plateau", Detector("plateau", broken, "plateau"))
    ev = make_ev(rows([2.0, 1.0, float("nan")]))
    findings, problems = run_detectors(ev, DetectorsConfig())
    assert problems == ["plateau: RuntimeError: boom"]
    assert any(f.kind == "nan_inf" for f in findings)


def test_only_enabled_detectors_run(make_ev, rows):
    ev = make_ev(rows([2.0, 1.0, float("nan")]))
    findings, problems = run_detectors(ev, DetectorsConfig(enabled=["plateau"]))
    assert findings == [] and problems == []


def test_unknown_enabled_name_is_rejected_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.enabled"):
        DetectorsConfig(enabled=["nope"])


def test_config_works_as_a_hydra_structured_config_with_overrides():
    base = OmegaConf.structured(DetectorsConfig)
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(["loss_spike.min_ratio=1.5", "enabled=[nan_inf,loss_spike]"]))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, DetectorsConfig)
    assert cfg.loss_spike.min_ratio == 1.5 and cfg.enabled == ["nan_inf", "loss_spike"]
    with pytest.raises(ConfigError, match="detectors.loss_spike.min_ratio"):
        OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.from_dotlist(["loss_spike.min_ratio=0.5"])))
