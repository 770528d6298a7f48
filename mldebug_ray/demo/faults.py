"""The injected faults of the demo runs, each driven by the run's own config so the config tells the story."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from mldebug_ray.demo.writers import JSONL_FILE, checkpoint_path

TRAIN_LOG_FILE = "train.log"


def _fault(config: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    fault = config.get("fault")
    return fault if fault and fault["kind"] == kind else None


def lr_factor(config: Mapping[str, Any], epoch: int) -> float:
    """The multiplier a curriculum change applies to the scheduled LR from `lr_change_epoch` on."""
    change_epoch = config.get("lr_change_epoch")
    if change_epoch is not None and epoch >= change_epoch:
        return float(config["lr_change_factor"])
    return 1.0


def corrupt_batch(
    config: Mapping[str, Any], epoch: int, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a data-pipeline fault that starts at `fault.start_epoch`."""
    constant = _fault(config, "constant_targets")
    if constant and epoch >= constant["start_epoch"]:
        # A collate bug that fills every target with one id (e.g. the pad token):
        # the model learns to emit that token whatever the input.
        return inputs, torch.full_like(targets, constant["token_id"])
    shard = _fault(config, "unnormalized_shard")
    if shard and epoch >= shard["start_epoch"]:
        # A shard whose features skipped normalisation: raw magnitudes beyond
        # float16's 65504 become Inf under autocast on every step.
        return inputs * shard["input_scale"], targets
    return inputs, targets


def loss_function(config: Mapping[str, Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss: cross-entropy, or NLL on raw logits when log_softmax was forgotten."""
    if _fault(config, "missing_log_softmax"):
        # nll_loss on raw logits is -logit[target]: unbounded below, and its gradient
        # does not shrink as the logits grow, so weights and gradients feed each other.
        return F.nll_loss
    return F.cross_entropy


def crash_step(config: Mapping[str, Any]) -> int | None:
    """The step after which the job dies, if it does."""
    disk_full = _fault(config, "disk_full")
    return disk_full["at_step"] if disk_full else None


ENOSPC_TRACEBACK = """Traceback (most recent call last):
  File "train.py", line 188, in <module>
    main()
  File "train.py", line 161, in main
    save_checkpoint(model, run_dir, step)
  File "train.py", line 74, in save_checkpoint
    save_file(state, path)
  File "safetensors/torch.py", line 286, in save_file
    serialize_file(_flatten(tensors), filename, metadata=metadata)
OSError: [Errno 28] No space left on device
"""


def damage_artifacts(config: Mapping[str, Any], run_dir: Path) -> None:
    """What a full disk leaves behind: a metrics line cut short, a truncated checkpoint, a traceback."""
    disk_full = _fault(config, "disk_full")
    if not disk_full:
        return
    metrics = run_dir / JSONL_FILE
    text = metrics.read_text()
    last_line_start = text.rstrip("\n").rfind("\n") + 1
    last_line = text[last_line_start:].rstrip("\n")
    metrics.write_text(text[:last_line_start] + last_line[: len(last_line) // 2])
    checkpoint = checkpoint_path(run_dir, disk_full["truncated_checkpoint_step"], config["checkpoint"]["format"])
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 3])
    with open(run_dir / TRAIN_LOG_FILE, "a") as log:
        log.write(f"step {disk_full['at_step']}: saving checkpoint to {checkpoint.relative_to(run_dir)}\n")
        log.write(ENOSPC_TRACEBACK)
