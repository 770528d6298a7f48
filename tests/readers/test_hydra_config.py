"""The Hydra reader: `.hydra/config.yaml` flattened to dotted params, overrides as one JSON list."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from mldebug_ray.errors import ReadError
from mldebug_ray.readers import READERS


def _hydra_run(run_dir, config, overrides):
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")


def test_config_is_flattened_to_dotted_params(tmp_path):
    config = {
        "seed": 3,
        "optim": {"name": "adamw", "lr": 3e-4, "betas": [0.9, 0.95], "schedule": {"warmup_steps": 100, "kind": None}},
        "model": {"layers": 4, "dropout": 0.0, "tie": True, "extra": {}},
        "run_name": "lr${optim.lr}",
        "broken": "${does.not.exist}",
        "env": "${oc.env:MLDEBUG_SURELY_UNSET_VAR}",
    }
    _hydra_run(tmp_path, config, ["optim.lr=3e-4", "seed=3"])
    reader = READERS["hydra"]
    files = reader.detect(tmp_path)
    assert [p.name for p in files] == ["config.yaml", "overrides.yaml"]
    assert reader.provides_metrics is False
    data = reader.read(tmp_path, files)
    params = data.params
    assert params["seed"] == 3
    assert params["optim.name"] == "adamw"
    assert params["optim.lr"] == 3e-4
    assert json.loads(params["optim.betas"]) == [0.9, 0.95]
    assert params["optim.schedule.warmup_steps"] == 100
    assert params["optim.schedule.kind"] is None
    assert params["model.tie"] is True
    assert params["model.extra"] == "{}"
    assert params["run_name"] == "lr0.0003"  # an interpolation that resolves
    assert params["broken"] == "${does.not.exist}"  # one that does not stays as written
    assert params["env"] == "${oc.env:MLDEBUG_SURELY_UNSET_VAR}"
    assert json.loads(params["hydra.overrides"]) == ["optim.lr=3e-4", "seed=3"]
    assert data.metrics is None
    assert any("2 interpolation(s) could not be resolved" in p for p in data.problems)


def test_python_tags_are_read_as_plain_data_and_never_run(tmp_path):
    marker = tmp_path / "marker"
    hydra_dir = tmp_path / ".hydra"
    hydra_dir.mkdir()
    (hydra_dir / "config.yaml").write_text(
        f"lr: 0.1\nargs: !!python/object/apply:os.system ['touch {marker}']\nns: !!python/object:argparse.Namespace {{a: 1}}\n"
    )
    data = READERS["hydra"].read(tmp_path, READERS["hydra"].detect(tmp_path))
    assert not marker.exists()
    assert data.params["lr"] == 0.1
    assert data.params["ns.a"] == 1
    assert json.loads(data.params["args"]) == [f"touch {marker}"]


def test_unparsable_config_is_a_read_error(tmp_path):
    hydra_dir = tmp_path / ".hydra"
    hydra_dir.mkdir()
    (hydra_dir / "config.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ReadError, match=".hydra/config.yaml"):
        READERS["hydra"].read(tmp_path, READERS["hydra"].detect(tmp_path))


def test_no_hydra_folder_detects_nothing(tmp_path):
    assert READERS["hydra"].detect(tmp_path) == []
