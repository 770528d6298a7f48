"""eval_on_train: a validation series that equals the training series step for step."""

import numpy as np
import pytest

from mldebug_ray.detectors.eval_on_train import EvalOnTrainConfig, base_name, eval_on_train
from mldebug_ray.errors import ConfigError


def test_validation_loss_identical_to_train_loss(make_ev, well_formed):
    train = np.linspace(3.0, 1.0, 10)
    ev = make_ev([(100 * i, "train/loss", v, "train") for i, v in enumerate(train)] + [(100 * i, "val/loss", v, "val") for i, v in enumerate(train)])
    found = eval_on_train(ev, EvalOnTrainConfig())
    assert [(f.severity, f.onset_step) for f in found] == [("high", 0)]
    assert {ref.where["key"] for ref in found[0].evidence} == {"train/loss", "val/loss"}
    well_formed(ev, found)


def test_accuracy_pairs_by_role_across_spellings(make_ev):
    acc = [0.3, 0.5, 0.6, 0.7, 0.75]
    ev = make_ev([(i, "train_acc", a) for i, a in enumerate(acc)] + [(i, "eval_accuracy", a, "val") for i, a in enumerate(acc)])
    assert [f.kind for f in eval_on_train(ev, EvalOnTrainConfig())] == ["eval_on_train"]


def test_different_numbers_and_saturated_or_dead_series_stay_silent(make_ev):
    cfg = EvalOnTrainConfig()
    train = np.linspace(3.0, 1.0, 10)
    ev = make_ev([(i, "train_loss", v) for i, v in enumerate(train)] + [(i, "val_loss", v * 1.1, "val") for i, v in enumerate(train)])
    assert eval_on_train(ev, cfg) == []
    saturated = make_ev([(i, "train/accuracy", 1.0) for i in range(10)] + [(i, "val/accuracy", 1.0, "val") for i in range(10)])
    assert eval_on_train(saturated, cfg) == []
    dead = make_ev([(i, "train/bleu", 0.0) for i in range(10)] + [(i, "test/bleu", 0.0, "test") for i in range(10)])
    assert eval_on_train(dead, cfg) == []


def test_base_names_drop_the_split_word():
    assert base_name("train/loss") == base_name("validation/loss") == base_name("eval_loss") == "loss"


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.eval_on_train.min_common"):
        EvalOnTrainConfig(min_common=1)
