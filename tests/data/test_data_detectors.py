"""data_leakage, class_imbalance and distribution_shift on the data probe's tables of constructed splits."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from mldebug_ray.detectors.base import RunEvidence
from mldebug_ray.detectors.class_imbalance import ClassImbalanceConfig, class_imbalance
from mldebug_ray.detectors.data_leakage import DataLeakageConfig, data_leakage
from mldebug_ray.detectors.distribution_shift import DistributionShiftConfig, distribution_shift
from mldebug_ray.errors import ConfigError
from mldebug_ray.probes.data import DataProbeConfig, data_tables

from test_data_probe import batches  # tests/data is on sys.path (pytest prepend import mode)


def evidence(splits) -> RunEvidence:
    tables = data_tables("run", splits, DataProbeConfig(), [])
    return RunEvidence(run_id="run", **tables)


def cited(finding, table: str) -> list[dict]:
    return [e.where for e in finding.evidence if e.table == table]


def rows_exist(ev: RunEvidence, finding) -> None:
    """Every evidence reference selects at least one row of its table."""
    for ref in finding.evidence:
        frame = ev.table(ref.table)
        match = frame.filter(pl.all_horizontal([pl.col(k) == v for k, v in ref.where.items()]))
        assert match.height >= 1, (ref.table, json.dumps(ref.where))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6000, 24, generator=g)
    y = torch.randint(0, 4, (6000,), generator=g)
    return x, y, g


def test_leaked_validation_examples_are_a_high_finding_with_their_ids(data):
    x, y, g = data
    train_x, train_y = x[:5000], y[:5000]
    val_x, val_y = x[5000:].clone(), y[5000:]
    val_x[:20] = train_x[:20]  # 2% of val
    ev = evidence({"train": batches(train_x, y=train_y), "val": batches(val_x, y=val_y)})
    [f] = data_leakage(ev, DataLeakageConfig())
    assert f.kind == "data_leakage" and f.severity == "high" and f.confidence >= 0.9
    assert "20 of 1000" in f.summary and "val:0 ~ train:0" in f.summary
    assert cited(f, "data_overlap")[0] == {"run_id": "run", "split_a": "train", "split_b": "val", "kind": "exact"}
    rows_exist(ev, f)


def test_a_few_near_copies_are_a_medium_finding(data):
    x, y, g = data
    val_x = x[5000:].clone()
    val_x[:3] = x[:3] + 0.001 * torch.randn(3, 24, generator=g)  # 0.3% of val
    ev = evidence({"train": batches(x[:5000], y=y[:5000]), "test": batches(val_x, y=y[5000:])})
    [f] = data_leakage(ev, DataLeakageConfig())
    assert f.severity == "medium" and "3 near duplicate(s)" in f.summary
    assert [w["kind"] for w in cited(f, "data_overlap")] == ["near"]


def test_disjoint_splits_make_no_leakage_finding(data):
    x, y, _ = data
    ev = evidence({"train": batches(x[:5000], y=y[:5000]), "val": batches(x[5000:], y=y[5000:])})
    assert data_leakage(ev, DataLeakageConfig()) == []


def test_validation_that_is_the_train_split_reshuffled_is_eval_on_train(data):
    x, y, g = data
    perm = torch.randperm(5000, generator=g)
    ev = evidence({"train": batches(x[:5000], y=y[:5000]), "validation": batches(x[:5000][perm], y=y[:5000][perm], size=100)})
    [f] = data_leakage(ev, DataLeakageConfig())
    assert f.kind == "eval_on_train" and f.severity == "high" and f.confidence >= 0.95
    assert "same fingerprint" in f.summary
    assert {w["split"] for w in cited(f, "data_splits")} == {"train", "validation"}
    rows_exist(ev, f)


def test_class_imbalance_grades_by_the_documented_ratios(data):
    x, _, _ = data
    y100 = torch.tensor([0] * 4000 + [1] * 960 + [2] * 40)  # 100:1
    ev = evidence({"train": batches(x[:5000], y=y100)})
    [f] = class_imbalance(ev, ClassImbalanceConfig())
    assert f.severity == "high" and "train 100:1" in f.summary
    assert {w["label"] for w in cited(f, "data_labels")} == {0, 2}
    rows_exist(ev, f)
    y20 = torch.tensor([0] * 4000 + [1] * 800 + [2] * 200)  # 20:1
    [f] = class_imbalance(evidence({"train": batches(x[:5000], y=y20)}), ClassImbalanceConfig())
    assert f.severity == "medium"
    y9 = torch.tensor([0] * 4500 + [1] * 500)  # 9:1, under SageMaker's 10
    assert class_imbalance(evidence({"train": batches(x[:5000], y=y9)}), ClassImbalanceConfig()) == []


def test_a_class_missing_from_validation_is_noted(data):
    x, y, _ = data
    val_y = y[5000:].clone()
    val_y[val_y == 3] = 0
    ev = evidence({"train": batches(x[:5000], y=y[:5000]), "val": batches(x[5000:], y=val_y)})
    [f] = class_imbalance(ev, ClassImbalanceConfig())
    assert f.severity == "medium" and "val has no example of class(es) 3" in f.summary
    assert {"run_id": "run", "split": "val", "label": 3} in cited(f, "data_labels")


def test_shift_cites_the_moved_features_and_not_the_others(data):
    x, y, g = data
    prod = torch.randn(5000, 24, generator=g)
    prod[:, 5] += 1.0
    prod[:, 17] *= 3.0
    ev = evidence({"train": batches(x[:5000], y=y[:5000]), "production": batches(prod)})
    [f] = distribution_shift(ev, DistributionShiftConfig())
    assert f.kind == "distribution_shift" and f.severity == "medium"
    assert {w["feature"] for w in cited(f, "data_features")} == {"f5", "f17"}
    assert "2 of 24 input feature(s) moved" in f.summary
    rows_exist(ev, f)


def test_unshifted_splits_and_label_shift(data):
    x, y, _ = data
    ev = evidence({"train": batches(x[:3000], y=y[:3000]), "val": batches(x[3000:], y=y[3000:])})
    assert distribution_shift(ev, DistributionShiftConfig()) == []
    skewed = torch.zeros(3000, dtype=torch.long)
    skewed[:300] = 1
    ev = evidence({"train": batches(x[:3000], y=y[:3000]), "val": batches(x[3000:], y=skewed)})
    [f] = distribution_shift(ev, DistributionShiftConfig())
    assert "label distribution shifted" in f.summary and cited(f, "data_features") == [{"run_id": "run", "split": "val", "feature": "y"}]


def test_detector_configs_reject_impossible_values():
    with pytest.raises(ConfigError, match="detectors.class_imbalance.high_ratio"):
        ClassImbalanceConfig(medium_ratio=10, high_ratio=5)
    with pytest.raises(ConfigError, match="detectors.distribution_shift.min_psi"):
        DistributionShiftConfig(min_psi=0)
    with pytest.raises(ConfigError, match="detectors.data_leakage.high_frac"):
        DataLeakageConfig(high_frac=0)
