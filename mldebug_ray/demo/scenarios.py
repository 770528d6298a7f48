"""The demo sweep's runs (SPEC §6): each a base config, Hydra-style overrides and the findings it should raise."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from mldebug_ray.demo.models import bag_hidden_dim_for_share

# The one Markov-chain language most runs learn; only init and batch order vary by seed.
LM_DATA = {
    "task": "markov_lm",
    "task_seed": 1234,
    "vocab_size": 32,
    "context_len": 4,
    "concentration": 0.1,
    "n_train": None,
    "n_val": 1024,
}
TEACHER_DATA = {"task": "teacher_classes", "task_seed": 4321, "in_dim": 16, "n_classes": 4, "n_train": None, "n_val": 1024}
EMBED_SHARE_TARGET = 0.79


@dataclass(frozen=True)
class RunSpec:
    """One demo run: its directory relative to the sweep root, its config and what a diagnosis should find."""

    run_id: str
    base: dict[str, Any]
    overrides: tuple[str, ...]
    expected_findings: tuple[str, ...]

    def config(self) -> dict[str, Any]:
        """The base config with the overrides applied, as a plain nested dict."""
        merged = OmegaConf.merge(OmegaConf.create(self.base), OmegaConf.from_dotlist(list(self.overrides)))
        return OmegaConf.to_container(merged, resolve=True)

    @property
    def scenario(self) -> str:
        return self.base["scenario"]


def _config(scenario: str, data: dict, model: dict, optimizer: dict, train: dict, logger: str, checkpoint: dict, **extra) -> dict:
    return {
        "scenario": scenario,
        "seed": 0,
        "data": copy.deepcopy(data),
        "model": model,
        "optimizer": {"weight_decay": 0.0, "schedule": "constant", "min_lr_frac": 1.0, **optimizer},
        "train": {"precision": "fp32", "max_grad_norm": None, **train},
        "logger": {"format": logger, "per_layer_grad_norms": False},
        "checkpoint": checkpoint,
        "fault": None,
        **extra,
    }


def _tiny_lm(embed_dim: int = 32, hidden_dim: int = 128) -> dict:
    return {"name": "tiny_lm", "vocab_size": LM_DATA["vocab_size"], "context_len": LM_DATA["context_len"],
            "embed_dim": embed_dim, "hidden_dim": hidden_dim}


def _deep_mlp(depth: int, activation: str, init_gain: float, use_norm: bool, width: int = 64) -> dict:
    return {"name": "deep_mlp", "in_dim": TEACHER_DATA["in_dim"], "width": width, "depth": depth,
            "n_classes": TEACHER_DATA["n_classes"], "activation": activation, "init_gain": init_gain, "use_norm": use_norm}


TRAIN_10x20 = {"epochs": 10, "steps_per_epoch": 20, "batch_size": 64}


def baseline() -> dict:
    return _config(
        "baseline", LM_DATA, _tiny_lm(),
        {"name": "adamw", "lr": 3e-3, "schedule": "cosine", "min_lr_frac": 0.1},
        # Batches of 256 keep step-to-step loss noise well inside what a spike detector tolerates.
        {**TRAIN_10x20, "batch_size": 256}, "tensorboard", {"format": "safetensors", "steps": [100, 200]},
    )


def lr_change_divergence() -> dict:
    return _config(
        "lr_change_divergence", LM_DATA, _tiny_lm(),
        {"name": "adamw", "lr": 5e-3},
        TRAIN_10x20, "hf_trainer_state", {"format": "hf", "steps": [120, 160, 200]},
        lr_change_epoch=7, lr_change_factor=100.0,
    )


def mode_collapse() -> dict:
    config = _config(
        "mode_collapse", LM_DATA, _tiny_lm(),
        {"name": "adamw", "lr": 3e-3},
        TRAIN_10x20, "jsonl", {"format": "torch", "steps": [40, 200]},
    )
    config["fault"] = {"kind": "constant_targets", "start_epoch": 3, "token_id": 0}
    return config


def embedding_heavy() -> dict:
    data = {"task": "token_bags", "task_seed": 99, "vocab_size": 1024, "n_classes": 8, "doc_len": 16,
            "signal_frac": 0.3, "n_train": None, "n_val": 1024}
    embed_dim = 32
    hidden_dim = bag_hidden_dim_for_share(data["vocab_size"], embed_dim, data["n_classes"], EMBED_SHARE_TARGET)
    model = {"name": "bag_classifier", "vocab_size": data["vocab_size"], "embed_dim": embed_dim,
             "hidden_dim": hidden_dim, "n_classes": data["n_classes"]}
    return _config(
        "embedding_heavy", data, model,
        {"name": "adamw", "lr": 3e-3},
        TRAIN_10x20, "csv", {"format": "safetensors", "steps": [100, 200]},
    )


def exploding_gradients() -> dict:
    config = _config(
        "exploding_gradients", TEACHER_DATA, _deep_mlp(depth=8, activation="relu", init_gain=2.0, use_norm=False),
        {"name": "sgd", "lr": 4e-5},
        TRAIN_10x20, "tensorboard", {"format": "torch", "steps": [100, 200]},
    )
    config["logger"]["per_layer_grad_norms"] = True
    config["fault"] = {"kind": "missing_log_softmax"}
    return config


def vanishing_gradients() -> dict:
    config = _config(
        "vanishing_gradients", TEACHER_DATA, _deep_mlp(depth=10, activation="sigmoid", init_gain=0.5, use_norm=False),
        {"name": "sgd", "lr": 0.05},
        TRAIN_10x20, "tensorboard", {"format": "torch", "steps": [100, 200]},
    )
    config["logger"]["per_layer_grad_norms"] = True
    return config


def fp16_loss_scale_collapse() -> dict:
    config = _config(
        "fp16_loss_scale_collapse", TEACHER_DATA, _deep_mlp(depth=3, activation="relu", init_gain=1.4, use_norm=True),
        {"name": "adamw", "lr": 1e-3},
        {**TRAIN_10x20, "precision": "fp16", "init_loss_scale": 2.0**16, "growth_interval": 2000, "min_loss_scale": 1.0},
        "jsonl", {"format": "torch", "steps": [20, 40, 60]},
    )
    config["fault"] = {"kind": "unnormalized_shard", "start_epoch": 4, "input_scale": 1.0e5}
    return config


def overfitting() -> dict:
    # 512 examples for ~185k parameters: it generalises for a few epochs, then memorises.
    data = {**LM_DATA, "n_train": 512}
    return _config(
        "overfitting", data, _tiny_lm(embed_dim=64, hidden_dim=512),
        {"name": "adamw", "lr": 2e-3},
        {"epochs": 50, "steps_per_epoch": 4, "batch_size": 128}, "csv", {"format": "safetensors", "steps": [20, 200]},
    )


def broken_artifacts() -> dict:
    config = _config(
        "broken_artifacts", LM_DATA, _tiny_lm(),
        {"name": "adamw", "lr": 3e-3},
        TRAIN_10x20, "jsonl", {"format": "safetensors", "steps": [60, 120]},
    )
    config["train"]["init_from"] = "pretrained/tiny_lm.safetensors"  # never shipped with the run
    config["fault"] = {"kind": "disk_full", "at_step": 120, "truncated_checkpoint_step": 120}
    return config


def _small_classifier() -> dict:
    return _deep_mlp(depth=3, activation="relu", init_gain=1.4, use_norm=True)


def data_leakage() -> dict:
    # A fixed pool of 2048 training examples; 30% of the validation split are copies of some of them.
    data = {**TEACHER_DATA, "n_train": 2048, "leak_frac": 0.3}
    return _config(
        "data_leakage", data, _small_classifier(),
        {"name": "adamw", "lr": 1e-3},
        TRAIN_10x20, "jsonl", {"format": "safetensors", "steps": [100, 200]},
    )


def class_imbalance() -> dict:
    # Classes 2 and 3 kept with probability 0.03: the largest class outnumbers the smallest about 50:1.
    data = {**TEACHER_DATA, "class_keep": [1.0, 1.0, 0.03, 0.03], "n_val": 2048}
    return _config(
        "class_imbalance", data, _small_classifier(),
        {"name": "adamw", "lr": 1e-3},
        # Batches of 256: with 64, whether a batch holds a rare example swings the loss enough to look like divergence.
        {**TRAIN_10x20, "batch_size": 256}, "csv", {"format": "torch", "steps": [100, 200]},
    )


def adversarial_fragility() -> dict:
    # Goodfellow et al. (2015)'s linear argument: a classifier of a linear teacher in 2048
    # dimensions (a flattened 32x32x2 image) moves its scores by eps * ||w||_1 under FGSM, which
    # grows like the dimension while the margins grow like its square root: a perturbation of
    # 1/255-size takes more than half of its correct answers.
    data = {**TEACHER_DATA, "in_dim": 2048}
    model = {**_deep_mlp(depth=2, activation="relu", init_gain=1.4, use_norm=True), "in_dim": data["in_dim"]}
    return _config(
        "adversarial_fragility", data, model,
        {"name": "adamw", "lr": 1e-3},
        {**TRAIN_10x20, "batch_size": 128}, "tensorboard", {"format": "safetensors", "steps": [100, 200]},
    )


def lr_grid() -> dict:
    return _config(
        "lr_grid", LM_DATA, _tiny_lm(),
        {"name": "adamw", "lr": 3e-3},
        {"epochs": 5, "steps_per_epoch": 20, "batch_size": 64}, "csv", {"format": "torch", "steps": [60, 100]},
    )


BASELINE_SEEDS = (0, 1, 2)
# Too low, good, higher but stable: the LR effect on final val loss is ~10x the seed spread.
GRID_LRS = (1e-4, 3e-3, 3e-2)
GRID_SEEDS = (0, 1, 2)


def demo_runs() -> list[RunSpec]:
    """Every run of the demo sweep, in a fixed order."""
    runs = [RunSpec(f"baseline/seed{seed}", baseline(), (f"seed={seed}",), ()) for seed in BASELINE_SEEDS]
    runs += [
        RunSpec("lr_change_divergence", lr_change_divergence(), ("lr_change_epoch=7", "lr_change_factor=100.0"),
                ("divergence", "grad_norm_spike", "lr_schedule_anomaly")),
        RunSpec("mode_collapse", mode_collapse(), ("fault.kind=constant_targets",), ("mode_collapse",)),
        RunSpec("embedding_heavy", embedding_heavy(), (), ("architecture_imbalance",)),
        RunSpec("exploding_gradients", exploding_gradients(), ("model.init_gain=2.0", "fault.kind=missing_log_softmax"),
                ("exploding_gradients", "nan_inf")),
        RunSpec("vanishing_gradients", vanishing_gradients(), ("model.activation=sigmoid", "model.depth=10"),
                ("vanishing_gradients", "plateau")),
        RunSpec("fp16_loss_scale_collapse", fp16_loss_scale_collapse(), ("train.precision=fp16",),
                ("loss_scale_collapse", "fp16_overflow", "nan_inf", "known_error", "distribution_shift")),
        RunSpec("overfitting", overfitting(), ("data.n_train=512", "train.epochs=50"), ("overfitting",)),
        RunSpec("broken_artifacts", broken_artifacts(), (), ("run_incomplete", "known_error")),
        RunSpec("data_leakage", data_leakage(), ("data.leak_frac=0.3",), ("data_leakage",)),
        RunSpec("class_imbalance", class_imbalance(), ("data.class_keep=[1.0,1.0,0.03,0.03]",), ("class_imbalance",)),
        RunSpec("adversarial_fragility", adversarial_fragility(), ("data.in_dim=2048",), ("adversarial_fragility",)),
    ]
    runs += [
        RunSpec(f"lr_grid/lr{lr}_seed{seed}", lr_grid(), (f"optimizer.lr={lr}", f"seed={seed}"),
                ("slow_convergence",) if lr == min(GRID_LRS) else ())
        for lr in GRID_LRS
        for seed in GRID_SEEDS
    ]
    return runs
