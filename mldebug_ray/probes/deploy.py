"""Deployment checks of a probed checkpoint (the `deployment` table): inference latency, model size, inference memory.

For a checkpoint loaded into `model_fn(params)` with the probe batch of `batch_fn(params)`:

- latency_ms_median / latency_ms_p90 / latency_ms_min: `probes.deploy.repeats` timed
  eval-mode forwards of the whole probe batch under `torch.inference_mode`, after
  `probes.deploy.warmup` untimed ones. Each forward is timed alone with
  `time.perf_counter`, the device synchronised before the clock starts and before it
  stops on CUDA (kernels are asynchronous: without it the clock measures the launch).
  The warm-up absorbs the one-off costs of a first call (lazy kernel and oneDNN primitive
  creation, cuDNN/cuBLAS heuristics, allocator growth). The median is what the limit is
  checked against: a loaded machine adds delays to some repeats, and the median ignores
  up to half of them; p90 shows the tail, the minimum the machine's floor.
  Defaults 3 + 20, measured on this project's 2-vCPU CPU machine (shared with other
  jobs), torch 2.13: in a fresh process the demo TinyLM's first forward (batch 256) took
  26x the median of the later ones, the second 2.2x, the third 1.2x; a 10M-parameter MLP
  (batch 64, 1 thread) 1.7x, then within 5%. Five back-to-back measurements of that MLP
  gave medians spread by 7.4% with 5 repeats and 3.3% with 20 (benchmarks/README.md,
  "Deployment checks", has the cost).
- batch_size: the leading dimension of the batch's first tensor (the inputs of an
  `(inputs, targets)` pair); null when the batch holds no tensor.
- n_params / param_bytes: the model's distinct parameters (`model.parameters()` yields a
  tied weight once) and `numel * element_size` summed; buffer_bytes the same for buffers
  (running statistics, masks); params_by_dtype a JSON object
  `{"float32": {"n_params": .., "bytes": ..}, ...}`. These count the model as
  `model_fn` builds it with the checkpoint loaded (load_state_dict copies into the
  model's own dtypes), i.e. what would be deployed, not the file on disk.
- peak_inference_bytes (`probes.deploy.inference_memory`): the peak of one more forward
  (untimed) under the measures of probes/memory.py: the CUDA allocator's peak on a GPU,
  live tensor storage on the CPU (weights, batch and everything the forward allocates).
- num_threads: torch's intra-op threads on the CPU (latency scales with them), null on CUDA.
- max_latency_ms / max_params / max_param_bytes: the limits of `probes.deploy` in force
  when the row was measured (null: no limit), so the `deployment_limit` detector and a
  reader of the table see what the numbers were checked against.
- trace_path (`probes.deploy.profile_trace`): a `torch.profiler` Chrome trace of one probe
  training step (forward + backward, train mode) and one inference forward, labelled
  `mldebug.probe.train_step` and `mldebug.probe.inference`, relative to the output
  directory: `profiles/<escaped run id>/step-<step>.pt.trace.json` (paths.py), the name
  TensorBoard's profiler plugin and HTA's trace loader look for; written atomically.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from mldebug_ray.errors import ConfigError


@dataclass
class DeployConfig:
    """Deployment checks of probed checkpoints (keys `probes.deploy.*`); run when `deployment` is in probes.model_probes."""

    warmup: int = 3
    """Untimed inference forwards before timing (first-call costs; see probes/deploy.py)."""
    repeats: int = 20
    """Timed inference forwards; median, p90 and minimum are recorded."""
    max_checkpoints: int = 1
    """Newest probed checkpoints measured per run; 0 measures every probed one. Size is the same for every
    checkpoint of one model and latency nearly so, so the newest (the one that would ship) is the default."""
    inference_memory: bool = True
    """Measure the peak memory of one inference forward (one more untimed forward)."""
    max_latency_ms: Optional[float] = None
    """Limit on the median inference latency at the probe batch size, in ms; null: none."""
    max_params: Optional[int] = None
    """Limit on the model's parameter count; null: none."""
    max_param_bytes: Optional[int] = None
    """Limit on the model's parameter bytes (numel x element size); null: none."""
    profile_trace: bool = False
    """Save a torch.profiler Chrome trace of one probe step and one inference under <out_dir>/profiles/."""

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ConfigError(f"probes.deploy.warmup must be >= 0, got {self.warmup}")
        if self.repeats < 1:
            raise ConfigError(f"probes.deploy.repeats must be >= 1, got {self.repeats}")
        if self.max_checkpoints < 0:
            raise ConfigError(f"probes.deploy.max_checkpoints must be >= 0, got {self.max_checkpoints}")
        for key in ("max_latency_ms", "max_params", "max_param_bytes"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"probes.deploy.{key} must be > 0 or null, got {value}")


def quantile(sorted_values: list[float], q: float) -> float:
    """The q-quantile of ascending values, linearly interpolated (numpy's default method)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def model_size(model: Any) -> dict[str, Any]:
    """n_params, param_bytes, buffer_bytes and params_by_dtype (JSON) of a module (module docstring)."""
    by_dtype: dict[str, dict[str, int]] = {}
    n_params = param_bytes = 0
    for p in model.parameters():
        n, nbytes = int(p.numel()), int(p.numel()) * p.element_size()
        n_params += n
        param_bytes += nbytes
        entry = by_dtype.setdefault(str(p.dtype).removeprefix("torch."), {"n_params": 0, "bytes": 0})
        entry["n_params"] += n
        entry["bytes"] += nbytes
    buffer_bytes = sum(int(b.numel()) * b.element_size() for b in model.buffers())
    return {
        "n_params": n_params,
        "param_bytes": param_bytes,
        "buffer_bytes": buffer_bytes,
        "params_by_dtype": json.dumps(dict(sorted(by_dtype.items(), key=lambda kv: -kv[1]["bytes"]))),
    }


def batch_size_of(batch: Any) -> int | None:
    """The leading dimension of the batch's first tensor (inputs of a pair, first value of a dict)."""
    import torch

    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else None
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for value in values:
        size = batch_size_of(value)
        if size is not None:
            return size
    return None


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inference_latencies_ms(model: Any, batch: Any, device: Any, warmup: int, repeats: int) -> list[float]:
    """Wall milliseconds of `repeats` inference forwards after `warmup` untimed ones, ascending."""
    import torch

    from mldebug_ray.probes.model_loop import forward

    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            out = forward(model, batch)
            _sync(device)
            if i >= warmup:
                times.append(1e3 * (time.perf_counter() - start))
            del out
    return sorted(times)


def inference_peak_bytes(model: Any, batch: Any, device: Any) -> int:
    """Peak bytes of one inference forward (probes/memory.py's measure for the device)."""
    import torch

    from mldebug_ray.probes.memory import PhaseMemory
    from mldebug_ray.probes.model_loop import forward

    memory = PhaseMemory(device)
    model.eval()
    with torch.inference_mode(), memory.phase("inference", model, batch):
        out = forward(model, batch)
        _sync(device)
        del out
    return memory.peaks["inference"][0]


def save_profile_trace(model: Any, batch: Any, loss_fn: Any, device: Any, path: Path) -> Path:
    """A Chrome trace of one probe training step and one inference forward at `path`, written atomically."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from mldebug_ray import paths
    from mldebug_ray.probes.model_loop import compute_loss, forward

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    with profile(activities=activities, record_shapes=True, profile_memory=True) as prof:
        with record_function("mldebug.probe.train_step"):
            loss, _ = compute_loss(model, batch, loss_fn)
            loss.backward()
            del loss
        model.eval()
        with record_function("mldebug.probe.inference"), torch.inference_mode():
            out = forward(model, batch)
            del out
        _sync(device)
    model.zero_grad(set_to_none=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{paths.TMP_SUFFIX}")
    try:
        prof.export_chrome_trace(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def deployment_row(model: Any, batch: Any, device: Any, cfg: DeployConfig) -> dict[str, Any]:
    """One `deployment` row (without run_id/step/trace_path) for a model on `device` with its probe batch."""
    import torch

    latencies = inference_latencies_ms(model, batch, device, cfg.warmup, cfg.repeats)
    row: dict[str, Any] = {
        "device": f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu",
        "batch_size": batch_size_of(batch),
        "n_repeats": len(latencies),
        "latency_ms_median": quantile(latencies, 0.5),
        "latency_ms_p90": quantile(latencies, 0.9),
        "latency_ms_min": latencies[0],
        **model_size(model),
        "peak_inference_bytes": inference_peak_bytes(model, batch, device) if cfg.inference_memory else None,
        "num_threads": torch.get_num_threads() if device.type != "cuda" else None,
        "max_latency_ms": cfg.max_latency_ms,
        "max_params": cfg.max_params,
        "max_param_bytes": cfg.max_param_bytes,
    }
    return row
