"""Deployment limit: a probed checkpoint is slower or larger than a limit the user set in probes.deploy."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding


@dataclass
class DeploymentLimitConfig:
    """Settings of the `deployment_limit` detector (keys `detectors.deployment_limit.*`).

    The limits themselves are `probes.deploy.max_latency_ms`, `max_params` and
    `max_param_bytes`: the probe records them in each `deployment` row, so the finding
    and the table agree on what was checked.
    """

    max_cited_checkpoints: int = 3
    """Checkpoints cited as evidence per exceeded limit (the newest first)."""

    def __post_init__(self) -> None:
        if self.max_cited_checkpoints < 1:
            raise ConfigError(f"detectors.deployment_limit.max_cited_checkpoints must be >= 1, got {self.max_cited_checkpoints}")


# (name, measured column, limit column, words and unit for the summary)
_LIMITS = (
    ("latency", "latency_ms_median", "max_latency_ms", "median inference latency", " ms"),
    ("params", "n_params", "max_params", "parameter count", ""),
    ("param_bytes", "param_bytes", "max_param_bytes", "parameter bytes", ""),
)


def _fix(name: str) -> str:
    if name == "latency":
        return (
            "Measure again on the deployment hardware first (the probe device may differ); then shrink the forward: a "
            "smaller batch or sequence length at serving time, fewer or narrower layers, distillation into a smaller "
            "model, bf16/fp16 or int8 inference, torch.compile or an exported runtime."
        )
    fewer = (
        "tie input and output embeddings, prune or distil into a smaller model, or shrink the module type holding most "
        "parameters (profiling/count_parameters.py shows which)."
    )
    if name == "params":
        return fewer[0].upper() + fewer[1:]
    return "Store and serve the weights in a smaller dtype (bf16/fp16 halve float32 bytes, int8 quantisation quarters them); or " + fewer


@detector("deployment_limit")
def deployment_limit(ev: RunEvidence, cfg: DeploymentLimitConfig) -> list[Finding]:
    """A probed checkpoint exceeds a deployment limit (kind `deployment_limit`, added by this detector).

    Evidence: `deployment` rows (probes/deploy.py) whose median inference latency,
    parameter count or parameter bytes is above the limit recorded with it. No threshold
    of our own: the limit is the user's. One finding per exceeded limit. Sizes are exact
    counts, so confidence 0.99 and severity high (the model cannot ship as it is).
    Latency is a measurement on the probe's device at the probe's batch size, which may
    not be the serving setup: severity medium, confidence 0.9 when even the fastest
    repeat is over the limit (no repeat met it), 0.7 when only the median is (noise on a
    shared machine can do that), which the diagnosis reports with a request to measure
    on the deployment hardware.
    """
    dep = ev.deployment
    if dep.height == 0:
        return []
    rid = ev.run_id
    findings = []
    for name, measured, limit, label, unit in _LIMITS:
        over = dep.filter(pl.col(limit).is_not_null() & pl.col(measured).is_not_null() & (pl.col(measured) > pl.col(limit)))
        if over.height == 0:
            continue
        over = over.sort("step", descending=True, nulls_last=True)
        newest = over.row(0, named=True)
        steps = over["step"].drop_nulls()
        onset = int(steps.min()) if steps.len() else None
        end = int(steps.max()) if steps.len() else None
        latency = name == "latency"
        show = fmt if latency else (lambda v: f"{int(v):,}")
        evidence = []
        for r in over.head(cfg.max_cited_checkpoints).iter_rows(named=True):
            where = {"run_id": rid, "device": r["device"]}
            if r["step"] is not None:
                where["step"] = int(r["step"])
            evidence.append(
                EvidenceRef("deployment", where, float(r[measured]), f"{measured} {show(r[measured])} > {limit} {show(r[limit])} at step {r['step']}")
            )
        all_over = latency and newest["latency_ms_min"] is not None and newest["latency_ms_min"] > newest[limit]
        at = f"batch {newest['batch_size']} on {newest['device']}" if latency else ""
        findings.append(
            Finding(
                kind="deployment_limit",
                severity="medium" if latency else "high",
                confidence=(0.9 if all_over else 0.7) if latency else 0.99,
                summary=(
                    f"{label} {show(newest[measured])}{unit}{' (' + at + ')' if at else ''} exceeds probes.deploy.{limit} = "
                    f"{show(newest[limit])}{unit} ({fmt(newest[measured] / newest[limit])}x)"
                    + (f" in {over.height} probed checkpoint(s)" if over.height > 1 else f" at step {newest['step']}")
                    + ("; every timed repeat was over" if all_over else "; the fastest repeat was within it" if latency else "")
                ),
                evidence=tuple(evidence),
                detector="deployment_limit",
                run_id=rid,
                finding_id=finding_id("deployment_limit", rid, name),
                onset_step=onset,
                end_step=end,
                fix=_fix(name),
                expected_impact=f"{measured} at or under probes.deploy.{limit}.",
                verify_by=f"Rerun the deployment probe on the new checkpoint: the `deployment` row's {measured} <= {limit}.",
            )
        )
    return findings
