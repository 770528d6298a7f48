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
PROBE_RUN = "probed/data_and_model"
# The probe run's label counts: class 3 is missing from val (a hollow mark on the log axis).
TRAIN_LABELS = {0: 3000, 1: 1900, 2: 60, 3: 40}
VAL_LABELS = {0: 600, 1: 380, 2: 20, 3: 0}
N_SHIFT_FEATURES = 20


def _runs_row(run_id: str, n_steps: int, status: str = "ok", reason: str | None = None) -> dict:
    return {"run_id": run_id, "path": f"/sweep/{run_id}", "source_format": "jsonl", "status": status,
            "reason": reason, "n_steps": n_steps, "last_step": n_steps}


def _metrics(run_id: str, steps: np.ndarray, key: str, values: np.ndarray, split: str | None) -> pl.DataFrame:
    return pl.DataFrame({"run_id": run_id, "step": steps.astype(np.int64), "key": key, "value": values.astype(float), "split": split})


def build_rich_out_dir(out: Path) -> dict:
    """12 grid runs (lr x seed; lr=1.0 goes NaN at step 150), a 143k-step run, runs with probes and with data/model probe tables, a partial run."""
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
    # A run with the data probe's tables and the confusion, robustness and deployment probes.
    rid = PROBE_RUN
    runs.append(_runs_row(rid, 200))
    write_table(out, "metrics", _metrics(rid, steps, "train/loss", 2.0 - steps / 400, "train"), paths.part_key(rid))
    findings += write_probe_tables(out, rid)
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


def _label_rows(rid: str, split: str, counts: dict[int, int]) -> list[dict]:
    total = sum(counts.values())
    return [{"run_id": rid, "split": split, "label": lab, "count": n, "frac": n / total} for lab, n in counts.items()]


def write_probe_tables(out: Path, rid: str) -> list[Finding]:
    """The data probe's four tables, confusion (steps 100 and 200), robustness and deployment of run `rid`, and a finding citing each."""
    key = paths.part_key(rid)
    write_table(out, "data_splits", pl.DataFrame([
        {"run_id": rid, "split": "train", "role": "train", "status": "ok", "kind": "numeric", "x_shape": "[16]", "n_examples": 5000,
         "n_duplicate_examples": 0, "n_labelled": 5000, "n_classes": 4, "max_class_count": 3000, "min_class_count": 40,
         "imbalance_ratio": 75.0, "n_features": 16, "fingerprint": "fb230eb48136f6e9"},
        {"run_id": rid, "split": "val", "role": "held_out", "status": "ok", "kind": "numeric", "x_shape": "[16]", "n_examples": 1000,
         "n_duplicate_examples": 2, "n_labelled": 1000, "n_classes": 3, "max_class_count": 600, "min_class_count": 20,
         "imbalance_ratio": 30.0, "n_features": 16, "fingerprint": "8b7119c4fc0e3c2a"},
        {"run_id": rid, "split": "test", "role": "held_out", "status": "error", "reason": "x has shape [8], train [16] <b>"},
    ]), key)
    write_table(out, "data_labels", pl.DataFrame(_label_rows(rid, "train", TRAIN_LABELS) + _label_rows(rid, "val", VAL_LABELS)), key)
    write_table(out, "data_overlap", pl.DataFrame([
        {"run_id": rid, "split_a": "train", "split_b": "val", "kind": "exact", "method": "blake2b-64", "threshold": 1.0, "n_pairs": 12,
         "n_examples_b": 10, "n_b": 1000, "overlap_frac": 0.01, "example_ids_a": [f"train:{100 + i}" for i in range(10)],
         "example_ids_b": [f"val:{i}" for i in range(10)], "similarities": [1.0] * 10, "similarity_min": 1.0},
        {"run_id": rid, "split_a": "train", "split_b": "val", "kind": "near", "method": "simhash-512 cosine", "threshold": 0.999, "n_pairs": 3,
         "n_examples_b": 3, "n_b": 1000, "overlap_frac": 0.003, "example_ids_a": ["train:7", "train:8", "train:9"],
         "example_ids_b": ["val:500", "val:501", "val:502"], "similarities": [0.9995, 0.9993, 0.9991], "similarity_min": 0.9991},
    ]), key)
    write_table(out, "data_features", pl.DataFrame([
        {"run_id": rid, "split": "val", "reference_split": "train", "feature": f"f{i}", "feature_kind": "numeric", "n_ref": 5000, "n": 1000,
         "psi": 0.01 * (i + 1) if i < N_SHIFT_FEATURES - 1 else 0.9, "ks_stat": 0.02 * (i + 1), "ks_p": 0.5, "ks_p_adjusted": 1.0 if i < N_SHIFT_FEATURES - 1 else 1e-9,
         "mean_ref": 0.0, "mean": 0.1 * i}
        for i in range(N_SHIFT_FEATURES)
    ]), key)
    confusion = []
    for step, right in ((100, 0.5), (200, 0.8)):
        for t, n in VAL_LABELS.items():
            if n == 0:
                continue
            ok = round(n * right)
            confusion += [{"run_id": rid, "step": step, "split": "val", "true_label": t, "pred_label": t, "count": ok},
                          {"run_id": rid, "step": step, "split": "val", "true_label": t, "pred_label": 0 if t else 1, "count": n - ok - 1},
                          {"run_id": rid, "step": step, "split": "val", "true_label": t, "pred_label": None, "count": 1}]
    write_table(out, "confusion", pl.DataFrame(confusion), key)
    write_table(out, "robustness", pl.DataFrame([
        {"run_id": rid, "step": step, "attack": attack, "epsilon": 0.016, "epsilon_abs": 0.02, "site": "input:0", "attack_steps": n_steps,
         "clean_acc_frac": 0.9, "adv_acc_frac": adv if step == 200 else 0.85, "n_examples": 256, "n_classes": 4}
        for step in (100, 200) for attack, n_steps, adv in (("fgsm", 1, 0.3), ("pgd", 10, 0.1))
    ]), key)
    write_table(out, "deployment", pl.DataFrame([
        {"run_id": rid, "step": step, "device": "cpu", "batch_size": 256, "n_repeats": 20, "latency_ms_median": med, "latency_ms_p90": med * 1.2,
         "latency_ms_min": med * 0.9, "n_params": 41468, "param_bytes": 165872, "buffer_bytes": 0, "peak_inference_bytes": 757760,
         "num_threads": 1, "max_latency_ms": 10.0, "max_params": None, "max_param_bytes": 100000}
        for step, med in ((100, 9.0), (200, 12.5))
    ]), key)
    return [
        Finding("class_imbalance", "high", 0.95, "train 75:1 (class 0: 3000, class 3: 40); class 3 is missing from val",
                (EvidenceRef("data_splits", {"run_id": rid, "split": "train"}, 75.0, "largest/smallest 75:1"),
                 EvidenceRef("data_labels", {"run_id": rid, "split": "val", "label": 3}, 0, "class 3 missing from val")),
                "class_imbalance", run_id=rid),
        Finding("data_leakage", "medium", 0.9, "10 val examples are exact copies of train examples",
                (EvidenceRef("data_overlap", {"run_id": rid, "split_a": "train", "split_b": "val", "kind": "exact"}, 10, "exact copies"),),
                "data_leakage", run_id=rid),
        Finding("distribution_shift", "medium", 0.85, "val feature f19 moved (PSI 0.9)",
                (EvidenceRef("data_features", {"run_id": rid, "split": "val", "feature": "f19"}, 0.9, "PSI"),), "distribution_shift", run_id=rid),
        Finding("adversarial_fragility", "high", 0.85, "PGD at 0.016 x std takes accuracy 0.9 -> 0.1",
                (EvidenceRef("robustness", {"run_id": rid, "step": 200, "attack": "pgd"}, 0.1, "PGD"),), "adversarial_fragility", run_id=rid),
        Finding("deployment_limit", "medium", 0.9, "median latency 12.5 ms exceeds probes.deploy.max_latency_ms = 10 ms",
                (EvidenceRef("deployment", {"run_id": rid, "device": "cpu", "step": 200}, 12.5, "latency"),), "deployment_limit", run_id=rid),
    ]


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
