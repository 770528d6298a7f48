"""Run incomplete: the run stopped early, or its artifacts are missing or unreadable."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt, metric_role
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding


@dataclass
class RunIncompleteConfig:
    """Settings of the `run_incomplete` detector (keys `detectors.run_incomplete.*`)."""

    min_completed_frac: float = 0.95
    """Metrics ending before this share of the planned length count as stopped early."""
    step_keys: list[str] = field(
        default_factory=lambda: ["max_steps", "train_iters", "max_iters", "num_iterations", "total_steps", "num_train_steps", "training_steps", "total_training_steps"]
    )
    """Param names (last dotted part) that state the planned number of optimizer steps."""
    epoch_keys: list[str] = field(default_factory=lambda: ["max_epochs", "num_train_epochs", "epochs", "num_epochs", "n_epochs"])
    """Param names (last dotted part) that state the planned number of epochs."""
    steps_per_epoch_keys: list[str] = field(default_factory=lambda: ["steps_per_epoch", "iters_per_epoch", "num_steps_per_epoch"])
    """Param names (last dotted part) for steps per epoch (epochs x this = planned steps)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.min_completed_frac <= 1.0:
            raise ConfigError(f"detectors.run_incomplete.min_completed_frac must be in (0, 1], got {self.min_completed_frac}")


def _param(params: pl.DataFrame, names: list[str]) -> tuple[str, float] | None:
    """(key, value) of the first positive numeric param whose last dotted part is in `names`."""
    if params.height == 0:
        return None
    order = {n.lower(): i for i, n in enumerate(names)}
    best = None
    for row in params.filter(pl.col("value_num").is_not_null() & (pl.col("value_num") > 0)).iter_rows(named=True):
        rank = order.get(row["key"].lower().rsplit(".", 1)[-1])
        if rank is not None and (best is None or (rank, row["key"]) < best[0]):
            best = ((rank, row["key"]), row["key"], float(row["value_num"]))
    return None if best is None else (best[1], best[2])


def _finding(rid: str, severity: str, confidence: float, summary: str, evidence: list[EvidenceRef], tag: str, **kw) -> Finding:
    return Finding(
        kind="run_incomplete",
        severity=severity,
        confidence=confidence,
        summary=summary,
        evidence=tuple(evidence),
        detector="run_incomplete",
        run_id=rid,
        finding_id=finding_id("run_incomplete", rid, tag),
        **kw,
    )


@detector("run_incomplete")
def run_incomplete(ev: RunEvidence, cfg: RunIncompleteConfig) -> list[Finding]:
    """The run stopped early or artifacts are missing (SPEC §5 `run_incomplete`).

    Evidence: the `runs` row (status partial/unreadable and its reason), `checkpoints`
    rows with status 'unreadable', a run with no metrics, and metrics that stop before
    `min_completed_frac` of a planned length stated in params (max_steps, train_iters,
    max_iters, num_iterations, epochs x steps_per_epoch, or the epoch counter against
    num_train_epochs). A run without a stated plan is never called short: AlgoPerf trials
    stop when they reach the workload target, so length differences between runs are
    not evidence (shared/corpus/README.md). Caps such as AlgoPerf's max_global_steps
    are not plans and are not in the default key lists.

    Threshold: 95% of the plan; schedulers log the last step or two inconsistently
    (off-by-one, final eval only), a real crash stops far earlier.
    """
    rid = ev.run_id
    out: list[Finding] = []
    runs = ev.runs.filter(pl.col("run_id") == rid) if ev.runs.height else ev.runs
    status = runs["status"][0] if runs.height else None
    reason = (runs["reason"][0] if runs.height else None) or ""
    if status in ("partial", "unreadable"):
        severity = "high" if status == "unreadable" else "medium"
        out.append(
            _finding(
                rid, severity, 0.9,
                f"run is {status}: {reason or 'no reason given'}",
                [EvidenceRef("runs", {"run_id": rid}, None, f"status {status}: {reason}")],
                f"status:{status}",
                fix="Fix or re-copy the files named in the reason (a truncated log, an LFS pointer instead of the file, a missing metrics source) and re-run the analysis; if the job died, resume it from its last checkpoint.",
                expected_impact="The run is read completely and every detector sees its full history.",
                verify_by="Re-run the analysis: the `runs` row must have status ok.",
            )
        )

    ck = ev.checkpoints
    if ck.height and "status" in ck.columns:
        bad = ck.filter(pl.col("status") == "unreadable")
        if bad.height:
            evidence = [
                EvidenceRef("checkpoints", {"run_id": rid, "path": r["path"]}, None, f"{r['path']}: {r['reason'] or 'unreadable'}")
                for r in bad.head(5).iter_rows(named=True)
            ]
            out.append(
                _finding(
                    rid, "medium", 0.85,
                    f"{bad.height} of {ck.height} checkpoint(s) unreadable, e.g. {bad['path'][0]}: {bad['reason'][0] or 'no reason'}",
                    evidence, "checkpoints",
                    onset_step=bad["step"].min(),
                    fix="Re-save the checkpoints as safetensors or a weights-only state dict (no pickled objects), or replace truncated files from the job's storage.",
                    expected_impact="Checkpoint statistics (layers table) become available for this run.",
                    verify_by="Load each file with torch.load(path, weights_only=True) or safetensors.safe_open without error.",
                )
            )

    m = ev.metrics
    if m.height == 0 or m.filter(pl.col("value").is_not_null()).height == 0:
        if status != "unreadable":
            evidence = [EvidenceRef("runs", {"run_id": rid}, None, "no metric rows")] if runs.height else [
                EvidenceRef("metrics", {"run_id": rid}, None, "no metric rows for this run")
            ]
            out.append(
                _finding(
                    rid, "high", 0.8, "run has no metrics: no loss or metric was logged or could be read",
                    evidence, "no-metrics",
                    fix="Point the sweep at the folder holding the run's metric logs, or enable logging (e.g. log every N steps) in the training script.",
                    expected_impact="The run's curves become visible to every detector.",
                    verify_by="Re-run the analysis and check the `metrics` table has rows for this run.",
                )
            )
        return out

    last_step = int(m["step"].max())
    if runs.height and runs["last_step"][0] is not None:
        last_step = max(last_step, int(runs["last_step"][0]))
    planned = _param(ev.params, cfg.step_keys)
    plan_text, plan_steps, plan_evidence = None, None, []
    if planned is not None:
        plan_steps = planned[1]
        plan_text = f"{planned[0]} = {int(plan_steps)}"
        plan_evidence = [EvidenceRef("params", {"run_id": rid, "key": planned[0]}, planned[1], plan_text)]
    else:
        epochs = _param(ev.params, cfg.epoch_keys)
        per_epoch = _param(ev.params, cfg.steps_per_epoch_keys)
        if epochs is not None and per_epoch is not None:
            plan_steps = epochs[1] * per_epoch[1]
            plan_text = f"{epochs[0]} x {per_epoch[0]} = {fmt(epochs[1])} x {fmt(per_epoch[1])} = {int(plan_steps)} steps"
            plan_evidence = [
                EvidenceRef("params", {"run_id": rid, "key": epochs[0]}, epochs[1], f"{epochs[0]} = {fmt(epochs[1])}"),
                EvidenceRef("params", {"run_id": rid, "key": per_epoch[0]}, per_epoch[1], f"{per_epoch[0]} = {fmt(per_epoch[1])}"),
            ]
        elif epochs is not None:
            epoch_keys = [k for k in m["key"].unique().to_list() if metric_role(k) == "epoch"]
            if epoch_keys:
                rows = m.filter(pl.col("key").is_in(epoch_keys) & pl.col("value").is_finite()).sort("value")
                if rows.height:
                    last = rows.row(rows.height - 1, named=True)
                    # Counters may be 0-based (Lightning) or reach the total (HF): +1 gives both the benefit of the doubt.
                    if last["value"] + 1 < cfg.min_completed_frac * epochs[1]:
                        out.append(
                            _finding(
                                rid, "medium", 0.75,
                                f"metrics stop at epoch {fmt(last['value'])} of the planned {epochs[0]} = {fmt(epochs[1])}",
                                [
                                    EvidenceRef("metrics", {"run_id": rid, "step": int(last["step"]), "key": last["key"]}, last["value"], f"last epoch logged {fmt(last['value'])}"),
                                    EvidenceRef("params", {"run_id": rid, "key": epochs[0]}, epochs[1], f"{epochs[0]} = {fmt(epochs[1])}"),
                                ],
                                "epochs",
                                onset_step=int(last["step"]),
                                fix="Find why the job stopped (its stderr, an OOM or time limit) and resume it from the last checkpoint.",
                                expected_impact=f"The run trains the planned {fmt(epochs[1])} epochs and its final metrics are comparable with its peers.",
                                verify_by=f"The epoch counter reaches {fmt(epochs[1])} (or {fmt(epochs[1] - 1)} 0-based) in the resumed run's metrics.",
                            )
                        )
    if plan_steps is not None and last_step < cfg.min_completed_frac * plan_steps:
        last_row = m.filter(pl.col("step") == last_step).head(1)
        evidence = list(plan_evidence)
        if last_row.height:
            evidence.insert(0, EvidenceRef("metrics", {"run_id": rid, "step": last_step, "key": last_row["key"][0]}, last_row["value"][0], f"last logged step {last_step}"))
        out.append(
            _finding(
                rid, "medium", 0.8,
                f"metrics stop at step {last_step}, {fmt(100 * last_step / plan_steps)}% of the planned {plan_text}",
                evidence, "steps",
                onset_step=last_step,
                fix="Find why the job stopped (its stderr, an OOM, a NaN guard, a time limit or preemption) and resume it from the last checkpoint.",
                expected_impact=f"The run reaches step {int(plan_steps)} and its final metrics are comparable with its peers.",
                verify_by=f"The resumed run's metrics reach step {int(cfg.min_completed_frac * plan_steps)} or more.",
            )
        )
    return out
