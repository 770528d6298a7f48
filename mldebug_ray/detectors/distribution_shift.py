"""Distribution shift: a held-out or production split differs materially from the training split, feature by feature."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding

LABEL_FEATURE = "y"  # probes/data.py LABEL_FEATURE: the labels compared as a categorical feature


@dataclass
class DistributionShiftConfig:
    """Thresholds of the `distribution_shift` detector (keys `detectors.distribution_shift.*`)."""

    min_psi: float = 0.25
    """A feature whose PSI against train reaches this moved: the credit-scoring rule of thumb (Siddiqi
    2006, "Credit Risk Scorecards"): below 0.1 stable, 0.1-0.25 a moderate change, 0.25 and above a
    major shift that calls for action."""
    max_ks_p: float = 0.01
    """Or: the two-sample KS test's p-value, Bonferroni-adjusted over all the run's KS tests, below this..."""
    min_ks_stat: float = 0.1
    """...together with a KS statistic of at least this (the CDFs 10 points apart somewhere): with
    large samples a p-value alone flags differences too small to matter."""
    high_frac: float = 0.5
    """`high` when at least this share of a split's input features moved (the split measures another
    task); `medium` otherwise."""
    max_evidence: int = 5
    """Features cited per finding, the ones that moved most first."""

    def __post_init__(self) -> None:
        if self.min_psi <= 0:
            raise ConfigError(f"detectors.distribution_shift.min_psi must be > 0, got {self.min_psi}")
        if not 0 < self.max_ks_p < 1:
            raise ConfigError(f"detectors.distribution_shift.max_ks_p must be in (0, 1), got {self.max_ks_p}")
        if not 0 <= self.min_ks_stat < 1:
            raise ConfigError(f"detectors.distribution_shift.min_ks_stat must be in [0, 1), got {self.min_ks_stat}")
        if not 0 < self.high_frac <= 1:
            raise ConfigError(f"detectors.distribution_shift.high_frac must be in (0, 1], got {self.high_frac}")
        if self.max_evidence < 1:
            raise ConfigError(f"detectors.distribution_shift.max_evidence must be >= 1, got {self.max_evidence}")


def _describe(r: dict) -> str:
    name = "labels" if r["feature"] == LABEL_FEATURE else f"`{r['feature']}`"
    if r["feature_kind"] == "categorical":
        return (f"{name}: PSI {fmt(r['psi'])}, share of {r['top_category']!s} {fmt(100 * (r['top_category_ref_frac'] or 0))}% -> "
                f"{fmt(100 * (r['top_category_frac'] or 0))}%")
    return f"{name}: PSI {fmt(r['psi'])}, KS {fmt(r['ks_stat'])} (adj. p {fmt(r['ks_p_adjusted'])}), mean {fmt(r['mean_ref'])} -> {fmt(r['mean'])}"


@detector("distribution_shift")
def distribution_shift(ev: RunEvidence, cfg: DistributionShiftConfig) -> list[Finding]:
    """A split differs materially from the training data (SPEC §5 `distribution_shift`).

    Evidence: the data probe's `data_features` rows: per held-out split (validation, test,
    production) and feature, the PSI over train's decile bins (or per category), and for
    numeric features a two-sample KS test on uniform samples of up to 20,000 values per side.
    A feature moved when PSI >= 0.25 (Siddiqi's "major shift"), or when the Bonferroni-adjusted
    KS p-value is below 0.01 with a KS statistic of at least 0.1. The labels are compared as the
    feature `y` (label shift). One finding per split with moved features, citing the features
    that moved most; `high` when half or more of the input features moved.
    """
    feats = ev.data_features
    if feats.height == 0:
        return []
    rid = ev.run_id
    moved_expr = (pl.col("psi").fill_null(0) >= cfg.min_psi) | (
        (pl.col("ks_p_adjusted").fill_null(1) < cfg.max_ks_p) & (pl.col("ks_stat").fill_null(0) >= cfg.min_ks_stat)
    )
    out = []
    for split in feats["split"].unique(maintain_order=True).to_list():
        rows = feats.filter(pl.col("split") == split)
        moved = rows.filter(moved_expr).sort(["psi", "ks_stat"], descending=True, nulls_last=True)
        if moved.height == 0:
            continue
        inputs = rows.filter(pl.col("feature") != LABEL_FEATURE).height
        moved_inputs = moved.filter(pl.col("feature") != LABEL_FEATURE).height
        severity = "high" if inputs and moved_inputs / inputs >= cfg.high_frac else "medium"
        reference = moved["reference_split"][0]
        top = list(moved.head(cfg.max_evidence).iter_rows(named=True))
        evidence = tuple(
            EvidenceRef("data_features", {"run_id": rid, "split": split, "feature": r["feature"]}, r["psi"], f"{split} vs {reference}: {_describe(r)}")
            for r in top
        )
        what = f"{moved_inputs} of {inputs} input feature(s)" if inputs else "no input features"
        label_moved = moved.filter(pl.col("feature") == LABEL_FEATURE).height > 0
        out.append(
            Finding(
                kind="distribution_shift",
                severity=severity,  # type: ignore[arg-type]
                confidence=0.85 if moved["psi"].fill_null(0).max() >= cfg.min_psi else 0.8,
                summary=(
                    f"the {split} split differs from {reference}: {what} moved" + (" and the label distribution shifted" if label_moved else "")
                    + "; most: " + "; ".join(_describe(r) for r in top[:3])
                ),
                evidence=evidence,
                detector="distribution_shift",
                run_id=rid,
                finding_id=finding_id("distribution_shift", rid, split),
                fix=(
                    f"Check how {split} was collected against {reference} (time range, source, preprocessing of the moved "
                    "features); if the shift is real, retrain or fine-tune on data like it, or reweight training examples by "
                    f"the density ratio; if it is a pipeline bug (units, scaling, encoding), fix the {split} preprocessing."
                ),
                expected_impact=f"{split} scores predict deployed performance; after a fix the moved features' PSI falls below {fmt(cfg.min_psi)}.",
                verify_by=f"Rerun the data probe: data_features rows for {split} have PSI < {fmt(cfg.min_psi)} and no adjusted KS p < {fmt(cfg.max_ks_p)}.",
            )
        )
    return out
