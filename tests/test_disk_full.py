"""Full disk on write (issue 10): an error naming the path, no partial file, and a rerun
after freeing space gives the same tables as a clean run. Uses a real tmpfs of 1 MiB."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from mldebug_ray.evidence.io import read_table

TABLES = ("runs", "params", "metrics", "findings")


def make_sweep(root: Path, n: int = 60, steps: int = 3000) -> Path:
    rng = random.Random(0)
    for i in range(n):
        run = root / f"run{i:02d}"
        run.mkdir(parents=True)
        with open(run / "metrics.jsonl", "w") as fh:
            for step in range(1, steps + 1):
                fh.write(json.dumps({"step": step, "train_loss": 2.0 / (1 + 0.01 * step) + rng.random() * 0.05, "lr": rng.random()}) + "\n")
    return root


def cli(root: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mldebug_ray", "+sweep=paths", f"sweep.roots=[{root}]", f"out_dir={out}", "cluster.num_cpus=2", "progress=off"],
        capture_output=True, text=True, timeout=600,
    )


def canonical(out: Path, table: str) -> pl.DataFrame:
    frame = read_table(out, table).drop([c for c in ("read_time_s", "fingerprint") if c in read_table(out, table).columns])
    if table == "findings":
        frame = frame.drop("evidence", "run_ids")
    return frame.sort(frame.columns[:4], nulls_last=True)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small_disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs for the full-disk test: {proc.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_full_disk_is_one_line_error_no_partial_file_and_rerun_matches_clean(tmp_path, small_disk):
    root = make_sweep(tmp_path / "sweep")
    reference = tmp_path / "reference"
    assert cli(root, reference).returncode == 0

    out = small_disk / "out"
    proc = cli(root, out)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("mldebug_ray: error:")]
    assert len(errors) == 1 and ("space" in errors[0] or "write" in errors[0]), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for part in out.rglob("*.parquet"):  # whatever is visible is whole
        pl.read_parquet(part)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    rerun = cli(root, out)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for table in TABLES:
        got, want = canonical(out, table), canonical(reference, table)
        assert got.equals(want), (table, got.height, want.height)
