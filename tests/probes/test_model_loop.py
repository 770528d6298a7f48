"""Entry points, the run's params, weights into the model, the loss conventions; and device placement."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch

from mldebug_ray.config import ProbesConfig
from mldebug_ray.errors import ConfigError
from mldebug_ray.probes.device import resolve_device, task_gpus
from mldebug_ray.probes.model_loop import (
    EntryPoints,
    ProbeError,
    build_model,
    compute_loss,
    import_entry_point,
    run_params,
)

HERE = Path(__file__).parent


def test_params_become_a_typed_nested_dict():
    params = pl.DataFrame(
        {
            "key": ["model.depth", "model.act", "model.norm", "lr", "steps", "data.n", "fault", "fault.kind", "tags"],
            "value": ["10", "relu", "true", "0.003", "[100, 200]", "", "", "nan_targets", "a b"],
            "value_num": [10.0, None, 1.0, 0.003, None, None, None, None, None],
        }
    )
    assert run_params(params) == {
        "model": {"depth": 10, "act": "relu", "norm": True},
        "lr": 0.003,
        "steps": [100, 200],
        "data": {"n": None},
        "fault": {"kind": "nan_targets"},
        "tags": "a b",
    }


def test_entry_points_import_from_code_paths_and_never_from_the_run_directory(tmp_path):
    fn = import_entry_point("tiny_models:model_fn", [str(HERE)])
    assert callable(fn)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    marker = tmp_path / "ran"
    (run_dir / "evil_model.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef model_fn(params):\n    pass\n")
    (run_dir / "evil_pkg").mkdir()
    (run_dir / "evil_pkg" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(ProbeError, match="inside the run directory"):
        import_entry_point("evil_model:model_fn", [str(run_dir)], run_dir=run_dir)
    with pytest.raises(ProbeError, match="inside the run directory"):
        import_entry_point("evil_pkg.models:model_fn", [str(run_dir)], run_dir=run_dir)
    assert not marker.exists()  # refused before any of its code ran
    with pytest.raises(ProbeError, match="cannot import"):
        import_entry_point("no_such_module_xyz:f", [])
    with pytest.raises(ProbeError, match="has no function"):
        import_entry_point("tiny_models:nope", [str(HERE)])


def test_weights_load_strictly_with_wrapper_prefixes_stripped():
    import tiny_models

    entry = EntryPoints(tiny_models.model_fn, tiny_models.batch_fn)
    source = tiny_models.TinyNet()
    state = {f"module.{k}": v.clone() for k, v in source.state_dict().items()}
    model = build_model(entry, {}, state, "cpu")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    wrong = dict(source.state_dict())
    wrong.pop("head.bias")
    with pytest.raises(ProbeError, match="missing \\['head.bias'\\]"):
        build_model(entry, {}, wrong, "cpu")
    with pytest.raises(ProbeError, match="does not load"):
        build_model(entry, {"model": {"dim": 4}}, source.state_dict(), "cpu")


def test_loss_conventions_pairs_dicts_and_loss_fn():
    import tiny_models

    model = tiny_models.TinyNet()
    tokens, targets = tiny_models.batch_fn({})
    loss, output = compute_loss(model, (tokens, targets), None)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(model(tokens), targets).item())
    loss2, output2 = compute_loss(model, {"tokens": tokens, "labels": targets}, tiny_models.loss_fn)
    assert loss2.item() == pytest.approx(loss.item()) and torch.equal(output2, output)
    with pytest.raises(ProbeError, match="probes.loss_fn"):
        compute_loss(model, tokens, None)


def test_auto_device_is_the_cpu_here_and_cuda_without_a_gpu_is_said():
    problems: list[str] = []
    want_cuda = torch.cuda.is_available()
    assert resolve_device("auto").type == ("cuda" if want_cuda else "cpu")
    assert resolve_device("cpu").type == "cpu"
    device = resolve_device("cuda", problems)
    if not want_cuda:
        assert device.type == "cpu" and "no CUDA device" in problems[0]


def test_tasks_ask_for_gpus_only_when_probes_will_use_one():
    model = dict(model_fn="m:f", batch_fn="m:b")
    assert task_gpus(ProbesConfig(), {"CPU": 8, "GPU": 2}) == 0.0  # no model probes: logs and stats stay on CPUs
    assert task_gpus(ProbesConfig(**model), {"CPU": 8, "GPU": 2}) == 0.25
    assert task_gpus(ProbesConfig(**model, gpus_per_task=1.0), {"CPU": 8, "GPU": 2}) == 1.0
    assert task_gpus(ProbesConfig(**model), {"CPU": 8}) == 0.0
    assert task_gpus(ProbesConfig(**model, device="cpu"), {"CPU": 8, "GPU": 2}) == 0.0
    assert task_gpus(ProbesConfig(device="cuda"), {"CPU": 8, "GPU": 1}) == 0.25
    with pytest.raises(ConfigError, match="no GPU"):
        task_gpus(ProbesConfig(device="cuda"), {"CPU": 8})


def test_probe_config_rejects_impossible_values():
    with pytest.raises(ConfigError, match="probes.model_probes"):
        ProbesConfig(model_probes=["gradients", "weights"])
    with pytest.raises(ConfigError, match="probes.model_steps"):
        ProbesConfig(model_steps=0)
    with pytest.raises(ConfigError, match="probes.gpus_per_task"):
        ProbesConfig(gpus_per_task=0)
