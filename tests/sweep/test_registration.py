"""The sweep detectors are registered once, configured through DetectorsConfig, and import in any order."""

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from mldebug_ray.detectors import SWEEP_DETECTORS, DetectorsConfig, run_sweep_detectors
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import KINDS
from mldebug_ray.sweep import SWEEP_DETECTOR_NAMES

from synthetic import Run, curve


def test_every_sweep_detector_is_registered_enabled_and_configured():
    cfg = DetectorsConfig()
    for name in SWEEP_DETECTOR_NAMES:
        assert name in SWEEP_DETECTORS, name
        assert name in cfg.enabled, name
        assert hasattr(cfg, name), name
    assert "reproducibility_gap" in KINDS


@pytest.mark.parametrize(
    "first",
    ["mldebug_ray.sweep", "mldebug_ray.sweep.stats", "mldebug_ray.sweep.hp_effect", "mldebug_ray.detectors",
     "mldebug_ray.detectors.config", "mldebug_ray.config"],
)
def test_importing_any_module_first_has_no_circular_import(first):
    code = f"import {first}; from mldebug_ray.detectors.base import SWEEP_DETECTORS; print(len(SWEEP_DETECTORS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= len(SWEEP_DETECTOR_NAMES)


def test_command_line_overrides_reach_the_nested_settings():
    merged = OmegaConf.merge(
        OmegaConf.structured(DetectorsConfig),
        OmegaConf.from_dotlist(["hp_effect.alpha=0.01", "seed_sensitivity.grouping.seed_keys=[seed,study]",
                                "hp_instability_boundary.outcome.fail_kinds=[nan_inf]"]),
    )
    cfg = OmegaConf.to_object(merged)
    assert cfg.hp_effect.alpha == 0.01
    assert cfg.seed_sensitivity.grouping.seed_keys == ["seed", "study"]
    assert cfg.hp_instability_boundary.outcome.fail_kinds == ["nan_inf"]
    with pytest.raises(ConfigError, match="detectors.hp_effect.alpha"):
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DetectorsConfig), OmegaConf.from_dotlist(["hp_effect.alpha=2"])))


def test_all_sweep_detectors_run_together_without_problems(sweep):
    runs = [Run(f"g/lr{lr}_seed{s}", params={"lr": lr, "seed": s}, val=curve(2.0 + lr)) for lr in (0.1, 0.2, 0.3) for s in range(2)]
    findings, problems = run_sweep_detectors(sweep(runs), DetectorsConfig())
    assert problems == []
    assert all(f.detector in SWEEP_DETECTOR_NAMES for f in findings)
