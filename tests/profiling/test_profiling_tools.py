"""profiling/ tools as a user runs them: subprocesses on small real runs and checkpoints, output and written tables checked."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import save_file

from mldebug_ray.demo.models import batch_fn, model_fn
from mldebug_ray.demo.scenarios import baseline, embedding_heavy, vanishing_gradients
from mldebug_ray.evidence.io import read_table
from mldebug_ray.probes.checkpoint_scan import module_type

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("check_gradients", "profile_memory", "count_parameters", "analyze_loss_curve")
DEMO_FNS = ["--model-fn", "mldebug_ray.demo.models:model_fn", "--batch-fn", "mldebug_ray.demo.models:batch_fn"]


def tool(name: str, *args: object, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "profiling" / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=180, cwd=cwd)


def _run(root: Path, name: str, params: dict, losses: list[float], checkpoint: str) -> Path:
    """A run directory: Hydra config with the demo params, a JSONL loss curve, one checkpoint of model_fn(params)."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(params))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "train_loss": v}) + "\n" for i, v in enumerate(losses)))
    torch.manual_seed(0)
    state = model_fn(params).state_dict()
    (run / "checkpoints").mkdir()
    if checkpoint.endswith(".safetensors"):
        save_file(state, str(run / "checkpoints" / checkpoint))
    else:
        torch.save(state, run / "checkpoints" / checkpoint)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    falling = [3.0 * math.exp(-s / 40) + 0.5 for s in range(200)]
    diverging = falling[:120] + [0.6 + 0.2 * s for s in range(80)]
    return {
        "healthy": _run(root, "healthy", baseline(), falling, "step_200.safetensors"),
        "vanishing": _run(root, "vanishing", vanishing_gradients(), [2.3] * 50, "step_50.pt"),
        "embedding": _run(root, "embedding", embedding_heavy(), falling, "step_200.pt"),
        "diverging": _run(root, "diverging", baseline(), diverging, "step_200.safetensors"),
    }


def test_count_parameters_matches_the_model_by_module_type_and_dtype(runs, tmp_path):
    ckpt = runs["healthy"] / "checkpoints" / "step_200.safetensors"
    out = tool("count_parameters", ckpt, "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    model = model_fn(baseline())
    by_type: dict[str, int] = {}
    for name, p in model.named_parameters():
        by_type[module_type(name)] = by_type.get(module_type(name), 0) + p.numel()
    total = sum(by_type.values())
    for mtype, n in by_type.items():
        assert f"{mtype:14s} {n:>15,}  {100 * n / total:6.2f}%" in out.stdout, mtype
    assert f"float32        {total:>15,}  100.00%" in out.stdout
    layers = read_table(tmp_path, "layers")
    assert layers["n_params"].sum() == total and set(layers["run_id"]) == {"healthy"} and set(layers["step"]) == {200}
    assert layers["norm_l2"].null_count() == 0  # --out brings the weight scan's statistics
    assert read_table(tmp_path, "checkpoints").select("format", "n_params").row(0) == ("safetensors", total)
    relative = tool("count_parameters", ckpt.name, "--top", 0, "--out", tmp_path / "rel", cwd=ckpt.parent)
    assert relative.returncode == 0, relative.stderr
    assert read_table(tmp_path / "rel", "checkpoints").select("run_id", "path", "step").row(0) == ("healthy", ckpt.name, 200)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_count_parameters_reads_bf16_headers_torch_files_and_dcp_folders(runs, tmp_path):
    model = model_fn(embedding_heavy())
    bf16 = tmp_path / "half.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}, str(bf16))
    n = sum(p.numel() for p in model.parameters())
    out = tool("count_parameters", bf16, "--top", 1)
    assert out.returncode == 0, out.stderr
    assert f"bfloat16       {n:>15,}  100.00%" in out.stdout and f"{2 * n / 1024:.1f} KiB" in out.stdout
    embedding = tool("count_parameters", runs["embedding"] / "checkpoints" / "step_200.pt")
    assert "FLAG architecture_imbalance" in embedding.stdout and "embedding layers hold 79" in embedding.stdout
    healthy = tool("count_parameters", runs["healthy"] / "checkpoints" / "step_200.safetensors")
    assert "FLAG" not in healthy.stdout
    import torch.distributed.checkpoint as dcp

    dcp.save(model.state_dict(), checkpoint_id=str(tmp_path / "dcp"))
    folder = tool("count_parameters", tmp_path / "dcp")
    assert folder.returncode == 0, folder.stderr
    assert f"dcp, step None, {n:,} parameters" in folder.stdout and "total only" in folder.stdout


@pytest.mark.slow
def test_check_gradients_matches_autograd_and_flags_vanishing_gradients(runs, tmp_path):
    ckpt = runs["vanishing"] / "checkpoints" / "step_50.pt"
    out = tool("check_gradients", ckpt, *DEMO_FNS, "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "FLAG vanishing_gradients" in out.stdout
    grads = read_table(tmp_path, "gradients")
    params = vanishing_gradients()
    model = model_fn(params)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.train()
    inputs, targets = batch_fn(params)
    torch.manual_seed(0)
    loss = torch.nn.functional.cross_entropy(model(inputs), targets)
    names, tensors = zip(*model.named_parameters())
    expected = {name: float(g.norm()) for name, g in zip(names, torch.autograd.grad(loss, tensors))}
    got = dict(grads.select("layer", "grad_norm_l2").iter_rows())
    assert set(got) == set(expected)
    for name, norm in expected.items():
        assert got[name] == pytest.approx(norm, rel=1e-4, abs=1e-12), name
    assert read_table(tmp_path, "findings")["kind"].to_list() == ["vanishing_gradients"]
    healthy = tool("check_gradients", runs["healthy"] / "checkpoints" / "step_200.safetensors", *DEMO_FNS)
    assert healthy.returncode == 0 and "no vanishing or exploding gradients flagged" in healthy.stdout


def test_profile_memory_reports_every_phase_above_the_weights(runs, tmp_path):
    out = tool("profile_memory", runs["healthy"] / "checkpoints" / "step_200.safetensors", *DEMO_FNS, "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    memory = read_table(tmp_path, "memory")
    assert memory["phase"].to_list() == ["forward", "backward", "optimizer"] and set(memory["device"]) == {"cpu"}
    weights = 4 * sum(p.numel() for p in model_fn(baseline()).parameters())
    assert (memory["peak_allocated_bytes"] > weights).all()
    # AdamW's two moments per parameter are alive during its step
    assert memory.filter(pl.col("phase") == "optimizer")["peak_allocated_bytes"][0] >= 3 * weights
    assert "inference" in out.stdout and "largest:" in out.stdout


def test_analyze_loss_curve_lists_findings_with_onset_steps(runs, tmp_path):
    out = tool("analyze_loss_curve", runs["diverging"], "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "train_loss [train]: 200 points" in out.stdout and "best 0.6 at step 121" in out.stdout
    line = next(ln for ln in out.stdout.splitlines() if "divergence" in ln)
    findings = read_table(tmp_path, "findings")
    onset = findings.filter(pl.col("kind") == "divergence")["onset_step"][0]
    assert 121 < onset <= 130 and line.strip().startswith(f"[step {onset}-200] divergence")
    assert read_table(tmp_path, "metrics").height == 200 and read_table(tmp_path, "runs")["status"].to_list() == ["ok"]
    healthy = tool("analyze_loss_curve", runs["healthy"])
    assert healthy.returncode == 0 and "0 finding(s)" in healthy.stdout


@pytest.mark.parametrize("name", TOOLS)
def test_a_bad_path_is_one_line_and_exit_2_and_help_works(name, tmp_path):
    extra = DEMO_FNS if name in ("check_gradients", "profile_memory") else []
    out = tool(name, tmp_path / "missing", *extra)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "missing" in out.stderr and "Traceback" not in out.stderr
    helped = tool(name, "--help")
    assert helped.returncode == 0 and "usage:" in helped.stdout
