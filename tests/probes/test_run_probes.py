"""All probes of one run directory: real checkpoints on disk, the model from code_paths, every table filled."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import save_file

from mldebug_ray.config import ProbesConfig
from mldebug_ray.gather import read_run_dir
from mldebug_ray.probes.run_probes import PROBE_TABLES, probe_run, run_loss_scale, select_checkpoints

HERE = Path(__file__).parent


def _run_dir(root: Path, *, broken_step: int | None = None) -> Path:
    import tiny_models

    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 3, "model": {"vocab": 16, "dim": 8, "classes": 5}}))
    with open(run / "metrics.jsonl", "w") as fh:
        for step in range(1, 31):
            fh.write(json.dumps({"step": step, "train_loss": 2.0 - step / 30, "loss_scale": 2.0 ** (16 - step // 10)}) + "\n")
    torch.manual_seed(0)
    model = tiny_models.TinyNet()
    save_file(model.state_dict(), str(run / "checkpoints" / "step_10.safetensors"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save(model.state_dict(), run / "checkpoints" / "step_20.pt")
    if broken_step is not None:
        torch.save({"embed.weight": torch.zeros(3, 3)}, run / "checkpoints" / f"step_{broken_step}.pt")
    return run


def _config(**overrides) -> ProbesConfig:
    return ProbesConfig(model_fn="tiny_models:model_fn", batch_fn="tiny_models:batch_fn", code_paths=[str(HERE)], **overrides)


def test_every_probe_table_is_filled_for_every_checkpoint(tmp_path):
    run = _run_dir(tmp_path)
    ev, _, _ = read_run_dir(run, "run")
    problems: list[str] = []
    tables = probe_run(ev, run, _config(), problems)
    assert problems == []
    assert set(tables) == set(PROBE_TABLES)
    for name in ("layers", "gradients", "activations", "memory", "precision", "outputs"):
        assert sorted(tables[name]["step"].unique().to_list()) == [10, 20], name
        assert set(tables[name]["run_id"]) == {"run"}
    assert tables["gpu"].height == 0  # no GPU here; with one, NVML samples
    layers, grads = tables["layers"], tables["gradients"]
    assert layers.filter(pl.col("step") == 10)["update_ratio"].null_count() == layers.filter(pl.col("step") == 10).height
    new = layers.filter(pl.col("step") == 20)
    assert (new["update_ratio"] > 0).all() and set(new["update_from_step"]) == {10}
    joined = grads.join(layers.select("step", "layer", pl.col("update_ratio").alias("want")), on=["step", "layer"])
    assert joined.height == grads.height
    assert joined.filter(pl.col("want").is_not_null())["update_ratio"].to_list() == joined.filter(pl.col("want").is_not_null())["want"].to_list()
    assert set(tables["memory"]["phase"]) == {"forward", "backward", "optimizer"}
    assert (tables["memory"]["peak_allocated_bytes"] > 0).all()
    scales = tables["precision"].filter(pl.col("dtype") == "float16").group_by("step").agg(pl.col("loss_scale").first()).sort("step")
    assert scales["loss_scale"].to_list() == [2.0**15, 2.0**14]  # the logged scale at steps 10 and 20
    acts = tables["activations"]
    assert acts.filter(pl.col("layer") == "mlp.1")["dead_frac"].null_count() == 0  # the ReLU
    assert acts.filter(pl.col("layer") == "mlp.3")["saturated_frac"].null_count() == 0  # the Tanh
    # the same probe twice gives the same rows
    again = probe_run(ev, run, _config(), [])
    cols = ["step", "layer", "grad_norm_l2", "zero_frac"]
    assert again["gradients"].select(cols).equals(grads.select(cols))


def test_a_checkpoint_that_does_not_fit_the_model_is_a_problem_and_the_others_go_on(tmp_path):
    run = _run_dir(tmp_path, broken_step=30)
    ev, _, _ = read_run_dir(run, "run")
    problems: list[str] = []
    tables = probe_run(ev, run, _config(), problems)
    assert len(problems) == 1 and "step_30.pt: model probes failed" in problems[0] and "does not match" in problems[0]
    assert sorted(tables["gradients"]["step"].unique().to_list()) == [10, 20]
    assert sorted(tables["layers"]["step"].unique().to_list()) == [10, 20, 30]


def test_presets_and_missing_entry_points_limit_what_runs(tmp_path):
    run = _run_dir(tmp_path)
    ev, _, _ = read_run_dir(run, "run")
    only_stats = probe_run(ev, run, ProbesConfig(), [])
    assert only_stats["layers"].height and all(only_stats[t].height == 0 for t in PROBE_TABLES if t != "layers")
    fast = probe_run(ev, run, _config(checkpoint_stats=False, model_probes=[]), [])
    assert all(t.height == 0 for t in fast.values())
    outputs_only = probe_run(ev, run, _config(checkpoint_stats=False, model_probes=["outputs"], max_checkpoints_per_run=1), [])
    assert outputs_only["outputs"]["step"].to_list() == [20] and outputs_only["gradients"].height == 0
    problems: list[str] = []
    (run / "run_model.py").write_text("def model_fn(params):\n    raise SystemExit('code from the run ran')\n")
    probe_run(ev, run, ProbesConfig(model_fn="run_model:model_fn", batch_fn="tiny_models:batch_fn", code_paths=[str(run), str(HERE)]), problems)
    assert len(problems) == 1 and "inside the run directory" in problems[0]


def test_checkpoint_selection_and_loss_scale_lookup():
    ckpts = pl.DataFrame(
        {"step": [10, None, 30, 20], "path": ["a", "final", "c", "b"], "format": ["torch"] * 4, "status": ["ok", "ok", "unreadable", None]}
    )
    assert [r["path"] for r in select_checkpoints(ckpts, 2)] == ["b", "final"]
    assert [r["path"] for r in select_checkpoints(ckpts, 0)] == ["a", "b", "final"]
    metrics = pl.DataFrame({"step": [1, 5, 9], "key": ["train/loss_scale"] * 3, "value": [65536.0, 32768.0, float("nan")]})
    assert run_loss_scale(metrics, 6) == 32768.0
    assert run_loss_scale(metrics, None) == 32768.0
    assert run_loss_scale(metrics, 0) is None
    assert run_loss_scale(metrics.with_columns(pl.lit("loss").alias("key")), 6) is None


@pytest.mark.gpu
def test_every_probe_runs_on_the_gpu_with_telemetry(tmp_path):
    run = _run_dir(tmp_path)
    ev, _, _ = read_run_dir(run, "run")
    problems: list[str] = []
    tables = probe_run(ev, run, _config(device="cuda", telemetry_interval_s=0.01), problems)
    assert problems == []
    assert set(tables["memory"]["device"]) == {"cuda:0"}
    assert tables["gpu"].height >= 1 and tables["gpu"]["device_uuid"].str.starts_with("GPU-").all()
    cpu = probe_run(ev, run, _config(device="cpu", model_probes=["gradients"]), [])
    merged = tables["gradients"].join(cpu["gradients"], on=["step", "layer"], suffix="_cpu")
    assert ((merged["grad_norm_l2"] - merged["grad_norm_l2_cpu"]).abs() <= 1e-4 * merged["grad_norm_l2_cpu"].abs() + 1e-9).all()
