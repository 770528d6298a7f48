"""slurm/mldebug.sbatch on a real single-node Slurm on localhost (issue 8).

The module brings Slurm up with scripts/slurm_up.sh (installing Debian's munge and
slurm-wlm when missing) in a folder and on ports of its own, so a Slurm already
running on the machine is left alone, and takes it down by pid with slurm_down.sh.
Jobs are polled with `scontrol show job` (`sbatch --wait` can return ~30 s late).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mldebug_ray.evidence.io import read_table

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "slurm" / "mldebug.sbatch"
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class Slurm:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "SLURM_"))}
        self.env.update(
            MLDEBUG_SLURM_DIR=str(state_dir),
            MLDEBUG_SLURMCTLD_PORT=str(free_port()),
            MLDEBUG_SLURMD_PORT=str(free_port()),
            # Job ids name a job's Ray ports and temp dirs: start where no other test cluster does.
            MLDEBUG_SLURM_FIRST_JOB_ID=str(random.randrange(1000, 900_000)),
            SLURM_CONF=str(state_dir / "slurm.conf"),
            MLDEBUG_PYTHON=sys.executable,  # the jobs use the interpreter the tests run in
        )
        self.bring_up_s = None

    def up(self) -> subprocess.CompletedProcess:
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm_up.sh")], env=self.env,
                              capture_output=True, text=True, timeout=600)
        self.bring_up_s = time.perf_counter() - t0
        return proc

    def down(self) -> None:
        subprocess.run(["bash", str(REPO / "scripts" / "slurm_down.sh")], env=self.env, timeout=180)

    def sbatch(self, *args: str, cwd: Path, log: Path, env: dict | None = None) -> str:
        proc = subprocess.run(["sbatch", "--parsable", f"--output={log}", f"--chdir={cwd}", str(SBATCH), *args],
                              env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=self.env,
                             capture_output=True, text=True, timeout=30).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: str, timeout: float = 900) -> dict[str, str]:
        deadline = time.time() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in DONE_STATES:
                return info
            if time.time() > deadline:
                subprocess.run(["scancel", job_id], env=self.env)
                pytest.fail(f"job {job_id} not done after {timeout}s: {info.get('JobState')}")
            time.sleep(1)

    def logs(self) -> str:
        parts = []
        for name in ("log/slurmctld.log", "log/slurmd.log"):
            f = self.state_dir / name
            if f.is_file():
                parts.append(f"--- {name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-20:]))
        return "\n".join(parts)


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("needs root: scripts/slurm_up.sh installs munge/slurm-wlm and runs slurmd, which starts jobs as their users")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("Slurm is not installed and there is no apt-get to install it (scripts/slurm_up.sh uses Debian's packages)")
    state = Path(tempfile.mkdtemp(prefix="sl", dir="/tmp"))  # short: it holds munge's socket
    s = Slurm(state)
    try:
        proc = s.up()
        assert proc.returncode == 0, proc.stdout + proc.stderr + s.logs()
        print(f"\n[slurm] up in {s.bring_up_s:.1f}s: {proc.stderr.strip().splitlines()[-1]}")
        yield s
    finally:
        s.down()
        shutil.rmtree(state, ignore_errors=True)


def no_ray_left(job_id: str, tmp_root: Path) -> list[str]:
    """Processes or temp dirs that still belong to the job's Ray nodes."""
    left = [str(p) for p in tmp_root.glob(f"r{job_id}*")]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"{tmp_root}/r{job_id}" in text:
            left.append(text[:200])
    return left


def test_demo_sweep_job_completes_with_outputs(slurm, demo_root, tmp_path):
    out = tmp_path / "out"
    log = tmp_path / "job.out"
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        # MLDEBUG_RAY_WORKER_ON_HEAD: one node here, so a second Ray node is started through
        # srun on it, as on every further node of a real allocation.
        job = slurm.sbatch("+sweep=demo", f"sweep.roots=[{demo_root}]", f"out_dir={out}",
                           cwd=tmp_path, log=log, env={"MLDEBUG_RAY_WORKER_ON_HEAD": "1", "MLDEBUG_RAY_TMP": str(ray_tmp)})
        info = slurm.wait(job)
        wall = time.perf_counter() - t0
        text = log.read_text(errors="replace") if log.is_file() else "(no job log)"
        print(f"[slurm] demo job {job}: {info.get('JobState')} in {wall:.1f}s from submit (RunTime {info.get('RunTime')})")
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-5000:] + slurm.logs()

        assert "2 of 2 Ray nodes joined" in text, text[-3000:]
        assert "cluster=slurm" in text
        assert (out / "diagnosis.json").is_file() and (out / "report.md").is_file()
        assert list((out / "evidence" / "runs").glob("*.parquet")), "no evidence/runs parts"
        runs = read_table(out, "runs")
        assert runs.height >= 1 and runs["run_id"].n_unique() == runs.height
        assert set(runs["status"]) <= {"ok", "partial"}, runs.select("run_id", "status", "reason")
        diagnosis = json.loads((out / "diagnosis.json").read_text())
        assert set(diagnosis["runs"]) == set(runs["run_id"])
        # Ray stopped by pid on exit: neither processes nor temp dirs are left.
        deadline = time.time() + 30
        while no_ray_left(job, ray_tmp) and time.time() < deadline:
            time.sleep(1)
        assert not no_ray_left(job, ray_tmp)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_bad_sweep_job_fails_with_the_apps_one_line_error(slurm, tmp_path):
    log = tmp_path / "job.out"
    t0 = time.perf_counter()
    job = slurm.sbatch("+sweep=nosuchsweep", cwd=tmp_path, log=log)
    info = slurm.wait(job, timeout=300)
    text = log.read_text(errors="replace") if log.is_file() else ""
    print(f"[slurm] bad-sweep job {job}: {info.get('JobState')} {info.get('ExitCode')} in {time.perf_counter() - t0:.1f}s")
    assert info["JobState"] == "FAILED", text
    assert info["ExitCode"] == "2:0", info["ExitCode"]  # the app's exit status for a bad invocation
    errors = [ln for ln in text.splitlines() if ln.startswith("mldebug_ray: error:")]
    assert len(errors) == 1 and "nosuchsweep" in errors[0], text
    assert "Traceback" not in text
    assert not (tmp_path / "mldebug_out").exists()  # nothing ran, nothing written
