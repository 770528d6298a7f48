"""Writers for a demo run's files: Hydra configs, metric logs in four formats, and checkpoints."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

HYDRA_DIR = ".hydra"
TRAINER_STATE_FILE = "trainer_state.json"
CSV_FILE = "metrics.csv"
JSONL_FILE = "metrics.jsonl"
CSV_COLUMNS = ("step", "epoch", "train_loss", "val_loss", "val_accuracy", "grad_norm", "lr")

# Our metric names -> TensorBoard tags; per-layer norms arrive already as `grad_norm/<param>`.
TENSORBOARD_TAGS = {
    "train_loss": "train/loss",
    "grad_norm": "train/grad_norm",
    "lr": "train/lr",
    "loss_scale": "train/loss_scale",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy",
    "val_top1_share": "val/top1_frac",
}


def write_hydra_files(run_dir: Path, config: Mapping[str, Any], overrides: Sequence[str]) -> None:
    """`.hydra/config.yaml` and `.hydra/overrides.yaml`, saved with OmegaConf as Hydra saves them."""
    hydra_dir = run_dir / HYDRA_DIR
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(dict(config)), hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), hydra_dir / "overrides.yaml")


class MetricSink(Protocol):
    """Where a training loop sends its numbers; `step` is the global optimizer step (from 1)."""

    def log_train(self, step: int, epoch: int, values: Mapping[str, float]) -> None: ...

    def log_eval(self, step: int, epoch: int, values: Mapping[str, float]) -> None: ...

    def close(self, model: torch.nn.Module, summary: Mapping[str, float]) -> None: ...


class TensorBoardSink:
    """Scalars via SummaryWriter.add_scalar, and one weight histogram at the end."""

    def __init__(self, run_dir: Path, histogram_param: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir))
        self.histogram_param = histogram_param
        self.last_step = 0

    def _scalars(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            tag = TENSORBOARD_TAGS.get(name, name if name.startswith("grad_norm/") else None)
            if tag is not None:  # bookkeeping such as eval_runtime_s stays out of the event file
                self.writer.add_scalar(tag, value, global_step=step)
        self.last_step = step

    def log_train(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        self._scalars(step, values)

    def log_eval(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        self._scalars(step, values)

    def close(self, model: torch.nn.Module, summary: Mapping[str, float]) -> None:
        weight = model.state_dict()[self.histogram_param].detach().flatten()
        finite = weight[torch.isfinite(weight)]
        # numpy's histogram refuses non-finite ranges; a fully blown-up tensor gets none.
        if finite.numel():
            self.writer.add_histogram(f"weights/{self.histogram_param}", finite, global_step=self.last_step)
        self.writer.close()


class TrainerStateSink:
    """Hugging Face Trainer's `trainer_state.json`: train, eval and summary rows in `log_history`."""

    def __init__(self, run_dir: Path, steps_per_epoch: int, epochs: int, batch_size: int, save_steps: int):
        self.path = run_dir / TRAINER_STATE_FILE
        self.steps_per_epoch = steps_per_epoch
        self.state: dict[str, Any] = {
            "best_metric": None,
            "best_model_checkpoint": None,
            "epoch": 0.0,
            "eval_steps": steps_per_epoch,
            "global_step": 0,
            "is_hyper_param_search": False,
            "is_local_process_zero": True,
            "is_world_process_zero": True,
            "log_history": [],
            "logging_steps": 1,
            "max_steps": steps_per_epoch * epochs,
            "num_input_tokens_seen": 0,
            "num_train_epochs": epochs,
            "save_steps": save_steps,
            "stateful_callbacks": {},
            "total_flos": 0.0,
            "train_batch_size": batch_size,
            "trial_name": None,
            "trial_params": None,
        }

    def _epoch(self, step: int) -> float:
        # HF counts epochs as a float from 0: the end of the first epoch is 1.0.
        return round(step / self.steps_per_epoch, 4)

    def log_train(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        self.state["log_history"].append(
            {
                "epoch": self._epoch(step),
                "grad_norm": values["grad_norm"],
                "learning_rate": values["lr"],
                "loss": round(values["train_loss"], 4),
                "step": step,
            }
        )
        self.state["global_step"], self.state["epoch"] = step, self._epoch(step)

    def log_eval(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        runtime_s = values.get("eval_runtime_s", 0.0)
        n_examples = values.get("eval_examples", 0)
        self.state["log_history"].append(
            {
                "epoch": self._epoch(step),
                "eval_accuracy": values["val_accuracy"],
                "eval_loss": values["val_loss"],
                "eval_runtime": round(runtime_s, 4),
                "eval_samples_per_second": round(n_examples / runtime_s, 3) if runtime_s else None,
                "eval_steps_per_second": round(1 / runtime_s, 3) if runtime_s else None,
                "step": step,
            }
        )

    def close(self, model: torch.nn.Module, summary: Mapping[str, float]) -> None:
        step = self.state["global_step"]
        runtime_s = summary["train_runtime_s"]
        self.state["total_flos"] = summary["total_flos"]
        self.state["log_history"].append(
            {
                "epoch": self._epoch(step),
                "step": step,
                "total_flos": summary["total_flos"],
                "train_loss": summary["train_loss"],
                "train_runtime": round(runtime_s, 4),
                "train_samples_per_second": round(summary["train_examples"] / runtime_s, 3),
                "train_steps_per_second": round(step / runtime_s, 3),
            }
        )
        # HF's own serialisation: indent 2, sorted keys, NaN/Infinity as Python's json writes them.
        self.path.write_text(json.dumps(self.state, indent=2, sort_keys=True) + "\n")


def _csv_cell(value: float | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return repr(value) if isinstance(value, float) else str(value)


class CsvSink:
    """`metrics.csv` with one row per step; validation columns are filled only at epoch ends."""

    def __init__(self, run_dir: Path):
        self.file = open(run_dir / CSV_FILE, "w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(CSV_COLUMNS)
        self.pending: dict[str, Any] | None = None

    def _flush(self) -> None:
        if self.pending is not None:
            self.writer.writerow([_csv_cell(self.pending.get(column)) for column in CSV_COLUMNS])
            self.pending = None

    def log_train(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        self._flush()
        self.pending = {"step": step, "epoch": epoch, **{k: values[k] for k in CSV_COLUMNS if k in values}}

    def log_eval(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        # Evaluation runs after the epoch's last train step: same step, same row.
        if self.pending is None or self.pending["step"] != step:
            self._flush()
            self.pending = {"step": step, "epoch": epoch}
        self.pending.update({k: values[k] for k in CSV_COLUMNS if k in values})

    def close(self, model: torch.nn.Module, summary: Mapping[str, float]) -> None:
        self._flush()
        self.file.close()


class JsonlSink:
    """`metrics.jsonl`: one JSON object per line, train lines and eval lines, flushed as written."""

    TRAIN_KEYS = ("train_loss", "grad_norm", "lr", "loss_scale")
    EVAL_KEYS = ("val_loss", "val_accuracy", "val_top1_share")

    def __init__(self, run_dir: Path):
        self.file = open(run_dir / JSONL_FILE, "w")

    def _line(self, record: Mapping[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def log_train(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        self._line({"step": step, "epoch": epoch, **{k: values[k] for k in self.TRAIN_KEYS if k in values}})

    def log_eval(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        self._line({"step": step, "epoch": epoch, **{k: values[k] for k in self.EVAL_KEYS if k in values}})

    def close(self, model: torch.nn.Module, summary: Mapping[str, float]) -> None:
        self.file.close()


def open_sink(config: Mapping[str, Any], run_dir: Path, histogram_param: str) -> MetricSink:
    """The sink named by `logger.format`."""
    train = config["train"]
    kind = config["logger"]["format"]
    if kind == "tensorboard":
        return TensorBoardSink(run_dir, histogram_param)
    if kind == "hf_trainer_state":
        save_steps = min(config["checkpoint"]["steps"], default=train["steps_per_epoch"])
        return TrainerStateSink(run_dir, train["steps_per_epoch"], train["epochs"], train["batch_size"], save_steps)
    if kind == "csv":
        return CsvSink(run_dir)
    if kind == "jsonl":
        return JsonlSink(run_dir)
    raise ValueError(f"logger.format={kind!r} is not one of tensorboard, hf_trainer_state, csv, jsonl")


def checkpoint_path(run_dir: Path, step: int, checkpoint_format: str) -> Path:
    """Where a checkpoint of `step` goes for `checkpoint.format`."""
    if checkpoint_format == "safetensors":
        return run_dir / "checkpoints" / f"step_{step}.safetensors"
    if checkpoint_format == "torch":
        return run_dir / "checkpoints" / f"step_{step}.pt"
    if checkpoint_format == "hf":
        return run_dir / f"checkpoint-{step}" / "model.safetensors"
    raise ValueError(f"checkpoint.format={checkpoint_format!r} is not one of safetensors, torch, hf")


def save_checkpoint(model: torch.nn.Module, run_dir: Path, step: int, checkpoint_format: str) -> Path:
    """Save the model's state dict; safetensors for `safetensors`/`hf`, torch.save for `torch`."""
    path = checkpoint_path(run_dir, step, checkpoint_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    if checkpoint_format == "torch":
        torch.save(state, path)
    else:
        save_file(state, str(path), metadata={"format": "pt"})
    return path
