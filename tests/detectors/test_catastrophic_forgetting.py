"""catastrophic_forgetting: an earlier task's metric collapsing when a new task starts."""

import pytest

from mldebug_ray.detectors.catastrophic_forgetting import CatastrophicForgettingConfig, catastrophic_forgetting, task_keys
from mldebug_ray.errors import ConfigError


def split_tasks(after0=0.2, with_task_id=False):
    rows = []
    for s in range(10, 300, 10):
        rows.append((s, "val/task_0/accuracy", 0.95 if s < 100 else after0, "val"))
        if s >= 100:
            rows.append((s, "val/task_1/accuracy", 0.9, "val"))
        if s >= 200:
            rows.append((s, "val/task_2/accuracy", 0.9, "val"))
        if with_task_id:
            rows.append((s, "task", float(s // 100)))
    return rows


def test_earlier_task_accuracy_collapsing_at_the_next_task(make_ev, well_formed):
    ev = make_ev(split_tasks())
    found = catastrophic_forgetting(ev, CatastrophicForgettingConfig())
    assert [(f.severity, f.onset_step) for f in found] == [("high", 100)]
    assert "task 0" in found[0].summary and "task 1" in found[0].summary
    well_formed(ev, found)


def test_task_id_metric_gives_the_switch_and_loss_rises_count(make_ev, well_formed):
    rows = [(s, "task_id", 0.0 if s < 100 else 1.0) for s in range(0, 200, 10)]
    rows += [(s, "task0/loss", 0.3 if s < 100 else 1.2) for s in range(0, 200, 10)]
    rows += [(s, "task1/loss", 2.0 if s < 100 else 0.3) for s in range(0, 200, 10)]
    ev = make_ev(rows)
    found = catastrophic_forgetting(ev, CatastrophicForgettingConfig())
    assert [f.onset_step for f in found] == [100]
    assert any(ref.where["key"] == "task_id" for ref in found[0].evidence)
    well_formed(ev, found)


def test_small_forgetting_and_unknown_boundaries_stay_silent(make_ev):
    assert catastrophic_forgetting(make_ev(split_tasks(after0=0.9)), CatastrophicForgettingConfig()) == []
    # every task evaluated from the start, no task id: the switch is unknown
    rows = [(s, f"task{t}/acc", 0.9 if (t == 0 and s < 100) else 0.3) for s in range(0, 200, 10) for t in (0, 1)]
    assert catastrophic_forgetting(make_ev(rows), CatastrophicForgettingConfig()) == []


def test_task_keys_group_families_by_the_varying_task_token():
    fams = task_keys(["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000", "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001", "loss"])
    assert list(fams) == ["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{}"]


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.catastrophic_forgetting.min_rel_drop"):
        CatastrophicForgettingConfig(min_rel_drop=1.5)
