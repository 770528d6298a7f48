"""The demo sweep end to end with agent=anthropic against the loopback API (issue 7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest

from agent_loopback import API_KEY, all_output_text, mock_model


@pytest.mark.slow
def test_demo_with_the_anthropic_agent_diagnoses_every_run_with_findings(demo_root, tmp_path, loopback):
    cache: dict[str, int] = {}
    server = loopback(lambda body: mock_model(body, cache), lifetime_s=580)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "mldebug_ray", "+sweep=demo", f"sweep.roots=[{demo_root}]", f"out_dir={out}", "cluster.num_cpus=2",
         "agent=anthropic", f"agent.base_url={server.url}"],
        env={**os.environ, "ANTHROPIC_API_KEY": API_KEY}, cwd=tmp_path, capture_output=True, text=True, timeout=570,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    diagnosis = json.loads((out / "diagnosis.json").read_text())
    sent = {rid: e for rid, e in diagnosis["runs"].items() if e["agent"]["status"] != "not_sent"}
    assert {"lr_change_divergence", "embedding_heavy", "overfitting"} <= set(sent)
    assert all(e["agent"]["status"] == "ok" for e in sent.values()), {r: e["agent"] for r, e in sent.items()}
    assert diagnosis["sweep"]["agent"]["status"] == "ok"
    assert diagnosis["validation"]["removed_references"] == [] and diagnosis["validation"]["checked_references"] > 0
    calls = pl.read_parquet(str(out / "evidence" / "agent_calls" / "*.parquet"))
    assert set(calls.filter(pl.col("scope") == "run")["run_id"]) == set(sent)
    assert calls["cache_read_input_tokens"].sum() > calls["cache_creation_input_tokens"].sum()  # the cached prefix pays off
    assert API_KEY not in all_output_text(out) + proc.stdout + proc.stderr
