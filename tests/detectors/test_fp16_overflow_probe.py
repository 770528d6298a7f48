"""fp16_overflow on the precision probe: overflow at 2^16 that a smaller loss scale cures is GradScaler calibrating."""

from __future__ import annotations

import math

import polars as pl

from mldebug_ray import schema
from mldebug_ray.detectors.base import RunEvidence
from mldebug_ray.detectors.fp16_overflow import Fp16OverflowConfig, fp16_overflow

RID = "sweep/run-0"


def _ev(recommended: float | None) -> RunEvidence:
    rows = [
        {"run_id": RID, "step": 200, "dtype": "float16", "layer": "head.weight", "rel_err_vs_fp32": math.inf, "overflow_frac": 0.02,
         "underflow_frac": 0.0, "loss_scale": 65536.0, "recommended_loss_scale": None},
        {"run_id": RID, "step": 200, "dtype": "float16", "layer": None, "rel_err_vs_fp32": 1e-4, "overflow_frac": 0.001,
         "underflow_frac": 0.0, "loss_scale": 65536.0, "recommended_loss_scale": recommended},
        {"run_id": RID, "step": 200, "dtype": "bfloat16", "layer": None, "rel_err_vs_fp32": 1e-3, "overflow_frac": 0.0,
         "underflow_frac": 0.0, "loss_scale": 1.0, "recommended_loss_scale": None},
    ]
    return RunEvidence(run_id=RID, precision=schema.validate("precision", pl.DataFrame(rows, schema=schema.schema_of("precision"))))


def test_overflow_a_smaller_loss_scale_cures_is_silent():
    assert fp16_overflow(_ev(32768.0), Fp16OverflowConfig()) == []


def test_overflow_no_loss_scale_cures_fires(well_formed):
    for recommended in (math.nan, 0.25, None):
        ev = _ev(recommended)
        (f,) = fp16_overflow(ev, Fp16OverflowConfig())
        assert f.kind == "fp16_overflow" and f.evidence[0].where["layer"] == "head.weight"
        well_formed(ev, [f])
