"""Detectors on real logs from ../shared/corpus, checked against its labels.json.

The runs are parsed here with tiny local parsers (the readers are tested on their own),
and each label is checked for the kinds these detectors can report: every `expect`
entry with such a kind must be matched (kind and onset range), no `forbid` kind may be
reported at critical/high, and a `healthy` run gets no critical/high finding at all.
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

import polars as pl
import pytest

from mldebug_ray import paths, schema
from mldebug_ray.detectors import DetectorsConfig, run_detectors
from mldebug_ray.detectors.base import RunEvidence, SweepTables
from mldebug_ray.detectors.slow_convergence import slow_convergence
from mldebug_ray.evidence.io import write_table

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpus")
pytestmark = pytest.mark.skipif(not (CORPUS / "labels.json").is_file(), reason="shared corpus not present")

# Kinds the run-level detectors in this package report; other labelled kinds belong to other
# detectors (slow_convergence is sweep-level: checked below with its peers).
OUR_KINDS = {
    "nan_inf", "divergence", "loss_spike", "grad_norm_spike", "plateau", "overfitting", "architecture_imbalance",
    "run_incomplete", "exploding_gradients", "vanishing_gradients", "loss_scale_collapse", "fp16_overflow",
    "mode_collapse", "oscillation", "lr_schedule_anomaly", "eval_on_train", "catastrophic_forgetting",
    "memory_pressure", "known_error",
}
SERIOUS = ("critical", "high")


def _evidence(run_id: str, rows: list[tuple], params: dict | None = None) -> RunEvidence:
    metrics = pl.DataFrame(
        rows, schema={"step": pl.Int64, "key": pl.String, "value": pl.Float64, "split": pl.String}, orient="row"
    ).with_columns(pl.lit(run_id).alias("run_id"))
    param_rows = [
        {"run_id": run_id, "key": k, "value": str(v), "value_num": float(v)}
        for k, v in (params or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    return RunEvidence(
        run_id=run_id,
        metrics=schema.validate("metrics", metrics),
        params=schema.validate("params", pl.DataFrame(param_rows, schema=schema.schema_of("params"))),
    )


def parse_nanogpt(path: Path) -> list[tuple]:
    """modded-nanogpt `step:N/M train_loss:X` / `val_loss:X`, llm.c `s:N trl:X lr:Y norm:Z` / `s:N tel:X`."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        m = re.match(r"step:(\d+)/\d+ (train_loss|val_loss):(\S+)", line)
        if m:
            rows.append((int(m[1]), m[2], float(m[3]), None))
            continue
        m = re.match(r"s:(\d+) (.*)", line.strip())
        if m:
            rows += [(int(m[1]), k, float(v), None) for k, v in re.findall(r"(\w+):([-+0-9.eE]+|nan|inf)", m[2])]
    return rows


def parse_megatron(path: Path) -> list[tuple]:
    """Megatron/DeepSpeed `iteration N/ M | ... lm loss: X | loss scale: Y | grad norm: Z |`."""
    rows = []
    for line in path.read_text().splitlines():
        it = re.search(r"iteration\s+(\d+)/", line)
        if not it:
            continue
        for name in ("lm loss", "grad norm", "loss scale"):
            v = re.search(re.escape(name) + r":\s*([-+0-9.eE]+|nan|inf)", line)
            if v:
                rows.append((int(it[1]), name, float(v[1]), None))
    return rows


def parse_overflow_events(path: Path, run_id: str) -> pl.DataFrame:
    """DeepSpeed `OVERFLOW! Rank 0 Skipping step` lines as `overflow_skip` events, dated to the
    iteration logged next (the skipped one)."""
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if "OVERFLOW!" not in line:
            continue
        nxt = next((re.search(r"iteration\s+(\d+)/", later) for later in lines[i + 1 :] if "iteration" in later), None)
        rows.append({"run_id": run_id, "step": int(nxt[1]) if nxt else None, "kind": "overflow_skip", "text": line.strip(), "file": "train.log", "line": i + 1})
    return schema.validate("events", pl.DataFrame(rows, schema=schema.schema_of("events")))


def parse_algoperf(run_dir: Path) -> tuple[list[tuple], dict]:
    """measurements.csv: per-step train rows, eval rows, and one final score row (skipped);
    an empty loss cell in a train or eval row is a NaN (corpus README)."""
    rows = []
    number = lambda cell: float(cell) if cell not in ("", None) else float("nan")  # noqa: E731
    with open(run_dir / "measurements.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            if not r.get("global_step"):
                continue
            step = int(float(r["global_step"]))
            if r.get("validation/num_examples"):  # eval row (it carries `score` too)
                rows += [(step, k, number(r[k]), None) for k in ("train/loss", "validation/loss", "test/loss") if k in r]
            elif not r.get("score"):  # a train row; the final row holds only score/preemption_count
                rows += [(step, k, number(r[k]), "train") for k in ("loss", "grad_norm") if k in r]
    return rows, json.loads((run_dir / "hparams.json").read_text())


def load_run(sweep: str, run_id: str) -> RunEvidence:
    run_dir = CORPUS / sweep / run_id
    if sweep == "nanogpt":
        log = run_dir / "main.log" if (run_dir / "main.log").is_file() else next(run_dir.glob("*.txt"))
        return _evidence(run_id, parse_nanogpt(log))
    if sweep == "bigscience":
        ev = _evidence(run_id, parse_megatron(run_dir / "train.log"))
        ev.events = parse_overflow_events(run_dir / "train.log", run_id)
        return ev
    if sweep == "pythia":
        frame = pl.read_csv(next(run_dir.glob("*.tsv")), separator="\t")
        metrics = frame.select(
            pl.lit(run_id).alias("run_id"), pl.col("step").cast(pl.Int64), pl.lit("train/lm_loss").alias("key"), pl.col("train/lm_loss").cast(pl.Float64).alias("value")
        )
        return RunEvidence(run_id=run_id, metrics=schema.validate("metrics", metrics))
    if sweep.startswith("algoperf"):
        rows, params = parse_algoperf(run_dir)
        return _evidence(run_id, rows, params)
    raise ValueError(sweep)


def label_problems(case: dict, findings, kinds: set[str] = OUR_KINDS) -> list[str]:
    problems = []
    for want in case.get("expect", []):
        if not set(want["kind"]) & kinds:
            continue
        lo, hi = want.get("onset_step", (None, None))
        if not any(
            f.kind in want["kind"] and (lo is None or (f.onset_step is not None and lo <= f.onset_step <= hi)) for f in findings
        ):
            problems.append(f"missing {want}")
    for f in findings:
        if f.run_id not in (None, case["run_id"]):
            continue
        if f.severity in SERIOUS and (case.get("healthy") or f.kind in case.get("forbid", [])):
            problems.append(f"forbidden {f.kind} {f.severity}: {f.summary}")
    return problems


def assert_evidence_selects_rows(ev: RunEvidence, findings) -> None:
    for f in findings:
        for ref in f.evidence:
            frame = ev.table(ref.table)
            for column, value in ref.where.items():
                frame = frame.filter(pl.col(column) == value)
            assert frame.height >= 1, f"{f.kind}: {ref.table} {ref.where} selects no row"


LABELS = json.loads((CORPUS / "labels.json").read_text()) if (CORPUS / "labels.json").is_file() else {"cases": []}
CASES = {(c["sweep"], c["run_id"]): c for c in LABELS["cases"]}

NAMED = [
    *[("nanogpt", c[1]) for c in CASES if c[0] == "nanogpt"],
    ("bigscience", "tr11-176B-ml_first_lm_loss_spike"),
    ("bigscience", "tr8-104B-wide_exp01_glitch"),
    ("bigscience", "tr1-13B-base_lm_loss_spike_29k"),
    ("bigscience", "tr8b-104B_emb-norm_exp07_overflow"),
    ("algoperf", "shampoo_submission/study_0/criteo1tb_pytorch/trial_3"),
    ("algoperf", "shampoo_submission/study_1/criteo1tb_pytorch/trial_3"),
    ("algoperf", "generalized_adam/study_4/criteo1tb_jax/trial_1"),
    ("algoperf", "generalized_adam/study_1/wmt_jax/trial_1"),
    ("algoperf", "baseline/study_0/ogbg_jax/trial_2"),
    ("algoperf", "baseline/study_3/wmt_jax/trial_1"),
    ("algoperf", "baseline/study_0/ogbg_jax/trial_1"),
    ("algoperf_v06", "baseline/study_0/criteo1tb_jax/trial_3"),
]


@pytest.mark.parametrize("sweep,run_id", NAMED, ids=[f"{s}/{r}" for s, r in NAMED])
def test_labelled_run_gets_the_expected_findings(sweep, run_id):
    ev = load_run(sweep, run_id)
    findings, problems = run_detectors(ev, DetectorsConfig())
    assert problems == []
    assert label_problems(CASES[(sweep, run_id)], findings) == []
    assert_evidence_selects_rows(ev, findings)


def test_nanogpt_record_spikes_are_one_step_loss_spikes_at_919_and_947():
    ev = load_run("nanogpt", "2024-11-06_ShortcutsTweaks/042f9e87-07e6-4504-bb04-4ec59a380211")
    findings, _ = run_detectors(ev, DetectorsConfig())
    spikes = {f.onset_step: f for f in findings if f.kind == "loss_spike"}
    assert {919, 947} <= set(spikes)
    assert not [f for f in findings if f.severity in SERIOUS]


def test_bigscience_first_176b_spike_joins_loss_and_grad_norm():
    ev = load_run("bigscience", "tr11-176B-ml_first_lm_loss_spike")
    findings, _ = run_detectors(ev, DetectorsConfig())
    grad = [f for f in findings if f.kind == "grad_norm_spike"]
    assert len(grad) == 1 and 31215 <= grad[0].onset_step <= 31219
    assert any(ref.where.get("key") == "lm loss" for ref in grad[0].evidence)
    assert [f.kind for f in findings if f.kind == "divergence"] == []


def test_placeholder_grad_norms_of_tr1_are_not_a_spike():
    ev = load_run("bigscience", "tr1-13B-base_lm_loss_spike_29k")
    findings, _ = run_detectors(ev, DetectorsConfig())
    assert not [f for f in findings if f.kind in ("grad_norm_spike", "nan_inf")]


def test_criteo_nan_trial_diverges_from_the_start_of_the_final_rise_citing_grad_norm():
    ev = load_run("algoperf", "shampoo_submission/study_0/criteo1tb_pytorch/trial_3")
    findings, _ = run_detectors(ev, DetectorsConfig())
    div = [f for f in findings if f.kind == "divergence"]
    assert len(div) == 1 and div[0].severity == "critical" and div[0].onset_step == 58
    assert any(ref.where.get("key") == "grad_norm" for ref in div[0].evidence)
    assert any(f.kind == "nan_inf" and f.onset_step == 65 for f in findings)


@pytest.mark.parametrize("seed", [1, 3])
def test_pythia_143k_points_are_healthy_and_fast(seed):
    ev = load_run("pythia", f"70m-seed{seed}")
    assert ev.metrics.height == 143_000
    started = time.perf_counter()
    findings, problems = run_detectors(ev, DetectorsConfig())
    elapsed = time.perf_counter() - started
    assert problems == []
    assert [f for f in findings if f.severity in SERIOUS] == []
    # A guard against per-point Python loops (minutes on 143k points), with room for a loaded
    # 2-core machine: all run-level detectors take ~2.5-3 s here when the machine is idle.
    assert elapsed < 6.0, f"detectors took {elapsed:.2f}s on 143k points"


@pytest.mark.slow
def test_every_labelled_run_satisfies_its_labels_for_our_kinds():
    failures = {}
    for (sweep, run_id), case in CASES.items():
        ev = load_run(sweep, run_id)
        findings, problems = run_detectors(ev, DetectorsConfig())
        found = problems + label_problems(case, findings)
        if found:
            failures[f"{sweep}/{run_id}"] = found
    assert failures == {}


def test_bigscience_tr8b_overflow_burst_is_a_loss_scale_collapse_dated_by_the_first_overflow():
    ev = load_run("bigscience", "tr8b-104B_emb-norm_exp07_overflow")
    findings, problems = run_detectors(ev, DetectorsConfig())
    assert problems == []
    collapse = [f for f in findings if f.kind == "loss_scale_collapse"]
    assert len(collapse) == 1 and 17061 <= collapse[0].onset_step <= 17063 and collapse[0].severity == "high"
    overflow = [f for f in findings if f.kind == "fp16_overflow"]
    assert len(overflow) == 1 and 17061 <= overflow[0].onset_step <= 17063
    assert any(ref.table == "events" for ref in overflow[0].evidence)
    # without the overflow lines the loss-scale metric alone still dates it in range
    ev.events = schema.empty("events")
    alone = [f for f in run_detectors(ev, DetectorsConfig())[0] if f.kind == "loss_scale_collapse"]
    assert [f.onset_step for f in alone] == [17063]


def test_tr1_placeholder_grad_norms_are_not_vanishing_gradients():
    ev = load_run("bigscience", "tr1-13B-base_lm_loss_spike_29k")
    findings, _ = run_detectors(ev, DetectorsConfig())
    assert not [f for f in findings if f.kind == "vanishing_gradients"]


def test_llmc_planned_decay_to_zero_is_not_an_lr_anomaly():
    ev = load_run("nanogpt", "2024-10-13_llmc")
    assert ev.metrics.filter(pl.col("key") == "lr").sort("step")["value"][-1] == 0.0
    findings, _ = run_detectors(ev, DetectorsConfig())
    assert not [f for f in findings if f.kind == "lr_schedule_anomaly"]


def sweep_tables(tmp_path, sweep: str, run_ids: list[str]) -> SweepTables:
    """The runs' metrics and params written as evidence parts, for the sweep-level detectors."""
    for rid in run_ids:
        ev = load_run(sweep, rid)
        write_table(tmp_path, "metrics", ev.metrics, paths.part_key(rid))
        write_table(tmp_path, "params", ev.params, paths.part_key(rid))
    return SweepTables(tmp_path)


def test_pythia_seed2_is_slow_against_its_three_seed_peers(tmp_path):
    runs = [f"70m-seed{s}" for s in (1, 2, 3, 4)]
    started = time.perf_counter()
    found = slow_convergence(sweep_tables(tmp_path, "pythia", runs), DetectorsConfig().slow_convergence)
    elapsed = time.perf_counter() - started
    assert [f.run_id for f in found] == ["70m-seed2"]
    assert found[0].onset_step <= 1500 and "seed peers" in found[0].summary
    for f in found:
        assert label_problems(CASES[("pythia", f.run_id)], found, kinds={"slow_convergence"}) == []
    assert elapsed < 5.0, f"slow_convergence took {elapsed:.2f}s on 4 x 143k points"


def test_algoperf_shampoo_wmt_trial_3_is_slow_against_its_sibling_trials_in_every_study(tmp_path):
    runs = [f"shampoo_submission/study_{s}/wmt_pytorch/trial_{t}" for s in range(5) for t in range(1, 6)]
    found = slow_convergence(sweep_tables(tmp_path, "algoperf", runs), DetectorsConfig().slow_convergence)
    assert sorted(f.run_id for f in found) == [f"shampoo_submission/study_{s}/wmt_pytorch/trial_3" for s in range(5)]
    for f in found:
        assert label_problems(CASES[("algoperf", f.run_id)], found, kinds={"slow_convergence"}) == []
