"""Bad invocations: exit status 2 and a one-line error naming the key or path, no traceback."""

import subprocess
import sys

import pytest


def run_app(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mldebug_ray", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, needle",
    [
        ((), "+sweep"),
        (("+sweep=paths", "sweep.roots=[/definitely/not/here]"), "/definitely/not/here"),
        (("+sweep=paths", "sweep.roots=[.]", "cluster.kindd=local"), "kindd"),
        (("+sweep=paths", "sweep.roots=[.]", "cluster.kind=moon"), "cluster.kind"),
        (("+sweep=nosuchsweep",), "nosuchsweep"),
        (("+sweep=paths", "sweep.roots=[.]", "probes.max_checkpoints_per_run=-1"), "probes.max_checkpoints_per_run"),
    ],
)
def test_bad_invocation_exits_2_with_one_line(tmp_path, args, needle):
    proc = run_app(*args, f"out_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_root_without_runs_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_app("+sweep=paths", f"sweep.roots=[{tmp_path / 'empty'}]", f"out_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no run directories" in proc.stderr
