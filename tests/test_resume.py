"""Resume (issue 10): cached per-run evidence, recompute only what changed, kills leave no half-written files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

import mldebug_ray
from mldebug_ray import paths
from mldebug_ray.evidence.io import read_table

TABLES = ("runs", "params", "metrics", "events", "checkpoints", "layers", "findings")


def make_sweep(root: Path, n: int, steps: int = 50) -> Path:
    for i in range(n):
        run = root / f"run{i:03d}"
        run.mkdir(parents=True, exist_ok=True)
        with open(run / "metrics.jsonl", "w") as fh:
            for step in range(1, steps + 1):
                loss = 3.0 / (1 + 0.05 * step) + (5.0 if (i % 7 == 0 and step > steps // 2) else 0.0)
                fh.write(json.dumps({"step": step, "train_loss": loss, "lr": 0.001}) + "\n")
    return root


def canonical(out: Path, table: str) -> pl.DataFrame:
    frame = read_table(out, table)
    frame = frame.drop([c for c in ("read_time_s", "fingerprint") if c in frame.columns])
    if table == "findings":
        frame = frame.with_columns(pl.col("evidence").list.len().alias("evidence")).drop("run_ids")
    return frame.sort(frame.columns[: min(4, len(frame.columns))], nulls_last=True)


def part_mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "evidence").rglob("part-*.parquet")}


def test_rerun_reuses_unchanged_runs_and_recomputes_changed_ones(tmp_path, ray_local):
    root = make_sweep(tmp_path / "sweep", 6)
    out = tmp_path / "out"
    mldebug_ray.analyze([root], out_dir=out, progress="off")
    first = {t: canonical(out, t) for t in TABLES}
    before = part_mtimes(out)
    mldebug_ray.analyze([root], out_dir=out, progress="off")
    after = part_mtimes(out)
    run_parts = {k: v for k, v in before.items() if "part-sweep" not in k}
    assert all(after[k] == v for k, v in run_parts.items()), "unchanged runs must not be rewritten"
    for t in TABLES:
        assert canonical(out, t).equals(first[t]), t

    with open(root / "run002" / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 51, "train_loss": 0.5}) + "\n")
    mldebug_ray.analyze([root], out_dir=out, progress="off")
    changed = part_mtimes(out)
    key = paths.part_key("run002")
    assert changed[f"evidence/metrics/part-{key}.parquet"] != before[f"evidence/metrics/part-{key}.parquet"]
    other = paths.part_key("run003")
    assert changed[f"evidence/metrics/part-{other}.parquet"] == before[f"evidence/metrics/part-{other}.parquet"]
    assert read_table(out, "metrics").filter(pl.col("run_id") == "run002")["step"].max() == 51


def test_runs_removed_from_the_sweep_leave_no_rows(tmp_path, ray_local):
    root = make_sweep(tmp_path / "sweep", 3)
    out = tmp_path / "out"
    mldebug_ray.analyze([root], out_dir=out, progress="off")
    import shutil

    shutil.rmtree(root / "run001")
    mldebug_ray.analyze([root], out_dir=out, progress="off")
    for table in TABLES:
        assert "run001" not in read_table(out, table)["run_id"].to_list(), table


def test_config_change_recomputes(tmp_path, ray_local):
    root = make_sweep(tmp_path / "sweep", 2)
    out = tmp_path / "out"
    mldebug_ray.analyze([root], out_dir=out, progress="off")
    before = part_mtimes(out)
    mldebug_ray.analyze([root], out_dir=out, progress="off", overrides={"detectors.loss_spike.min_ratio": 1.9})
    after = part_mtimes(out)
    key = paths.part_key("run000")
    assert after[f"evidence/runs/part-{key}.parquet"] != before[f"evidence/runs/part-{key}.parquet"]


def _cli(root: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "mldebug_ray", "+sweep=paths", f"sweep.roots=[{root}]", f"out_dir={out}",
            "cluster.num_cpus=2", "cluster.runs_per_task=4", "progress=lines"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A sweep big enough to interrupt, and its evidence from an uninterrupted run."""
    base = tmp_path_factory.mktemp("resume")
    root = make_sweep(base / "sweep", 120, steps=400)
    reference = base / "reference"
    subprocess.run(_cli(root, reference), check=True, capture_output=True, timeout=600)
    return root, reference


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_driver_killed_mid_sweep_then_rerun_matches_an_uninterrupted_run(tmp_path, sig, uninterrupted):
    root, reference = uninterrupted

    out = tmp_path / "out"
    log_out, log_err = open(tmp_path / "stdout.log", "wb"), open(tmp_path / "stderr.log", "wb")
    proc = subprocess.Popen(_cli(root, out), stdout=log_out, stderr=log_err, start_new_session=True)
    runs_dir = out / "evidence" / "runs"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = len(list(runs_dir.glob("part-*.parquet"))) if runs_dir.is_dir() else 0
        if done >= 12:
            break
        if proc.poll() is not None:
            pytest.fail("the sweep finished before it could be interrupted; make it bigger")
        time.sleep(0.05)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)  # driver and its local Ray, all at once
    else:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    stderr = (tmp_path / "stderr.log").read_bytes()
    if sig == signal.SIGTERM:
        assert proc.returncode == 130, stderr[-3000:]
        assert b"rerun with the same out_dir" in stderr
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    partial = len(list(runs_dir.glob("part-*.parquet")))
    assert 0 < partial < 120
    # Whatever is visible is complete: every part reads.
    for part in (out / "evidence").rglob("*.parquet"):
        pl.read_parquet(part)

    rerun = subprocess.run(_cli(root, out), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for table in TABLES:
        got, want = canonical(out, table), canonical(reference, table)
        assert got.equals(want), (table, got.height, want.height)
    assert not [p for p in (out / "evidence").rglob("*") if p.name.endswith(".tmp")]


def test_a_changed_probe_entry_point_changes_the_config_digest(tmp_path):
    from mldebug_ray.config import DetectorsConfig, ProbesConfig
    from mldebug_ray.fingerprint import config_digest

    code = tmp_path / "code"
    code.mkdir()
    (code / "my_models.py").write_text("def model_fn(params):\n    return None\n")
    probes = ProbesConfig(model_fn="my_models:model_fn", code_paths=[str(code)])
    before = config_digest(probes, DetectorsConfig())
    assert config_digest(probes, DetectorsConfig()) == before
    (code / "my_models.py").write_text("def model_fn(params):\n    return 1  # changed\n")
    assert config_digest(probes, DetectorsConfig()) != before
