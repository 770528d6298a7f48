"""Worker faults (issue 10): a Ray worker killed mid-task is retried within a bound, then
its runs are marked with the reason; the sweep completes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import polars as pl
import pytest

import mldebug_ray
from mldebug_ray.evidence.io import read_table


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def task_worker_pids() -> list[int]:
    """PIDs of this test session's Ray workers running our task (Ray titles them
    `ray::analyze_runs`). Only workers whose raylet this process started: another Ray on
    the machine is never touched."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().split()[2]
        except OSError:
            continue
        if cmdline.startswith(b"ray::analyze_runs") and state != "Z" and _ppid(_ppid(int(entry))) == os.getpid():
            pids.append(int(entry))
    return pids


def slow_sweep(root: Path) -> Path:
    big = root / "big"
    big.mkdir(parents=True)
    with open(big / "metrics.jsonl", "w") as fh:
        for step in range(1, 400_001):
            fh.write(json.dumps({"step": step, "train_loss": 2.0 / (1 + step * 1e-4), "lr": 1e-3}) + "\n")
    small = root / "small"
    small.mkdir()
    (small / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train_loss": 1.0 / s}) + "\n" for s in range(1, 30)))
    return root


def killer(times: int, stop: threading.Event, killed: list[int]) -> None:
    while not stop.is_set() and len(killed) < times:
        for pid in task_worker_pids():
            if pid not in killed:
                time.sleep(0.3)  # mid-task, not at its first instruction
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
                break
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("kills, expect", [(1, "ok"), (10, "unreadable")])
def test_killed_worker_is_retried_then_marked(tmp_path, ray_local, kills, expect):
    root = slow_sweep(tmp_path / "sweep")
    stop, killed = threading.Event(), []
    thread = threading.Thread(target=killer, args=(kills, stop, killed), daemon=True)
    thread.start()
    try:
        mldebug_ray.analyze([root], out_dir=tmp_path / "out", progress="off",
                            overrides={"cluster.runs_per_task": 1, "cluster.task_max_retries": 2})
    finally:
        stop.set()
        thread.join(timeout=10)
    assert killed, "no worker was killed: the task finished too fast to interrupt"
    runs = read_table(tmp_path / "out", "runs")
    status = dict(zip(runs["run_id"], runs["status"]))
    assert set(status) == {"big", "small"}
    assert status["small"] == "ok" or kills > 1
    if expect == "ok":
        assert status["big"] == "ok"
        assert read_table(tmp_path / "out", "metrics").filter(pl.col("run_id") == "big").height >= 400_000
    else:
        killed_runs = runs.filter(pl.col("status") == "unreadable")
        assert killed_runs.height >= 1
        assert all("retries" in r for r in killed_runs["reason"].to_list())
