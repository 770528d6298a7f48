"""Instability boundary: beyond some hyperparameter value runs fail (e.g. the learning rate above X diverges)."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import SweepTables, sweep_detector
from mldebug_ray.detectors.series import finding_id, fmt
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding
from mldebug_ray.sweep import stats
from mldebug_ray.sweep.grouping import GroupingConfig
from mldebug_ray.sweep.outcomes import OutcomeConfig
from mldebug_ray.sweep.view import SweepView, sweep_view

NAME = "hp_instability_boundary"


@dataclass
class HpInstabilityBoundaryConfig:
    """Settings of the `hp_instability_boundary` sweep detector (keys `detectors.hp_instability_boundary.*`)."""

    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    """How runs are grouped into configurations and repeats."""
    outcome: OutcomeConfig = field(default_factory=OutcomeConfig)
    """What counts as a failed run (outcome.fail_kinds, fail_severities)."""
    min_failures: int = 2
    """Failed runs needed beyond the boundary: one crash is an accident, not a boundary."""
    min_fail_frac: float = 0.5
    """Share of the runs beyond the boundary that must fail (near a boundary some seeds survive) ..."""
    max_fail_frac_inside: float = 0.2
    """... and the most that may fail on the safe side (an unrelated crash does not hide the boundary)."""
    alpha: float = 0.05
    """One-sided Fisher exact p-value the split must reach (failures vs side of the boundary)."""
    prior_keys: list[str] = field(default_factory=lambda: ["lr", "*_lr", "*.lr", "lr_*", "*learning_rate*", "*learning-rate*"])
    """When several hyperparameters single out the same failing runs (they vary together), these are named
    first: the learning rate is the usual cause of divergence. fnmatch, case-insensitive, on key or leaf."""
    max_alternatives: int = 4
    """Confounded hyperparameters named in a finding."""

    def __post_init__(self) -> None:
        p = f"detectors.{NAME}"
        if self.min_failures < 1:
            raise ConfigError(f"{p}.min_failures must be >= 1, got {self.min_failures}")
        if not 0.0 < self.min_fail_frac <= 1.0:
            raise ConfigError(f"{p}.min_fail_frac must be in (0, 1], got {self.min_fail_frac}")
        if not 0.0 <= self.max_fail_frac_inside < self.min_fail_frac:
            raise ConfigError(f"{p}.max_fail_frac_inside must be in [0, min_fail_frac={self.min_fail_frac}), got {self.max_fail_frac_inside}")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"{p}.alpha must be in (0, 1), got {self.alpha}")
        if self.max_alternatives < 0:
            raise ConfigError(f"{p}.max_alternatives must be >= 0, got {self.max_alternatives}")


@dataclass
class Boundary:
    key: str
    direction: str  # "above": values >= edge fail; "below": values <= edge fail
    edge: float  # the failing value nearest the safe side
    safe: float  # the safe value nearest the edge
    fail_out: int  # failures beyond the boundary
    n_out: int
    fail_in: int
    n_in: int
    p: float
    margin: float  # the gap between edge and safe, as a share of the key's range (log scale when positive)
    beyond: frozenset  # run ids beyond the boundary

    @property
    def score(self) -> float:
        return self.fail_out / self.n_out - (self.fail_in / self.n_in if self.n_in else 0.0)


def _is_prior(key: str, patterns: list[str]) -> bool:
    k = key.lower()
    leaf = k.rsplit(".", 1)[-1]
    return any(fnmatch.fnmatchcase(k, p.lower()) or fnmatch.fnmatchcase(leaf, p.lower()) for p in patterns)


def _best_cut(key: str, run_ids: list[str], x: np.ndarray, failed: np.ndarray, cfg: HpInstabilityBoundaryConfig) -> Boundary | None:
    """The split of `x`'s sorted values that best separates failed from finished runs, if one qualifies."""
    values = np.unique(x)
    if values.size < 2:
        return None
    log = bool(np.all(values > 0))
    t = np.log10(values) if log else values
    span = float(t[-1] - t[0]) or 1.0
    best: Boundary | None = None
    for direction in ("above", "below"):
        for j in range(values.size - 1):
            if direction == "above":
                edge, safe = values[j + 1], values[j]
                beyond = x >= edge
            else:
                edge, safe = values[values.size - 2 - j], values[values.size - 1 - j]
                beyond = x <= edge
            n_out, n_in = int(beyond.sum()), int((~beyond).sum())
            f_out, f_in = int(failed[beyond].sum()), int(failed[~beyond].sum())
            if f_out < cfg.min_failures or f_out / n_out < cfg.min_fail_frac or f_in / n_in > cfg.max_fail_frac_inside:
                continue
            p = stats.fisher_exact_greater(f_out, n_out, f_in, n_in)
            if p > cfg.alpha:
                continue
            gap = abs(float((np.log10(edge) if log else edge) - (np.log10(safe) if log else safe)))
            cand = Boundary(key, direction, float(edge), float(safe), f_out, n_out, f_in, n_in, p, gap / span,
                            frozenset(np.asarray(run_ids)[beyond].tolist()))
            if best is None or (cand.score, -cand.p, cand.fail_out) > (best.score, -best.p, best.fail_out):
                best = cand
    return best


def _categorical_aliases(hp: pl.DataFrame, beyond: frozenset, numeric: set[str]) -> list[tuple[str, str]]:
    """(key, `key=value`) of non-numeric hyperparameters whose value picks out exactly the runs beyond the boundary."""
    out = []
    for (key,), sub in hp.filter(~pl.col("key").is_in(list(numeric))).group_by(["key"], maintain_order=True):
        for (value,), level in sub.group_by(["value"], maintain_order=True):
            if frozenset(level["run_id"].to_list()) == beyond:
                out.append((key, f"{key}={value}"))
    return sorted(out)


def _per_repeat(runs: pl.DataFrame, b: Boundary) -> tuple[int, int]:
    """(repeats where every run beyond fails and every run inside finishes, repeats with runs on both sides)."""
    clean = both = 0
    for (_,), sub in runs.filter(pl.col("repeat").is_not_null()).group_by(["repeat"]):
        out = sub.filter(pl.col("run_id").is_in(list(b.beyond)))
        inside = sub.filter(~pl.col("run_id").is_in(list(b.beyond)))
        if out.height and inside.height:
            both += 1
            clean += int(out["failed"].all() and not inside["failed"].any())
    return clean, both


def _finding(view: SweepView, group: str, runs: pl.DataFrame, b: Boundary, alternatives: list[tuple[str, str]], cfg) -> Finding:
    side = "≥" if b.direction == "above" else "≤"
    safe_side = "≤" if b.direction == "above" else "≥"
    beyond = runs.filter(pl.col("run_id").is_in(list(b.beyond)))
    inside = runs.filter(~pl.col("run_id").is_in(list(b.beyond)))
    fail_rows = beyond.filter(pl.col("failed")).sort("run_id").to_dicts()
    hp = view.grouping.hparams.filter((pl.col("group") == group) & (pl.col("key") == b.key))
    value_of = dict(zip(hp["run_id"].to_list(), hp["value_num"].to_list()))
    edge_run = min(fail_rows, key=lambda r: (abs(value_of[r["run_id"]] - b.edge), r["run_id"]))
    ok_rows = inside.filter(~pl.col("failed")).to_dicts()
    safe_run = min(ok_rows, key=lambda r: (abs(value_of[r["run_id"]] - b.safe), r["run_id"])) if ok_rows else None
    clean, both = _per_repeat(runs, b)
    reasons = sorted({r["fail_reason"].split(" from ")[0].split(" at ")[0] for r in fail_rows})
    repeat_text = f" In {clean} of {both} repeats (studies/seeds) the runs beyond fail and the others finish." if both else ""
    alt_text = (
        f" Confounded: {', '.join(text for _, text in alternatives[: cfg.max_alternatives])} also single(s) out these runs (they vary together in "
        f"this sweep); {b.key} is named first as {'the usual cause of divergence' if _is_prior(b.key, cfg.prior_keys) else 'the clearest gap'}."
        if alternatives else ""
    )
    summary = (
        f"In {view.group_label(group)}, runs with {b.key} {side} {fmt(b.edge)} fail: {b.fail_out}/{b.n_out} "
        f"({'; '.join(reasons)}) while {b.fail_in}/{b.n_in} runs with {b.key} {safe_side} {fmt(b.safe)} fail "
        f"(one-sided Fisher exact p = {fmt(b.p)}).{repeat_text}{alt_text}"
    )
    evidence: list[EvidenceRef | None] = [
        view.param_ref(edge_run["run_id"], b.key, f"{b.key} = {fmt(b.edge)}: {edge_run['run_id']} failed"),
    ]
    if safe_run is not None:
        evidence.append(view.param_ref(safe_run["run_id"], b.key, f"{b.key} = {fmt(b.safe)}: {safe_run['run_id']} finished"))
    evidence += [view.failure_ref(r) for r in fail_rows[:3]]
    if safe_run is not None:
        evidence.append(view.final_ref(safe_run, f"{safe_run['run_id']} finished at {safe_run['key']} {fmt(safe_run['final_value'])}"))
    for key, text in alternatives[:2]:
        evidence.append(view.param_ref(edge_run["run_id"], key, f"{text}: the failing run's value (confounded)"))
    confounded = bool(alternatives)
    perfect = b.fail_in == 0 and b.fail_out == b.n_out
    return Finding(
        kind="hp_instability_boundary",
        severity="high",
        confidence=(0.92 if perfect else 0.82) - (0.1 if confounded else 0.0),
        summary=summary,
        evidence=tuple(e for e in evidence if e is not None),
        detector=NAME,
        scope="sweep",
        run_ids=tuple(sorted(b.beyond)),
        finding_id=finding_id(NAME, None, group, b.key, b.direction),
        fix=(
            f"Keep {b.key} {safe_side} {fmt(b.safe)} (the {'largest' if b.direction == 'above' else 'smallest'} value that "
            f"trained); to search past it, add values between {fmt(b.safe)} and {fmt(b.edge)}, and a warm-up or gradient "
            "clipping so the first steps cannot blow up. Narrow the search space so no budget goes to runs that cannot finish."
        ),
        expected_impact=f"No more failed runs in this region of the search space ({b.fail_out} of {runs.height} runs here failed).",
        verify_by=f"Rerun the failing configuration with {b.key} = {fmt(math.sqrt(b.safe * b.edge) if b.safe > 0 and b.edge > 0 else (b.safe + b.edge) / 2)} and check it finishes.",
    )


@sweep_detector(NAME)
def hp_instability_boundary(tables: SweepTables, cfg: HpInstabilityBoundaryConfig) -> list[Finding]:
    """Beyond some hyperparameter value runs fail (SPEC §5 `hp_instability_boundary`).

    Evidence: each run's failure (NaN/Inf outcome, critical nan_inf/divergence finding,
    unreadable, or never evaluated; `outcomes.py`) and the numeric hyperparameters that
    vary in its comparison group. For each such key, every split of its sorted values is
    tried in both directions; a split qualifies when at least `min_failures` runs beyond
    it fail, at least `min_fail_frac` of the runs beyond fail, at most
    `max_fail_frac_inside` of the others do, and the one-sided Fisher exact test of
    failures vs side reaches `alpha`. The best split per key is kept (largest difference
    of failure rates, then smallest p).

    Several keys often single out the same failing runs: in a random search every
    hyperparameter of the failing trial is extreme in some direction. The data cannot tell
    them apart, so one finding names them all: first a key matching `prior_keys` (the
    learning rate), then the key with the widest gap between the failing and the safe
    value relative to its range. Repeats (AlgoPerf studies) are counted: "in 5 of 5
    studies the runs beyond fail and the others finish". Thresholds: 2 failures and 50%
    beyond follow the issue's wording ("the value beyond which runs fail") with room for
    seeds that survive near the edge; alpha 0.05 is the usual level. Our measurement:
    the AlgoPerf learning-rate outliers fail in 5/5 studies against 0/20 siblings,
    p = 1.9e-5.
    """
    view = sweep_view(tables, cfg.grouping, cfg.outcome)
    findings: list[Finding] = []
    for group, runs in view.groups(min_runs=3):
        if view.outcome_key(group)[0] is None or not runs["failed"].any() or runs["failed"].all():
            continue
        hp = view.grouping.hparams.filter(pl.col("group") == group)
        failed_of = dict(zip(runs["run_id"].to_list(), runs["failed"].to_list()))
        candidates: list[Boundary] = []
        numeric: set[str] = set()
        for (key,), sub in hp.group_by(["key"], maintain_order=True):
            if sub["value_num"].null_count() or sub.height != runs.height:
                continue
            numeric.add(key)
            ids = sub["run_id"].to_list()
            cut = _best_cut(key, ids, sub["value_num"].to_numpy(), np.array([failed_of[r] for r in ids]), cfg)
            if cut is not None:
                candidates.append(cut)
        by_set: dict[frozenset, list[Boundary]] = {}
        for c in candidates:
            by_set.setdefault(c.beyond, []).append(c)
        ranked_sets = sorted(by_set.values(), key=lambda cs: (-max(c.score for c in cs), -max(c.fail_out for c in cs), min(c.p for c in cs)))
        covered: set[str] = set()
        for cs in ranked_sets:
            failing = {r for r in cs[0].beyond if failed_of[r]}
            if failing <= covered:
                continue
            covered |= failing
            cs.sort(key=lambda c: (not _is_prior(c.key, cfg.prior_keys), -c.margin, c.p, c.key))
            primary = cs[0]
            alternatives = [
                (c.key, f"{c.key} {'≥' if c.direction == 'above' else '≤'} {fmt(c.edge)}") for c in cs[1:]
            ] + _categorical_aliases(hp, primary.beyond, numeric)
            findings.append(_finding(view, group, runs, primary, alternatives, cfg))
    return findings
