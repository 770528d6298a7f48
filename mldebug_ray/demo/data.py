"""Probe entry point `data_fn` (SPEC §9, probes/data.py's contract): a demo run's splits, rebuilt from its hyperparameters.

Everything is reproduced from the run's recorded config (`.hydra/config.yaml` -> the
`params` table), with the same seeds the training used (demo/tasks.py, demo/train.py):

- `train`: the examples the run trained on. With `data.n_train` the fixed training pool
  (seen once per epoch); otherwise the fresh batches of every planned optimizer step in
  order (a run that stopped early saw a prefix of them), drawn from the run's own `seed`,
  with its data faults applied as in training (e.g. the unnormalised shard from
  `fault.start_epoch` on). Streamed step by step: one batch in memory at a time.
- `val`: the validation examples (with `data.leak_frac`, some are copies of training-pool
  examples: the `data_leakage` run).

Markov-LM runs give `val` inputs only: their "examples" are 4-token contexts over a
32-token vocabulary, a space the training stream covers many times over (about 75% of
the validation contexts recur among the first 12,800 training ones), so exact repeats
across splits are the task itself, not a leak; and next-token targets follow the
language's Zipf-like token frequencies (30:1 between the commonest and rarest in the
validation split), which are no class imbalance to fix. Without labels and without a
train split the data probe fingerprints the validation split and nothing more.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import torch

from mldebug_ray.demo import faults
from mldebug_ray.demo.models import _nested
from mldebug_ray.demo.tasks import TrainStream, make_task, training_pool, validation_set

BATCH_SIZE = 256  # examples per yielded batch of a fixed set (the pool, the validation split)


def _list(value: Any) -> Any:
    """A list recorded as {"0": a, "1": b, ...} (some readers flatten lists by index) as a list again."""
    if isinstance(value, Mapping) and value and all(str(k).isdigit() for k in value):
        return [value[k] for k in sorted(value, key=lambda k: int(k))]
    return value


def _config(params: Mapping[str, Any]) -> dict[str, Any]:
    config = _nested(params)
    data = dict(config["data"])
    if "class_keep" in data:
        data["class_keep"] = _list(data["class_keep"])
    config["data"] = data
    return config


def _chunks(inputs: torch.Tensor, targets: torch.Tensor | None) -> Iterator[dict[str, Any]]:
    for start in range(0, len(inputs), BATCH_SIZE):
        batch: dict[str, Any] = {"x": inputs[start : start + BATCH_SIZE]}
        if targets is not None:
            batch["y"] = targets[start : start + BATCH_SIZE]
        yield batch


def _train_batches(config: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    data_cfg, train_cfg = config["data"], config["train"]
    task = make_task(data_cfg)
    pool = training_pool(task, data_cfg)
    if pool is not None:
        yield from _chunks(*pool)
        return
    stream = TrainStream(task, data_cfg, train_cfg["batch_size"], config["seed"])
    steps_per_epoch = train_cfg["steps_per_epoch"]
    for step in range(1, train_cfg["epochs"] * steps_per_epoch + 1):
        epoch = (step - 1) // steps_per_epoch + 1
        inputs, targets = faults.corrupt_batch(config, epoch, *stream.next_batch())
        yield {"x": inputs, "y": targets}


def _val_batches(config: Mapping[str, Any], labels: bool) -> Iterator[dict[str, Any]]:
    inputs, targets = validation_set(make_task(config["data"]), config["data"])
    yield from _chunks(inputs, targets if labels else None)


def data_fn(params: Mapping[str, Any]) -> dict[str, Callable[[], Iterator[dict[str, Any]]]]:
    """The demo run's splits (module docstring): `train` and `val`, or `val` inputs only for the Markov-LM runs."""
    config = _config(params)
    if config["data"]["task"] == "markov_lm":
        return {"val": lambda: _val_batches(config, labels=False)}
    return {"train": lambda: _train_batches(config), "val": lambda: _val_batches(config, labels=True)}
