"""Sweep-level diagnosis: the sweep is the patient (configurations, seeds, hyperparameter effects).

Layout: `grouping.py` (configurations and repeats) -> `outcomes.py` (per-run results) ->
`view.py` (both, built once per invocation) -> `stats.py` (the numpy statistics) -> one
module per finding kind, each a `@sweep_detector` with its config dataclass. Importing
this package registers the detectors; `DetectorsConfig` holds their configs.
"""

# The detectors package first: its __init__ imports detectors/config.py, which imports the
# config classes defined in the modules below; importing it here first keeps every import
# order (this package first, or mldebug_ray.detectors first) free of circular failures.
import mldebug_ray.detectors  # noqa: F401

from mldebug_ray.sweep import seed_sensitivity  # noqa: F401,E402
from mldebug_ray.sweep import hp_effect  # noqa: F401,E402
from mldebug_ray.sweep import hp_instability_boundary  # noqa: F401,E402
from mldebug_ray.sweep import ranking_inconsistency  # noqa: F401,E402
from mldebug_ray.sweep import nondeterminism  # noqa: F401,E402
from mldebug_ray.sweep import reproducibility  # noqa: F401,E402

SWEEP_DETECTOR_NAMES = (
    "seed_sensitivity", "hp_effect", "hp_instability_boundary", "ranking_inconsistency", "nondeterminism", "reproducibility",
)
