"""Hostile and broken input (issue 10): each gets a reason on its run, bounded memory and
time, and the rest of the sweep is untouched."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
import zipfile
from pathlib import Path

import polars as pl
import pytest

import mldebug_ray
from mldebug_ray.discover import discover
from mldebug_ray.evidence.io import read_table

GOOD_LOSSES = [2.0, 1.8, 1.6, 1.5, 1.4]


def good_run(run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "train_loss": v}) + "\n" for i, v in enumerate(GOOD_LOSSES)))
    return run_dir


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def timed_read(path: Path):
    """read_run in a fresh interpreter: (status, reason, train_loss rows, seconds, peak RSS MB).

    A subprocess, so the peak RSS is this read's own and not an earlier test's."""
    code = (
        "import json, resource, sys, time, polars as pl, mldebug_ray\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t0 = time.perf_counter(); r = mldebug_ray.read_run(sys.argv[1]); dt = time.perf_counter() - t0\n"
        "grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024\n"
        "ck = r.checkpoints.select('status', 'reason').rows()\n"
        "n = r.metrics.filter(pl.col('key') == 'train_loss').height\n"
        "print(json.dumps([r.status, r.reason, n, dt, grew, ck]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return Read(*json.loads(proc.stdout.strip().splitlines()[-1]))


@dataclass
class Read:
    status: str
    reason: str | None
    n_loss: int
    seconds: float
    grew_mb: float
    checkpoints: list


class Marker:
    """Unpickling this would create a file: proof that code ran."""

    path = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_pickle_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    import torch

    run = good_run(tmp_path / "r")
    marker = tmp_path / "PWNED"
    Marker.path = str(marker)
    (run / "checkpoints").mkdir()
    torch.save({"weight": torch.zeros(2), "evil": Marker()}, run / "checkpoints" / "step_5.pt")
    got = mldebug_ray.read_run(run)
    assert not marker.exists()
    row = got.checkpoints.row(0, named=True)
    assert row["status"] == "unreadable" and row["reason"]
    assert got.status == "partial" and "step_5.pt" in got.reason


def test_safetensors_with_absurd_header_length_is_unreadable_with_reason(tmp_path):
    run = good_run(tmp_path / "r")
    (run / "model.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    got = timed_read(run)
    status, reason = got.checkpoints[0]
    assert status == "unreadable" and "header" in reason
    assert got.seconds < 5


def test_safetensors_with_offsets_outside_the_file_is_unreadable(tmp_path):
    run = good_run(tmp_path / "r")
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}).encode()
    (run / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    got = mldebug_ray.read_run(run)
    assert got.checkpoints.row(0, named=True)["status"] == "unreadable"


def test_zip_bomb_checkpoint_is_refused_before_inflating(tmp_path):
    run = good_run(tmp_path / "r")
    bomb = run / "model.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("archive/data.pkl", "w", force_zip64=True) as fh:
            chunk = b"\0" * (1 << 20)
            for _ in range(2048):  # 2 GiB of zeros, ~2 MB on disk
                fh.write(chunk)
    assert bomb.stat().st_size < 20 * 2**20
    got = timed_read(run)
    status, reason = got.checkpoints[0]
    assert status == "unreadable" and reason
    assert got.grew_mb < 500 and got.seconds < 20


def test_deeply_nested_json_is_a_reason_not_a_crash(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "trainer_state.json").write_text("[" * 200_000 + "]" * 200_000)
    good_run(tmp_path / "ok")
    got = mldebug_ray.read_run(run)
    assert got.status == "unreadable" and "trainer_state.json" in got.reason


def test_gigantic_sparse_json_is_refused_by_size(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    sparse(run / "trainer_state.json", 8 * 2**30)
    got = timed_read(run)
    assert got.status == "unreadable" and "trainer_state.json" in got.reason
    assert got.seconds < 10 and got.grew_mb < 300


def test_a_single_1gb_line_keeps_memory_bounded(tmp_path):
    run = good_run(tmp_path / "r")
    sparse(run / "train.log", 2**30)  # one 1 GiB "line" of NUL bytes, no newline
    got = timed_read(run)
    assert got.status in ("ok", "partial")
    assert got.n_loss == len(GOOD_LOSSES)
    assert got.grew_mb < 300, got.grew_mb


def test_jsonl_with_a_huge_sparse_tail_keeps_memory_bounded(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    with open(run / "metrics.jsonl", "wb") as fh:
        for i, v in enumerate(GOOD_LOSSES):
            fh.write((json.dumps({"step": i + 1, "train_loss": v}) + "\n").encode())
        fh.truncate(fh.tell() + 2**30)
    got = timed_read(run)
    assert got.n_loss == len(GOOD_LOSSES)
    assert got.status == "partial" and got.reason
    assert got.grew_mb < 300, got.grew_mb


def test_symlinks_leading_outside_the_root_are_not_followed(tmp_path):
    outside = good_run(tmp_path / "outside" / "secret_run")
    root = tmp_path / "root"
    run = good_run(root / "r")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (run / "more.jsonl").symlink_to(outside / "metrics.jsonl")
    assert [r.run_id for r in discover([str(root)])] == ["r"]
    got = mldebug_ray.read_run(run)
    assert got.metrics.height == len(GOOD_LOSSES)  # the symlinked file was not read twice


def test_fifo_and_directories_named_like_logs_do_not_hang(tmp_path):
    run = good_run(tmp_path / "r")
    os.mkfifo(run / "train.log")
    (run / "stderr.log").mkdir()
    got = timed_read(run)
    assert got.status == "ok" and got.seconds < 10


def test_names_that_are_not_utf8_get_escaped_run_ids_and_tables_still_write(tmp_path, ray_local):
    root = tmp_path / "sweep"
    good_run(root / "plain")
    weird = os.fsencode(str(root)) + b"/run-\xff\xfe"
    good_run(Path(os.fsdecode(weird)))
    paths = mldebug_ray.analyze([root], out_dir=tmp_path / "out", progress="off")
    runs = read_table(tmp_path / "out", "runs")
    assert runs.height == 2 and set(runs["status"]) == {"ok"}
    assert any("\\x" in r for r in runs["run_id"].to_list())
    assert paths["diagnosis"].is_file()


def test_one_hostile_run_leaves_the_others_untouched(tmp_path, ray_local):
    root = tmp_path / "sweep"
    for i in range(3):
        good_run(root / f"good{i}")
    bad = root / "bad"
    bad.mkdir()
    (bad / "trainer_state.json").write_text("[" * 200_000)
    mldebug_ray.analyze([root], out_dir=tmp_path / "out", progress="off")
    runs = read_table(tmp_path / "out", "runs")
    status = dict(zip(runs["run_id"], runs["status"]))
    assert status == {"bad": "unreadable", "good0": "ok", "good1": "ok", "good2": "ok"}
    metrics = read_table(tmp_path / "out", "metrics")
    assert metrics.filter(pl.col("run_id").str.starts_with("good")).height == 3 * len(GOOD_LOSSES)
