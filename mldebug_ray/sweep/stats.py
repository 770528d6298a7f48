"""Sweep statistics in numpy: ranks, variance components, bootstrap, permutation tests, Benjamini-Hochberg.

Everything here is vectorised over bootstrap replicates or permutations (one matrix per
batch, never a Python loop per replicate) and takes an explicit `np.random.Generator`, so
a detector that seeds its generator gives the same answer on every invocation. The tests
compare each function with a slow, obvious version (tests/sweep/test_stats.py).

Conventions: outcomes are oriented so that lower is better (a loss); a failed run is
+inf, which ranks last and ties with the other failures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Permutations are drawn in blocks of this many rows to bound memory on big groups.
PERM_BLOCK = 256


# ---- ranks -------------------------------------------------------------------------


def rankdata(a) -> np.ndarray:
    """Average ranks (1-based) of a 1-D array; ties share the mean of their ranks; inf ranks last."""
    a = np.asarray(a, dtype=float)
    n = a.size
    if n == 0:
        return np.empty(0)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    new = np.ones(n, dtype=bool)
    new[1:] = s[1:] != s[:-1]
    dense = np.cumsum(new)  # tie-run id of each sorted position, 1-based
    bounds = np.concatenate((np.flatnonzero(new), [n]))  # start of each tie run, then n
    avg = 0.5 * (bounds[dense - 1] + bounds[dense] - 1) + 1.0
    out = np.empty(n)
    out[order] = avg
    return out


def rankdata_rows(a: np.ndarray) -> np.ndarray:
    """`rankdata` applied to every row of a 2-D array, in one pass."""
    a = np.asarray(a, dtype=float)
    b, n = a.shape
    if n == 0:
        return np.empty((b, 0))
    order = np.argsort(a, axis=1, kind="mergesort")
    s = np.take_along_axis(a, order, axis=1)
    new = np.ones_like(s, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    pos = np.broadcast_to(np.arange(n), (b, n))
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    last = np.ones_like(new)
    last[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(last, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
    out = np.empty_like(s)
    np.put_along_axis(out, order, 0.5 * (start + end) + 1.0, axis=1)
    return out


def codes(labels) -> tuple[np.ndarray, int]:
    """Integer codes 0..k-1 for hashable labels (first-seen order) and k."""
    index: dict = {}
    out = np.fromiter((index.setdefault(x, len(index)) for x in labels), dtype=np.int64, count=len(labels))
    return out, len(index)


def onehot(group: np.ndarray, k: int) -> np.ndarray:
    """N x k indicator matrix of integer group codes."""
    m = np.zeros((group.size, k))
    m[np.arange(group.size), group] = 1.0
    return m


def group_sums(y: np.ndarray, group: np.ndarray, k: int) -> np.ndarray:
    """Per-group sums of every row of `y` (B x N) -> B x k; `group` is N codes or B x N codes (one set per row).

    One bincount over the flattened rows: O(B N), where a one-hot product would be O(B N k).
    """
    y = np.atleast_2d(np.asarray(y, dtype=float))
    b = y.shape[0]
    offsets = np.arange(b)[:, None] * k + np.broadcast_to(group, y.shape)
    return np.bincount(offsets.ravel(), weights=y.ravel(), minlength=b * k).reshape(b, k)


# ---- variance components -------------------------------------------------------------


@dataclass(frozen=True)
class VarianceComponents:
    """One-way random-effects decomposition of an outcome into between- and within-group variance."""

    within: float  # seed (within-configuration) variance, the mean square within
    between: float  # configuration variance, (MSB - MSW) / n0 clipped at 0
    n0: float  # the effective group size of an unbalanced design

    @property
    def seed_share(self) -> float:
        """within / (within + between): 1 means every difference between configurations is seed noise."""
        total = self.within + self.between
        return float(self.within / total) if total > 0 else float("nan")


def variance_components_batch(y: np.ndarray, group: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Within and between variance components of every row of `y` (B x N) for fixed group codes.

    ANOVA estimators for an unbalanced one-way layout (Searle, Casella & McCulloch,
    *Variance Components*, 1992, §3.5): MSW = SSW / (N - k), MSB = SSB / (k - 1),
    n0 = (N - sum n_i^2 / N) / (k - 1), between = max(0, (MSB - MSW) / n0).
    """
    y = np.atleast_2d(np.asarray(y, dtype=float))
    n = y.shape[1]
    sizes = np.bincount(group, minlength=k).astype(float)
    if k < 2 or n - k < 1:
        raise ValueError("variance components need at least 2 groups and more runs than groups")
    sums = group_sums(y, group, k)
    total = y.sum(axis=1)
    ss_groups = (sums**2 / sizes).sum(axis=1)
    ssw = (y**2).sum(axis=1) - ss_groups
    ssb = ss_groups - total**2 / n
    msw = np.maximum(ssw, 0.0) / (n - k)
    msb = np.maximum(ssb, 0.0) / (k - 1)
    n0 = (n - (sizes**2).sum() / n) / (k - 1)
    return msw, np.maximum(0.0, (msb - msw) / n0), float(n0)


def variance_components(y, group) -> VarianceComponents:
    """Variance components of a 1-D outcome `y` grouped by labels `group`."""
    g, k = codes(list(group))
    within, between, n0 = variance_components_batch(np.asarray(y, dtype=float)[None, :], g, k)
    return VarianceComponents(float(within[0]), float(between[0]), n0)


def stratified_bootstrap_indices(group: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """n_boot x N indices that resample runs with replacement within each group (group sizes kept).

    Column j of the result always holds a run of the same group as run j, so group codes
    stay valid for every replicate.
    """
    group = np.asarray(group)
    out = np.empty((n_boot, group.size), dtype=np.int64)
    for g in np.unique(group):  # one vectorised draw per group, not per replicate
        members = np.flatnonzero(group == g)
        out[:, members] = members[rng.integers(0, members.size, size=(n_boot, members.size))]
    return out


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples, NaN ignored."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(samples, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def bias_corrected_ci(samples: np.ndarray, estimate: float, level: float = 0.95,
                      lo: float = -np.inf, hi: float = np.inf) -> tuple[float, float]:
    """Percentile interval shifted by the bootstrap's bias (median of the samples minus the estimate), clipped to [lo, hi].

    Resampling 3-5 seeds with replacement duplicates runs, which shrinks the spread inside
    a configuration: a share of variance or an SD computed on the replicates is biased,
    and the plain percentile interval can miss the estimate altogether. Shifting the
    replicates so that their median is the estimate removes that first-order bias
    (Efron & Tibshirani 1993, §10.6).
    """
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0 or not np.isfinite(estimate):
        return float("nan"), float("nan")
    shift = float(np.median(samples)) - float(estimate)
    a, b = percentile_ci(samples - shift, level)
    return float(np.clip(a, lo, hi)), float(np.clip(b, lo, hi))


# ---- permutation tests -------------------------------------------------------------------


def permutations_within(strata: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """n_perm x N index arrays, each a random permutation that only swaps runs of the same stratum.

    `strata` are integer codes (`codes`): a run's code plus a uniform draw in [0, 1) sorts
    it among the members of its own stratum only.
    """
    strata = np.asarray(strata)
    n = strata.size
    if n and np.all(strata == strata[0]):
        return rng.permuted(np.tile(np.arange(n), (n_perm, 1)), axis=1)
    order = np.argsort(strata, kind="stable")  # runs grouped by stratum
    keys = strata[order].astype(float)[None, :] + rng.random((n_perm, n))  # shuffle inside each stratum
    shuffled = order[np.argsort(keys, axis=1, kind="stable")]
    out = np.empty((n_perm, n), dtype=np.int64)
    out[:, order] = shuffled  # position order[j] receives a random member of its own stratum
    return out


def group_sum_stat(y: np.ndarray, group: np.ndarray, k: int) -> np.ndarray:
    """sum_g S_g^2 / n_g of every row of `y` (B x N) for fixed groups (S_g: the group's sum).

    With `y` the centred ranks this is the Kruskal-Wallis statistic up to constants that
    do not change under permutation; with a 0/1 outcome it is the chi-square statistic up
    to such constants.
    """
    sizes = np.bincount(group, minlength=k).astype(float)
    sizes[sizes == 0] = 1.0
    return (group_sums(y, group, k) ** 2 / sizes).sum(axis=1)


def rank_eta2_rows(ranks: np.ndarray, group: np.ndarray, k: int) -> np.ndarray:
    """Share of the rank variance between groups, per row: SS_between / SS_total of the ranks.

    Equal to the tie-corrected Kruskal-Wallis H / (N - 1) (the epsilon-squared effect size
    of Tomczak & Tomczak 2014); 0 when the ranks are all tied.
    """
    ranks = np.atleast_2d(ranks)
    n = ranks.shape[1]
    centred = ranks - ranks.mean(axis=1, keepdims=True)
    ss_total = (centred**2).sum(axis=1)
    sizes = np.bincount(group, minlength=k).astype(float)
    sizes[sizes == 0] = 1.0
    ss_between = (group_sums(centred, group, k) ** 2 / sizes).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ss_total > 0, ss_between / ss_total, 0.0) if n else np.zeros(ranks.shape[0])


def pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of a fixed vector `x` (N) with every row of `y` (B x N); NaN for a constant row."""
    y = np.atleast_2d(y)
    xc = x - x.mean()
    yc = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc**2).sum() * (yc**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, yc @ xc / den, np.nan)


def kruskal_h(ranks: np.ndarray, group: np.ndarray, k: int) -> float:
    """Kruskal-Wallis H with the tie correction, from average ranks."""
    n = ranks.size
    if n < 2:
        return float("nan")
    sizes = np.bincount(group, minlength=k).astype(float)
    sums = np.bincount(group, weights=ranks, minlength=k)
    keep = sizes > 0
    h = 12.0 / (n * (n + 1)) * (sums[keep] ** 2 / sizes[keep]).sum() - 3.0 * (n + 1)
    _, counts = np.unique(ranks, return_counts=True)
    correction = 1.0 - (counts**3 - counts).sum() / (n**3 - n)
    return float(h / correction) if correction > 0 else 0.0


def spearman(x, y) -> float:
    """Spearman's rank correlation (Pearson on average ranks); NaN when either is constant."""
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def permutation_pvalue(observed: float, null: np.ndarray) -> float:
    """(1 + #{null >= observed}) / (1 + n): the Monte-Carlo p-value that is never 0 (Phipson & Smyth 2010)."""
    null = np.asarray(null, dtype=float)
    tol = 1e-12 * max(1.0, abs(observed))
    return float((1 + np.count_nonzero(null >= observed - tol)) / (1 + null.size))


def permutation_test(stat_rows, y: np.ndarray, perms_fn, n_perm: int) -> tuple[float, float]:
    """Observed statistic and permutation p-value.

    `stat_rows(Y)` maps a B x N matrix of outcome rows to B statistics; `perms_fn(b)`
    returns b x N index arrays (drawn in blocks of PERM_BLOCK to bound memory).
    """
    observed = float(stat_rows(y[None, :])[0])
    null = []
    done = 0
    while done < n_perm:
        b = min(PERM_BLOCK, n_perm - done)
        null.append(stat_rows(y[perms_fn(b)]))
        done += b
    return observed, permutation_pvalue(observed, np.concatenate(null) if null else np.empty(0))


# ---- multiple comparisons -------------------------------------------------------------------


def bh_adjust(p) -> np.ndarray:
    """Benjamini-Hochberg q-values (step-up, monotone, capped at 1); NaN p-values stay NaN and do not count."""
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return q
    order = ok[np.argsort(p[ok], kind="mergesort")]
    scaled = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return q


# ---- small exact tests -----------------------------------------------------------------------------


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact_greater(fail_in: int, n_in: int, fail_out: int, n_out: int) -> float:
    """One-sided Fisher exact p: P(at least `fail_in` of the failures fall in the `n_in` runs) under no association."""
    n = n_in + n_out
    f = fail_in + fail_out
    denom = _log_comb(n, n_in)
    p = 0.0
    for k in range(fail_in, min(f, n_in) + 1):
        if f - k > n_out:
            continue
        p += math.exp(_log_comb(f, k) + _log_comb(n - f, n_in - k) - denom)
    return min(1.0, p)


# ---- robust outliers -----------------------------------------------------------------------------

MAD_TO_SIGMA = 1.4826


def leave_one_out_z(y, rel_floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Each value's distance from the median of the others, in robust SDs of the others.

    Returns (z, rel): z = (y_i - median_others) / max(1.4826 * MAD_others, rel_floor *
    |median_others|) and rel = (y_i - median_others) / |median_others|. The floor keeps
    near-identical repeats from producing huge z for tiny differences.
    """
    y = np.asarray(y, dtype=float)
    n = y.size
    z = np.full(n, np.nan)
    rel = np.full(n, np.nan)
    if n < 3:
        return z, rel
    others = np.broadcast_to(y, (n, n))[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    med = np.median(others, axis=1)
    mad = np.median(np.abs(others - med[:, None]), axis=1)
    scale = np.maximum(MAD_TO_SIGMA * mad, rel_floor * np.abs(med))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(scale > 0, (y - med) / scale, np.nan)
        rel = np.where(med != 0, (y - med) / np.abs(med), np.nan)
    return z, rel
