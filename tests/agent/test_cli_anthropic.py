"""`agent=anthropic` from the command line: the key check, and a whole run against the loopback API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl

from agent_loopback import API_KEY, all_output_text, mock_model


def write_run(run_dir, losses):
    run_dir.mkdir(parents=True)
    with open(run_dir / "metrics.jsonl", "w") as fh:
        for step, loss in enumerate(losses, start=1):
            fh.write(json.dumps({"step": step, "train_loss": loss}) + "\n")


def app(*args, env, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "mldebug_ray", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_agent_anthropic_without_a_key_exits_2_with_one_line(tmp_path):
    write_run(tmp_path / "runs" / "a", [0.5, 0.4])
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    proc = app("+sweep=paths", f"sweep.roots=[{tmp_path / 'runs'}]", f"out_dir={tmp_path / 'out'}", "agent=anthropic", env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "ANTHROPIC_API_KEY" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_core_does_not_import_the_agent_or_the_sdk():
    code = "import sys, mldebug_ray.pipeline, mldebug_ray.app; print(sorted(m for m in ('anthropic', 'mldebug_ray.agent') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_end_to_end_cli_run_writes_the_diagnosis_through_the_agent(tmp_path, loopback):
    diverging = [2.0 - i * 0.015 for i in range(60)] + [1.1 + i * 0.3 for i in range(40)]
    write_run(tmp_path / "runs" / "diverged", diverging)
    write_run(tmp_path / "runs" / "healthy", [2.0 - i * 0.01 for i in range(100)])
    cache: dict[str, int] = {}
    server = loopback(lambda body: mock_model(body, cache), lifetime_s=280)
    out = tmp_path / "out"
    env = {**os.environ, "ANTHROPIC_API_KEY": API_KEY}
    proc = app(
        "+sweep=paths", f"sweep.roots=[{tmp_path / 'runs'}]", f"out_dir={out}", "cluster.num_cpus=1",
        "agent=anthropic", f"agent.base_url={server.url}", "agent.max_concurrency=2", env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    diagnosis = json.loads((out / "diagnosis.json").read_text())
    assert diagnosis["agent"] == "anthropic"
    entry = diagnosis["runs"]["diverged"]
    assert entry["root_causes"] and entry["agent"]["status"] == "ok", entry
    assert diagnosis["runs"]["healthy"]["agent"]["status"] == "not_sent"
    assert diagnosis["validation"]["removed_references"] == []
    calls = pl.read_parquet(str(out / "evidence" / "agent_calls" / "*.parquet"))
    assert set(calls["scope"]) == {"run", "sweep"} and calls["output_tokens"].sum() > 0
    assert len(server.bodies()) == calls.height
    # the key went to the API and nowhere else: not in any output file, the log, stdout or stderr
    assert any(API_KEY in v for r in server.requests for v in r["headers"].values())
    assert API_KEY not in all_output_text(out) + proc.stdout + proc.stderr
    assert (out / "mldebug.log").is_file() and "agent run diverged: ok" in (out / "mldebug.log").read_text()
