"""Structured configs: one small dataclass per component, registered in Hydra's ConfigStore.

YAML under `conf/` only selects and overrides; `to_config` turns the composed
DictConfig into these dataclasses once, and each `__post_init__` rejects
impossible values with a message naming the dotted key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mldebug_ray.detectors.config import DetectorsConfig
from mldebug_ray.errors import ConfigError

CLUSTER_KINDS = ("local", "address", "slurm")
AGENT_KINDS = ("rules",)
PROGRESS_MODES = ("auto", "live", "lines", "off")
PROBE_DEVICES = ("auto", "cpu", "cuda")


def _entry_point_ok(value: str | None) -> bool:
    return value is None or (value.count(":") == 1 and all(value.split(":")))


@dataclass
class SweepConfig:
    """Which run directories make up the sweep."""

    name: str = "paths"
    """Name of the sweep, shown in the report."""
    roots: list[str] = field(default_factory=list)
    """Sweep roots; every directory under a root holding a metrics source is a run."""
    include: list[str] = field(default_factory=lambda: ["*"])
    """fnmatch globs on run_id; a run is kept when it matches one."""
    exclude: list[str] = field(default_factory=list)
    """fnmatch globs on run_id; a run matching one is dropped."""
    generate: Optional[str] = None
    """`module:function(root)` that builds the sweep under the first root before analysis (the demo)."""
    max_depth: int = 16
    """How many folder levels below a root discovery descends."""

    def __post_init__(self) -> None:
        if not _entry_point_ok(self.generate):
            raise ConfigError(f"sweep.generate must be 'module:function', got {self.generate!r}")
        if self.max_depth < 0:
            raise ConfigError(f"sweep.max_depth must be >= 0, got {self.max_depth}")


@dataclass
class ClusterConfig:
    """Where the fan-out runs."""

    kind: str = "local"
    """local: start a Ray instance here; address: connect to a running cluster; slurm: the job's cluster."""
    address: Optional[str] = None
    """Ray address for kind=address/slurm (e.g. 10.0.0.1:6379); null reads RAY_ADDRESS."""
    num_cpus: Optional[int] = None
    """CPUs for a local instance; null lets Ray count them."""
    max_in_flight: int = 0
    """Most tasks submitted at once; 0 means twice the cluster's CPUs."""
    runs_per_task: int = 0
    """Runs handled by one task; 0 picks a batch size so each CPU gets about 4 tasks."""
    task_max_retries: int = 2
    """Times Ray reruns a task whose worker died before its runs are marked unreadable."""

    def __post_init__(self) -> None:
        if self.kind not in CLUSTER_KINDS:
            raise ConfigError(f"cluster.kind must be one of {CLUSTER_KINDS}, got {self.kind!r}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"cluster.num_cpus must be >= 1, got {self.num_cpus}")
        for key in ("max_in_flight", "runs_per_task", "task_max_retries"):
            if getattr(self, key) < 0:
                raise ConfigError(f"cluster.{key} must be >= 0, got {getattr(self, key)}")


@dataclass
class AgentConfig:
    """Who writes the diagnosis from the findings."""

    kind: str = "rules"
    """rules: the offline rule-based agent (no network)."""
    min_confidence_without_requests: float = 0.8
    """SPEC §5: a root cause below this confidence is reported only with requests for data."""

    def __post_init__(self) -> None:
        if self.kind not in AGENT_KINDS:
            raise ConfigError(f"agent.kind must be one of {AGENT_KINDS}, got {self.kind!r}")
        if not 0.0 <= self.min_confidence_without_requests <= 1.0:
            raise ConfigError("agent.min_confidence_without_requests must be in [0, 1]")


@dataclass
class ProbesConfig:
    """What is computed beyond reading logs."""

    checkpoint_stats: bool = True
    """Compute per-tensor statistics (the `layers` table) from checkpoints."""
    max_checkpoints_per_run: int = 3
    """Newest checkpoints scanned per run; 0 scans all."""
    device: str = "auto"
    """auto (cuda when present), cpu or cuda."""
    model_fn: Optional[str] = None
    """`module:function(params) -> nn.Module` for model-in-the-loop probes (SPEC §9)."""
    batch_fn: Optional[str] = None
    """`module:function(params) -> batch` for model-in-the-loop probes."""
    loss_fn: Optional[str] = None
    """`module:function(model, batch) -> loss`; optional."""
    data_fn: Optional[str] = None
    """`module:function(params) -> splits`; optional."""
    code_paths: list[str] = field(default_factory=list)
    """Folders added to sys.path to import the entry points above."""

    def __post_init__(self) -> None:
        if self.max_checkpoints_per_run < 0:
            raise ConfigError(f"probes.max_checkpoints_per_run must be >= 0, got {self.max_checkpoints_per_run}")
        if self.device not in PROBE_DEVICES:
            raise ConfigError(f"probes.device must be one of {PROBE_DEVICES}, got {self.device!r}")
        for key in ("model_fn", "batch_fn", "loss_fn", "data_fn"):
            if not _entry_point_ok(getattr(self, key)):
                raise ConfigError(f"probes.{key} must be 'module:function', got {getattr(self, key)!r}")


@dataclass
class MainConfig:
    """The whole invocation."""

    sweep: Optional[SweepConfig] = None
    """Selected with +sweep=NAME (conf/sweep/NAME.yaml)."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    detectors: DetectorsConfig = field(default_factory=DetectorsConfig)
    out_dir: str = MISSING
    """Output directory (also Hydra's run dir)."""
    progress: str = "auto"
    """auto: live in a terminal, one line per interval otherwise; live; lines; off."""

    def __post_init__(self) -> None:
        if self.progress not in PROGRESS_MODES:
            raise ConfigError(f"progress must be one of {PROGRESS_MODES}, got {self.progress!r}")


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="mldebug_schema", node=MainConfig)
    cs.store(group="sweep", name="base_sweep", node=SweepConfig)
    cs.store(group="cluster", name="base_cluster", node=ClusterConfig)
    cs.store(group="agent", name="base_agent", node=AgentConfig)
    cs.store(group="probes", name="base_probes", node=ProbesConfig)


def default_demo_root() -> Path:
    """Where the demo sweep is cached: $MLDEBUG_DEMO_DIR, else the user's cache folder."""
    if os.environ.get("MLDEBUG_DEMO_DIR"):
        return Path(os.environ["MLDEBUG_DEMO_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mldebug_ray" / "demo"


def to_config(cfg: DictConfig | dict[str, Any]) -> MainConfig:
    """The composed config as dataclasses, validated; ConfigError names the bad key."""
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MainConfig), cfg))
    except ConfigError:
        raise
    except Exception as exc:  # omegaconf's validation errors carry the full key
        raise ConfigError(one_line(exc)) from None
    if obj.sweep is None:
        raise ConfigError("no sweep selected: add +sweep=NAME (e.g. +sweep=demo, or +sweep=paths 'sweep.roots=[DIR]')")
    if not obj.sweep.roots:
        if obj.sweep.generate:
            obj.sweep.roots = [str(default_demo_root())]
        else:
            raise ConfigError("sweep.roots is empty: give the run directories, e.g. 'sweep.roots=[/path/to/runs]'")
    if not obj.sweep.generate:
        for root in obj.sweep.roots:
            if not Path(root).is_dir():
                raise ConfigError(f"sweep.roots: {root} is not a directory")
    return obj


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (Hydra and OmegaConf messages span several)."""
    lines = []
    for ln in str(exc).splitlines():
        if ln.strip().startswith("Config search path"):
            break  # Hydra's search-path dump says nothing about the user's mistake
        if ln.strip():
            lines.append(ln.strip().rstrip(".:"))
    text = "; ".join(ln for ln in lines if not ln.startswith(("Set the environment variable", "object_type=")))
    return text or type(exc).__name__
