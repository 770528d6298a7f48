"""The offline `rules` agent: combines co-occurring findings into ranked root causes.

It reads only the evidence tables and never the network. Each rule names the
findings it joins and why; every evidence reference it emits is copied from a
finding or selects a row it read itself.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from mldebug_ray import paths
from mldebug_ray.config import AgentConfig
from mldebug_ray.detectors.series import metric_role
from mldebug_ray.evidence.io import scan_table
from mldebug_ray.findings import SEVERITY_RANK, EvidenceRef, Finding

# A grad-norm spike "coincides" with a divergence when it lies within this share of the
# run's length (at least TRANSITION_MIN_STEPS) before or after the divergence onset.
TRANSITION_WINDOW_FRAC = 0.05
TRANSITION_MIN_STEPS = 5
# A logged learning rate that grows by this factor between two consecutive points is an
# LR change, not a warm-up tick (linear warm-up over >= 100 steps moves < 2x per step
# after its first few steps).
LR_JUMP_FACTOR = 2.0
MAX_EVIDENCE_PER_CAUSE = 8

REQUESTS_BY_KIND = {
    "divergence": "Log the learning rate and the gradient norm every step so the cause of the divergence can be pinned down.",
    "loss_spike": "Log the data batch ids around the spike steps to confirm a data-induced spike.",
    "grad_norm_spike": "Log per-layer gradient norms (or run the gradient probe with probes.model_fn) to find which layer spikes.",
    "plateau": "Log the learning rate and per-layer gradient norms; a gradient probe (probes.model_fn) shows whether gradients reach early layers.",
    "overfitting": "Log train and validation metrics at the same steps and the training-set size; a learning curve (the same recipe on 2x and 4x the examples) tells too little data from too many epochs.",
    "run_incomplete": "Provide the job's stderr/log file to see why the run stopped.",
    "mode_collapse": "Log the training targets' label distribution per epoch and the validation predictions' top-1 share at every eval.",
    "slow_convergence": "Provide more runs of the same config with other seeds (or the peers' configs) so the lag can be told from seed noise.",
    "oscillation": "Log the learning rate and the validation loss more often around the swings.",
    "exploding_gradients": "Log per-layer gradient norms every step (or run the gradient probe) around the onset.",
    "vanishing_gradients": "Run the gradient probe (probes.model_fn) on a checkpoint to confirm per-layer gradients.",
    "lr_schedule_anomaly": "Provide the scheduler config (type, warm-up, total steps) and the LR logged every step.",
    "loss_scale_collapse": "Log the loss scale and the overflow/skip lines every step, and which tensor first overflows.",
    "fp16_overflow": "Run the precision probe (or log activation maxima) to find which layer overflows fp16.",
}
DEFAULT_REQUEST = "Provide per-step metrics and a checkpoint near the onset so a probe can confirm the cause."


@dataclass
class RootCause:
    issue: str
    kind: str
    severity: str
    confidence: float
    evidence: list[EvidenceRef]
    fix: str
    expected_impact: str
    verify_by: str
    onset_step: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "issue": self.issue,
            "kind": self.kind,
            "severity": self.severity,
            "evidence": [e.to_json() for e in self.evidence[:MAX_EVIDENCE_PER_CAUSE]],
            "fix": self.fix,
            "expected_impact": self.expected_impact,
            "verify_by": self.verify_by,
            "confidence": round(self.confidence, 3),
            "onset_step": self.onset_step,
        }


def _from_finding(f: Finding, issue: str | None = None) -> RootCause:
    return RootCause(
        issue=issue or f.summary,
        kind=f.kind,
        severity=f.severity,
        confidence=f.confidence,
        evidence=list(f.evidence),
        fix=f.fix,
        expected_impact=f.expected_impact,
        verify_by=f.verify_by,
        onset_step=f.onset_step,
    )


def _lr_jump(metrics: pl.DataFrame, run_id: str, lo: int, hi: int) -> EvidenceRef | None:
    """The learning-rate row where the LR jumped by >= LR_JUMP_FACTOR within [lo, hi], if logged."""
    if metrics.height == 0:
        return None
    run = metrics.filter(pl.col("run_id") == run_id)
    lr_keys = [k for k in run["key"].unique().to_list() if metric_role(k) == "lr"]
    for key in sorted(lr_keys):
        series = run.filter(pl.col("key") == key).sort("step").select("step", "value")
        steps = series["step"].to_list()
        values = series["value"].to_list()
        for i in range(1, len(steps)):
            if not lo <= steps[i] <= hi:
                continue
            prev, cur = values[i - 1], values[i]
            if prev and prev > 0 and cur is not None and math.isfinite(cur) and cur / prev >= LR_JUMP_FACTOR:
                return EvidenceRef(
                    "metrics",
                    {"run_id": run_id, "step": steps[i], "key": key},
                    cur,
                    f"{key} jumped {cur / prev:.0f}x from {prev:.3g} (step {steps[i - 1]}) to {cur:.3g}",
                )
    return None


def _lr_param(params: pl.DataFrame, run_id: str) -> EvidenceRef | None:
    run = params.filter(pl.col("run_id") == run_id)
    for row in run.iter_rows(named=True):
        leaf = row["key"].rsplit(".", 1)[-1].lower()
        if leaf in ("lr", "learning_rate") and row["value_num"] is not None:
            return EvidenceRef("params", {"run_id": run_id, "key": row["key"]}, row["value_num"], f"configured {row['key']} = {row['value']}")
    return None


def _known_error_signature(f: Finding) -> str | None:
    from mldebug_ray.detectors.known_error import signature_of

    return signature_of(f)


def _mode_collapse_cause(mc: Finding, others: list[Finding]) -> tuple[RootCause, set[str]]:
    """Mode collapse joined with the overfitting it causes and the spikes at its start.

    When every output becomes one class/token (e.g. a data bug that fills the targets with
    one id), the validation loss rises while the training loss falls: the overfitting
    detector sees a train/val gap, but the root cause is the collapse. Loss and grad-norm
    spikes between the last diverse evaluation and the collapse are its first symptoms.
    """
    used = {mc.finding_id}
    onset = mc.onset_step if mc.onset_step is not None else 0
    steps = [int(e.where["step"]) for e in mc.evidence if isinstance(e.where.get("step"), int)]
    window_start = min(steps) if steps else onset
    # A model that never produced diverse outputs (low severity) did not cause a later val rise.
    overfit = [f for f in others if f.kind == "overfitting"] if mc.severity in ("critical", "high", "medium") else []
    spikes = [
        f for f in others
        if f.kind in ("loss_spike", "grad_norm_spike") and f.onset_step is not None and window_start <= f.onset_step <= onset
    ]
    joined = overfit + spikes
    used.update(f.finding_id for f in joined)
    cause = _from_finding(mc)
    for f in joined:
        cause.evidence.extend(e for e in f.evidence[:2] if e not in cause.evidence)
    if overfit:
        worst = min([mc] + overfit, key=lambda f: SEVERITY_RANK[f.severity])
        cause.severity = worst.severity
        cause.confidence = max(mc.confidence, 0.9) if mc.severity in ("critical", "high") else mc.confidence
        cause.issue = (
            f"{mc.summary}. The validation-loss rise reported as overfitting follows from it: with one output for "
            "every input the held-out loss grows while the training loss falls"
        )
    if spikes:
        cause.issue += f"; it starts with the loss/grad-norm jump at step {min(f.onset_step for f in spikes)}"
    cause.onset_step = min([onset] + [f.onset_step for f in spikes])
    return cause, used


def _loss_scale_cause(ls: Finding, others: list[Finding], n_steps: int) -> tuple[RootCause, set[str]]:
    """Loss-scale collapse joined with its overflow bursts, the scaler's give-up message and
    the NaN/Inf that follows: one root cause, values overflowing fp16 at every scale."""
    onset = ls.onset_step if ls.onset_step is not None else 0
    end = ls.end_step if ls.end_step is not None else onset
    window = max(TRANSITION_MIN_STEPS, int(TRANSITION_WINDOW_FRAC * max(n_steps, 1)))
    used = {ls.finding_id}
    joined = []
    for f in others:
        near = f.onset_step is None or onset - window <= f.onset_step <= end + window
        if f.kind == "fp16_overflow" and near:
            joined.append(f)
        elif f.kind == "known_error" and _known_error_signature(f) == "loss_scale_minimum":
            joined.append(f)
        elif f.kind == "nan_inf" and f.onset_step is not None and onset - window <= f.onset_step:
            joined.append(f)
    used.update(f.finding_id for f in joined)
    cause = _from_finding(ls)
    for f in joined:
        cause.evidence.extend(e for e in f.evidence[:2] if e not in cause.evidence)
    kinds = {f.kind for f in joined}
    severities = [ls.severity] + [f.severity for f in joined]
    cause.severity = min(severities, key=SEVERITY_RANK.__getitem__)
    cause.confidence = min(0.97, max(ls.confidence, 0.9 + 0.02 * len(kinds)))
    issue = f"Mixed-precision values overflow at every loss scale: {ls.summary}"
    if "fp16_overflow" in kinds:
        issue += "; a burst of overflow-skipped steps"
    if any(f.kind == "known_error" for f in joined) and "gave up" not in ls.summary:
        issue += "; the scaler gave up at its minimum scale"
    nan = [f for f in joined if f.kind == "nan_inf"]
    if nan:
        issue += f"; the loss/gradients are NaN/Inf from step {min(f.onset_step for f in nan)}"
    cause.issue = issue
    cause.onset_step = min([onset] + [f.onset_step for f in joined if f.onset_step is not None and f.kind != "nan_inf"])
    return cause, used


def _gradient_cause(g: Finding, others: list[Finding]) -> tuple[RootCause, set[str]]:
    """Exploding gradients joined with the grad-norm spikes, NaN/Inf values and NaN/Inf
    checkpoint weights after their onset;
    vanishing gradients with the plateau (and the never-diverse outputs) they cause."""
    onset = g.onset_step if g.onset_step is not None else 0
    if g.kind == "exploding_gradients":
        joined = [
            f for f in others
            if (f.kind in ("nan_inf", "grad_norm_spike", "nonfinite_weights") or (f.kind == "mode_collapse" and f.severity == "low"))
            and f.onset_step is not None and f.onset_step >= onset
        ]
        tail = "; the global grad norm spiked and the values turned NaN/Inf" if any(f.kind == "nan_inf" for f in joined) else ""
    else:
        joined = [f for f in others if f.kind == "plateau" or (f.kind == "mode_collapse" and f.severity == "low")]
        tail = "; the loss cannot leave its starting level (plateau)" if any(f.kind == "plateau" for f in joined) else ""
    cause = _from_finding(g)
    for f in joined:
        cause.evidence.extend(e for e in f.evidence[:2] if e not in cause.evidence)
    if joined:
        cause.severity = min([g.severity] + [f.severity for f in joined], key=SEVERITY_RANK.__getitem__)
        cause.confidence = max(g.confidence, 0.9)
        cause.issue = g.summary + tail
    return cause, {g.finding_id} | {f.finding_id for f in joined}


def _divergence_cause(
    div: Finding, others: list[Finding], n_steps: int, metrics: pl.DataFrame, params: pl.DataFrame
) -> tuple[RootCause, set[str]]:
    """Divergence joined with a coinciding grad-norm spike and LR change, when present."""
    onset = div.onset_step if div.onset_step is not None else 0
    window = max(TRANSITION_MIN_STEPS, int(TRANSITION_WINDOW_FRAC * max(n_steps, 1)))
    used = {div.finding_id}
    spikes = [
        f for f in others
        if f.kind == "grad_norm_spike" and f.onset_step is not None and abs(f.onset_step - onset) <= window
    ]
    grad_refs = [e for e in div.evidence if e.table == "metrics" and metric_role(str(e.where.get("key", ""))) == "grad_norm"]
    for spike in spikes:
        used.add(spike.finding_id)
        grad_refs.extend(spike.evidence)
    nan_after = [f for f in others if f.kind == "nan_inf" and (f.onset_step or 0) >= onset]
    used.update(f.finding_id for f in nan_after)
    # An LR jump found by lr_schedule_anomaly at the transition is the same story.
    lr_findings = [
        f for f in others
        if f.kind == "lr_schedule_anomaly" and f.onset_step is not None and abs(f.onset_step - onset) <= window
    ]
    used.update(f.finding_id for f in lr_findings)
    lr_ref = _lr_jump(metrics, div.run_id, onset - window, onset + window)
    if lr_ref is None and lr_findings:
        lr_ref = next((e for e in lr_findings[0].evidence if e.table == "metrics" and e.where.get("step") == lr_findings[0].onset_step), None)
    evidence = list(div.evidence)
    evidence += [e for e in grad_refs if e not in evidence]
    if lr_ref is not None:
        evidence.insert(0, lr_ref)
    for f in nan_after:
        evidence.extend(f.evidence[:1])
    if grad_refs:
        where = f"the learning-rate change at step {lr_ref.where['step']}" if lr_ref else f"step {onset}"
        param = _lr_param(params, div.run_id)
        if param is not None and lr_ref is None:
            evidence.append(param)
        grad_text = grad_refs[0].text or "the gradient norm spiked"
        cause = RootCause(
            issue=(
                f"Learning rate too high after {where}: the gradient norm spiked ({grad_text}) "
                f"and the loss diverged from step {onset} without recovering"
            ),
            kind="divergence",
            severity="critical",
            confidence=0.92 if lr_ref is not None else 0.82,
            evidence=evidence,
            fix=(
                "Lower the learning rate at the transition (keep the pre-change value or warm up to the new one "
                "over at least an epoch) and clip gradients (e.g. max_norm=1.0); resume from the last checkpoint "
                "before the onset."
            ),
            expected_impact=(
                f"Loss keeps decreasing past step {onset} instead of diverging; grad norm stays within a few times "
                "its pre-transition level."
            ),
            verify_by=(
                f"Rerun from the checkpoint before step {onset} with the lower learning rate and compare the grad-norm "
                "and loss curves over the next epoch against this run."
            ),
            onset_step=onset,
        )
    else:
        cause = _from_finding(div)
        cause.evidence = evidence
        cause.confidence = min(cause.confidence, 0.7)  # no gradient evidence: the cause is a guess
    return cause, used


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1].lower()


def _param_rows(params: pl.DataFrame, run_id: str, names: list[str]) -> list[dict]:
    """The run's numeric params whose last dotted part is one of `names`, in `names` order."""
    if params.height == 0:
        return []
    wanted = {n.lower(): i for i, n in enumerate(names)}
    rows = [r for r in params.filter(pl.col("run_id") == run_id).iter_rows(named=True) if _leaf(r["key"]) in wanted and r["value_num"] is not None]
    return sorted(rows, key=lambda r: wanted[_leaf(r["key"])])


def _param_ref(row: dict, text: str) -> EvidenceRef:
    return EvidenceRef("params", {"run_id": row["run_id"], "key": row["key"]}, row["value_num"], text)


def _lr_zero_cause(plateau: Finding, others: list[Finding], metrics: pl.DataFrame, params: pl.DataFrame, cfg: AgentConfig) -> tuple[RootCause, set[str]] | None:
    """A loss stuck from the start (at chance) while the learning rate is about zero: the LR is the cause.

    Zero means |lr| <= agent.lr_zero_max at every logged step, or a configured lr param at or
    below it when no LR is logged. Confidence: 0.95 when the logged LR shows it at every step
    (the plateau then follows necessarily: no step moves the weights); 0.75 when only the
    configured value says so (a scheduler or a per-group LR may override it), with a request
    to log the LR.
    """
    rid = plateau.run_id
    run = metrics.filter(pl.col("run_id") == rid) if metrics.height else metrics
    lr_keys = sorted(k for k in (run["key"].unique().to_list() if run.height else []) if metric_role(k) == "lr")
    evidence = list(plateau.evidence)
    logged = None
    for key in lr_keys:
        series = run.filter((pl.col("key") == key) & pl.col("value").is_finite()).sort("step")
        if series.height == 0:
            continue
        biggest = series.sort(pl.col("value").abs(), descending=True).row(0, named=True)
        if abs(biggest["value"]) > cfg.lr_zero_max:
            return None  # the LR moved: the plateau has another cause
        logged = EvidenceRef(
            "metrics", {"run_id": rid, "step": int(biggest["step"]), "key": key}, biggest["value"],
            f"{key} is at most {abs(biggest['value']):.3g} over all {series.height} logged steps (largest at step {biggest['step']})",
        )
        break
    configured = _param_rows(params, rid, ["lr", "learning_rate", "base_lr", "max_lr", "peak_lr"])
    if logged is None and not (configured and abs(configured[0]["value_num"]) <= cfg.lr_zero_max):
        return None
    if logged is not None:
        evidence.insert(0, logged)
    if configured:
        evidence.append(_param_ref(configured[0], f"configured {configured[0]['key']} = {configured[0]['value']}"))
    joined = [f for f in others if f.kind == "lr_schedule_anomaly" or (f.kind == "mode_collapse" and f.severity == "low")]
    for f in joined:
        evidence.extend(e for e in f.evidence[:2] if e not in evidence)
    cause = RootCause(
        issue=(
            f"The learning rate is zero: {logged.text if logged is not None else evidence[-1].text}, so no step moves the "
            f"weights and the loss stays where it started ({plateau.summary})"
        ),
        kind="lr_schedule_anomaly",
        severity="critical",
        confidence=0.95 if logged is not None else 0.75,
        evidence=evidence,
        fix=(
            "Set a nonzero learning rate (the intended peak, e.g. 1e-3 to 3e-4 for Adam) and check what zeroes it: an "
            "lr=0 override, a warm-up or LambdaLR factor that stays 0, a scheduler stepped past its end, or a param "
            "group built with lr=0."
        ),
        expected_impact="The loss leaves its starting (chance) level within the first few hundred steps and keeps falling.",
        verify_by=(
            "Rerun a few hundred steps with the corrected learning rate: the logged LR is above "
            f"{cfg.lr_zero_max:g} and the smoothed loss ends more than 1% below its start (the plateau detector's line)."
        ),
        onset_step=plateau.onset_step,
    )
    return cause, {plateau.finding_id} | {f.finding_id for f in joined}


def _small_data_cause(overfit: Finding, params: pl.DataFrame, cfg: AgentConfig) -> RootCause | None:
    """Overfitting while the params say the training set is small: too little data.

    Small: a dataset-size param (agent.dataset_size_keys) under agent.small_dataset_examples.
    Confidence 0.75: a param and a train/val gap make "too little data" likely, but more
    epochs than needed or too little regularisation give the same curves; only a learning
    curve (more data, same recipe) tells them apart, which the request asks for.
    """
    rows = _param_rows(params, overfit.run_id, cfg.dataset_size_keys)
    small = [r for r in rows if 0 < r["value_num"] < cfg.small_dataset_examples]
    if not small:
        return None
    row = small[0]
    n = int(row["value_num"])
    capped = _leaf(row["key"]).startswith("max_")
    cause = _from_finding(overfit)
    cause.evidence.append(_param_ref(row, f"{row['key']} = {row['value']}: {n:,} training examples (small: < {cfg.small_dataset_examples:,})"))
    cause.issue = (
        f"Too little training data: the run trains on {n:,} examples{' (capped by ' + row['key'] + ')' if capped else ''}, "
        f"under {cfg.small_dataset_examples:,}, and overfits: {overfit.summary}"
    )
    cause.confidence = min(overfit.confidence, 0.75)
    cause.fix = (
        ("Lift the cap (" + row["key"] + ") or " if capped else "")
        + "train on more examples (more data, or augmentation); until then fit the recipe to the small set: stop at "
        f"the validation minimum (step {overfit.onset_step}), add weight decay/dropout, or use a smaller model."
    )
    cause.expected_impact = "The validation loss keeps falling with the train loss longer, and the train/validation gap narrows."
    cause.verify_by = (
        f"Rerun with 2x and 4x the {n:,} examples (same recipe) and compare the validation loss at its minimum and at the "
        "end: a learning curve that keeps improving confirms data quantity as the cause."
    )
    return cause


def _batch_peers(params: pl.DataFrame, run_id: str, keys: list[str]) -> tuple[dict | None, list[dict]]:
    """(the run's batch-size row, the rows of runs in the same folder), by agent.batch_size_keys."""
    parent = run_id.rsplit("/", 1)[0] if "/" in run_id else ""
    if params.height == 0:
        return None, []
    wanted = [k.lower() for k in keys]
    rows = [r for r in params.iter_rows(named=True) if _leaf(r["key"]) in wanted and r["value_num"] is not None]
    mine = sorted((r for r in rows if r["run_id"] == run_id), key=lambda r: wanted.index(_leaf(r["key"])))
    if not mine:
        return None, []
    peers = [r for r in rows if r["run_id"] != run_id and r["key"] == mine[0]["key"]
             and (r["run_id"].rsplit("/", 1)[0] if "/" in r["run_id"] else "") == parent]
    return mine[0], peers


def _overridden(params: pl.DataFrame, run_id: str, key: str) -> dict | None:
    """The run's `hydra.overrides` param when it sets `key` on the command line."""
    if params.height == 0:
        return None
    leaf = _leaf(key)
    for r in params.filter((pl.col("run_id") == run_id) & pl.col("key").str.ends_with("overrides")).iter_rows(named=True):
        if any(_leaf(item.split("=", 1)[0].lstrip("+~")) == leaf for item in _override_items(r["value"])):
            return r
    return None


def _override_items(value: str | None) -> list[str]:
    try:
        items = json.loads(value or "[]")
    except ValueError:
        return []
    return [str(i) for i in items] if isinstance(items, list) else []


def _oom_batch_cause(cause: RootCause, run_id: str, oom_runs: set[str], params: pl.DataFrame, cfg: AgentConfig) -> RootCause:
    """An OOM after the batch size was raised: the batch size is the cause.

    Raised: the run's batch size is above every batch size of the runs in its folder that
    did not run out of memory (its seed twins or sibling trials), or the batch size was set
    on the command line (Hydra overrides). Confidence: 0.9 when peers with a smaller batch
    ran without OOM (the same code and data fit at that size), 0.8 when only the override
    shows the change (the old value is not known).
    """
    mine, peers = _batch_peers(params, run_id, cfg.batch_size_keys)
    if mine is None:
        return cause
    ok_peers = [r for r in peers if r["run_id"] not in oom_runs]
    smaller = [r for r in ok_peers if r["value_num"] < mine["value_num"]]
    override = _overridden(params, run_id, mine["key"])
    if any(r["value_num"] >= mine["value_num"] for r in ok_peers):
        return cause  # a peer ran this batch size or a larger one without OOM: not the batch size
    if not ok_peers and override is None:
        return cause
    b = mine["value_num"]
    cause.evidence.insert(0, _param_ref(mine, f"{mine['key']} = {mine['value']} in this run"))
    if smaller:
        best = max(smaller, key=lambda r: r["value_num"])
        cause.evidence.insert(1, _param_ref(best, f"{best['key']} = {best['value']} in `{best['run_id']}`, which ran without OOM"))
        fits = f"{best['value_num']:g}"
        how = f"above the {fits} its {len(ok_peers)} peer run(s) in the same folder used without running out of memory"
        cause.confidence = max(cause.confidence, 0.9)
    else:
        fits = "the previous value"
        how = "set on the command line for this run"
        cause.confidence = 0.8
    if override is not None:
        cause.evidence.append(EvidenceRef("params", {"run_id": run_id, "key": override["key"]}, None, f"{override['key']}: {override['value']}"))
    accumulate = f"{b / best['value_num']:g}" if smaller and best["value_num"] > 0 else "the matching number of"
    cause.kind = "memory_pressure"
    cause.severity = "critical"
    cause.issue = f"Out of memory after the batch size was raised: {mine['key']} = {b:g}, {how}; {cause.issue}"
    cause.fix = (
        f"Go back to {mine['key']} = {fits} and keep the effective batch with gradient accumulation "
        f"({accumulate} micro-batches per step); if the larger batch is needed, enable activation checkpointing or "
        "mixed precision first."
    )
    cause.expected_impact = "The run trains past the step where it ran out of memory, with the same effective batch size."
    cause.verify_by = (
        f"Rerun with {mine['key']} = {fits} and accumulation: no OOM event, and the peak allocated memory "
        "(torch.cuda.max_memory_allocated, or the memory probe) stays below the device total."
    )
    return cause


def _embedding_capacity(cause: RootCause, arch: Finding) -> RootCause:
    """Mode collapse in a model whose embeddings dominate its parameters: capacity, not regularisation.

    With most parameters in a lookup table (the demo's broken model has ~79%), the layers
    that compute from the input are too small to separate the inputs, and the model falls
    back to the most frequent output. That is underfitting: dropout or weight decay remove
    capacity and cannot help. Confidence: at least 0.85, two independent measurements (the
    outputs and the parameter count) agree.
    """
    share = next((e.value for e in arch.evidence if e.table == "layers" and "module_type" in e.where), None)
    pct = f"{100 * share:.0f}%" if share is not None else "most"
    cause.evidence.extend(e for e in arch.evidence if e not in cause.evidence)
    cause.confidence = max(cause.confidence, 0.85)
    cause.severity = min([cause.severity, "high"], key=SEVERITY_RANK.__getitem__)
    cause.issue = (
        f"Too little capacity outside the embeddings: {pct} of the parameters are embeddings ({arch.summary}), so the "
        f"layers that compute from the input are too small and the model collapses to one output. {cause.issue}"
    )
    cause.fix = (
        "Give the model more non-embedding capacity (more or wider layers after the embedding) or shrink the "
        "embedding (smaller vocabulary or embedding width, a factorised or tied embedding). Do not add dropout or "
        "weight decay: the model underfits, and regularisation removes capacity it lacks."
    )
    cause.expected_impact = "Outputs become diverse again (top-1 share well under 90%) and the validation loss falls below the collapsed level."
    cause.verify_by = (
        "Recount parameters by module type (embedding share under the architecture_imbalance limit) and rerun: the "
        "outputs probe's top1_frac / distinct_frac at each evaluation stay diverse."
    )
    return cause


def diagnose_run(
    run_id: str, findings: list[Finding], n_steps: int, metrics: pl.DataFrame, params: pl.DataFrame, cfg: AgentConfig,
    oom_runs: set[str] | None = None,
) -> dict[str, Any]:
    """Root causes for one run, ranked by severity then confidence.

    `metrics` and `params` may hold other runs' rows too (the OOM rule compares the batch size
    with the run's folder peers); `oom_runs` names the runs of the sweep that ran out of memory.
    """
    causes: list[RootCause] = []
    used: set[str] = set()
    for ls in [f for f in findings if f.kind == "loss_scale_collapse"]:
        cause, joined = _loss_scale_cause(ls, [f for f in findings if f.finding_id != ls.finding_id], n_steps)
        causes.append(cause)
        used |= joined
    # A `low` mode collapse (outputs never diverse) is a symptom of no learning, joined below.
    for mc in [f for f in findings if f.kind == "mode_collapse" and f.severity != "low" and f.finding_id not in used]:
        cause, joined = _mode_collapse_cause(mc, [f for f in findings if f.finding_id not in used and f.finding_id != mc.finding_id])
        arch = [f for f in findings if f.kind == "architecture_imbalance" and f.finding_id not in used
                and any(str(e.where.get("module_type", "")).lower() == "embedding" for e in f.evidence)]
        if arch:
            cause = _embedding_capacity(cause, arch[0])
            joined |= {arch[0].finding_id}
        causes.append(cause)
        used |= joined
    for plateau in [f for f in findings if f.kind == "plateau" and f.finding_id not in used]:
        joined_cause = _lr_zero_cause(plateau, [f for f in findings if f.finding_id not in used and f.finding_id != plateau.finding_id], metrics, params, cfg)
        if joined_cause is not None:
            causes.append(joined_cause[0])
            used |= joined_cause[1]
    for g in [f for f in findings if f.kind in ("exploding_gradients", "vanishing_gradients") and f.finding_id not in used]:
        cause, joined = _gradient_cause(g, [f for f in findings if f.finding_id not in used and f.finding_id != g.finding_id])
        causes.append(cause)
        used |= joined
    # An OOM seen by memory_pressure and by the known_error signature library is one cause.
    for mp in [f for f in findings if f.kind == "memory_pressure" and f.finding_id not in used]:
        oom_errors = [f for f in findings if f.kind == "known_error" and _known_error_signature(f) in ("cuda_oom", "host_oom") and f.finding_id not in used]
        if not oom_errors:
            continue
        cause = _from_finding(mp)
        for f in oom_errors:
            cause.evidence.extend(e for e in f.evidence if e not in cause.evidence)
            cause.fix = cause.fix or f.fix
        causes.append(_oom_batch_cause(cause, run_id, oom_runs or {run_id}, params, cfg))
        used |= {mp.finding_id} | {f.finding_id for f in oom_errors}
    for of in [f for f in findings if f.kind == "overfitting" and f.finding_id not in used]:
        cause = _small_data_cause(of, params, cfg)
        if cause is not None:
            causes.append(cause)
            used.add(of.finding_id)
    for div in [f for f in findings if f.kind == "divergence" and f.finding_id not in used]:
        cause, joined = _divergence_cause(div, [f for f in findings if f.finding_id != div.finding_id and f.finding_id not in used], n_steps, metrics, params)
        causes.append(cause)
        used |= joined
    by_kind: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        if f.finding_id not in used:
            by_kind[f.kind].append(f)
    for kind, group in by_kind.items():
        group.sort(key=lambda f: (SEVERITY_RANK[f.severity], -f.confidence))
        cause = _from_finding(group[0])
        for extra in group[1:]:
            cause.evidence.extend(e for e in extra.evidence if e not in cause.evidence)
        if len(group) > 1:
            cause.issue = f"{group[0].summary} (and {len(group) - 1} more {kind} finding(s))"
        causes.append(cause)
    causes.sort(key=lambda c: (SEVERITY_RANK[c.severity], -c.confidence))
    requests = []
    for c in causes:
        if c.confidence < cfg.min_confidence_without_requests:
            request = REQUESTS_BY_KIND.get(c.kind, DEFAULT_REQUEST)
            if request not in requests:
                requests.append(request)
    quick_fixes = []
    for c in causes:
        if c.severity in ("critical", "high", "medium") and c.fix and c.fix not in quick_fixes:
            quick_fixes.append(c.fix)
    return {"root_causes": [c.to_json() for c in causes], "quick_fixes": quick_fixes[:5], "requests": requests}


def diagnose(out_dir: Path, cfg: AgentConfig) -> dict[str, Any]:
    """diagnosis.json's content from the evidence tables under `out_dir` (SPEC §5)."""
    findings_df = scan_table(out_dir, "findings").collect()
    runs_df = scan_table(out_dir, "runs").select("run_id", "status", "reason", "n_steps", "last_step").collect()
    findings = [Finding.from_row(r) for r in findings_df.iter_rows(named=True)]
    by_run: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        if f.scope == "run" and f.run_id:
            by_run[f.run_id].append(f)
    # Only the rows a rule needs; a big sweep's metrics never load whole.
    curve_runs = sorted({f.run_id for f in findings if f.kind in ("divergence", "plateau") and f.run_id})
    oom_runs = {f.run_id for f in findings if f.run_id and (f.kind == "memory_pressure" or _known_error_signature(f) in ("cuda_oom", "host_oom"))}
    needs_params = sorted(set(curve_runs) | oom_runs | {f.run_id for f in findings if f.kind == "overfitting" and f.run_id})
    metrics = pl.DataFrame(schema={"run_id": pl.String, "step": pl.Int64, "key": pl.String, "value": pl.Float64})
    if curve_runs:
        metrics = (
            scan_table(out_dir, "metrics")
            .filter(pl.col("run_id").is_in(curve_runs))
            .select("run_id", "step", "key", "value")
            .collect()
        )
    batch_leaves = [k.lower() for k in cfg.batch_size_keys]
    leaf = pl.col("key").str.to_lowercase().str.split(".").list.last()
    params = (
        scan_table(out_dir, "params")
        .filter(pl.col("run_id").is_in(needs_params) | (leaf.is_in(batch_leaves) if oom_runs else pl.lit(False)))
        .collect()
    )
    runs_out: dict[str, Any] = {}
    low_confidence = False
    for row in runs_df.sort("run_id").iter_rows(named=True):
        rid = row["run_id"]
        entry = diagnose_run(rid, by_run.get(rid, []), int(row["last_step"] or row["n_steps"] or 0), metrics, params, cfg, oom_runs)
        entry["status"] = row["status"]
        if row["reason"]:
            entry["reason"] = row["reason"]
        low_confidence |= any(
            c["confidence"] < cfg.min_confidence_without_requests and c["severity"] in ("critical", "high")
            for c in entry["root_causes"]
        )
        runs_out[rid] = entry
    sweep_findings = [f for f in findings if f.scope == "sweep"]
    sweep_causes = sorted((_from_finding(f) for f in sweep_findings), key=lambda c: (SEVERITY_RANK[c.severity], -c.confidence))
    return {
        "status": "needs_more_data" if low_confidence else "diagnosis_complete",
        "agent": cfg.kind,
        "runs": runs_out,
        "sweep": {
            "root_causes": [c.to_json() for c in sweep_causes],
            "quick_fixes": [c.fix for c in sweep_causes if c.fix][:5],
        },
        "analysis_artifacts": {
            "report": paths.REPORT_HTML if (Path(out_dir) / paths.REPORT_HTML).exists() else paths.REPORT_MD,
            "report_md": paths.REPORT_MD,
            "evidence": paths.EVIDENCE_DIR + "/",
            "log": paths.LOG_FILE,
        },
    }


def dumps(diagnosis: dict[str, Any]) -> str:
    return json.dumps(diagnosis, indent=2, allow_nan=False, default=str)
