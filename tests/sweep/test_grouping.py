"""Grouping runs into comparison groups, configurations and repeats, from params and from paths."""

import polars as pl
import pytest

from mldebug_ray.errors import ConfigError
from mldebug_ray.sweep.grouping import GroupingConfig, build_grouping, is_ignored_key, is_seed_key, parse_path


@pytest.mark.parametrize(
    "run_id, group, index, repeat, seed",
    [
        ("shampoo_submission/study_0/criteo1tb_pytorch/trial_3", "shampoo_submission/~study_#/criteo1tb_pytorch/trial_#", "trial_3", "study_0", None),
        ("70m-seed2", "70m~seed#", "", "seed2", "seed2"),
        ("2024-11-06_ShortcutsTweaks/042f9e87-07e6-4504-bb04-4ec59a380211", "2024-11-06_ShortcutsTweaks/~<id>", "",
         "042f9e87-07e6-4504-bb04-4ec59a380211", None),
        ("lr_grid/lr0.0001_seed0", "lr_grid/lr#~seed#", "lr0.0001", "seed0", "seed0"),
        ("baseline/seed1", "baseline/~seed#", "", "seed1", "seed1"),
        ("multirun/2024-01-01/12-00-00/3", "multirun/#-#-#/#-#-#/#", "2024-01-01/12-00-00/3", "", None),
        ("tr1-13B-base_lm_loss_spike_29k", "tr1-13B-base_lm_loss_spike_29k", "", "", None),
    ],
)
def test_paths_split_into_group_index_and_repeat(run_id, group, index, repeat, seed):
    parts = parse_path(run_id, GroupingConfig())
    assert (parts.group, parts.index, parts.repeat, parts.seed) == (group, index, repeat, seed)


def test_workloads_and_submissions_stay_apart_while_studies_join():
    cfg = GroupingConfig()
    a = parse_path("baseline/study_0/ogbg_jax/trial_1", cfg).group
    assert a == parse_path("baseline/study_4/ogbg_jax/trial_5", cfg).group
    assert a != parse_path("baseline/study_0/wmt_jax/trial_1", cfg).group
    assert a != parse_path("generalized_adam/study_0/ogbg_jax/trial_1", cfg).group


def test_seed_and_bookkeeping_keys_are_not_hyperparameters():
    cfg = GroupingConfig()
    for key in ("seed", "train.seed", "data_seed", "rng_seed", "data_order", "study", "shuffle_seed"):
        assert is_seed_key(key, cfg), key
    for key in ("summary.score", "output_dir", "hydra.run.dir", "run_name"):
        assert is_ignored_key(key, cfg), key
    for key in ("learning_rate", "optimizer.lr", "model.name", "weight_decay"):
        assert not is_seed_key(key, cfg) and not is_ignored_key(key, cfg), key


def _params(rows):
    return pl.DataFrame(
        [{"run_id": r, "key": k, "value": str(v), "value_num": float(v) if isinstance(v, (int, float)) else None} for r, k, v in rows],
        schema={"run_id": pl.String, "key": pl.String, "value": pl.String, "value_num": pl.Float64},
    )


def _runs(ids):
    return pl.DataFrame({"run_id": ids, "status": ["ok"] * len(ids)})


def test_configurations_ignore_seeds_and_results_and_name_trials_by_path():
    ids = [f"sub/study_{s}/wl/trial_{t}" for s in range(3) for t in (1, 2)]
    rows = []
    for r in ids:
        t = int(r[-1])
        rows += [(r, "learning_rate", 0.1 * t), (r, "summary.score", hash(r) % 7), (r, "rng_seed", hash(r) % 1000),
                 (r, "workload.vocab", 100)]
    g = build_grouping(_runs(ids), _params(rows), GroupingConfig())
    runs = g.runs
    assert runs["group"].n_unique() == 1
    assert runs["config"].n_unique() == 2
    assert sorted(runs["config_label"].unique().to_list()) == ["trial_1", "trial_2"]
    assert sorted(runs["repeat"].unique().to_list()) == ["study_0", "study_1", "study_2"]
    assert g.varying_keys(runs["group"][0]) == ["learning_rate"]  # the score, the seed and the constant key are not


def test_without_params_runs_differing_only_by_seed_are_one_configuration():
    ids = ["70m-seed1", "70m-seed2", "70m-seed3", "160m-seed1"]
    g = build_grouping(_runs(ids), _params([]), GroupingConfig()).runs
    small = g.filter(pl.col("run_id").str.starts_with("70m"))
    assert small["group"].n_unique() == 1 and small["config"].n_unique() == 1
    assert small["repeat"].to_list() == ["seed1", "seed2", "seed3"]
    assert g.filter(pl.col("run_id") == "160m-seed1")["group"][0] != small["group"][0]
    assert not g["has_params"].any()


def test_seed_is_every_seed_param_and_the_repeat_label_only_the_varying_ones():
    ids = ["grid/run_1", "grid/run_2", "grid/run_3"]
    rows = [(r, "data.task_seed", 1234) for r in ids] + [("grid/run_1", "seed", 0), ("grid/run_2", "seed", 1), ("grid/run_3", "seed", 1)]
    rows += [(r, "optimizer.lr", 0.1) for r in ids]
    g = build_grouping(_runs(ids), _params(rows), GroupingConfig()).runs
    assert g["seed"].to_list() == ["data.task_seed=1234, seed=0", "data.task_seed=1234, seed=1", "data.task_seed=1234, seed=1"]
    assert g["repeat"].to_list() == ["seed=0", "seed=1", "seed=1"]


def test_a_key_missing_from_some_runs_makes_its_own_configuration():
    ids = ["s/r1", "s/r2"]
    rows = [("s/r1", "dropout", 0.1), ("s/r1", "lr", 1), ("s/r2", "lr", 1)]
    g = build_grouping(_runs(ids), _params(rows), GroupingConfig()).runs
    assert g["config"].n_unique() == 2
    assert "dropout=<unset>" in g.filter(pl.col("run_id") == "s/r2")["config"][0]


@pytest.mark.parametrize("field, value", [("seed_keys", [""]), ("repeat_words", ["se ed"]), ("max_label_keys", 0)])
def test_bad_grouping_settings_name_their_key(field, value):
    with pytest.raises(ConfigError, match=f"grouping.{field}"):
        GroupingConfig(**{field: value})
