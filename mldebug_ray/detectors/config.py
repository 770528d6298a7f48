"""`DetectorsConfig`: which detectors run and each one's thresholds (Hydra key `detectors`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from mldebug_ray.detectors.adversarial_fragility import AdversarialFragilityConfig
from mldebug_ray.detectors.architecture_imbalance import ArchitectureImbalanceConfig
from mldebug_ray.detectors.catastrophic_forgetting import CatastrophicForgettingConfig
from mldebug_ray.detectors.divergence import DivergenceConfig
from mldebug_ray.detectors.eval_on_train import EvalOnTrainConfig
from mldebug_ray.detectors.exploding_gradients import ExplodingGradientsConfig
from mldebug_ray.detectors.fp16_overflow import Fp16OverflowConfig
from mldebug_ray.detectors.grad_norm_spike import GradNormSpikeConfig
from mldebug_ray.detectors.known_error import KnownErrorConfig
from mldebug_ray.detectors.loss_scale_collapse import LossScaleCollapseConfig
from mldebug_ray.detectors.loss_spike import LossSpikeConfig
from mldebug_ray.detectors.lr_schedule_anomaly import LrScheduleAnomalyConfig
from mldebug_ray.detectors.memory_pressure import MemoryPressureConfig
from mldebug_ray.detectors.mode_collapse import ModeCollapseConfig
from mldebug_ray.detectors.nan_inf import NanInfConfig
from mldebug_ray.detectors.oscillation import OscillationConfig
from mldebug_ray.detectors.overfitting import OverfittingConfig
from mldebug_ray.detectors.plateau import PlateauConfig
from mldebug_ray.detectors.run_incomplete import RunIncompleteConfig
from mldebug_ray.detectors.slow_convergence import SlowConvergenceConfig
from mldebug_ray.detectors.vanishing_gradients import VanishingGradientsConfig
from mldebug_ray.detectors.dead_units import DeadUnitsConfig
from mldebug_ray.detectors.deployment_limit import DeploymentLimitConfig
from mldebug_ray.detectors.nonfinite_weights import NonfiniteWeightsConfig
from mldebug_ray.detectors.saturated_activations import SaturatedActivationsConfig
from mldebug_ray.detectors.update_ratio_anomaly import UpdateRatioAnomalyConfig
from mldebug_ray.detectors.class_imbalance import ClassImbalanceConfig
from mldebug_ray.detectors.data_leakage import DataLeakageConfig
from mldebug_ray.detectors.distribution_shift import DistributionShiftConfig
from mldebug_ray.errors import ConfigError
from mldebug_ray.sweep.config import HpEffectConfig, HpInstabilityBoundaryConfig, NondeterminismConfig, RankingInconsistencyConfig, ReproducibilityConfig, SeedSensitivityConfig  # noqa: E501

# Plain (not frozen) dataclasses throughout: OmegaConf turns a frozen dataclass into a
# read-only node, and then `detectors.loss_spike.min_ratio=1.5` on the command line fails.


@dataclass
class DetectorsConfig:
    """One field per detector (field name = detector name) plus the list of enabled ones."""

    nan_inf: NanInfConfig = field(default_factory=NanInfConfig)
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    loss_spike: LossSpikeConfig = field(default_factory=LossSpikeConfig)
    grad_norm_spike: GradNormSpikeConfig = field(default_factory=GradNormSpikeConfig)
    plateau: PlateauConfig = field(default_factory=PlateauConfig)
    overfitting: OverfittingConfig = field(default_factory=OverfittingConfig)
    architecture_imbalance: ArchitectureImbalanceConfig = field(default_factory=ArchitectureImbalanceConfig)
    run_incomplete: RunIncompleteConfig = field(default_factory=RunIncompleteConfig)
    exploding_gradients: ExplodingGradientsConfig = field(default_factory=ExplodingGradientsConfig)
    vanishing_gradients: VanishingGradientsConfig = field(default_factory=VanishingGradientsConfig)
    loss_scale_collapse: LossScaleCollapseConfig = field(default_factory=LossScaleCollapseConfig)
    fp16_overflow: Fp16OverflowConfig = field(default_factory=Fp16OverflowConfig)
    mode_collapse: ModeCollapseConfig = field(default_factory=ModeCollapseConfig)
    oscillation: OscillationConfig = field(default_factory=OscillationConfig)
    lr_schedule_anomaly: LrScheduleAnomalyConfig = field(default_factory=LrScheduleAnomalyConfig)
    eval_on_train: EvalOnTrainConfig = field(default_factory=EvalOnTrainConfig)
    catastrophic_forgetting: CatastrophicForgettingConfig = field(default_factory=CatastrophicForgettingConfig)
    memory_pressure: MemoryPressureConfig = field(default_factory=MemoryPressureConfig)
    known_error: KnownErrorConfig = field(default_factory=KnownErrorConfig)
    slow_convergence: SlowConvergenceConfig = field(default_factory=SlowConvergenceConfig)
    """Sweep-level: runs once over all runs, comparing each run with its peers."""
    seed_sensitivity: SeedSensitivityConfig = field(default_factory=SeedSensitivityConfig)
    hp_effect: HpEffectConfig = field(default_factory=HpEffectConfig)
    hp_instability_boundary: HpInstabilityBoundaryConfig = field(default_factory=HpInstabilityBoundaryConfig)
    ranking_inconsistency: RankingInconsistencyConfig = field(default_factory=RankingInconsistencyConfig)
    nondeterminism: NondeterminismConfig = field(default_factory=NondeterminismConfig)
    reproducibility: ReproducibilityConfig = field(default_factory=ReproducibilityConfig)
    dead_units: DeadUnitsConfig = field(default_factory=DeadUnitsConfig)
    saturated_activations: SaturatedActivationsConfig = field(default_factory=SaturatedActivationsConfig)
    nonfinite_weights: NonfiniteWeightsConfig = field(default_factory=NonfiniteWeightsConfig)
    update_ratio_anomaly: UpdateRatioAnomalyConfig = field(default_factory=UpdateRatioAnomalyConfig)
    deployment_limit: DeploymentLimitConfig = field(default_factory=DeploymentLimitConfig)
    """The limits are probes.deploy.max_latency_ms / max_params / max_param_bytes (recorded in the `deployment` rows)."""
    adversarial_fragility: AdversarialFragilityConfig = field(default_factory=AdversarialFragilityConfig)
    data_leakage: DataLeakageConfig = field(default_factory=DataLeakageConfig)
    """Reads the data probe's tables (probes.data_fn); the near-duplicate thresholds are probes.data.*."""
    class_imbalance: ClassImbalanceConfig = field(default_factory=ClassImbalanceConfig)
    distribution_shift: DistributionShiftConfig = field(default_factory=DistributionShiftConfig)
    enabled: list[str] = field(
        default_factory=lambda: [
            "nan_inf", "divergence", "loss_spike", "grad_norm_spike", "plateau", "overfitting",
            "architecture_imbalance", "run_incomplete", "exploding_gradients", "vanishing_gradients",
            "loss_scale_collapse", "fp16_overflow", "mode_collapse", "oscillation", "lr_schedule_anomaly",
            "eval_on_train", "catastrophic_forgetting", "memory_pressure", "known_error", "slow_convergence",
            "seed_sensitivity", "hp_effect", "hp_instability_boundary", "ranking_inconsistency", "nondeterminism", "reproducibility",
            "dead_units", "saturated_activations", "nonfinite_weights", "update_ratio_anomaly",
            "data_leakage", "class_imbalance", "distribution_shift",
            "deployment_limit",
            "adversarial_fragility",
        ]
    )
    """Detectors that run, by name; every name needs a field of the same name above."""

    def __post_init__(self) -> None:
        known = [f.name for f in fields(self) if f.name != "enabled"]
        unknown = [name for name in self.enabled if name not in known]
        if unknown:
            raise ConfigError(f"detectors.enabled: unknown detector(s) {unknown}; known: {known}")
