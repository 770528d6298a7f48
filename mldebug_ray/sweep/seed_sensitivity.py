"""Seed sensitivity: runs that differ only by seed differ as much as the configurations being compared."""

from __future__ import annotations

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
from mldebug_ray.sweep.view import SweepView, sweep_view

NAME = "seed_sensitivity"
MEASURES = ("final", "best")


@dataclass
class SeedSensitivityConfig:
    """Settings of the `seed_sensitivity` sweep detector (keys `detectors.seed_sensitivity.*`)."""

    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    """How runs are grouped into configurations and repeats."""
    outcome: OutcomeConfig = field(default_factory=OutcomeConfig)
    """What a run's outcome is."""
    measure: str = "final"
    """Which outcome is compared: final or best."""
    seed_share: float = 0.5
    """Flag a group when the seed (within-configuration) variance is at least this share of the total:
    0.5 means seed noise is as large as the differences between configurations."""
    outlier_z: float = 3.5
    """A run is an outlier among its seed siblings beyond this many robust SDs of the others
    (Iglewicz & Hoaglin's modified z-score cut-off, 1993) ..."""
    outlier_rel: float = 0.05
    """... and at least this relative distance from their median. Our measurement: healthy AlgoPerf
    repeats (45 configurations x 3-5 studies) stay within 3.1% of their siblings; Pythia seed 2 is 9.7%
    behind, the AlgoPerf repeats that collapsed or escaped overfitting 22-28%."""
    rel_floor: float = 0.005
    """The robust SD of the siblings is at least this share of their median, so near-identical repeats
    (0.1% apart on criteo) do not make a 1% difference look like many SDs."""
    outlier_min_runs: int = 4
    """Finished runs a configuration needs before one of them can be an outlier: with 2 siblings their
    'median' is their mean and their spread one number, too noisy a yardstick (the demo's 3 seeds)."""
    spread_rel: float = 0.05
    """One-configuration groups: report a (max - min) / median spread of the seeds above this, same basis."""
    min_runs_per_config: int = 2
    """Configurations with fewer finished runs do not enter the variance components."""
    n_boot: int = 1000
    """Bootstrap replicates for the confidence intervals."""
    ci_level: float = 0.95
    rng_seed: int = 0
    """Seed of the bootstrap's random generator (results repeat exactly)."""

    def __post_init__(self) -> None:
        p = f"detectors.{NAME}"
        if self.measure not in MEASURES:
            raise ConfigError(f"{p}.measure must be one of {MEASURES}, got {self.measure!r}")
        if not 0.0 < self.seed_share < 1.0:
            raise ConfigError(f"{p}.seed_share must be in (0, 1), got {self.seed_share}")
        for name in ("outlier_z", "outlier_rel", "spread_rel", "rel_floor"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{p}.{name} must be > 0, got {getattr(self, name)}")
        if self.outlier_min_runs < 3:
            raise ConfigError(f"{p}.outlier_min_runs must be >= 3, got {self.outlier_min_runs}")
        if self.min_runs_per_config < 2:
            raise ConfigError(f"{p}.min_runs_per_config must be >= 2, got {self.min_runs_per_config}")
        if self.n_boot < 100:
            raise ConfigError(f"{p}.n_boot must be >= 100, got {self.n_boot}")
        if not 0.5 < self.ci_level < 1.0:
            raise ConfigError(f"{p}.ci_level must be in (0.5, 1), got {self.ci_level}")


def _outliers(view: SweepView, group: str, ok: pl.DataFrame, cfg: SeedSensitivityConfig, col: str) -> list[Finding]:
    """Run-scope findings for runs far from their seed siblings (same configuration, `outlier_min_runs` finished runs)."""
    found = []
    for (config,), sub in ok.group_by(["config"], maintain_order=True):
        if sub.height < cfg.outlier_min_runs:
            continue
        sub = sub.sort("run_id")
        y = sub[col].to_numpy()
        z, rel = stats.leave_one_out_z(y, cfg.rel_floor)
        rows = sub.to_dicts()
        for i in np.flatnonzero((np.abs(z) >= cfg.outlier_z) & (np.abs(rel) >= cfg.outlier_rel)):
            row = rows[i]
            others = [r for j, r in enumerate(rows) if j != i]
            med = float(np.median(np.delete(y, i)))
            direction = "worse" if rel[i] > 0 else "better"
            label = row["config_label"]
            summary = (
                f"{row['run_id']} ends at {view.outcome_name(group, cfg.measure)} {view.outcome_text(y[i])}, "
                f"{fmt(abs(100 * rel[i]))}% {direction} than the median {view.outcome_text(med)} of its {len(others)} "
                f"seed siblings (configuration {label}; {fmt(abs(z[i]))} robust SDs, threshold {cfg.outlier_z} and "
                f"{fmt(100 * cfg.outlier_rel)}%): the seed alone moves this configuration's result"
            )
            evidence = [view.final_ref(row, f"{row['run_id']}: {row['key']} {fmt(row['final_value'])} (this run)")]
            evidence += [view.final_ref(r, f"sibling {r['run_id']} ({r['repeat'] or 'repeat'})") for r in others[:5]]
            found.append(
                Finding(
                    kind="seed_sensitivity",
                    severity="medium",
                    confidence=0.8 if abs(z[i]) >= 2 * cfg.outlier_z else 0.7,
                    summary=summary,
                    evidence=tuple(e for e in evidence if e is not None),
                    detector=NAME,
                    run_id=row["run_id"],
                    finding_id=finding_id(NAME, row["run_id"], "outlier"),
                    fix=(
                        "Treat this run's result as one draw: rerun the configuration with 3+ seeds and compare "
                        "configurations by their seed median; if one seed keeps lagging, look at its data order "
                        "and initialisation (early loss curve) for the cause."
                    ),
                    expected_impact=f"Decisions based on the seed median instead of a {fmt(abs(100 * rel[i]))}% outlier.",
                    verify_by=f"Rerun configuration {label} with new seeds and check they land near {view.outcome_text(med)}.",
                )
            )
    return found


def _single_config(view: SweepView, group: str, ok: pl.DataFrame, outliers: list[Finding], cfg: SeedSensitivityConfig, col: str) -> list[Finding]:
    """One configuration repeated over seeds: report the spread when it is wide or an outlier exists."""
    y = ok[col].to_numpy()
    med = float(np.median(y))
    spread = float(y.max() - y.min())
    rel_spread = spread / abs(med) if med else float("inf")
    if not outliers and rel_spread < cfg.spread_rel:
        return []
    rng = np.random.default_rng(cfg.rng_seed)
    boot = y[rng.integers(0, y.size, size=(cfg.n_boot, y.size))]
    sd_lo, sd_hi = stats.bias_corrected_ci(boot.std(axis=1, ddof=1), float(np.std(y, ddof=1)), cfg.ci_level, 0.0)
    rows = ok.sort(col).to_dicts()
    per_run = ", ".join(f"{r['run_id'].rsplit('/', 1)[-1]} {view.outcome_text(r[col])}" for r in rows)
    lead = f"; outlier(s): {', '.join(f.run_id for f in outliers)}" if outliers else ""
    summary = (
        f"{ok.height} runs of one configuration in {view.group_label(group)} differing only by seed end at "
        f"{view.outcome_name(group, cfg.measure)} {per_run}: spread {fmt(spread)} = "
        f"{fmt(100 * rel_spread)}% of the median, seed SD {fmt(float(np.std(y, ddof=1)))} "
        f"[{int(100 * cfg.ci_level)}% bootstrap CI {fmt(sd_lo)}, {fmt(sd_hi)}]{lead}. A difference smaller than "
        "this between two configurations run with one seed each is not evidence of an effect."
    )
    evidence = [view.final_ref(r) for r in rows[:6]]
    return [
        Finding(
            kind="seed_sensitivity",
            severity="medium" if outliers else "low",
            confidence=0.85 if outliers else 0.7,
            summary=summary,
            evidence=tuple(e for e in evidence if e is not None),
            detector=NAME,
            scope="sweep",
            run_ids=tuple(ok["run_id"].to_list()),
            finding_id=finding_id(NAME, None, group, "spread"),
            fix="Compare configurations on the median of 3+ seeds, and report the seed spread with every result.",
            expected_impact=f"Differences below {fmt(spread)} stop being read as effects.",
            verify_by="Run two more seeds of this configuration and check the spread stays within the interval.",
        )
    ]


def _components(view: SweepView, group: str, ok: pl.DataFrame, cfg: SeedSensitivityConfig, col: str) -> list[Finding]:
    """Several configurations with repeats: seed variance against configuration variance."""
    counts = ok.group_by("config").agg(pl.len().alias("n")).filter(pl.col("n") >= cfg.min_runs_per_config)
    if counts.height < 2:
        return []
    ok = ok.filter(pl.col("config").is_in(counts["config"].to_list())).sort("config", "run_id")
    y = ok[col].to_numpy()
    g, k = stats.codes(ok["config"].to_list())
    within, between, _ = stats.variance_components_batch(y[None, :], g, k)
    total = within[0] + between[0]
    share = float(within[0] / total) if total > 0 else float("nan")
    if not share >= cfg.seed_share:
        return []
    rng = np.random.default_rng(cfg.rng_seed)
    idx = stats.stratified_bootstrap_indices(g, cfg.n_boot, rng)
    bw, bb, _ = stats.variance_components_batch(y[idx], g, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        share_lo, share_hi = stats.bias_corrected_ci(bw / (bw + bb), share, cfg.ci_level, 0.0, 1.0)
    # How often does the apparent winner stay the winner when the seeds are redrawn?
    sums = y[idx] @ stats.onehot(g, k)
    means = sums / np.bincount(g, minlength=k)
    observed = np.bincount(g, weights=y, minlength=k) / np.bincount(g, minlength=k)
    winner = int(np.argmin(observed))
    p_winner = float(np.mean(np.argmin(means, axis=1) == winner))
    order = np.argsort(observed)
    gap = float(observed[order[1]] - observed[order[0]])
    labels = dict(zip(ok["config"].to_list(), ok["config_label"].to_list()))
    names = list(dict.fromkeys(ok["config"].to_list()))
    seed_sd = float(np.sqrt(within[0]))
    summary = (
        f"In {view.group_label(group)} ({k} configurations, {ok.height} finished runs) seed noise is "
        f"{fmt(100 * share)}% of the variance of {view.outcome_name(group, cfg.measure)} "
        f"[{int(100 * cfg.ci_level)}% bootstrap CI {fmt(100 * share_lo)}%, {fmt(100 * share_hi)}%; threshold {fmt(100 * cfg.seed_share)}%]: "
        f"seed SD {fmt(seed_sd)} vs configuration SD {fmt(float(np.sqrt(between[0])))}. The best configuration "
        f"{labels[names[winner]]} leads {labels[names[order[1]]]} by {fmt(gap)}, and stays best in only "
        f"{fmt(100 * p_winner)}% of bootstrap redraws of the seeds."
    )
    best_rows = ok.filter(pl.col("config").is_in([names[winner], names[order[1]]])).to_dicts()
    evidence = [view.final_ref(r, f"{labels[r['config']]} ({r['repeat'] or r['run_id']}): {fmt(r['final_value'])}") for r in best_rows[:8]]
    return [
        Finding(
            kind="seed_sensitivity",
            severity="medium" if share_lo >= cfg.seed_share else "low",
            confidence=0.85 if share_lo >= cfg.seed_share else 0.65,
            summary=summary,
            evidence=tuple(e for e in evidence if e is not None),
            detector=NAME,
            scope="sweep",
            run_ids=tuple(ok["run_id"].to_list()),
            finding_id=finding_id(NAME, None, group, "components"),
            fix=(
                "Do not pick a configuration from this sweep on single runs: add seeds until the seed SD of the mean "
                f"(seed SD / sqrt(n) = {fmt(seed_sd)} / sqrt(n)) is below the gaps you care about, and rank by the mean."
            ),
            expected_impact="A configuration choice that survives a rerun with new seeds.",
            verify_by="Rerun the top two configurations with 3+ new seeds each and check their order holds.",
        )
    ]


@sweep_detector(NAME)
def seed_sensitivity(tables: SweepTables, cfg: SeedSensitivityConfig) -> list[Finding]:
    """Runs differing only by seed differ more than the effect being studied (SPEC §5 `seed_sensitivity`).

    Evidence: each run's outcome (final or best validation loss, train loss when no
    validation; `outcomes.py`) and its configuration and seed (`grouping.py`). Failed runs
    are left out here (they are `hp_instability_boundary`'s subject).

    - Several configurations with repeats: one-way variance components (seed = within,
      configuration = between); flagged when the seed share of the variance reaches
      `seed_share` (0.5: seed noise as large as the differences being compared), with a
      stratified bootstrap interval (runs resampled within their configuration, shifted by
      the bootstrap's bias) and the share of redraws in which the apparent winner stays
      the winner.
    - One configuration over several seeds (Pythia's 4 seeds): the spread, reported when
      it exceeds `spread_rel` of the median or a seed is an outlier.
    - Any configuration with `outlier_min_runs` (4) finished seeds: a run-scope finding for a seed whose
      outcome is `outlier_z` robust SDs and `outlier_rel` away from its siblings'
      median (leave-one-out, so the outlier does not widen its own yardstick).
    """
    view = sweep_view(tables, cfg.grouping, cfg.outcome)
    col = "y_final" if cfg.measure == "final" else "y_best"
    findings: list[Finding] = []
    for group, runs in view.groups(min_runs=2):
        if view.outcome_key(group)[0] is None:
            continue
        ok = runs.filter(~pl.col("failed") & pl.col(col).is_finite())
        if ok.height < 2:
            continue
        outliers = _outliers(view, group, ok, cfg, col)
        findings += outliers
        if ok["config"].n_unique() == 1:
            findings += _single_config(view, group, ok, outliers, cfg, col)
        else:
            findings += _components(view, group, ok, cfg, col)
    return findings
