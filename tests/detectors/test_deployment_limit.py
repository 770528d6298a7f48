"""deployment_limit: fires per exceeded probes.deploy limit with the rows that show it; silent within limits or without any."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from mldebug_ray import schema
from mldebug_ray.detectors import DETECTORS, DetectorsConfig, run_detectors
from mldebug_ray.detectors.deployment_limit import DeploymentLimitConfig, deployment_limit
from mldebug_ray.errors import ConfigError
from mldebug_ray.detectors.base import RunEvidence
from mldebug_ray.findings import KINDS

RUN_ID = "sweep/run-0"


def _dep(step, *, latency=(2.0, 3.0, 4.0), n_params=1000, param_bytes=4000, max_latency_ms=None, max_params=None, max_param_bytes=None):
    lo, med, p90 = latency
    return {"run_id": RUN_ID, "step": step, "device": "cpu", "batch_size": 32, "n_repeats": 20, "latency_ms_min": lo,
            "latency_ms_median": med, "latency_ms_p90": p90, "n_params": n_params, "param_bytes": param_bytes,
            "max_latency_ms": max_latency_ms, "max_params": max_params, "max_param_bytes": max_param_bytes}


def _ev(*rows):
    ev = RunEvidence(RUN_ID)
    ev.deployment = schema.validate("deployment", pl.DataFrame(list(rows), schema={k: schema.TABLES["deployment"][k] for k in rows[0]}))
    return ev


def test_each_exceeded_limit_is_one_finding_citing_its_rows(well_formed):
    ev = _ev(_dep(100, max_params=999, max_param_bytes=4000, max_latency_ms=10.0),
             _dep(200, max_params=999, max_param_bytes=4000, max_latency_ms=10.0, latency=(11.0, 12.0, 15.0)))
    found = deployment_limit(ev, DeploymentLimitConfig())
    well_formed(ev, found)
    by_metric = {f.evidence[0].text.split()[0]: f for f in found}
    assert set(by_metric) == {"n_params", "latency_ms_median"}  # param_bytes equals its limit: not over
    params = by_metric["n_params"]
    assert params.kind == "deployment_limit" and params.severity == "high" and params.confidence == 0.99
    assert (params.onset_step, params.end_step) == (100, 200)
    assert [e.where["step"] for e in params.evidence] == [200, 100] and params.evidence[0].value == 1000.0
    assert "probes.deploy.max_params = 999" in params.summary and params.evidence[0].text == "n_params 1,000 > max_params 999 at step 200"
    assert "smaller dtype" not in params.fix  # a dtype does not change a parameter count
    latency = by_metric["latency_ms_median"]
    assert latency.severity == "medium" and latency.confidence == 0.9 and latency.onset_step == 200
    assert "every timed repeat was over" in latency.summary and "batch 32 on cpu" in latency.summary
    assert len({f.finding_id for f in found}) == 2


def test_a_median_over_the_limit_with_a_fast_repeat_is_less_certain():
    (f,) = deployment_limit(_ev(_dep(5, latency=(2.5, 3.5, 9.0), max_latency_ms=3.0)), DeploymentLimitConfig())
    assert f.confidence == 0.7 and "fastest repeat was within it" in f.summary


def test_silent_within_limits_without_limits_and_without_rows():
    assert deployment_limit(_ev(_dep(1, max_params=1000, max_param_bytes=10**9, max_latency_ms=3.0)), DeploymentLimitConfig()) == []
    assert deployment_limit(_ev(_dep(1, n_params=10**12, latency=(1e6, 1e6, 1e6))), DeploymentLimitConfig()) == []
    assert deployment_limit(RunEvidence(RUN_ID), DeploymentLimitConfig()) == []


def test_cited_checkpoints_are_capped_and_the_config_is_checked():
    ev = _ev(*[_dep(s, max_params=1) for s in range(10)])
    (f,) = deployment_limit(ev, DeploymentLimitConfig(max_cited_checkpoints=2))
    assert [e.where["step"] for e in f.evidence] == [9, 8] and "in 10 probed checkpoint(s)" in f.summary
    with pytest.raises(ConfigError, match="detectors.deployment_limit.max_cited_checkpoints"):
        DeploymentLimitConfig(max_cited_checkpoints=0)


def test_registered_enabled_and_a_known_kind_with_a_guide():
    assert "deployment_limit" in DETECTORS and "deployment_limit" in DetectorsConfig().enabled and "deployment_limit" in KINDS
    assert (Path(__file__).resolve().parents[2] / "docs" / "findings" / "deployment_limit.md").is_file()
    findings, problems = run_detectors(_ev(_dep(3, max_param_bytes=100)), DetectorsConfig(enabled=["deployment_limit"]))
    assert problems == [] and [f.kind for f in findings] == ["deployment_limit"]

