"""Detectors: functions from one run's evidence tables to findings, one symptom per module."""

from __future__ import annotations

from mldebug_ray.detectors.base import DETECTORS, EVIDENCE_TABLES, SWEEP_DETECTORS, RunEvidence, SweepTables, detector, sweep_detector

# Registration: importing a module registers its detector.
from mldebug_ray.detectors import nan_inf  # noqa: F401,E402
from mldebug_ray.detectors import divergence  # noqa: F401,E402
from mldebug_ray.detectors import loss_spike  # noqa: F401,E402
from mldebug_ray.detectors import grad_norm_spike  # noqa: F401,E402
from mldebug_ray.detectors import plateau  # noqa: F401,E402
from mldebug_ray.detectors import overfitting  # noqa: F401,E402
from mldebug_ray.detectors import architecture_imbalance  # noqa: F401,E402
from mldebug_ray.detectors import run_incomplete  # noqa: F401,E402
from mldebug_ray.detectors import exploding_gradients  # noqa: F401,E402
from mldebug_ray.detectors import vanishing_gradients  # noqa: F401,E402
from mldebug_ray.detectors import loss_scale_collapse  # noqa: F401,E402
from mldebug_ray.detectors import fp16_overflow  # noqa: F401,E402
from mldebug_ray.detectors import mode_collapse  # noqa: F401,E402
from mldebug_ray.detectors import oscillation  # noqa: F401,E402
from mldebug_ray.detectors import lr_schedule_anomaly  # noqa: F401,E402
from mldebug_ray.detectors import eval_on_train  # noqa: F401,E402
from mldebug_ray.detectors import catastrophic_forgetting  # noqa: F401,E402
from mldebug_ray.detectors import memory_pressure  # noqa: F401,E402
from mldebug_ray.detectors import known_error  # noqa: F401,E402
from mldebug_ray.detectors import slow_convergence  # noqa: F401,E402  (sweep-level)
from mldebug_ray.detectors import dead_units, saturated_activations, nonfinite_weights, update_ratio_anomaly  # noqa: F401,E402  (probe tables)
from mldebug_ray.detectors import data_leakage, class_imbalance, distribution_shift  # noqa: F401,E402  (data probe tables)
from mldebug_ray.detectors import deployment_limit  # noqa: F401,E402  (probe table `deployment`)
from mldebug_ray.detectors import adversarial_fragility  # noqa: F401,E402  (probe table `robustness`)
from mldebug_ray.detectors.config import DetectorsConfig  # noqa: E402
import mldebug_ray.sweep  # noqa: F401,E402  (registers the sweep-level detectors)
from mldebug_ray.findings import Finding  # noqa: E402

__all__ = [
    "DETECTORS", "SWEEP_DETECTORS", "DetectorsConfig", "RunEvidence", "SweepTables",
    "detector", "sweep_detector", "run_detectors", "run_sweep_detectors",
]


def run_detectors(ev: RunEvidence, cfg: DetectorsConfig) -> tuple[list[Finding], list[str]]:
    """Run the enabled detectors on one run.

    Returns (findings, problems): a detector that raises is reported in `problems` as
    "<name>: <ExceptionType>: <message>" and the others still run.
    """
    findings: list[Finding] = []
    problems: list[str] = []
    for name in cfg.enabled:
        entry = DETECTORS.get(name)
        if entry is None and name in SWEEP_DETECTORS:
            continue  # runs once over the whole sweep, in run_sweep_detectors
        if entry is None:
            problems.append(f"{name}: no detector registered under this name")
            continue
        try:
            found = entry.fn(ev, getattr(cfg, entry.config_key))
        except Exception as exc:  # one broken detector must not hide the others' findings
            problems.append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            continue
        findings.extend(found)
    return findings, problems


def run_sweep_detectors(tables: SweepTables, cfg: DetectorsConfig) -> tuple[list[Finding], list[str]]:
    """Run the enabled sweep-level detectors once over all runs; same contract as run_detectors."""
    findings: list[Finding] = []
    problems: list[str] = []
    for name in cfg.enabled:
        entry = SWEEP_DETECTORS.get(name)
        if entry is None:
            continue
        try:
            findings.extend(entry.fn(tables, getattr(cfg, entry.config_key)))
        except Exception as exc:  # one broken detector must not hide the others' findings
            problems.append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    return findings, problems
