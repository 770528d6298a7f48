"""The app from a non-editable install finds its config (issue 2)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_runs_the_app_from_elsewhere(tmp_path, jsonl_run):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)], check=True, capture_output=True)
    target = tmp_path / "site"
    wheel = next(wheels.glob("mldebug_ray-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    assert (target / "mldebug_ray" / "conf" / "config.yaml").is_file()
    assert not (target / "mldebug_ray" / "conf").is_symlink()
    assert (target / "mldebug_ray" / "agent" / "prompts" / "ml-debugger-specialist.prompt").is_file()
    jsonl_run(tmp_path / "runs" / "a", [2.0, 1.5, 1.2, 1.0])
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import mldebug_ray; print(mldebug_ray.__file__)"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert where.stdout.startswith(str(target))
    proc = subprocess.run(
        [sys.executable, "-m", "mldebug_ray", "+sweep=paths", f"sweep.roots=[{tmp_path / 'runs'}]", f"out_dir={tmp_path / 'out'}", "cluster.num_cpus=1"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "diagnosis.json").is_file()
