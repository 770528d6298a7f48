"""Readers, one module per format; importing this package registers them all."""

from mldebug_ray.readers.base import READERS, Reader, SourceData, reader

# Registration lines: one per format module.
from mldebug_ray.readers import tensorboard  # noqa: E402,F401
from mldebug_ray.readers import hf_trainer_state  # noqa: E402,F401
from mldebug_ray.readers import csv_metrics  # noqa: E402,F401
from mldebug_ray.readers import jsonl_metrics  # noqa: E402,F401
from mldebug_ray.readers import hydra_config  # noqa: E402,F401
from mldebug_ray.readers import checkpoints  # noqa: E402,F401
from mldebug_ray.readers import text_log  # noqa: E402,F401
from mldebug_ray.readers import mlflow  # noqa: E402,F401
from mldebug_ray.readers import wandb  # noqa: E402,F401
from mldebug_ray.readers import ray_tune  # noqa: E402,F401

__all__ = ["READERS", "Reader", "SourceData", "reader"]
