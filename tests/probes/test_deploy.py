"""Deployment checks: sizes against plain numel/element_size sums, latency protocol, inference memory, profiler trace, wiring."""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from torch import nn

from mldebug_ray import paths
from mldebug_ray.config import ProbesConfig
from mldebug_ray.errors import ConfigError
from mldebug_ray.gather import read_run_dir
from mldebug_ray.probes.deploy import (
    DeployConfig,
    batch_size_of,
    deployment_row,
    inference_latencies_ms,
    inference_peak_bytes,
    model_size,
    quantile,
    save_profile_trace,
)
from mldebug_ray.probes.run_probes import probe_run

from test_run_probes import _config, _run_dir

CPU = torch.device("cpu")


def _random_model(seed: int) -> nn.Module:
    """Random widths, some layers in bf16/fp16/float64, a tied weight and a BatchNorm (buffers)."""
    gen = torch.Generator().manual_seed(seed)
    dims = [int(d) for d in torch.randint(2, 40, (4,), generator=gen)]
    model = nn.Sequential(nn.Embedding(dims[0], dims[1]), nn.Linear(dims[1], dims[2]), nn.BatchNorm1d(dims[2]), nn.Linear(dims[2], dims[3]))
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    for i, layer in enumerate(model):
        layer.to(dtypes[int(torch.randint(0, 4, (1,), generator=gen)) if i != 2 else 0])
    model.register_module("tied", nn.Linear(dims[1], dims[0], bias=False))
    model.tied.weight = model[0].weight  # shared: counted once
    return model


@pytest.mark.parametrize("seed", range(6))
def test_model_size_matches_a_plain_sum_over_distinct_parameters(seed):
    model = _random_model(seed)
    distinct = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        distinct[id(p)] = p
    size = model_size(model)
    assert size["n_params"] == sum(p.numel() for p in distinct.values())
    assert size["param_bytes"] == sum(p.numel() * p.element_size() for p in distinct.values())
    assert size["buffer_bytes"] == sum(b.numel() * b.element_size() for b in model.buffers()) > 0
    by_dtype = json.loads(size["params_by_dtype"])
    for dtype in {str(p.dtype).removeprefix("torch.") for p in distinct.values()}:
        mine = [p for p in distinct.values() if str(p.dtype).removeprefix("torch.") == dtype]
        assert by_dtype[dtype] == {"n_params": sum(p.numel() for p in mine), "bytes": sum(p.numel() * p.element_size() for p in mine)}
    assert sum(v["bytes"] for v in by_dtype.values()) == size["param_bytes"]


def test_quantile_is_numpy_linear_interpolation():
    for values in ([3.0], [1.0, 2.0], [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 7.0]):
        ordered = sorted(values)
        for q in (0.0, 0.5, 0.9, 1.0):
            assert quantile(ordered, q) == pytest.approx(pl.Series(values).quantile(q, "linear"))


def test_batch_size_is_the_leading_dimension_of_the_first_tensor():
    tokens = torch.zeros(7, 3, dtype=torch.long)
    assert batch_size_of((tokens, torch.zeros(7))) == 7
    assert batch_size_of({"mask": None, "input_ids": tokens, "labels": tokens}) == 7
    assert batch_size_of(tokens) == 7
    assert batch_size_of([[torch.zeros(5, 2)]]) == 5
    assert batch_size_of({"text": "hello"}) is None
    assert batch_size_of(torch.tensor(1.0)) is None


class _Counting(nn.Module):
    """Records how it is called; sleeps `sleep_s` per forward so latency has a known floor."""

    def __init__(self, sleep_s: float = 0.0):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.sleep_s = sleep_s
        self.calls: list[tuple[bool, bool, bool]] = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return self.lin(x)


def test_latency_runs_warmup_then_repeats_in_eval_and_inference_mode():
    model = _Counting(sleep_s=0.004)
    model.train()
    times = inference_latencies_ms(model, (torch.randn(6, 4), torch.zeros(6, dtype=torch.long)), CPU, warmup=2, repeats=5)
    assert len(model.calls) == 7 and len(times) == 5
    assert all(call == (False, True, False) for call in model.calls)
    assert times == sorted(times) and times[0] >= 4.0  # each forward sleeps 4 ms


def test_deployment_row_summarises_the_repeats_and_records_the_limits():
    model = _Counting(sleep_s=0.002)
    batch = (torch.randn(6, 4), torch.zeros(6, dtype=torch.long))
    cfg = DeployConfig(warmup=1, repeats=9, max_latency_ms=1.5, max_params=10)
    row = deployment_row(model, batch, CPU, cfg)
    assert row["n_repeats"] == 9 and row["batch_size"] == 6 and row["device"] == "cpu"
    assert 2.0 <= row["latency_ms_min"] <= row["latency_ms_median"] <= row["latency_ms_p90"]
    assert row["n_params"] == 15 and row["param_bytes"] == 60
    assert (row["max_latency_ms"], row["max_params"], row["max_param_bytes"]) == (1.5, 10, None)
    assert row["num_threads"] == torch.get_num_threads()
    assert len(model.calls) == 1 + 9 + 1  # warm-up, repeats, the memory forward
    assert deployment_row(_Counting(), batch, CPU, DeployConfig(warmup=0, repeats=1, inference_memory=False))["peak_inference_bytes"] is None


class _BigIntermediate(nn.Module):
    """A forward that allocates a 4 MB float32 intermediate the weights know nothing about."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 2)

    def forward(self, x):
        wide = x.repeat(1, 1 << 17)  # (8, 8 * 2^17) float32 = 4 MiB
        return self.lin(wide[:, :8] * 2)


def test_inference_peak_counts_weights_batch_and_what_the_forward_allocates():
    model = _BigIntermediate()
    x = torch.randn(8, 8)
    peak = inference_peak_bytes(model, x, CPU)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert peak >= weights + x.numel() * 4 + 8 * 8 * (1 << 17) * 4
    assert peak < 2 * 8 * 8 * (1 << 17) * 4  # nothing counted twice


def test_profile_trace_is_chrome_json_with_both_probe_steps(tmp_path):
    import tiny_models

    model = tiny_models.TinyNet()
    batch = tiny_models.batch_fn({})
    path = paths.profile_trace_path(tmp_path, "grid/lr=0.1/seed 1", 40)
    assert path.parent.parent == tmp_path / paths.PROFILES_DIR and path.parent.name == "grid%2Flr%3D0.1%2Fseed%201"
    assert save_profile_trace(model, batch, None, CPU, path) == path
    trace = json.loads(path.read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"mldebug.probe.train_step", "mldebug.probe.inference"} <= names
    assert any(e.get("ph") == "X" and e.get("name", "").startswith("aten::") for e in trace["traceEvents"])
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    assert all(p.grad is None for p in model.parameters())
    assert paths.profile_trace_path(tmp_path, "..", None).parent.name == "%2E."  # never a folder above


def test_probe_run_measures_the_newest_checkpoint_and_saves_its_trace(tmp_path):
    run = _run_dir(tmp_path)
    ev, _, _ = read_run_dir(run, "sweep/run")
    out = tmp_path / "out"
    problems: list[str] = []
    tables = probe_run(ev, run, _config(deploy=DeployConfig(repeats=3, profile_trace=True, max_params=100)), problems, out)
    assert problems == []
    dep = tables["deployment"]
    assert dep["step"].to_list() == [20] and dep["run_id"].to_list() == ["sweep/run"]
    row = dep.row(0, named=True)
    assert row["n_params"] == sum(p.numel() for p in __import__("tiny_models").TinyNet().parameters()) and row["max_params"] == 100
    assert row["trace_path"] == "profiles/sweep%2Frun/step-20.pt.trace.json"
    assert json.loads((out / row["trace_path"]).read_text())["traceEvents"]
    every = probe_run(ev, run, _config(model_probes=["deployment"], checkpoint_stats=False, deploy=DeployConfig(repeats=2, max_checkpoints=0)), [])
    assert every["deployment"]["step"].to_list() == [10, 20] and every["deployment"]["trace_path"].null_count() == 2
    assert every["gradients"].height == 0
    no_out: list[str] = []
    probe_run(ev, run, _config(model_probes=["deployment"], deploy=DeployConfig(repeats=1, profile_trace=True)), no_out)
    assert no_out == ["probes.deploy.profile_trace: no output directory to save traces in; none saved"]


def test_with_deployment_alone_older_checkpoints_are_not_even_loaded(tmp_path):
    run = _run_dir(tmp_path, broken_step=5)  # step_5.pt does not fit the model: loading it would be a problem
    ev, _, _ = read_run_dir(run, "run")
    problems: list[str] = []
    tables = probe_run(ev, run, _config(model_probes=["deployment"], checkpoint_stats=False, deploy=DeployConfig(repeats=1)), problems)
    assert problems == [] and tables["deployment"]["step"].to_list() == [20]
    probe_run(ev, run, _config(model_probes=["deployment", "outputs"], checkpoint_stats=False, deploy=DeployConfig(repeats=1)), problems)
    assert len(problems) == 1 and "step_5.pt: model probes failed" in problems[0]


def test_the_deployment_limit_detector_fires_on_rows_the_probe_measured(tmp_path):
    from mldebug_ray.detectors.deployment_limit import DeploymentLimitConfig, deployment_limit

    run = _run_dir(tmp_path)
    ev, _, _ = read_run_dir(run, "run")
    cfg = _config(model_probes=["deployment"], checkpoint_stats=False, deploy=DeployConfig(repeats=3, max_params=100, max_param_bytes=10**6))
    ev.deployment = probe_run(ev, run, cfg, [])["deployment"]
    (f,) = deployment_limit(ev, DeploymentLimitConfig())
    assert f.evidence[0].where == {"run_id": "run", "device": "cpu", "step": 20} and f.evidence[0].value == 385.0
    assert ev.deployment.filter(pl.col("step") == 20)["n_params"].to_list() == [385]


def test_analyze_run_writes_the_deployment_part_the_trace_and_the_limit_finding(tmp_path):
    from mldebug_ray.analyze_run import analyze_run
    from mldebug_ray.api import compose_config
    from mldebug_ray.discover import RunRef
    from mldebug_ray.evidence.io import read_table

    run = _run_dir(tmp_path / "root")
    out = tmp_path / "out"
    overrides = {"probes.model_fn": "tiny_models:model_fn", "probes.batch_fn": "tiny_models:batch_fn",
                 "probes.code_paths": [str(Path(__file__).parent)], "probes.model_probes": ["deployment"],
                 "probes.deploy.repeats": 3, "probes.deploy.profile_trace": True, "probes.deploy.max_param_bytes": 1000}
    cfg = compose_config(tmp_path / "root", out_dir=out, overrides=overrides)
    summary = analyze_run(RunRef("run", str(run), str(tmp_path / "root")), cfg, out)
    assert summary.status == "ok"
    dep = read_table(out, "deployment")
    assert dep.select("run_id", "step", "param_bytes", "max_param_bytes").rows() == [("run", 20, 1540, 1000)]
    assert json.loads((out / dep["trace_path"][0]).read_text())["traceEvents"]
    found = read_table(out, "findings").filter(pl.col("kind") == "deployment_limit")
    assert found["summary"].to_list() == ["parameter bytes 1,540 exceeds probes.deploy.max_param_bytes = 1,000 (1.54x) at step 20"]


def test_bad_deploy_settings_name_the_key():
    for kwargs, key in (({"repeats": 0}, "probes.deploy.repeats"), ({"warmup": -1}, "probes.deploy.warmup"),
                        ({"max_latency_ms": 0.0}, "probes.deploy.max_latency_ms"), ({"max_params": -5}, "probes.deploy.max_params"),
                        ({"max_checkpoints": -1}, "probes.deploy.max_checkpoints")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            DeployConfig(**kwargs)
    assert "deployment" in ProbesConfig().model_probes


@pytest.mark.gpu
def test_latency_and_memory_on_the_gpu_are_synchronised_and_from_the_allocator(cuda):
    model = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 1024)).to(cuda)
    x = torch.randn(512, 1024, device=cuda)
    row = deployment_row(model, x, cuda, DeployConfig(warmup=3, repeats=10))
    assert row["device"] == "cuda:0" and row["num_threads"] is None
    # synchronised: the median is no less than the time of the kernels run back to back
    torch.cuda.synchronize(cuda)
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(10):
            model(x)
    torch.cuda.synchronize(cuda)
    assert row["latency_ms_median"] >= 0.5 * 1e3 * (time.perf_counter() - start) / 10
    hidden = 512 * 4096 * 4
    assert row["peak_inference_bytes"] >= row["param_bytes"] + x.numel() * 4 + hidden
