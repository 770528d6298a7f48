"""Builders of synthetic output directories for the renderer tests: every evidence table a report can show, written with write_table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from mldebug_ray import paths
from mldebug_ray.config import AgentConfig
from mldebug_ray.diagnose import rules
from mldebug_ray.evidence.io import atomic_write_bytes, write_table
from mldebug_ray.findings import EvidenceRef, Finding, findings_frame

GRID_LRS = (1e-4, 1e-3, 1e-2, 1.0)
SEEDS = (0, 1, 2)
LONG_STEPS = 143_000  # a pythia-length curve
LAYERS = ("embed.weight", "block.0.weight", "block.1.weight", "block.2.weight", "head.weight")


def _runs_row(run_id: str, n_steps: int, status: str = "ok", reason: str | None = None) -> dict:
    return {"run_id": run_id, "path": f"/sweep/{run_id}", "source_format": "jsonl", "status": status,
            "reason": reason, "n_steps": n_steps, "last_step": n_steps}


def _metrics(run_id: str, steps: np.ndarray, key: str, values: np.ndarray, split: str | None) -> pl.DataFrame:
    return pl.DataFrame({"run_id": run_id, "step": steps.astype(np.int64), "key": key, "value": values.astype(float), "split": split})


def build_rich_out_dir(out: Path) -> dict:
    """12 grid runs (lr x seed; lr=1.0 goes NaN at step 150), a 143k-step run, a run with probes, a partial run."""
    rng = np.random.default_rng(0)
    runs, params, findings = [], [], []
    steps = np.arange(1, 201)
    for lr in GRID_LRS:
        for seed in SEEDS:
            rid = f"grid/lr{lr:g}_seed{seed}"
            runs.append(_runs_row(rid, 200))
            params += [{"run_id": rid, "key": "optimizer.lr", "value": f"{lr:g}", "value_num": lr},
                       {"run_id": rid, "key": "seed", "value": str(seed), "value_num": float(seed)},
                       {"run_id": rid, "key": "scenario", "value": "grid", "value_num": None}]
            level = 1.0 + abs(math.log10(lr) + 2.5) * 0.3 + 0.05 * seed
            loss = level + 2.0 * np.exp(-steps / 40) + rng.normal(0, 0.02, steps.size)
            grad = 1.0 + rng.normal(0, 0.05, steps.size)
            if lr == 1.0:
                loss[140:149] = np.geomspace(3, 1e6, 9)
                loss[149:] = np.nan
                grad[149:] = np.inf
            frames = [_metrics(rid, steps, "train/loss", loss, "train"), _metrics(rid, steps, "train/grad_norm", grad, "train"),
                      _metrics(rid, steps, "train/lr", np.full(steps.size, lr), "train"),
                      _metrics(rid, steps[19::20], "val/loss", loss[19::20] + 0.1, "val")]
            write_table(out, "metrics", pl.concat(frames), paths.part_key(rid))
            if lr == 1.0:
                findings.append(Finding(
                    "nan_inf", "critical", 0.99, "loss `train/loss` became NaN at step 150",
                    (EvidenceRef("metrics", {"run_id": rid, "step": 150, "key": "train/loss"}, math.nan, "first NaN"),
                     EvidenceRef("metrics", {"run_id": rid, "step": 149, "key": "train/loss"}, float(loss[148]), "last finite")),
                    "nan_inf", run_id=rid, onset_step=150, end_step=200, fix="Lower the learning rate.",
                ))
    grid_ids = [r["run_id"] for r in runs]
    findings.append(Finding(
        "hp_instability_boundary", "high", 0.9, "optimizer.lr >= 1 fails (3 of 3 runs), <= 0.01 finishes",
        (EvidenceRef("params", {"run_id": "grid/lr1_seed0", "key": "optimizer.lr"}, 1.0, "first failing value"),
         EvidenceRef("params", {"run_id": "grid/lr0.01_seed0", "key": "optimizer.lr"}, 0.01, "largest safe value")),
        "hp_instability_boundary", scope="sweep", run_ids=tuple(grid_ids), fix="Keep optimizer.lr below 0.1.",
    ))
    # A pythia-length run: one long loss curve with one spike.
    rid = "long/pythia_like"
    runs.append(_runs_row(rid, LONG_STEPS))
    long_steps = np.arange(LONG_STEPS)
    long_loss = 2.0 + 8.0 * np.exp(-long_steps / 2000) + rng.normal(0, 0.01, LONG_STEPS)
    long_loss[90_000] = 25.0
    write_table(out, "metrics", _metrics(rid, long_steps, "train/lm_loss", long_loss, "train"), paths.part_key(rid))
    findings.append(Finding(
        "loss_spike", "medium", 0.9, "train loss spiked to 25 at step 90000",
        (EvidenceRef("metrics", {"run_id": rid, "step": 90_000, "key": "train/lm_loss"}, 25.0, "spike"),),
        "loss_spike", run_id=rid, onset_step=90_000, end_step=90_001,
    ))
    # A run with per-layer grad norms in metrics, layer stats, memory and precision probes.
    rid = "probed/fp16"
    runs.append(_runs_row(rid, 200))
    frames = [_metrics(rid, steps, "train/loss", 3.0 - steps / 100 + rng.normal(0, 0.02, steps.size), "train")]
    for depth, layer in enumerate(LAYERS):
        frames.append(_metrics(rid, steps, f"grad_norm/{layer}", 10.0 ** (-3 + depth) * (1 + rng.random(steps.size)), None))
    write_table(out, "metrics", pl.concat(frames), paths.part_key(rid))
    write_table(out, "layers", pl.DataFrame([
        {"run_id": rid, "step": 200, "layer": layer, "module_type": mt, "n_params": n, "dtype": "float32",
         "norm_l2": 1.0, "mean": 0.0, "std": 0.1, "max_abs": 1.0, "zero_frac": 0.0, "nonfinite_frac": 0.0}
        for layer, mt, n in zip(LAYERS, ("embedding", "mlp", "mlp", "mlp", "head"), (32_768, 4_096, 4_096, 4_096, 1_024))
    ]), paths.part_key(rid))
    write_table(out, "memory", pl.DataFrame([
        {"run_id": rid, "step": 100, "phase": ph, "device": "cuda:0", "peak_allocated_bytes": b, "reserved_bytes": 2 * b}
        for ph, b in (("forward", 3 << 30), ("backward", 5 << 30), ("optimizer", 6 << 30))
    ]), paths.part_key(rid))
    write_table(out, "precision", pl.DataFrame([
        {"run_id": rid, "step": 100, "dtype": dt, "layer": layer, "rel_err_vs_fp32": err, "overflow_frac": of, "underflow_frac": 0.001}
        for dt, of in (("float16", 0.02), ("bfloat16", 0.0)) for layer, err in (("block.0.weight", 1e-3), ("head.weight", 4e-2))
    ]), paths.part_key(rid))
    findings.append(Finding(
        "architecture_imbalance", "medium", 0.95, "embedding layers hold 71% of the parameters",
        (EvidenceRef("layers", {"run_id": rid, "step": 200, "layer": "embed.weight"}, 0.71, "embedding share"),),
        "architecture_imbalance", run_id=rid, onset_step=200,
    ))
    # A run with the gradients probe table only (no grad_norm/<layer> metrics).
    rid = "probed/gradients_table"
    runs.append(_runs_row(rid, 100))
    write_table(out, "metrics", _metrics(rid, steps[:100], "loss", 2.0 - steps[:100] / 200, None), paths.part_key(rid))
    write_table(out, "gradients", pl.DataFrame([
        {"run_id": rid, "step": s, "layer": layer, "grad_norm_l2": (1e-6 if depth == 0 else 10.0 ** -depth) if s < 100 else math.nan,
         "grad_max_abs": 1.0, "zero_frac": 0.0, "nonfinite_frac": 0.0}
        for s in (0, 50, 100) for depth, layer in enumerate(LAYERS)
    ]), paths.part_key(rid))
    findings.append(Finding(
        "vanishing_gradients", "high", 0.85, "embed.weight receives 1e-6 of the head's gradient",
        (EvidenceRef("gradients", {"run_id": rid, "step": 50, "layer": "embed.weight"}, 1e-6, "tiny gradient"),),
        "vanishing_gradients", run_id=rid, onset_step=0, end_step=100,
    ))
    # A partial run with no metrics at all.
    rid = "broken"
    runs.append(_runs_row(rid, 0, "partial", "metrics.jsonl: line 3 truncated <script>alert(1)</script>"))
    findings.append(Finding(
        "run_incomplete", "medium", 0.9, "run is partial",
        (EvidenceRef("runs", {"run_id": rid}, None, "status partial"),), "run_incomplete", run_id=rid,
    ))
    write_table(out, "runs", pl.DataFrame(runs), "all")
    write_table(out, "params", pl.DataFrame(params), "all")
    write_table(out, "findings", findings_frame(findings), "all")
    diagnosis = rules.diagnose(out, AgentConfig())
    atomic_write_bytes(out / paths.DIAGNOSIS_FILE, rules.dumps(diagnosis).encode())
    return diagnosis


def build_big_out_dir(out: Path, n_runs: int) -> dict:
    """`n_runs` runs in the runs and findings tables only (one part each), as a huge sweep's outputs would hold them."""
    rng = np.random.default_rng(1)
    run_ids = [f"study_{i // 1000}/trial_{i:05d}" for i in range(n_runs)]
    statuses = np.where(rng.random(n_runs) < 0.02, "partial", "ok")
    write_table(out, "runs", pl.DataFrame({
        "run_id": run_ids, "path": [f"/sweep/{r}" for r in run_ids], "source_format": "csv", "status": statuses,
        "reason": [("truncated log" if s == "partial" else None) for s in statuses], "n_steps": 1000, "last_step": 1000,
    }), "all")
    kinds = (("nan_inf", "critical"), ("loss_spike", "medium"), ("overfitting", "medium"), ("plateau", "high"), ("grad_norm_spike", "low"))
    findings = []
    for rid in run_ids:
        if rng.random() < 0.6:
            kind, sev = kinds[int(rng.integers(len(kinds)))]
            step = int(rng.integers(1, 1000))
            findings.append(Finding(
                kind, sev, 0.9, f"{kind} at step {step} in {rid}",
                (EvidenceRef("metrics", {"run_id": rid, "step": step, "key": "loss"}, 1.0, "the row"),), kind,
                run_id=rid, onset_step=step, end_step=step + 10, fix="Try the guide.",
            ))
    write_table(out, "findings", findings_frame(findings), "all")
    diagnosis = rules.diagnose(out, AgentConfig())
    atomic_write_bytes(out / paths.DIAGNOSIS_FILE, rules.dumps(diagnosis).encode())
    return diagnosis
