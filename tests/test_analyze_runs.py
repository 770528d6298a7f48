"""A task's runs are screened together (detectors/screen.py) and must get exactly the
findings each run gets on its own."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import polars as pl

from mldebug_ray import analyze_run as ar
from mldebug_ray.api import compose_config
from mldebug_ray.discover import discover
from mldebug_ray.evidence.io import read_table


def write_run(run: Path, fault: str | None, rng: random.Random, steps: int = 600) -> None:
    run.mkdir(parents=True)
    at = rng.randrange(steps // 4, 3 * steps // 4)
    with open(run / "metrics.jsonl", "w") as fh:
        for step in range(steps):
            loss = 0.5 + 2.5 * math.exp(-step / 120) * math.exp(0.03 * rng.gauss(0, 1))
            if fault == "spike" and step == at:
                loss *= 3
            if fault == "divergence" and step >= at:
                loss *= 4 + step / 50
            if fault == "nan" and step >= at:
                loss = float("nan")
            row = {"step": step, "train_loss": loss, "lr": 1e-3}
            if step % 20 == 0:
                row["val_loss"] = loss + 0.05
            fh.write(json.dumps(row) + "\n")


def canonical(out: Path) -> pl.DataFrame:
    return read_table(out, "findings").select("run_id", "kind", "severity", "onset_step", "end_step", "summary").sort(
        "run_id", "kind", "onset_step", nulls_last=True
    )


def test_a_screened_batch_gives_the_findings_of_each_run_alone(tmp_path, monkeypatch):
    rng = random.Random(3)
    root = tmp_path / "sweep"
    faults = [None] * 6 + ["spike", "divergence", "nan"]
    for i, fault in enumerate(faults):
        write_run(root / f"r{i}", fault, rng)
    runs = discover([str(root)])
    cfg = compose_config(root, tmp_path / "unused")

    screened = []
    original = ar._screened_out
    monkeypatch.setattr(ar, "_screened_out", lambda group, c: screened.append(s := original(group, c)) or s)
    batch_out = tmp_path / "batch"
    ar.analyze_runs(runs, cfg, str(batch_out))
    alone_out = tmp_path / "alone"
    for run in runs:
        ar.analyze_run(run, cfg, alone_out)

    assert screened and screened[0], "the healthy runs should be screened out"
    assert {f"r{i}" for i in range(6, 9)}.isdisjoint(screened[0])
    assert canonical(batch_out).height > 0
    assert canonical(batch_out).equals(canonical(alone_out))


def test_groups_respect_the_row_bound(tmp_path, monkeypatch):
    rng = random.Random(4)
    root = tmp_path / "sweep"
    for i in range(5):
        write_run(root / f"r{i}", None, rng, steps=300)
    runs = discover([str(root)])
    cfg = compose_config(root, tmp_path / "unused")
    sizes = []
    original = ar._detect_group
    monkeypatch.setattr(ar, "SCREEN_GROUP_MAX_ROWS", 2 * 300 * 2 + 1)  # two runs' rows (train_loss + lr, plus val)
    monkeypatch.setattr(ar, "_detect_group", lambda group, c, o: sizes.append(len(group)) or original(group, c, o))
    summaries = ar.analyze_runs(runs, cfg, str(tmp_path / "out"))
    assert [s.run_id for s in summaries] == [r.run_id for r in runs]
    assert sum(sizes) == 5 and max(sizes) <= 2
