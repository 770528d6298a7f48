import pytest

from mldebug_ray.discover import discover
from mldebug_ray.errors import ConfigError


def test_run_ids_are_relative_paths_of_the_deepest_run_dirs(tmp_path, jsonl_run):
    jsonl_run(tmp_path / "a" / "seed0", [1.0, 0.9])
    jsonl_run(tmp_path / "a" / "seed1", [1.0, 0.8])
    jsonl_run(tmp_path / "b", [2.0])
    (tmp_path / "empty" / "deep").mkdir(parents=True)
    runs = discover([str(tmp_path)])
    assert [r.run_id for r in runs] == ["a/seed0", "a/seed1", "b"]


def test_parent_with_its_own_metrics_yields_to_the_deeper_runs(tmp_path, jsonl_run):
    jsonl_run(tmp_path / "w", [1.0])
    jsonl_run(tmp_path / "w" / "trial_1", [1.0])
    assert [r.run_id for r in discover([str(tmp_path)])] == ["w/trial_1"]


def test_checkpoint_and_hydra_folders_are_never_runs(tmp_path, jsonl_run):
    run = jsonl_run(tmp_path / "r", [1.0], params={"lr": 0.1})
    ck = run / "checkpoint-10"
    ck.mkdir()
    (ck / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    assert [r.run_id for r in discover([str(tmp_path)])] == ["r"]


def test_several_roots_prefix_run_ids_with_the_root_name(tmp_path, jsonl_run):
    jsonl_run(tmp_path / "x" / "r1", [1.0])
    jsonl_run(tmp_path / "y" / "r1", [1.0])
    ids = [r.run_id for r in discover([str(tmp_path / "x"), str(tmp_path / "y")])]
    assert ids == ["x/r1", "y/r1"]


def test_include_and_exclude_globs(tmp_path, jsonl_run):
    for name in ("lr0.1_seed0", "lr0.1_seed1", "lr1_seed0"):
        jsonl_run(tmp_path / name, [1.0])
    ids = [r.run_id for r in discover([str(tmp_path)], include=["lr0.1*"], exclude=["*seed1"])]
    assert ids == ["lr0.1_seed0"]


def test_missing_root_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="nope"):
        discover([str(tmp_path / "nope")])


def test_symlinked_folders_are_not_followed(tmp_path, jsonl_run):
    outside = jsonl_run(tmp_path / "outside" / "r", [1.0])
    root = tmp_path / "root"
    jsonl_run(root / "inside", [1.0])
    (root / "link").symlink_to(outside.parent, target_is_directory=True)
    assert [r.run_id for r in discover([str(root)])] == ["inside"]


def test_own_output_dir_under_a_root_is_skipped(tmp_path, jsonl_run):
    jsonl_run(tmp_path / "r", [1.0])
    jsonl_run(tmp_path / "out" / "copy", [1.0])
    assert [r.run_id for r in discover([str(tmp_path)], exclude_dirs=[tmp_path / "out"])] == ["r"]
