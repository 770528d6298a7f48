"""One demo training run on the CPU: seeded, single-threaded, logging every step through a metric sink."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mldebug_ray.demo import faults
from mldebug_ray.demo.models import build_model
from mldebug_ray.demo.tasks import TrainStream, make_task, validation_set
from mldebug_ray.demo.writers import MetricSink, open_sink, save_checkpoint, write_hydra_files


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports back to the builder."""

    run_id: str
    last_step: int
    final_train_loss: float
    elapsed_s: float


def lr_at(step: int, optimizer_cfg: Mapping[str, Any], total_steps: int) -> float:
    """The scheduled learning rate of `step` (from 1): constant, or cosine down to `min_lr_frac` of the peak."""
    peak = optimizer_cfg["lr"]
    if optimizer_cfg["schedule"] == "constant":
        return peak
    if optimizer_cfg["schedule"] == "linear_warmup":
        return peak * step / total_steps
    if optimizer_cfg["schedule"] == "cosine":
        floor = peak * optimizer_cfg["min_lr_frac"]
        progress = (step - 1) / max(total_steps - 1, 1)
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"optimizer.schedule={optimizer_cfg['schedule']!r} is not one of constant, linear_warmup, cosine")


def make_optimizer(model: nn.Module, optimizer_cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    name = optimizer_cfg["name"]
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=optimizer_cfg["lr"], weight_decay=optimizer_cfg["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=optimizer_cfg["lr"], momentum=optimizer_cfg.get("momentum", 0.0))
    raise ValueError(f"optimizer.name={name!r} is not one of adamw, sgd")


def grad_norms(model: nn.Module) -> tuple[float, dict[str, float]]:
    """Total L2 gradient norm and the norm of each parameter's gradient (Inf/NaN kept)."""
    per_param = {name: p.grad.detach().float().norm() for name, p in model.named_parameters() if p.grad is not None}
    total = torch.linalg.vector_norm(torch.stack(list(per_param.values())))
    return total.item(), {name: norm.item() for name, norm in per_param.items()}


@torch.no_grad()
def evaluate(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Validation loss, accuracy and the share of predictions equal to the most common prediction."""
    started = time.perf_counter()
    model.eval()
    logits = model(inputs).float()
    model.train()
    predictions = logits.argmax(dim=1)
    return {
        "val_loss": F.cross_entropy(logits, targets).item(),
        "val_accuracy": (predictions == targets).float().mean().item(),
        "val_top1_share": predictions.bincount().max().item() / len(predictions),
        "eval_runtime_s": time.perf_counter() - started,
        "eval_examples": len(targets),
    }


class DeepSpeedStyleLog:
    """`train.log` in DeepSpeed's wording: skipped steps, progress, and the give-up at the minimum scale."""

    def __init__(self, path: Path, min_loss_scale: float):
        self.file = open(path, "w")
        self.min_loss_scale = min_loss_scale
        self.skipped = 0

    def record(self, step: int, lr: float, outcome: "StepOutcome") -> bool:
        """Log one step; True when the run must stop because the scale cannot back off any further."""
        if outcome.new_loss_scale < outcome.loss_scale:
            self.skipped += 1
            # DeepSpeed raises instead of backing off below its minimum scale.
            if outcome.loss_scale <= self.min_loss_scale:
                self.file.write(MIN_SCALE_TRACEBACK)
                return True
            self.file.write(
                "[INFO] [loss_scaler.py:183:update_scale] [deepspeed] OVERFLOW! Rank 0 Skipping step. "
                f"Attempted loss scale: {outcome.loss_scale}, reducing to {outcome.new_loss_scale}\n"
            )
        self.file.write(f"[INFO] [logging.py:96:log_dist] [Rank 0] step={step}, skipped={self.skipped}, lr=[{lr}]\n")
        return False

    def close(self) -> None:
        self.file.close()


MIN_SCALE_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "train.py", line 142, in <module>\n'
    "    engine.step()\n"
    '  File "deepspeed/runtime/fp16/loss_scaler.py", line 176, in update_scale\n'
    "    raise Exception(\n"
    "Exception: Current loss scale already at minimum - cannot decrease scale anymore. Exiting run.\n"
)


@dataclass(frozen=True)
class StepOutcome:
    """What one optimizer step measured; the loss scales are NaN without mixed precision."""

    grad_norm: float
    layer_grad_norms: dict[str, float]
    loss_scale: float = math.nan
    new_loss_scale: float = math.nan


def backward_and_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, scaler: torch.amp.GradScaler | None
) -> StepOutcome:
    """Backward pass, gradient norms (before any clipping, as trainers log them) and the optimizer step."""
    if scaler is None:
        loss.backward()
        grad_norm, layer_norms = grad_norms(model)
        optimizer.step()
        return StepOutcome(grad_norm, layer_norms)
    loss_scale = scaler.get_scale()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm, layer_norms = grad_norms(model)
    scaler.step(optimizer)  # skipped when the unscaled gradients hold Inf/NaN
    scaler.update()
    return StepOutcome(grad_norm, layer_norms, loss_scale, scaler.get_scale())


def train_run(run_id: str, config: Mapping[str, Any], overrides: Sequence[str], run_dir: Path) -> RunResult:
    """Train one run from its config and write its whole directory under `run_dir`."""
    started = time.perf_counter()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(config["seed"])
    run_dir.mkdir(parents=True, exist_ok=True)
    write_hydra_files(run_dir, config, overrides)

    train_cfg, data_cfg, optimizer_cfg = config["train"], config["data"], config["optimizer"]
    steps_per_epoch = train_cfg["steps_per_epoch"]
    total_steps = train_cfg["epochs"] * steps_per_epoch
    task = make_task(data_cfg)
    val_inputs, val_targets = validation_set(task, data_cfg)
    stream = TrainStream(task, data_cfg, train_cfg["batch_size"], config["seed"])
    model = build_model(config["model"])
    optimizer = make_optimizer(model, optimizer_cfg)
    loss_fn = faults.loss_function(config)
    mixed = train_cfg["precision"] == "fp16"
    scaler = (
        torch.amp.GradScaler("cpu", init_scale=train_cfg["init_loss_scale"], growth_interval=train_cfg["growth_interval"])
        if mixed
        else None
    )
    text_log = DeepSpeedStyleLog(run_dir / faults.TRAIN_LOG_FILE, train_cfg["min_loss_scale"]) if mixed else None
    histogram_param = next(name for name, p in model.named_parameters() if p.dim() > 1)
    sink: MetricSink = open_sink(config, run_dir, histogram_param)

    losses: list[float] = []
    for step in range(1, total_steps + 1):
        epoch = (step - 1) // steps_per_epoch + 1
        lr = lr_at(step, optimizer_cfg, total_steps) * faults.lr_factor(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = faults.corrupt_batch(config, epoch, *stream.next_batch())
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16) if mixed else nullcontext():
            logits = model(inputs)
        loss = loss_fn(logits.float(), targets)
        outcome = backward_and_step(model, optimizer, loss, scaler)

        values = {"train_loss": loss.item(), "grad_norm": outcome.grad_norm, "lr": lr}
        if mixed:
            values["loss_scale"] = outcome.loss_scale
        if config["logger"]["per_layer_grad_norms"]:
            values.update({f"grad_norm/{name}": norm for name, norm in outcome.layer_grad_norms.items()})
        losses.append(values["train_loss"])
        sink.log_train(step, epoch, values)
        if step % steps_per_epoch == 0:
            sink.log_eval(step, epoch, evaluate(model, val_inputs, val_targets))
        if step in config["checkpoint"]["steps"]:
            save_checkpoint(model, run_dir, step, config["checkpoint"]["format"])
        gave_up = text_log.record(step, lr, outcome) if text_log else False
        if gave_up or step == faults.crash_step(config):
            break

    elapsed_s = time.perf_counter() - started
    sink.close(model, _summary(model, losses, elapsed_s, train_cfg["batch_size"]))
    if text_log is not None:
        text_log.close()
    faults.damage_artifacts(config, run_dir)
    return RunResult(run_id, len(losses), losses[-1], elapsed_s)


def _summary(model: nn.Module, losses: list[float], elapsed_s: float, batch_size: int) -> dict[str, float]:
    """The end-of-training numbers HF's Trainer reports in its last log row."""
    n_params = sum(p.numel() for p in model.parameters())
    finite = [value for value in losses if math.isfinite(value)]
    return {
        "train_runtime_s": elapsed_s,
        "train_loss": sum(finite) / len(finite) if finite else math.nan,
        "train_examples": len(losses) * batch_size,
        # The usual 6 * parameters * examples estimate of training FLOPs.
        "total_flos": float(6 * n_params * len(losses) * batch_size),
    }
