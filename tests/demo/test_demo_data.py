"""The demo's data side: the leaked and the skewed runs' splits, and `data_fn` rebuilding every run's splits from its params."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from mldebug_ray.demo.data import data_fn
from mldebug_ray.demo.scenarios import demo_runs
from mldebug_ray.demo.tasks import TrainStream, make_task, training_pool, validation_set
from mldebug_ray.probes.data import iter_split

SPECS = {spec.run_id: spec for spec in demo_runs()}


def rows(split_fn) -> tuple[list[int], list[int]]:
    """Every example of a split as the hash of its bytes (exact content) and its label, through the data probe's own reader."""
    examples, labels = [], []
    for batch in iter_split(split_fn):
        flat = batch.x.reshape(len(batch), -1).contiguous().numpy()
        examples += map(hash, flat.view(np.dtype((np.void, flat.itemsize * flat.shape[1]))).ravel().tolist())
        if batch.y is not None:
            labels += batch.y.tolist()
    return examples, labels


def test_the_leaked_run_copies_30_percent_of_its_validation_split_from_the_training_pool():
    config = SPECS["data_leakage"].config()
    task = make_task(config["data"])
    val_x, _ = validation_set(task, config["data"])
    pool = set(rows(lambda: [{"x": training_pool(task, config["data"])[0]}])[0])
    leaked = sum(v in pool for v in rows(lambda: [{"x": val_x}])[0])
    assert leaked == round(0.3 * config["data"]["n_val"])
    # data_fn gives exactly these splits: the training pool and the validation set.
    splits = data_fn(config)
    train, _ = rows(splits["train"])
    val, _ = rows(splits["val"])
    assert set(train) == pool and len(train) == config["data"]["n_train"]
    assert sum(v in pool for v in val) == leaked


def test_the_skewed_run_has_about_50_times_more_of_its_largest_class_than_of_its_smallest():
    config = SPECS["class_imbalance"].config()
    for name, split_fn in data_fn(config).items():
        counts = Counter(rows(split_fn)[1])
        assert set(counts) == {0, 1, 2, 3}, name
        assert 30 <= max(counts.values()) / min(counts.values()) <= 100, (name, counts)


@pytest.mark.parametrize("run_id", [rid for rid, spec in SPECS.items() if spec.config()["data"]["task"] != "markov_lm"
                                    and rid != "data_leakage"])
def test_every_other_classification_run_has_disjoint_train_and_validation_splits(run_id):
    splits = data_fn(SPECS[run_id].config())
    train, train_labels = rows(splits["train"])
    val, val_labels = rows(splits["val"])
    assert not set(train) & set(val)
    assert train_labels and val_labels


def test_the_train_split_replays_the_runs_own_training_batches():
    config = SPECS["fp16_loss_scale_collapse"].config()
    train = iter(data_fn(config)["train"]())
    stream = TrainStream(make_task(config["data"]), config["data"], config["train"]["batch_size"], config["seed"])
    for step in range(1, 3 * config["train"]["steps_per_epoch"] + 1):
        inputs, targets = stream.next_batch()
        batch = next(train)
        assert torch.equal(batch["x"], inputs) and torch.equal(batch["y"], targets)
    # From fault.start_epoch the unnormalised shard: inputs scaled as training saw them.
    inputs, _ = stream.next_batch()
    assert torch.equal(next(train)["x"], inputs * config["fault"]["input_scale"])


def test_markov_lm_runs_give_validation_inputs_only():
    splits = data_fn(SPECS["baseline/seed0"].config())
    assert set(splits) == {"val"}
    examples, labels = rows(splits["val"])
    assert len(examples) == SPECS["baseline/seed0"].config()["data"]["n_val"] and labels == []


def test_data_fn_reads_the_params_as_the_probes_get_them_from_a_built_run(demo_root):
    from mldebug_ray import read_run
    from mldebug_ray.probes.model_loop import run_params

    params = run_params(read_run(demo_root / "class_imbalance").params)
    assert params["data"]["class_keep"] == [1.0, 1.0, 0.03, 0.03]
    from_dir = rows(data_fn(params)["val"])
    from_spec = rows(data_fn(SPECS["class_imbalance"].config())["val"])
    assert from_dir == from_spec
