"""Ranking inconsistency: the order of configurations flips from one study (or seed) to the next."""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import SweepTables, sweep_detector
from mldebug_ray.detectors.series import finding_id, fmt
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import Finding
from mldebug_ray.sweep import stats
from mldebug_ray.sweep.grouping import GroupingConfig
from mldebug_ray.sweep.outcomes import OutcomeConfig
from mldebug_ray.sweep.view import sweep_view

NAME = "ranking_inconsistency"


@dataclass
class RankingInconsistencyConfig:
    """Settings of the `ranking_inconsistency` sweep detector (keys `detectors.ranking_inconsistency.*`)."""

    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    """How runs are grouped into configurations and repeats (a repeat: `study_3`, `seed2`, `seed=2`)."""
    outcome: OutcomeConfig = field(default_factory=OutcomeConfig)
    """What a run's outcome is."""
    measure: str = "final"
    """Which outcome ranks the configurations: final or best."""
    min_configs: int = 3
    """Configurations a repeat must rank (with 2 there is one order, and seed_sensitivity covers it)."""
    rho_threshold: float = 0.5
    """Mean Spearman correlation between repeats' rankings below which the ranking is inconsistent
    (medium). 0.5 is the usual 'moderate' boundary; above it only a change of winner is reported (low)."""
    n_perm: int = 999
    """Permutations for the concordance (Kendall's W) test."""
    max_flips: int = 3
    """Flipped pairs named in a finding."""
    top_configs: int = 10
    """Flips are looked for among this many configurations with the best mean rank."""
    rng_seed: int = 0

    def __post_init__(self) -> None:
        p = f"detectors.{NAME}"
        if self.measure not in ("final", "best"):
            raise ConfigError(f"{p}.measure must be final or best, got {self.measure!r}")
        if self.min_configs < 3:
            raise ConfigError(f"{p}.min_configs must be >= 3, got {self.min_configs}")
        if not -1.0 < self.rho_threshold < 1.0:
            raise ConfigError(f"{p}.rho_threshold must be in (-1, 1), got {self.rho_threshold}")
        if self.n_perm < 99:
            raise ConfigError(f"{p}.n_perm must be >= 99, got {self.n_perm}")
        if self.top_configs < 2:
            raise ConfigError(f"{p}.top_configs must be >= 2, got {self.top_configs}")
        if self.max_flips < 1:
            raise ConfigError(f"{p}.max_flips must be >= 1, got {self.max_flips}")


def kendall_w(ranks: np.ndarray) -> np.ndarray:
    """Kendall's coefficient of concordance of m rankings of n items, for each leading index: (..., m, n) -> (...)."""
    m, n = ranks.shape[-2:]
    totals = ranks.sum(axis=-2)
    s = ((totals - totals.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
    return 12.0 * s / (m**2 * (n**3 - n))


def _matrix(runs: pl.DataFrame, col: str) -> tuple[list[str], list[str], np.ndarray, dict]:
    """repeats x configurations of the median outcome (NaN where a configuration has no run in that repeat)."""
    cells = runs.group_by("repeat", "config").agg(pl.col(col).median(), pl.col("run_id").sort().first())
    repeats = sorted(cells["repeat"].unique().to_list())
    configs = sorted(cells["config"].unique().to_list())
    r_ix = {r: i for i, r in enumerate(repeats)}
    c_ix = {c: i for i, c in enumerate(configs)}
    y = np.full((len(repeats), len(configs)), np.nan)
    run_of = {}
    for rep, conf, value, rid in cells.iter_rows():
        y[r_ix[rep], c_ix[conf]] = value
        run_of[(r_ix[rep], c_ix[conf])] = rid
    return repeats, configs, y, run_of


@sweep_detector(NAME)
def ranking_inconsistency(tables: SweepTables, cfg: RankingInconsistencyConfig) -> list[Finding]:
    """The ranking of configurations flips across seeds/studies (SPEC §5 `ranking_inconsistency`).

    Evidence: each run's outcome (failures rank last), its configuration and its repeat
    label (AlgoPerf `study_N`, a seed). Per comparison group with at least
    `min_configs` configurations ranked in 2+ repeats: the configurations are ranked
    within each repeat, every pair of repeats is compared with Spearman's rho over the
    configurations both ran, and the concordance of the repeats that ran them all is
    tested with Kendall's W (permutation p, each repeat's ranks shuffled independently).
    Inconsistent (medium) when the mean rho is below `rho_threshold`; when the ranking
    mostly agrees but the winner changes between repeats, a low-severity finding names
    the flips, with the gap in units of the seed SD so a coin-flip tie reads as one.
    """
    view = sweep_view(tables, cfg.grouping, cfg.outcome)
    col = "y_final" if cfg.measure == "final" else "y_best"
    findings: list[Finding] = []
    for group, runs in view.groups(min_runs=2 * cfg.min_configs):
        if view.outcome_key(group)[0] is None:
            continue
        runs = runs.filter(pl.col("repeat").is_not_null())
        if runs.height < 2 * cfg.min_configs or runs["config"].n_unique() < cfg.min_configs:
            continue
        repeats, configs, y, run_of = _matrix(runs, col)
        keep = (~np.isnan(y)).sum(axis=1) >= cfg.min_configs
        repeats = [r for r, k in zip(repeats, keep) if k]
        y = y[keep]
        if len(repeats) < 2:
            continue
        new_index = {int(old): new for new, old in enumerate(np.flatnonzero(keep))}
        run_of = {(new_index[j], c): rid for (j, c), rid in run_of.items() if j in new_index}
        rhos = []
        for a, b in itertools.combinations(range(len(repeats)), 2):
            common = ~np.isnan(y[a]) & ~np.isnan(y[b])
            if common.sum() >= cfg.min_configs:
                rho = stats.spearman(y[a, common], y[b, common])
                if np.isfinite(rho):
                    rhos.append(rho)
        if not rhos:
            continue
        mean_rho = float(np.mean(rhos))
        winners = [int(np.nanargmin(row)) for row in y]
        if mean_rho >= cfg.rho_threshold and len(set(winners)) == 1:
            continue
        labels = dict(zip(runs["config"].to_list(), runs["config_label"].to_list()))
        name = [labels[c] for c in configs]
        # Concordance over the configurations every kept repeat ran.
        full = ~np.isnan(y).any(axis=0)
        w_text = ""
        if full.sum() >= cfg.min_configs:
            ranks = np.vstack([stats.rankdata(row[full]) for row in y])
            w_obs = float(kendall_w(ranks))
            rng = np.random.default_rng([cfg.rng_seed, zlib.crc32(group.encode())])
            null = np.concatenate([
                kendall_w(rng.permuted(np.broadcast_to(ranks, (b, *ranks.shape)).copy(), axis=2))
                for b in [min(256, cfg.n_perm - i) for i in range(0, cfg.n_perm, 256)]
            ])
            w_text = f" Kendall's W = {fmt(w_obs)} over {int(full.sum())} configurations (permutation p = {fmt(stats.permutation_pvalue(w_obs, null))}; 1 = identical rankings)."
        # Flips: pairs whose order changes between repeats, the winner's first.
        mean_rank = np.nanmean(np.vstack([stats.rankdata(np.where(np.isnan(r), np.inf, r)) for r in y]), axis=0)
        order = list(np.argsort(mean_rank, kind="stable"))
        ok = runs.filter(~pl.col("failed"))
        seed_sd = float("nan")
        if ok["config"].n_unique() >= 2 and ok.height > ok["config"].n_unique():
            comp = stats.variance_components(ok[col].to_numpy(), ok["config"].to_list())
            seed_sd = float(np.sqrt(comp.within))
        flips = []
        # Flips that matter are near the top; limiting the pairs to the leading configurations
        # keeps a 1,000-configuration group from costing half a million comparisons.
        for a, b in itertools.combinations(order[: cfg.top_configs], 2):
            both = ~np.isnan(y[:, a]) & ~np.isnan(y[:, b])
            a_wins = [i for i in np.flatnonzero(both) if y[i, a] < y[i, b]]
            b_wins = [i for i in np.flatnonzero(both) if y[i, b] < y[i, a]]
            if a_wins and b_wins:
                flips.append((a, b, a_wins, b_wins))
        if not flips:
            continue
        flips.sort(key=lambda f: (order.index(f[0]) + order.index(f[1]), -min(len(f[2]), len(f[3]))))
        texts = []
        for a, b, a_wins, b_wins in flips[: cfg.max_flips]:
            gap = float(np.nanmean(y[:, b]) - np.nanmean(y[:, a]))
            sd_text = f", mean gap {fmt(gap)} = {fmt(gap / seed_sd)} seed SDs" if np.isfinite(seed_sd) and seed_sd > 0 and np.isfinite(gap) else ""
            texts.append(
                f"{name[a]} beats {name[b]} in {len(a_wins)} repeat(s) ({', '.join(repeats[i] for i in a_wins[:4])}) but loses in "
                f"{len(b_wins)} ({', '.join(repeats[i] for i in b_wins[:4])}){sd_text}"
            )
        win_counts = {name[w]: winners.count(w) for w in set(winners)}
        inconsistent = mean_rho < cfg.rho_threshold
        summary = (
            f"Configuration rankings in {view.group_label(group)} "
            + ("disagree" if inconsistent else "change at the top")
            + f" across {len(repeats)} repeats on {view.outcome_name(group, cfg.measure)}: mean pairwise Spearman rho = "
            f"{fmt(mean_rho)} (threshold {cfg.rho_threshold}); winners: "
            + ", ".join(f"{k} in {v}/{len(repeats)}" for k, v in sorted(win_counts.items(), key=lambda kv: -kv[1]))
            + f".{w_text} Flips: " + "; ".join(texts) + "."
        )
        a, b, a_wins, b_wins = flips[0]
        evidence = []
        for i in (a_wins[0], b_wins[0]):
            for c in (a, b):
                rid = run_of.get((i, c))
                if rid is not None:
                    row = runs.filter(pl.col("run_id") == rid).row(0, named=True)
                    evidence.append(view.failure_ref(row) if row["failed"] else view.final_ref(row, f"{name[c]} in {repeats[i]}: {fmt(row['final_value'])}"))
        findings.append(
            Finding(
                kind="ranking_inconsistency",
                severity="medium" if inconsistent else "low",
                confidence=0.85 if inconsistent else 0.7,
                summary=summary,
                evidence=tuple(e for e in evidence if e is not None),
                detector=NAME,
                scope="sweep",
                run_ids=tuple(sorted(runs["run_id"].to_list())),
                finding_id=finding_id(NAME, None, group),
                fix=(
                    "Rank configurations by their mean (or median) over all repeats, never by one study's best trial; "
                    f"treat {name[a]} and {name[b]} as tied unless more repeats separate them."
                ),
                expected_impact="A configuration choice that does not depend on which study (seed) was looked at.",
                verify_by="Add repeats until the mean ranks' bootstrap intervals separate, or the pair stays tied.",
            )
        )
    return findings
