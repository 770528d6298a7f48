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
from mldebug_ray.probes.deploy import DeployConfig
from mldebug_ray.probes.data import DataProbeConfig
from mldebug_ray.probes.adversarial import AdversarialConfig

CLUSTER_KINDS = ("local", "address", "slurm")
AGENT_KINDS = ("rules", "anthropic")
FINAL_ANSWER_MODES = ("output_format", "forced_tool")
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
    """rules: the offline rule-based agent (no network); anthropic: the LLM agent (mldebug_ray/agent/)."""
    min_confidence_without_requests: float = 0.8
    """SPEC §5: a root cause below this confidence is reported only with requests for data."""
    lr_zero_max: float = 1e-8
    """rules: a learning rate at or below this (absolute) is "zero". At 1e-8 an Adam step moves a
    weight by <= ~1e-8, so 1e5 steps move it by <= 1e-3, far under a typical init scale of 1e-2..1e-1:
    the model cannot leave its initial (chance-level) loss."""
    small_dataset_examples: int = 10_000
    """rules: a training set of fewer examples than this is "small" when the run overfits. The common
    supervised benchmarks whose curves saturate hold 5x more (CIFAR-10 50k, MNIST 60k), and learning
    curves are still steep below ~10k (Hestness et al. 2017, "Deep learning scaling is predictable")."""
    dataset_size_keys: list[str] = field(default_factory=lambda: [
        "train_size", "n_train", "num_train", "num_train_samples", "n_train_samples", "train_samples",
        "max_train_samples", "max_samples", "num_train_examples", "train_examples", "dataset_size", "n_samples",
    ])
    """rules: param names (last dotted part) that give the number of training examples (HF's `max_train_samples` caps it)."""
    batch_size_keys: list[str] = field(default_factory=lambda: [
        "batch_size", "train_batch_size", "per_device_train_batch_size", "micro_batch_size", "micro_bsz", "bs",
    ])
    """rules: param names (last dotted part) of the per-device (micro) batch size, compared across peers after an OOM."""
    # The fields below are read by kind=anthropic only (conf/agent/anthropic.yaml sets them).
    # The API key is never a config value: it comes from ANTHROPIC_API_KEY only.
    model: str = "claude-sonnet-5-5"
    """Anthropic model id; a current one from the SDK's model list (claude-sonnet-4-5 is deprecated)."""
    base_url: Optional[str] = None
    """Messages API base URL; null uses the SDK's default (tests point it at a loopback server)."""
    max_turns: int = 12
    """Most model requests in one agent call (one run, or the sweep); the last one must submit the diagnosis."""
    max_tokens: int = 4096
    """Most output tokens per model response (the API's max_tokens)."""
    token_budget: int = 200_000
    """Most tokens (input + cache + output, summed over turns) one agent call may spend before it must submit."""
    timeout_s: float = 300.0
    """Wall-time budget of one agent call, retries included; no request outlives it."""
    max_retries: int = 2
    """Retries of a request that failed with 429, 5xx or a connection error, with backoff, within timeout_s."""
    max_concurrency: int = 4
    """Agent calls in flight at once (per-run calls run in threads: they wait on the network)."""
    max_runs: int = 50
    """Runs sent to the model (those with findings or read problems, worst first); the rest keep the rules diagnosis."""
    final_answer: str = "output_format"
    """How the last turn is made to answer: output_format (structured JSON output, for models that reject a
    forced tool, e.g. the 5.5 family) or forced_tool (tool_choice on submit_diagnosis)."""
    code_roots: list[str] = field(default_factory=list)
    """Folders whose files the agent may read and grep (read-only, no path or symlink escapes); empty: none."""
    prices: dict[str, dict[str, float]] = field(default_factory=dict)
    """USD per million tokens by model: input, output, cache_write, cache_read (cost of agent_calls rows)."""

    def __post_init__(self) -> None:
        if self.kind not in AGENT_KINDS:
            raise ConfigError(f"agent.kind must be one of {AGENT_KINDS}, got {self.kind!r}")
        if not 0.0 <= self.min_confidence_without_requests <= 1.0:
            raise ConfigError("agent.min_confidence_without_requests must be in [0, 1]")
        if not self.lr_zero_max >= 0:
            raise ConfigError(f"agent.lr_zero_max must be >= 0, got {self.lr_zero_max}")
        if self.small_dataset_examples < 1:
            raise ConfigError(f"agent.small_dataset_examples must be >= 1, got {self.small_dataset_examples}")
        for key in ("max_turns", "max_tokens", "token_budget", "max_concurrency"):
            if getattr(self, key) < 1:
                raise ConfigError(f"agent.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_retries < 0 or self.max_runs < 0:
            raise ConfigError("agent.max_retries and agent.max_runs must be >= 0")
        if not 0 < self.timeout_s <= 3600:
            raise ConfigError(f"agent.timeout_s must be in (0, 3600], got {self.timeout_s}")
        if self.final_answer not in FINAL_ANSWER_MODES:
            raise ConfigError(f"agent.final_answer must be one of {FINAL_ANSWER_MODES}, got {self.final_answer!r}")


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
    """`module:function(params) -> {split: () -> iterable of batches}` for the data probe
    (contract in probes/data.py); optional, needs no checkpoint or model."""
    data: DataProbeConfig = field(default_factory=DataProbeConfig)
    """The data probe's settings: near-duplicate methods and thresholds, PSI bins, samples (probes/data.py)."""
    code_paths: list[str] = field(default_factory=list)
    """Folders added to sys.path to import the entry points above."""
    model_probes: list[str] = field(default_factory=lambda: ["gradients", "activations", "outputs", "memory", "precision", "deployment"])
    """Model-in-the-loop probes run on each scanned checkpoint when model_fn and batch_fn are set
    (`deployment` on the newest probes.deploy.max_checkpoints of them)."""
    deploy: DeployConfig = field(default_factory=DeployConfig)
    """Deployment checks: inference latency, model size, their limits, an optional profiler trace (probes/deploy.py)."""
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    """The `robustness` probe's attack budget and PGD steps (probes/adversarial.py); it runs when
    `robustness` is in model_probes (the `full` preset and the demo sweep)."""
    data_max_examples: int = 10000
    """Examples of the validation split the newest probed checkpoint is evaluated on for the
    `confusion` table (when model_fn and data_fn are set); 0: the whole split. 10,000 puts a
    class of 1% of the split at about 100 examples, enough for its accuracy to within about 10 points (95% interval)."""
    model_steps: int = 1
    """Forward/backward passes per checkpoint; gradients are their mean (gradient accumulation)."""
    gpus_per_task: float = 0.25
    """GPUs a Ray task asks for when its probes use CUDA; a fraction shares one device between tasks."""
    telemetry_interval_s: float = 0.2
    """NVML sampling period while probes run on a GPU."""

    def __post_init__(self) -> None:
        from mldebug_ray.probes.run_probes import MODEL_PROBES

        unknown = [p for p in self.model_probes if p not in MODEL_PROBES]
        if unknown:
            raise ConfigError(f"probes.model_probes: unknown probe(s) {unknown}; known: {list(MODEL_PROBES)}")
        if self.model_steps < 1:
            raise ConfigError(f"probes.model_steps must be >= 1, got {self.model_steps}")
        if not 0 < self.gpus_per_task <= 8:
            raise ConfigError(f"probes.gpus_per_task must be in (0, 8], got {self.gpus_per_task}")
        if not 0 < self.telemetry_interval_s <= 60:
            raise ConfigError(f"probes.telemetry_interval_s must be in (0, 60], got {self.telemetry_interval_s}")
        if self.data_max_examples < 0:
            raise ConfigError(f"probes.data_max_examples must be >= 0, got {self.data_max_examples}")
        if self.max_checkpoints_per_run < 0:
            raise ConfigError(f"probes.max_checkpoints_per_run must be >= 0, got {self.max_checkpoints_per_run}")
        if self.device not in PROBE_DEVICES:
            raise ConfigError(f"probes.device must be one of {PROBE_DEVICES}, got {self.device!r}")
        for key in ("model_fn", "batch_fn", "loss_fn", "data_fn"):
            if not _entry_point_ok(getattr(self, key)):
                raise ConfigError(f"probes.{key} must be 'module:function', got {getattr(self, key)!r}")


@dataclass
class TextLogConfig:
    """The free-text log reader (mldebug_ray/readers/text_log.py)."""

    patterns: list[str] = field(default_factory=list)
    """User metric line patterns, tried before the built-in library: regexes with named groups,
    `step` (optional) and one group per value named by its metric key, e.g.
    `^it (?P<step>\\d+) loss (?P<train_loss>\\S+)$`."""

    def __post_init__(self) -> None:
        from mldebug_ray.readers.text_log import compile_patterns

        compile_patterns(self.patterns)  # ConfigError naming readers.text_log.patterns[i]


@dataclass
class ReadersConfig:
    """How run directories are read."""

    text_log: TextLogConfig = field(default_factory=TextLogConfig)


@dataclass
class MainConfig:
    """The whole invocation."""

    sweep: Optional[SweepConfig] = None
    """Selected with +sweep=NAME (conf/sweep/NAME.yaml)."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    detectors: DetectorsConfig = field(default_factory=DetectorsConfig)
    readers: ReadersConfig = field(default_factory=ReadersConfig)
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
    if obj.agent.kind == "anthropic" and not os.environ.get("ANTHROPIC_API_KEY"):
        raise ConfigError("agent=anthropic needs the ANTHROPIC_API_KEY environment variable (the key is never read from config)")
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
