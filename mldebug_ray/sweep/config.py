"""The sweep detectors' config classes in one place, for `DetectorsConfig` (each is defined next to its detector)."""

from mldebug_ray.sweep.grouping import GroupingConfig
from mldebug_ray.sweep.hp_effect import HpEffectConfig
from mldebug_ray.sweep.hp_instability_boundary import HpInstabilityBoundaryConfig
from mldebug_ray.sweep.nondeterminism import NondeterminismConfig
from mldebug_ray.sweep.outcomes import OutcomeConfig
from mldebug_ray.sweep.ranking_inconsistency import RankingInconsistencyConfig
from mldebug_ray.sweep.reproducibility import ReproducibilityConfig
from mldebug_ray.sweep.seed_sensitivity import SeedSensitivityConfig

__all__ = [
    "GroupingConfig", "OutcomeConfig", "SeedSensitivityConfig", "HpEffectConfig", "HpInstabilityBoundaryConfig",
    "RankingInconsistencyConfig", "NondeterminismConfig", "ReproducibilityConfig",
]
