"""Two (then three) real Ray nodes on this machine, the app attached with cluster=address (issue 8).

Each node is its own `ray start --block` process in its own session (process group),
with a short temp dir and its own ports, stopped by pid (never `ray stop`). The nodes
use token auth with a token made for this module; the app gets only RAY_AUTH_TOKEN, so
`ray_cluster` has to turn RAY_AUTH_MODE=token on by itself.

Where tasks ran is read from outside the app: every Ray worker writes a
`:task_name:<name>` line to its `worker-*.out` log, under the temp dir of the node it
runs on, each time it starts a task.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest

from mldebug_ray.evidence.io import read_table

pytestmark = pytest.mark.slow

N_RUNS = 40
STEPS_PER_RUN = 30_000  # about 0.7 s of analysis per run here: a task is still running when its node is killed
TASK_MARKER = ":task_name:analyze_runs"
RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    from ray._private.services import get_node_ip_address  # what `ray start` itself picks

    return get_node_ip_address()


class RayNode:
    """One `ray start --block` process group with its own short temp dir and log file."""

    def __init__(self, name: str, args: list[str], env: dict, log_dir: Path):
        self.name = name
        self.temp_dir = Path(tempfile.mkdtemp(prefix=f"mn{name[0]}", dir="/tmp"))  # unix sockets: < 108 chars
        self.log = log_dir / f"ray-{name}.log"
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen(
                [*RAY, "start", "--block", f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
                 "--min-worker-port=0", "--max-worker-port=0", f"--dashboard-agent-listen-port={free_port()}", *args],
                stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )

    def task_starts(self) -> int:
        """Tasks started on this node so far (the session_latest link is not counted twice)."""
        n = 0
        for f in self.temp_dir.glob("session_2*/logs/worker-*.out"):
            try:
                n += sum(1 for line in f.read_text(errors="replace").splitlines() if line == TASK_MARKER)
            except OSError:
                pass
        return n

    def group_alive(self) -> bool:
        """Whether a live (not zombie) process of the group is left: /proc stat's state and pgrp."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == self.proc.pid:
                return True
        return False

    def kill_group(self) -> None:
        """A lost node: SIGKILL to `ray start`, its raylet and its workers, all at once."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM to `ray start` (it drains and stops its own processes); SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.time() + 10
        while self.group_alive() and time.time() < deadline:
            time.sleep(0.2)
        if self.group_alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


WAIT_NODES = r"""
import json, logging, sys, time
import ray
address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.time() + timeout
while True:
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        break
    except Exception as exc:
        if time.time() > deadline:
            sys.exit(f"cannot connect to {address}: {exc}")
        time.sleep(1)
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= want or time.time() > deadline:
        print(json.dumps([n["NodeID"] for n in alive]))
        sys.exit(0 if len(alive) >= want else f"only {len(alive)} of {want} nodes alive")
    time.sleep(0.5)
"""


class Cluster:
    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.token = secrets.token_hex(32)
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0")
        self.ip = node_ip()
        self.port = free_port()
        self.address = f"{self.ip}:{self.port}"
        self.nodes: list[RayNode] = []

    def start_head(self, num_cpus: int) -> RayNode:
        node = RayNode("head", [
            "--head", f"--node-ip-address={self.ip}", f"--port={self.port}", f"--num-cpus={num_cpus}",
            "--include-dashboard=false", f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
        ], self.env, self.log_dir)
        self.nodes.append(node)
        return node

    def start_worker(self, name: str, num_cpus: int) -> RayNode:
        node = RayNode(name, [f"--address={self.address}", f"--num-cpus={num_cpus}"], self.env, self.log_dir)
        self.nodes.append(node)
        return node

    def wait_nodes(self, want: int, timeout: float = 120) -> list[str]:
        proc = subprocess.run([sys.executable, "-c", WAIT_NODES, self.address, str(want), str(timeout)],
                              env=self.env, capture_output=True, text=True, timeout=timeout + 60)
        assert proc.returncode == 0, self.diagnostics(proc.stdout + proc.stderr)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def diagnostics(self, text: str = "") -> str:
        tails = [f"--- {n.log.name}\n" + "\n".join(n.log.read_text(errors="replace").splitlines()[-15:]) for n in self.nodes]
        return text[-3000:] + "\n" + "\n".join(tails)

    def app(self, sweep: Path, out: Path, *extra: str) -> subprocess.Popen:
        """The app as a user runs it against this cluster: only the token is in its environment."""
        env = {k: v for k, v in self.env.items() if k != "RAY_AUTH_MODE"}
        cmd = [sys.executable, "-m", "mldebug_ray", "+sweep=paths", f"sweep.roots=[{sweep}]", f"out_dir={out}",
               "cluster=address", f"cluster.address={self.address}", "cluster.runs_per_task=1", "progress=lines", *extra]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> None:
        for node in reversed(self.nodes):  # workers first, the head last
            node.stop()


@pytest.fixture(scope="module")
def sweep_40(tmp_path_factory) -> Path:
    """40 jsonl runs: falling losses, one with a late spike, big enough that a task takes a while."""
    root = tmp_path_factory.mktemp("sweep40")
    for i in range(N_RUNS):
        run = root / f"lr{i % 4}" / f"seed{i}"
        run.mkdir(parents=True)
        with open(run / "metrics.jsonl", "w") as fh:
            for step in range(1, STEPS_PER_RUN + 1):
                loss = 2.0 / (1 + step / 500) + 0.01 * ((step * 7919 + i) % 13) / 13
                if i == 7 and step > STEPS_PER_RUN * 0.8:
                    loss *= 50
                fh.write(f'{{"step": {step}, "train_loss": {loss:.6f}, "lr": {10 ** -(i % 4 + 2)}}}\n')
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("raylogs"))
    t0 = time.perf_counter()
    try:
        c.start_head(num_cpus=1)
        c.start_worker("worker", num_cpus=1)
        c.wait_nodes(2)
        print(f"\n[multinode] head + worker up in {time.perf_counter() - t0:.1f}s at {c.address}")
        yield c
    finally:
        c.stop()


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail("the app did not finish:\n" + out[-4000:])
    return out


def test_tasks_spread_over_both_nodes(cluster, sweep_40, tmp_path):
    head, worker = cluster.nodes[:2]
    before = {n.name: n.task_starts() for n in (head, worker)}
    t0 = time.perf_counter()
    proc = cluster.app(sweep_40, tmp_path / "out")
    out = finish(proc)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, cluster.diagnostics(out)
    starts = {n.name: n.task_starts() - before[n.name] for n in (head, worker)}
    print(f"[multinode] {N_RUNS} runs on 2 nodes in {elapsed:.1f}s; task starts per node: {starts}")
    assert starts["head"] >= 1 and starts["worker"] >= 1, (starts, cluster.diagnostics(out))
    assert sum(starts.values()) == N_RUNS, starts  # one task per run, none rerun
    runs = read_table(tmp_path / "out", "runs")
    assert runs.height == N_RUNS and runs["run_id"].n_unique() == N_RUNS
    assert set(runs["status"]) == {"ok"}
    assert (tmp_path / "out" / "diagnosis.json").is_file()


def test_node_lost_mid_sweep_is_handled(cluster, sweep_40, tmp_path):
    """A third node joins, gets tasks, and is SIGKILLed (whole process group) while one runs."""
    victim = cluster.start_worker("victim", num_cpus=1)
    cluster.wait_nodes(3)
    survivors = [n for n in cluster.nodes if n is not victim]
    before = {n.name: n.task_starts() for n in survivors}

    t0 = time.perf_counter()
    proc = cluster.app(sweep_40, tmp_path / "out")
    deadline = time.time() + 300
    while victim.task_starts() == 0:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("the third node never started a task:\n" + cluster.diagnostics(proc.communicate()[0]))
        time.sleep(0.05)
    killed_at = time.perf_counter() - t0
    victim.kill_group()
    on_victim = victim.task_starts()
    gone = time.time() + 10
    while victim.group_alive() and time.time() < gone:
        time.sleep(0.1)
    assert not victim.group_alive(), "a process of the killed node is still running"

    out = finish(proc)
    elapsed = time.perf_counter() - t0
    starts = {n.name: n.task_starts() - before[n.name] for n in survivors}
    runs = read_table(tmp_path / "out", "runs")
    unreadable = runs.filter(pl.col("status") == "unreadable")
    print(f"[multinode] node killed {killed_at:.1f}s into the sweep after {on_victim} task start(s) on it; "
          f"sweep done in {elapsed:.1f}s; task starts on the survivors {starts}; unreadable runs: {unreadable.height}")

    # Every run is in `runs`: rerun on the surviving nodes, or unreadable with the reason.
    assert runs.height == N_RUNS and runs["run_id"].n_unique() == N_RUNS, cluster.diagnostics(out)
    assert set(runs["status"]) <= {"ok", "unreadable"}, runs["status"].value_counts()
    for reason in unreadable["reason"]:
        assert reason and "task failed" in reason, reason
    assert proc.returncode == (1 if unreadable.height else 0), cluster.diagnostics(out)
    assert (tmp_path / "out" / "diagnosis.json").is_file()
    # The task(s) that were running on the lost node started again elsewhere (or were given up).
    assert sum(starts.values()) + on_victim > N_RUNS or unreadable.height, (starts, on_victim)
    # The survivors are still a cluster.
    assert len(cluster.wait_nodes(2, timeout=60)) >= 2


def test_cluster_slurm_without_an_address_is_a_one_line_error(tmp_path, jsonl_run):
    """cluster=slurm outside the job script: no address and no RAY_ADDRESS -> exit 2, one line."""
    jsonl_run(tmp_path / "runs" / "a", [1.0, 0.5, 0.25])
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "mldebug_ray", "+sweep=paths", f"sweep.roots=[{tmp_path / 'runs'}]",
                           f"out_dir={tmp_path / 'out'}", "cluster=slurm"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("mldebug_ray: error:")]
    assert len(errors) == 1 and "cluster.address" in errors[0] and "RAY_ADDRESS" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
