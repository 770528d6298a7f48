"""Hyperparameter effects: which hyperparameters move the outcome beyond seed noise, tested and ranked.

The test (per comparison group, per outcome, per hyperparameter that varies):

- Outcomes: the final and best validation loss of each run (`outcomes.py`; a failed run
  is +inf, ranked last) and, per run-level symptom kind (overfitting, loss_spike, ...),
  whether the run carries such a finding. Statistics use ranks, so failures, outliers
  and the metric's scale do not matter.
- Statistic: for a hyperparameter with at most `max_levels` values (or a non-numeric
  one) the between-level sum of squares of the outcome ranks (Kruskal-Wallis); for a
  numeric one with more values, |Spearman correlation|.
- Null distribution by permutation, which is exact for any number of seeds (2 seeds are
  enough; no normality):
  * when some runs differ in this hyperparameter and nothing else but the seed (a grid,
    e.g. the demo's learning rate x seed), the outcome is permuted among runs that share
    every other hyperparameter (strata) and the statistic is computed on ranks centred
    within strata: a conditional test that other hyperparameters cannot confound;
  * otherwise (random search: every trial changes every hyperparameter) the
    hyperparameter's values are permuted among whole configurations, keeping a
    configuration's repeats together: valid when hyperparameters are drawn independently,
    and honest about power: with 5 configurations no single hyperparameter can reach
    p < 1/60, and the finding says the attribution is not identifiable.
- The configuration effect itself (do the configurations differ beyond their repeats?) is
  tested with the Kruskal-Wallis statistic over configurations, runs permuted freely.
- Benjamini-Hochberg over every test of a group (hyperparameters x outcomes plus the
  configuration tests) at `alpha`.
- Importance: the share of the outcome's rank variance a hyperparameter explains
  (epsilon-squared = SS_between / SS_total of ranks for levels, Spearman rho^2 for
  continuous values), with a bootstrap interval from resampling runs within their
  configuration (seed noise redrawn, configurations kept; shifted by the bootstrap's bias,
  `stats.bias_corrected_ci`). Hyperparameters are ranked by it, ties (keys that change
  together) broken by their monotone association (Spearman rho^2).

How this compares with the importance the trackers show:

- fANOVA (Hutter, Hoos & Leyton-Brown, ICML 2014; Optuna's default importance) fits a
  random-forest surrogate of the outcome over the search space and splits the
  surrogate's variance into main effects and interactions, marginalising the other
  hyperparameters. It sees one number per trial: repeats are averaged or treated as
  noise, nothing says whether an importance is larger than what seed noise alone would
  produce, and it needs many trials for the surrogate. Our epsilon-squared / rho^2 is a
  model-free main effect on ranks; we report no interactions, but every effect comes
  with a permutation p-value that accounts for the repeats.
- Random-forest importance (W&B's parameter-importance panel, with a correlation column)
  ranks hyperparameters by impurity decrease of a forest predicting the metric. Impurity
  importance favours continuous, many-valued keys (Strobl et al., BMC Bioinformatics
  2007) and is never zero for pure noise; there is no test and no notion of seeds.
- Both treat a diverged trial as a missing or extreme value; here it is a failure that
  ranks last, and the failure itself has its own detector (`hp_instability_boundary`).
"""

from __future__ import annotations

import fnmatch
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import SweepTables, sweep_detector
from mldebug_ray.detectors.series import finding_id, fmt
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import SEVERITIES, Finding
from mldebug_ray.sweep import stats
from mldebug_ray.sweep.grouping import GroupingConfig
from mldebug_ray.sweep.outcomes import OutcomeConfig
from mldebug_ray.sweep.view import SEVERITY_ORDER, SweepView, sweep_view

NAME = "hp_effect"
MEASURES = ("final", "best")
SWEEP_KINDS = ("seed_sensitivity", "hp_effect", "hp_instability_boundary", "ranking_inconsistency", "nondeterminism")


@dataclass
class HpEffectConfig:
    """Settings of the `hp_effect` sweep detector (keys `detectors.hp_effect.*`)."""

    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    """How runs are grouped into configurations and repeats."""
    outcome: OutcomeConfig = field(default_factory=OutcomeConfig)
    """What a run's outcome is."""
    measures: list[str] = field(default_factory=lambda: ["final", "best"])
    """Continuous outcomes tested: final and/or best."""
    symptom_kinds: list[str] = field(default_factory=lambda: ["*"])
    """Run-level finding kinds (fnmatch) whose occurrence is also an outcome; failures (outcome.fail_kinds)
    are not, they are in the ranks already. Empty: none."""
    symptom_min_severity: str = "medium"
    """A run 'has' a symptom when it carries a finding of that kind at this severity or worse."""
    alpha: float = 0.05
    """Benjamini-Hochberg false discovery rate over all tests of a comparison group."""
    n_perm: int = 1999
    """Permutations per test: p-values resolve down to 1 / (n_perm + 1) = 0.0005."""
    n_boot: int = 500
    """Bootstrap replicates for the importance intervals."""
    max_levels: int = 6
    """A numeric hyperparameter with at most this many values is tested by levels (catches a U-shaped
    learning-rate effect that a rank correlation misses); with more, by rank correlation."""
    min_runs: int = 6
    """Groups with fewer runs are not tested (with 5 runs and 2 levels the smallest p is 0.1)."""
    max_findings_per_group: int = 3
    """Hyperparameter findings per group, most important first (the ranking names the rest)."""
    ci_level: float = 0.95
    rng_seed: int = 0
    """Seed of the permutation and bootstrap generator (results repeat exactly)."""

    def __post_init__(self) -> None:
        p = f"detectors.{NAME}"
        bad = [m for m in self.measures if m not in MEASURES]
        if bad or not self.measures:
            raise ConfigError(f"{p}.measures must be a non-empty subset of {MEASURES}, got {self.measures}")
        if self.symptom_min_severity not in SEVERITIES:
            raise ConfigError(f"{p}.symptom_min_severity must be one of {SEVERITIES}, got {self.symptom_min_severity!r}")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"{p}.alpha must be in (0, 1), got {self.alpha}")
        if self.n_perm < 99:
            raise ConfigError(f"{p}.n_perm must be >= 99, got {self.n_perm}")
        if self.n_boot < 100:
            raise ConfigError(f"{p}.n_boot must be >= 100, got {self.n_boot}")
        if self.max_levels < 2:
            raise ConfigError(f"{p}.max_levels must be >= 2, got {self.max_levels}")
        if self.min_runs < 4:
            raise ConfigError(f"{p}.min_runs must be >= 4, got {self.min_runs}")
        if self.max_findings_per_group < 1:
            raise ConfigError(f"{p}.max_findings_per_group must be >= 1, got {self.max_findings_per_group}")
        if not 0.5 < self.ci_level < 1.0:
            raise ConfigError(f"{p}.ci_level must be in (0.5, 1), got {self.ci_level}")


@dataclass
class Outcome:
    name: str  # final / best / symptom:<kind>
    label: str  # for summaries
    y: np.ndarray  # oriented: lower is better, failures +inf; symptoms 1 = present
    ranks: np.ndarray
    finding_ids: dict  # symptom outcomes: run_id -> finding_id
    boot_idx: np.ndarray  # n_boot x N bootstrap indices (runs resampled within configurations)
    _boot_ranks: np.ndarray | None = None

    @property
    def boot_ranks(self) -> np.ndarray:
        """Ranks of the outcome in every bootstrap replicate, computed when an interval is first asked for."""
        if self._boot_ranks is None:
            self._boot_ranks = stats.rankdata_rows(self.y[self.boot_idx])
        return self._boot_ranks


@dataclass
class Test:
    kind: str  # "config" or "hp"
    key: str | None
    outcome: Outcome
    p: float
    importance: float
    ci_fn: Callable[[], tuple[float, float]]  # the bootstrap interval, computed only for reported tests
    rho: float | None = None  # numeric keys tested by rank correlation
    assoc: float = 0.0  # Spearman rho^2 of a numeric key with 3+ values (tie-break of the ranking), else 0
    identifiable: bool = True
    mode: str = ""
    q: float = float("nan")

    @property
    def ci(self) -> tuple[float, float]:
        if not hasattr(self, "_ci"):
            self._ci = self.ci_fn()
        return self._ci


def _strata_mean(x: np.ndarray, strata: np.ndarray, k: int) -> np.ndarray:
    sums = np.bincount(strata, weights=x, minlength=k)
    sizes = np.bincount(strata, minlength=k)
    return (sums / np.maximum(sizes, 1))[strata]


def _config_perm_pvalue(observed: float, stat_of_perm, blocks) -> float:
    """p-value of a statistic of configuration-level values over blocks of configuration permutations."""
    return stats.permutation_pvalue(observed, np.concatenate([stat_of_perm(P) for P in blocks]))


class _Group:
    """The tests of one comparison group."""

    def __init__(self, view: SweepView, group: str, runs: pl.DataFrame, cfg: HpEffectConfig):
        self.view, self.group, self.cfg = view, group, cfg
        self.runs = runs.sort("run_id")
        self.ids = self.runs["run_id"].to_list()
        self.n = len(self.ids)
        self.cg, self.k = stats.codes(self.runs["config"].to_list())
        self.sizes = np.bincount(self.cg, minlength=self.k)
        self.rng = np.random.default_rng([cfg.rng_seed, zlib.crc32(group.encode())])
        hp = view.grouping.hparams.filter(pl.col("group") == group)
        self.values: dict[str, list[str]] = {}
        self.numbers: dict[str, np.ndarray | None] = {}
        pos = {r: i for i, r in enumerate(self.ids)}
        for (key,), sub in hp.group_by(["key"], maintain_order=True):
            vals = [None] * self.n
            nums = np.full(self.n, np.nan)
            for r, v, x in sub.select("run_id", "value", "value_num").iter_rows():
                vals[pos[r]] = v
                nums[pos[r]] = np.nan if x is None else x
            self.values[key] = vals
            self.numbers[key] = None if np.isnan(nums).any() else nums
        self.keys = sorted(self.values)
        self.boot_idx = stats.stratified_bootstrap_indices(self.cg, cfg.n_boot, self.rng)
        self._strata: dict[str, tuple[np.ndarray, int, bool]] = {}
        self._config_perms: list[np.ndarray] | None = None

    def strata(self, key: str, lc: np.ndarray) -> tuple[np.ndarray, int, bool]:
        """Runs grouped by the values of every other varying hyperparameter, and whether `key` varies within one."""
        if key not in self._strata:
            others = [k for k in self.keys if k != key]
            strata, n_strata = stats.codes(list(zip(*(self.values[k] for k in others)))) if others else (np.zeros(self.n, dtype=np.int64), 1)
            pairs = np.unique(np.stack([strata, lc]), axis=1)
            identifiable = bool(np.unique(pairs[0]).size < pairs.shape[1])  # some stratum holds 2+ levels
            self._strata[key] = (strata, n_strata, identifiable)
        return self._strata[key]

    def config_perms(self):
        """Blocks of permutations of the configurations, shared by every configuration-level test of the group
        (kept when small; each test stays exact, the tests' p-values are merely correlated)."""
        if self._config_perms is not None:
            return self._config_perms
        blocks = []
        for done in range(0, self.cfg.n_perm, stats.PERM_BLOCK):
            b = min(stats.PERM_BLOCK, self.cfg.n_perm - done)
            blocks.append(self.rng.permuted(np.tile(np.arange(self.k, dtype=np.int32), (b, 1)), axis=1))
        if self.k * self.cfg.n_perm <= 5_000_000:
            self._config_perms = blocks
        return blocks

    # ---- outcomes ----------------------------------------------------------------------

    def outcomes(self) -> list[Outcome]:
        out = []
        for m in self.cfg.measures:
            y = self.runs[f"y_{m}"].to_numpy().astype(float)
            y = np.where(np.isnan(y), np.inf, y)
            out.append(self._outcome(m, self.view.outcome_name(self.group, m), y, {}))
        if self.cfg.symptom_kinds:
            worst = SEVERITY_ORDER[self.cfg.symptom_min_severity]
            f = self.view.findings.filter(
                pl.col("run_id").is_in(self.ids)
                & ~pl.col("kind").is_in(list(self.cfg.outcome.fail_kinds) + list(SWEEP_KINDS))
                & pl.col("severity").replace_strict(SEVERITY_ORDER, default=9).le(worst)
            )
            for (kind,), sub in f.group_by(["kind"], maintain_order=True):
                if not any(fnmatch.fnmatchcase(kind, p) for p in self.cfg.symptom_kinds):
                    continue
                first = dict(sub.sort("finding_id").group_by("run_id", maintain_order=True).first().select("run_id", "finding_id").iter_rows())
                y = np.array([1.0 if r in first else 0.0 for r in self.ids])
                out.append(self._outcome(f"symptom:{kind}", f"occurrence of `{kind}` findings", y, first))
        return [o for o in out if np.unique(o.y).size > 1]

    def _outcome(self, name: str, label: str, y: np.ndarray, ids: dict) -> Outcome:
        return Outcome(name, label, y, stats.rankdata(y), ids, self.boot_idx)

    # ---- tests ----------------------------------------------------------------------------

    def config_test(self, o: Outcome) -> Test | None:
        if self.k < 2 or self.sizes.max() < 2:
            return None  # no repeats: the configuration effect is not separable from seed noise
        rc = o.ranks - o.ranks.mean()
        _, p = stats.permutation_test(
            lambda Y: stats.group_sum_stat(Y, self.cg, self.k), rc,
            lambda b: stats.permutations_within(np.zeros(self.n, dtype=np.int64), b, self.rng), self.cfg.n_perm,
        )
        imp = float(stats.rank_eta2_rows(o.ranks, self.cg, self.k)[0])
        level = self.cfg.ci_level
        ci = lambda: stats.bias_corrected_ci(stats.rank_eta2_rows(o.boot_ranks, self.cg, self.k), imp, level, 0.0, 1.0)  # noqa: E731
        return Test("config", None, o, p, imp, ci, mode="configurations")

    def hp_test(self, key: str, o: Outcome) -> Test | None:
        values = self.values[key]
        lc, n_levels = stats.codes(values)
        if n_levels < 2:
            return None
        x = self.numbers[key]
        by_rank = x is not None and n_levels > self.cfg.max_levels
        strata, n_strata, identifiable = self.strata(key, lc)
        r = o.ranks
        xr = stats.rankdata(x) if by_rank else None
        if identifiable:
            yc = r - _strata_mean(r, strata, n_strata)
            if by_rank:
                xc = xr - _strata_mean(xr, strata, n_strata)
                stat = lambda Y: np.abs(Y @ xc)  # noqa: E731
            else:
                stat = lambda Y: stats.group_sum_stat(Y, lc, n_levels)  # noqa: E731
            _, p = stats.permutation_test(stat, yc, lambda b: stats.permutations_within(strata, b, self.rng), self.cfg.n_perm)
            mode = ("runs permuted among seeds (no other hyperparameter varies)" if n_strata == 1
                    else "runs permuted within strata of equal other hyperparameters")
        else:
            s_c = np.bincount(self.cg, weights=r - r.mean(), minlength=self.k)
            first = np.zeros(self.k, dtype=np.int64)
            first[self.cg[::-1]] = np.arange(self.n)[::-1]  # a run of each configuration
            if by_rank:
                xt = stats.rankdata(x[first])
                xt = xt - xt.mean()
                observed = abs(float(xt @ s_c))
                p = _config_perm_pvalue(observed, lambda P: np.abs(xt[P] @ s_c), self.config_perms())
            else:
                lvl = lc[first]
                sizes = self.sizes.astype(float)

                def stat_of(P: np.ndarray) -> np.ndarray:
                    m = lvl[P]
                    sums = stats.group_sums(np.broadcast_to(s_c, m.shape), m, n_levels)
                    cnt = stats.group_sums(np.broadcast_to(sizes, m.shape), m, n_levels)
                    with np.errstate(invalid="ignore", divide="ignore"):
                        return np.where(cnt > 0, sums**2 / cnt, 0.0).sum(axis=1)

                observed = float(stat_of(np.arange(self.k)[None, :])[0])
                p = _config_perm_pvalue(observed, stat_of, self.config_perms())
            mode = "values permuted among configurations (repeats kept together)"
        if by_rank:
            rho = float(stats.pearson_rows(xr, r[None, :])[0])
            imp = rho**2
            ci = lambda: stats.bias_corrected_ci(stats.pearson_rows(xr, o.boot_ranks) ** 2, imp, self.cfg.ci_level, 0.0, 1.0)  # noqa: E731
        else:
            rho = None
            imp = float(stats.rank_eta2_rows(r, lc, n_levels)[0])
            ci = lambda: stats.bias_corrected_ci(stats.rank_eta2_rows(o.boot_ranks, lc, n_levels), imp, self.cfg.ci_level, 0.0, 1.0)  # noqa: E731
        assoc = 0.0
        if x is not None and n_levels >= 3:
            assoc = float(stats.pearson_rows(xr if xr is not None else stats.rankdata(x), r[None, :])[0]) ** 2
            assoc = 0.0 if not np.isfinite(assoc) else assoc
        return Test("hp", key, o, p, imp, ci, rho=rho, identifiable=identifiable, mode=mode, assoc=assoc)

    # ---- description ---------------------------------------------------------------------

    def level_medians(self, key: str, o: Outcome) -> list[tuple[str, float, list[int]]]:
        """(value, median outcome, run positions) per level of `key`, best first."""
        levels: dict[str, list[int]] = {}
        for i, v in enumerate(self.values[key]):
            levels.setdefault(v, []).append(i)
        out = [(v, float(np.median(o.y[idx])), idx) for v, idx in levels.items()]
        return sorted(out, key=lambda t: (t[1], t[0]))


def _y_text(view: SweepView, o: Outcome, value: float) -> str:
    if o.name.startswith("symptom:"):
        return f"{fmt(100 * value)}% of runs"
    return view.outcome_text(value)


def _stat_text(t: Test) -> str:
    lo, hi = t.ci
    if t.rho is not None:
        eff = f"Spearman rho = {fmt(t.rho)} (rho^2 = {fmt(t.importance)} [{fmt(lo)}, {fmt(hi)}])"
    else:
        eff = f"epsilon^2 = {fmt(t.importance)} [{fmt(lo)}, {fmt(hi)}]"
    return f"{eff}, permutation p = {fmt(t.p)}, BH q = {fmt(t.q)}"


def _run_refs(view: SweepView, g: _Group, o: Outcome, positions: list[int], text: str) -> list:
    """Evidence for the runs at `positions`: the metric point, or the symptom finding."""
    refs = []
    for i in positions:
        row = g.runs.row(i, named=True)
        if o.name.startswith("symptom:"):
            fid = o.finding_ids.get(row["run_id"])
            refs.append(view.finding_ref(fid, f"{row['run_id']}: {o.name[8:]} ({text})") if fid else view.run_ref(row["run_id"], f"{text}: no {o.name[8:]} finding"))
        elif row["failed"]:
            refs.append(view.failure_ref(row))
        else:
            refs.append(view.final_ref(row, f"{row['run_id']} ({text}): {row['key']} {fmt(row['final_value'])}"))
    return refs


def _median_pos(o: Outcome, idx: list[int]) -> int:
    """The run of `idx` whose outcome is nearest the median (a failed run when the median is a failure)."""
    vals = o.y[idx]
    med = np.median(vals)
    if not np.isfinite(med):
        return idx[int(np.argmax(~np.isfinite(vals)))]
    with np.errstate(invalid="ignore"):
        return idx[int(np.argmin(np.where(np.isfinite(vals), np.abs(vals - med), np.inf)))]


def _ranked(tests: list[Test], o: Outcome) -> list[Test]:
    """Hyperparameter tests of outcome `o` by importance; ties (aliased keys) broken by monotone association."""
    return sorted((t for t in tests if t.kind == "hp" and t.outcome is o), key=lambda t: (-round(t.importance, 6), -t.assoc, t.key))


def _ranking_text(tests: list[Test], o: Outcome, limit: int = 6) -> str:
    ranked = _ranked(tests, o)
    parts = [f"{t.key} {fmt(t.importance)}" + (f" (rho^2 {fmt(t.assoc)})" if t.assoc else "") for t in ranked[:limit]]
    return ", ".join(parts) + (" ..." if len(ranked) > limit else "")


def _config_y_text(view: SweepView, o: Outcome, y: np.ndarray) -> str:
    if o.name.startswith("symptom:"):
        return f"{int(y.sum())}/{y.size} runs with {o.name[8:]} findings"
    return f"median {_y_text(view, o, float(np.median(y)))}"


def _hp_finding(view: SweepView, g: _Group, key: str, sig: list[Test], all_tests: list[Test]) -> Finding:
    main = min(sig, key=lambda t: (t.q, -t.importance))
    o = main.outcome
    levels = g.level_medians(key, o)
    best_v, best_y, best_idx = levels[0]
    worst_v, worst_y, worst_idx = levels[-1]
    direction = ""
    if main.rho is not None:
        direction = f" (higher {key} is {'worse' if main.rho > 0 else 'better'})"
    others = "; ".join(f"{t.outcome.label}: {_stat_text(t)}" for t in sig if t is not main)
    summary = (
        f"{key} has a significant effect on {o.label} in {view.group_label(g.group)} ({g.n} runs, {g.k} configurations): "
        f"{_stat_text(main)}{direction}; best at {key}={best_v} (median {_y_text(view, o, best_y)}), worst at "
        f"{key}={worst_v} (median {_y_text(view, o, worst_y)}). Tested with {main.mode}."
        + (f" Also {others}." if others else "")
        + f" Importance ranking (share of rank variance): {_ranking_text(all_tests, o)}."
    )
    b, w = _median_pos(o, best_idx), _median_pos(o, worst_idx)
    evidence = [
        view.param_ref(g.ids[b], key, f"{key} = {best_v} (best level)"),
        view.param_ref(g.ids[w], key, f"{key} = {worst_v} (worst level)"),
        *_run_refs(view, g, o, [b], f"{key}={best_v}"),
        *_run_refs(view, g, o, [w], f"{key}={worst_v}"),
    ]
    involves_failure = bool(np.isinf(o.y).any()) or o.name.startswith("symptom:")
    return Finding(
        kind="hp_effect",
        severity="medium" if involves_failure else "low",
        confidence=0.9 if main.q < 0.01 else 0.8,
        summary=summary,
        evidence=tuple(e for e in evidence if e is not None),
        detector=NAME,
        scope="sweep",
        run_ids=tuple(g.ids),
        finding_id=finding_id(NAME, None, g.group, key),
        fix=f"Set {key} near {best_v} and spend the next sweep's budget on the hyperparameters that ranked lower but are untested.",
        expected_impact=f"{o.label} near {_y_text(view, o, best_y)} (median at the best level) instead of {_y_text(view, o, worst_y)}.",
        verify_by=f"Rerun {key}={best_v} and {key}={worst_v} with new seeds and check the order holds.",
    )


def _config_finding(view: SweepView, g: _Group, sig: list[Test], all_tests: list[Test]) -> Finding:
    main = min(sig, key=lambda t: (t.q, -t.importance))
    o = main.outcome
    cmed = []
    for c in range(g.k):
        idx = [int(i) for i in np.flatnonzero(g.cg == c)]
        cmed.append((float(np.median(o.y[idx])), c, idx))
    cmed.sort(key=lambda t: (t[0], t[1]))
    labels = g.runs["config_label"].to_list()
    (best_y, _, best_idx), (worst_y, _, worst_idx) = cmed[0], cmed[-1]
    ranked = _ranked(all_tests, o)
    identified = [t for t in ranked if t.identifiable]
    if identified:
        why = (
            f"only {', '.join(f'{t.key} (q = {fmt(t.q)})' for t in identified[:3])} can be tested on its own (runs that differ "
            "in nothing else), without a significant effect; the other hyperparameters change together between configurations"
        )
    else:
        why = (
            f"which hyperparameter causes it cannot be identified: every varying hyperparameter changes between these "
            f"{g.k} configurations at once (random search), so a test on one of them can only permute whole configurations"
        )
    others = "; ".join(f"{t.outcome.label}: {_stat_text(t)}" for t in sig if t is not main)
    worst_label, best_label = labels[worst_idx[0]], labels[best_idx[0]]
    repeats = g.runs["repeat"].to_list()
    worst_of_repeat: dict = {}
    for j, rep in enumerate(repeats):
        if rep is not None:
            worst_of_repeat[rep] = max(worst_of_repeat.get(rep, -np.inf), o.y[j])
    worst_in = sum(1 for i in worst_idx if repeats[i] is not None and o.y[i] >= worst_of_repeat[repeats[i]])
    repeat_text = f", worst in {worst_in}/{len(worst_idx)} of its repeats" if worst_in else ""
    summary = (
        f"Configurations differ beyond seed noise in {view.group_label(g.group)} ({g.n} runs, {g.k} configurations) on "
        f"{o.label}: {_stat_text(main)} (tested with {main.mode}). {worst_label} is worst "
        f"({_config_y_text(view, o, o.y[worst_idx])}{repeat_text}), {best_label} best ({_config_y_text(view, o, o.y[best_idx])})."
        + (f" Also {others}." if others else "")
        + f" But {why}. Candidates by importance (share of rank variance): {_ranking_text(all_tests, o)}."
    )
    w, b = _median_pos(o, worst_idx), _median_pos(o, best_idx)
    evidence = [*_run_refs(view, g, o, [w], worst_label), *_run_refs(view, g, o, [b], best_label)]
    for t in ranked[:3]:
        evidence.append(view.param_ref(g.ids[w], t.key, f"{t.key} = {g.values[t.key][w]} in {worst_label} (candidate, importance {fmt(t.importance)})"))
    if o.name.startswith("symptom:"):
        evidence += _run_refs(view, g, o, [i for i in worst_idx if i != w][:2], worst_label)
    involves_failure = bool(np.isinf(o.y).any()) or o.name.startswith("symptom:")
    return Finding(
        kind="hp_effect",
        severity="medium" if involves_failure else "low",
        confidence=0.85 if main.q < 0.01 else 0.75,
        summary=summary,
        evidence=tuple(e for e in evidence if e is not None),
        detector=NAME,
        scope="sweep",
        run_ids=tuple(g.ids),
        finding_id=finding_id(NAME, None, g.group, "configurations"),
        fix=(
            f"Drop configuration {worst_label} from further tuning; to learn which hyperparameter matters, vary the top "
            f"candidates ({', '.join(t.key for t in ranked[:2])}) one at a time around {best_label} with 2+ seeds each."
        ),
        expected_impact=f"{o.label} near {_y_text(view, o, best_y)} ({best_label}) instead of {_y_text(view, o, worst_y)}.",
        verify_by="A one-factor-at-a-time follow-up sweep in which this detector reports an identifiable hyperparameter effect.",
    )


@sweep_detector(NAME)
def hp_effect(tables: SweepTables, cfg: HpEffectConfig) -> list[Finding]:
    """A hyperparameter has a statistically significant effect on the outcome (SPEC §5 `hp_effect`).

    Evidence: per run its outcomes (final/best validation loss, failures ranked last,
    run-level symptom findings) and the hyperparameters that vary in its comparison
    group. The tests, the correction and the importance are described in the module
    docstring. One finding per hyperparameter whose effect is significant and
    identifiable (at most `max_findings_per_group`, most important first), and one per
    group when the configurations differ significantly but no single hyperparameter can be
    blamed (random search), naming the candidates by importance. alpha = 0.05 is the
    usual false discovery rate; tests/sweep/test_hp_effect.py checks the rate of any
    finding under the null stays at that level.
    """
    view = sweep_view(tables, cfg.grouping, cfg.outcome)
    findings: list[Finding] = []
    for group, runs in view.groups(min_runs=cfg.min_runs):
        if view.outcome_key(group)[0] is None:
            continue
        g = _Group(view, group, runs, cfg)
        if g.k < 2 or not g.keys:
            continue
        tests: list[Test] = []
        for o in g.outcomes():
            t = g.config_test(o)
            if t is not None:
                tests.append(t)
            for key in g.keys:
                t = g.hp_test(key, o)
                if t is not None:
                    tests.append(t)
        if not tests:
            continue
        for t, q in zip(tests, stats.bh_adjust([t.p for t in tests])):
            t.q = float(q)
        sig = [t for t in tests if t.q <= cfg.alpha]
        by_key: dict[str, list[Test]] = {}
        for t in sig:
            if t.kind == "hp" and t.identifiable:
                by_key.setdefault(t.key, []).append(t)
        ranked = sorted(by_key.items(), key=lambda kv: -max(t.importance for t in kv[1]))
        for key, key_tests in ranked[: cfg.max_findings_per_group]:
            findings.append(_hp_finding(view, g, key, key_tests, tests))
        covered = {t.outcome.name for ts in by_key.values() for t in ts}
        unexplained = [t for t in sig if t.kind == "config" and t.outcome.name not in covered]
        if unexplained:
            findings.append(_config_finding(view, g, unexplained, tests))
    return findings
