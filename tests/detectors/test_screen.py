"""The vectorised all-runs path finds exactly what the per-run detectors find, and skips healthy runs."""

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mldebug_ray import schema
from mldebug_ray.detectors import EVIDENCE_TABLES, DetectorsConfig, RunEvidence, run_detectors
from mldebug_ray.detectors.screen import run_detectors_all, screen_runs

# Faults at and around each detector's threshold, so a screen that is not a necessary
# condition of some detector lets a finding through here.
FAULTS = (
    None, "spike", "grad_spike", "divergence", "nan", "lr_zero", "lr_jump", "lr_collapse", "overfit",
    "oscillate", "plateau", "eval_on_train", "zeros", "val_only", "train_only", "short", "noisy", "chance",
    "event", "flat_noisy",
)


def _run(rng: np.random.Generator, fault: str | None, n: int = 1000, val_every: int = 20) -> dict[str, tuple]:
    steps = np.arange(n)
    noise = 0.15 if fault == "noisy" else 0.03
    clean = 0.5 + 2.5 * np.exp(-steps / (0.2 * n))
    train = clean * np.exp(noise * rng.standard_normal(n))
    lr = 1e-3 * np.where(steps < 40, 0.01 + 0.99 * steps / 40, 0.55 + 0.45 * np.cos(np.pi * steps / n))
    grad = (1 + np.exp(-steps / 100)) * np.exp(0.1 * rng.standard_normal(n))
    v_steps = steps[::val_every]
    val = (clean[::val_every] + 0.05) * np.exp(0.005 * rng.standard_normal(v_steps.size))
    at = int(rng.integers(n // 4, 3 * n // 4))
    size = rng.uniform(0.8, 1.2)  # around each threshold
    if fault == "spike":
        train[at] *= 1.3 * size
    elif fault == "grad_spike":
        grad[at] *= 2.2 * size
        train[at] *= 1.3
    elif fault == "divergence":
        train[at:] *= 2.0 * size
    elif fault == "nan":
        train[at:] = np.nan
    elif fault == "lr_zero":
        lr[:] = 0.0
    elif fault == "lr_jump":
        lr[at:] *= 2.1 * size
    elif fault == "lr_collapse":
        lr[at : at + 5] = 0.0
    elif fault == "overfit":
        val = val * (1 + 0.3 * size * np.clip((v_steps - at) / n, 0, None) * 4)
    elif fault == "oscillate":
        val = val * (1 + 0.15 * size * (np.sin(v_steps / n * 12 * np.pi) > 0))
    elif fault in ("plateau", "flat_noisy"):
        train = 2.3 * (1 - 0.01 * size * steps / n) * np.exp((0.2 if fault == "flat_noisy" else 0.003) * rng.standard_normal(n))
    elif fault == "eval_on_train":
        val = train[::val_every].copy()
    elif fault == "zeros":
        train[rng.integers(0, n, 5)] = 0.0
    elif fault == "chance":
        train = math.log(10) * np.exp(0.003 * rng.standard_normal(n)) + 0.01
    series = {"train_loss": (steps, train), "val_loss": (v_steps, val), "lr": (steps, lr), "grad_norm": (steps, grad)}
    if fault == "val_only":
        del series["train_loss"]
    if fault == "train_only":
        del series["val_loss"]
    if fault == "short":
        series = {k: (s[:30], v[:30]) for k, (s, v) in series.items()}
    return series


def _sweep(seed: int, n_runs: int = 40) -> tuple[dict[str, pl.DataFrame], dict[str, str | None]]:
    rng = np.random.default_rng(seed)
    rows = []
    params = []
    events = []
    planted = {}
    for i in range(n_runs):
        fault = FAULTS[i % len(FAULTS)]
        rid = f"s{seed}/run_{i:03d}"
        planted[rid] = fault
        for key, (steps, values) in _run(rng, fault).items():
            rows.append(pl.DataFrame({"run_id": rid, "step": steps.astype(np.int64), "key": key, "value": values.astype(float),
                                      "split": "val" if key == "val_loss" else "train"}))
        if fault == "chance":
            params.append({"run_id": rid, "key": "model.num_classes", "value": "10", "value_num": 10.0})
        params.append({"run_id": rid, "key": "optimizer.lr", "value": "0.001", "value_num": 1e-3})
        if fault == "event":
            events.append({"run_id": rid, "step": 10, "kind": "oom", "text": "CUDA out of memory", "file": "stderr", "line": 3})
    metrics = schema.validate("metrics", pl.concat(rows, how="diagonal_relaxed"))
    tables = {
        "metrics": metrics,
        "params": schema.validate("params", pl.DataFrame(params)),
        "events": schema.validate("events", pl.DataFrame(events)),
    }
    return tables, planted


def _per_run(tables: dict[str, pl.DataFrame], cfg: DetectorsConfig) -> set[tuple]:
    found = set()
    for rid in tables["metrics"]["run_id"].unique().to_list():
        ev = RunEvidence(rid, **{name: frame.filter(pl.col("run_id") == rid) for name, frame in tables.items()})
        findings, problems = run_detectors(ev, cfg)
        assert problems == []
        found |= {(f.run_id, f.finding_id, f.kind, f.severity, f.onset_step) for f in findings}
    return found


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_screened_findings_equal_every_detector_on_every_run(seed):
    tables, _ = _sweep(seed)
    cfg = DetectorsConfig()
    result = run_detectors_all(tables, cfg)
    assert result.problems == []
    fast = {(f.run_id, f.finding_id, f.kind, f.severity, f.onset_step) for f in result.findings}
    assert fast == _per_run(tables, cfg)
    assert len(fast) > 10  # the planted faults were found at all


def test_healthy_runs_are_not_candidates_and_faulty_ones_are():
    tables, planted = _sweep(3)
    candidates = set(screen_runs(tables, DetectorsConfig())["run_id"].to_list())
    healthy = {rid for rid, fault in planted.items() if fault is None}
    assert healthy and not healthy & candidates
    for fault in ("spike", "divergence", "nan", "lr_zero", "eval_on_train", "chance", "event", "train_only"):
        assert {rid for rid, f in planted.items() if f == fault} <= candidates, fault


def test_screen_follows_the_detector_config():
    """A lower spike threshold lets the screen keep runs it dropped before: its tests are
    derived from the detectors' own config, not thresholds of its own."""
    tables, planted = _sweep(4)
    cfg = DetectorsConfig()
    before = set(screen_runs(tables, cfg)["run_id"].to_list())
    cfg.loss_spike.min_ratio = 1.01
    cfg.loss_spike.onset_ratio = 1.0
    after = set(screen_runs(tables, cfg)["run_id"].to_list())
    assert before < after


CORPUS = Path("/work/shared/corpus")


@pytest.mark.slow
@pytest.mark.skipif(not (CORPUS / "labels.json").is_file(), reason="shared corpus not present")
def test_screened_findings_equal_the_per_run_detectors_on_real_logs():
    """Real logs nobody here wrote (BigScience, nanoGPT/llm.c, Pythia, AlgoPerf study 0 with its
    accuracy/BLEU/mAP metrics and hparams): the same findings both ways."""
    import mldebug_ray

    dirs = [d for sweep in ("bigscience", "nanogpt", "pythia") for d in sorted((CORPUS / sweep).iterdir()) if d.is_dir()]
    dirs += sorted(CORPUS.glob("algoperf/*/study_0/*/trial_*"))
    tables: dict[str, list[pl.DataFrame]] = {"metrics": [], "params": [], "events": []}
    for d in dirs:
        run = mldebug_ray.read_run(d)
        rid = str(d.relative_to(CORPUS))
        for name in tables:
            frame = getattr(run, name)
            tables[name].append(frame.with_columns(pl.lit(rid).alias("run_id")))
    frames = {name: pl.concat(parts) for name, parts in tables.items()}
    cfg = DetectorsConfig()
    result = run_detectors_all(frames, cfg)
    fast = {(f.run_id, f.finding_id, f.kind, f.severity, f.onset_step) for f in result.findings}
    assert fast == _per_run(frames, cfg)
    assert {f[2] for f in fast} >= {"loss_spike", "nan_inf", "overfitting"}
    assert result.candidates.height < result.n_runs  # some healthy runs were cleared



def _one_row(table: str, **values) -> pl.DataFrame:
    columns = schema.TABLES[table]
    return pl.DataFrame([{c: values.get(c) for c in columns}], schema=columns)


@pytest.mark.parametrize(
    "table",
    [t for t in EVIDENCE_TABLES if t not in ("runs", "params", "metrics")],
)
def test_a_run_with_rows_only_in_an_evidence_table_is_always_a_candidate(table):
    # Probe and data-probe tables (deployment, robustness, data_overlap, ...) feed detectors the
    # screen does not model; a run with such rows must reach the exact detectors.
    tables, planted = _sweep(3)
    healthy = sorted(rid for rid, fault in planted.items() if fault is None)[0]
    assert healthy not in screen_runs(tables, DetectorsConfig())["run_id"].to_list()
    extra = _one_row(table, run_id=healthy)
    tables = {**tables, table: pl.concat([tables[table], extra]) if table in tables else extra}
    assert healthy in screen_runs(tables, DetectorsConfig())["run_id"].to_list()
