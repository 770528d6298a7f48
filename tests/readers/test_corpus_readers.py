"""The readers on the real-log corpus: run discovery matches the labels, values match the files, every run reads ok."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from mldebug_ray.discover import discover
from mldebug_ray.gather import read_run_dir
from mldebug_ray.readers import READERS
from mldebug_ray.readers.text_log import trials_named

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpus")
pytestmark = pytest.mark.skipif(not (CORPUS / "labels.json").is_file(), reason="corpus not present")
SWEEPS = ("algoperf", "algoperf_v06", "bigscience", "nanogpt", "pythia")
SHORTCUTS = CORPUS / "nanogpt" / "2024-11-06_ShortcutsTweaks"


def _labels() -> list[dict]:
    return json.loads((CORPUS / "labels.json").read_text())["cases"]


def _read(path: Path):
    ev, used, problems = read_run_dir(path, path.name)
    return ev, used, problems


def _at(metrics: pl.DataFrame, key: str, step: int) -> float:
    hit = metrics.filter((pl.col("key") == key) & (pl.col("step") == step))["value"]
    assert hit.len() == 1, (key, step)
    return hit[0]


@pytest.mark.parametrize("sweep", SWEEPS)
def test_discovered_run_ids_are_the_labelled_ones(sweep):
    found = [r.run_id for r in discover([str(CORPUS / sweep)])]
    assert found == sorted(c["run_id"] for c in _labels() if c["sweep"] == sweep)


def test_bigscience_megatron_lines_give_the_chronicled_values():
    ev, used, problems = _read(CORPUS / "bigscience" / "tr11-176B-ml_first_lm_loss_spike")
    assert used == ["text_log"] and problems == []
    m = ev.metrics
    assert _at(m, "lm_loss", 31219) == pytest.approx(5.098124)
    assert _at(m, "grad_norm", 31219) == pytest.approx(960.351)
    assert _at(m, "lm_loss", 31250) == pytest.approx(2.215699)
    assert sorted(m.filter(pl.col("key") == "lm_loss")["step"]) == [*range(31214, 31223), 31250, 31251]
    assert "loss_scale" not in set(m["key"])  # bf16: no loss-scale field in these lines
    ev, _, _ = _read(CORPUS / "bigscience" / "tr1-13B-base_lm_loss_spike_29k")
    assert set(ev.metrics.filter(pl.col("key") == "grad_norm")["value"]) == {0.0}  # the not-computed placeholder, as logged
    assert _at(ev.metrics, "loss_scale", 29050) == 8192.0
    ev, _, _ = _read(CORPUS / "bigscience" / "tr8-104B-wide_exp01_glitch")
    assert _at(ev.metrics, "val_lm_loss", 7000) == pytest.approx(7.1742)
    assert _at(ev.metrics, "lm_loss", 7010) == pytest.approx(11.42026)


def test_bigscience_tr8b_has_six_overflow_skips_at_their_iterations():
    ev, _, _ = _read(CORPUS / "bigscience" / "tr8b-104B_emb-norm_exp07_overflow")
    skips = ev.events.filter(pl.col("kind") == "overflow_skip")
    assert skips["step"].to_list() == [17062, 17063, 17064, 17065, 17067, 17068]
    assert skips["text"].str.contains("OVERFLOW! Rank 0 Skipping step").all()
    assert _at(ev.metrics, "loss_scale", 17068) == 32768.0


@pytest.mark.parametrize("run", sorted(p.name for p in SHORTCUTS.iterdir()) if SHORTCUTS.is_dir() else [])
def test_modded_nanogpt_logs_give_every_step_and_nothing_from_the_script(run):
    ev, used, problems = _read(SHORTCUTS / run)
    assert used == ["text_log"] and problems == []
    m = ev.metrics
    steps = 4578 if run.startswith("d6b50d71") else 3200
    train = m.filter(pl.col("key") == "train_loss")
    assert sorted(train["step"]) == list(range(1, steps + 1))
    assert set(m["key"]) == {"train_loss", "val_loss", "train_time_ms", "step_avg_ms"}
    assert m.filter(pl.col("key") == "step_avg_ms")["value"].is_nan().sum() == 0  # `nanms` placeholders dropped
    assert ev.events.height == 0  # the pasted source has `raise`/warnings text: none of it is an event
    assert ev.params.filter(pl.col("key") == "log.total_steps")["value"].to_list() == [str(steps)]
    text = next((SHORTCUTS / run).glob("*.txt")).read_text()
    first = text[text.index("step:919/") :].split()[1]
    assert _at(m, "train_loss", 919) == float(first.split(":")[1])


def test_llmc_log_gives_train_and_val_loss_lr_and_grad_norm():
    ev, used, problems = _read(CORPUS / "nanogpt" / "2024-10-13_llmc")
    assert used == ["text_log"] and problems == []
    m = ev.metrics
    counts = dict(m.group_by("key").len().iter_rows())
    assert counts == {"train_loss": 19560, "val_loss": 80, "lr": 19560, "grad_norm": 19560}
    assert _at(m, "val_loss", 0) == 11.0092 and _at(m, "val_loss", 19560) == 3.2722
    assert _at(m, "grad_norm", 9025) == 2.02
    assert _at(m, "lr", 19559) == 0.0
    assert dict(m.select("key", "split").unique().iter_rows())["val_loss"] == "val"


def test_algoperf_v05_logs_are_lfs_pointers_recognised_not_parsed():
    pointers = sorted((CORPUS / "algoperf").rglob("*.log"))
    assert pointers and all(p.stat().st_size < 200 for p in pointers)
    for workload in sorted({p.parent for p in pointers}):
        assert READERS["text_log"].detect(workload) == []
        assert READERS["text_log_skipped"].detect(workload) == sorted(p for p in pointers if p.parent == workload)
        problems = READERS["text_log_skipped"].read(workload, READERS["text_log_skipped"].detect(workload)).problems
        assert all(p.endswith("is a Git-LFS pointer, not a log (fetch it with `git lfs pull`)") for p in problems)
        for trial in sorted(workload.glob("trial_*")):
            assert READERS["text_log"].detect(trial) == []  # a pointer names no trial


def test_algoperf_v06_trials_get_the_events_of_their_own_log():
    runs = discover([str(CORPUS / "algoperf_v06")])
    assert all(Path(r.path).name.startswith("trial_") for r in runs) and len(runs) == 15
    for run in runs:
        trial = Path(run.path)
        logs = READERS["text_log"].detect(trial)
        assert len(logs) == 1 and logs[0].parent == trial.parent
        assert trials_named(logs[0]) == (trial.name,)
        ev, used, problems = read_run_dir(trial, run.run_id)
        assert used == ["csv", "text_log"] and problems == [] and ev.runs["status"][0] == "ok"
        assert ev.events.height >= 1
        assert set(ev.events["file"]) == {f"../{logs[0].name}"}
        assert ("traceback", "ModuleNotFoundError: No module named 'wandb' | "
                'File "/algorithmic-efficiency/algoperf/logger_utils.py", line 27, in <module>') in ev.events.select("kind", "text").rows()
        # measurements.csv stays the source of every value it holds
        assert ev.metrics.filter(pl.col("key") == "loss")["source"].unique().to_list() == ["csv"]


@pytest.mark.slow
def test_every_corpus_run_reads_ok():
    not_ok = []
    for sweep in SWEEPS:
        for run in discover([str(CORPUS / sweep)]):
            ev, _, problems = read_run_dir(Path(run.path), run.run_id)
            if ev.runs["status"][0] != "ok" or ev.metrics.height == 0:
                not_ok.append((sweep, run.run_id, problems))
    assert not_ok == []
