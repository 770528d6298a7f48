"""Which device the probes run on, and how many GPUs a Ray task asks for to get one.

`probes.device`: `cpu`; `cuda` (the first visible GPU); `auto`, which picks cuda when
`torch.cuda.is_available()` in the process doing the work. Inside a Ray task that is
decided by the task's own `num_gpus`: Ray sets CUDA_VISIBLE_DEVICES to the GPUs it
granted (none when `num_gpus` is 0), so `auto` in a task without GPUs is the CPU even on
a GPU node, and the placement below is what puts probe work on GPUs.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from mldebug_ray.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(wanted: str, problems: list[str] | None = None) -> Any:
    """The torch.device for `probes.device` in this process.

    `cuda` without a visible GPU falls back to the CPU and says so in `problems` (the
    evidence is still worth having; a GPU task that lost its device is not a config error).
    """
    import torch

    if wanted == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if wanted == "cuda" and problems is not None:
        problems.append("probes.device=cuda but no CUDA device is visible to this worker: probes ran on the CPU")
    return torch.device("cpu")


def wants_model_probes(probes: Any) -> bool:
    """True when model-in-the-loop probes are configured (entry points and at least one probe)."""
    return bool(probes.model_fn and probes.batch_fn and probes.model_probes)


def task_gpus(probes: Any, cluster_resources: Mapping[str, float]) -> float:
    """`num_gpus` for a Ray task that analyses runs under this probes config.

    0 unless probes will use a GPU: `device=cuda`, or `device=auto` on a cluster that has
    GPUs. Then `probes.gpus_per_task` (fractional shares a device between tasks; each
    task's probe work is short bursts per checkpoint). Only tasks that have GPU work ask:
    checkpoint statistics alone are worth a GPU too, but a cluster with few GPUs and many
    CPUs would then analyse only as many runs at once as it has GPU shares, so without
    model probes the tasks stay CPU-only unless `device=cuda` says otherwise.
    `device=cuda` on a cluster without GPUs is a config error: the tasks would never be
    scheduled.
    """
    gpus = float(cluster_resources.get("GPU", 0) or 0)
    if probes.device == "cpu":
        return 0.0
    if probes.device == "cuda":
        if gpus <= 0:
            raise ConfigError("probes.device=cuda but the Ray cluster has no GPU (use probes.device=auto or cpu)")
        return min(probes.gpus_per_task, gpus)
    if gpus > 0 and wants_model_probes(probes):
        return min(probes.gpus_per_task, gpus)
    return 0.0
