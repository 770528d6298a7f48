"""Sweep statistics: every vectorised function against a slow, obvious version on random inputs."""

import itertools
import math

import numpy as np
import pytest

from mldebug_ray.sweep import stats


def naive_ranks(a):
    a = list(a)
    return np.array([sum(1 for b in a if b < x) + (sum(1 for b in a if b == x) + 1) / 2 for x in a])


@pytest.mark.parametrize("seed", range(5))
def test_average_ranks_match_counting_with_ties_and_inf(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, size=30).astype(float)
    a[rng.random(30) < 0.2] = np.inf
    assert np.allclose(stats.rankdata(a), naive_ranks(a))
    rows = rng.integers(0, 4, size=(7, 12)).astype(float)
    rows[0, :3] = np.inf
    assert np.allclose(stats.rankdata_rows(rows), np.vstack([naive_ranks(r) for r in rows]))


def test_group_sums_match_a_loop():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(4, 20))
    g = rng.integers(0, 5, size=20)
    want = np.array([[y[b, g == k].sum() for k in range(5)] for b in range(4)])
    assert np.allclose(stats.group_sums(y, g, 5), want)
    per_row = rng.integers(0, 5, size=(4, 20))
    want = np.array([[y[b, per_row[b] == k].sum() for k in range(5)] for b in range(4)])
    assert np.allclose(stats.group_sums(y, per_row, 5), want)


@pytest.mark.parametrize("seed", range(4))
def test_variance_components_match_the_anova_formulas(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 6, size=4)
    groups = np.repeat(np.arange(4), sizes)
    y = rng.normal(size=groups.size) + groups * rng.normal()
    n, k = y.size, 4
    means = [y[groups == g].mean() for g in range(k)]
    ssw = sum(((y[groups == g] - means[g]) ** 2).sum() for g in range(k))
    ssb = sum(sizes[g] * (means[g] - y.mean()) ** 2 for g in range(k))
    msw, msb = ssw / (n - k), ssb / (k - 1)
    n0 = (n - (sizes**2).sum() / n) / (k - 1)
    vc = stats.variance_components(y, groups)
    assert vc.within == pytest.approx(msw)
    assert vc.between == pytest.approx(max(0.0, (msb - msw) / n0))
    assert vc.seed_share == pytest.approx(msw / (msw + max(0.0, (msb - msw) / n0)))


def test_variance_components_find_pure_seed_noise_and_pure_effects():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 10)
    noise_only = stats.variance_components(rng.normal(size=200), groups)
    assert noise_only.seed_share > 0.7
    effects = stats.variance_components(groups * 1.0 + 0.01 * rng.normal(size=200), groups)
    assert effects.seed_share < 0.01


def test_stratified_bootstrap_keeps_every_run_in_its_group():
    rng = np.random.default_rng(0)
    g = np.array([0, 0, 1, 1, 1, 2, 2])
    idx = stats.stratified_bootstrap_indices(g, 200, rng)
    assert idx.shape == (200, 7)
    assert np.array_equal(g[idx], np.broadcast_to(g, idx.shape))
    assert len({tuple(r) for r in idx}) > 50  # really random


def test_permutations_within_strata_only_swap_runs_of_one_stratum():
    rng = np.random.default_rng(0)
    strata = np.array([2, 0, 1, 0, 2, 1, 1, 0])
    p = stats.permutations_within(strata, 300, rng)
    assert np.array_equal(strata[p], np.broadcast_to(strata, p.shape))
    assert all(sorted(row) == list(range(8)) for row in p)
    single = stats.permutations_within(np.zeros(6, dtype=np.int64), 100, rng)
    assert all(sorted(row) == list(range(6)) for row in single)


def test_monte_carlo_permutation_p_matches_full_enumeration():
    rng = np.random.default_rng(3)
    y = rng.normal(size=7) + np.array([0, 0, 0, 1, 1, 1.5, 1.5])
    g = np.array([0, 0, 0, 1, 1, 2, 2])
    r = stats.rankdata(y)
    rc = r - r.mean()
    observed = stats.group_sum_stat(rc[None, :], g, 3)[0]
    perms = np.array(list(itertools.permutations(range(7))))
    exact = np.mean(stats.group_sum_stat(rc[perms], g, 3) >= observed - 1e-12)
    _, p = stats.permutation_test(lambda Y: stats.group_sum_stat(Y, g, 3), rc,
                                  lambda b: stats.permutations_within(np.zeros(7, dtype=np.int64), b, rng), 20000)
    assert p == pytest.approx(exact, abs=0.01)


def test_kruskal_h_is_n_minus_1_times_rank_eta_squared():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 5, size=25).astype(float)  # many ties
    g = rng.integers(0, 4, size=25)
    r = stats.rankdata(y)
    assert stats.kruskal_h(r, g, 4) == pytest.approx((25 - 1) * stats.rank_eta2_rows(r, g, 4)[0])


def test_pearson_rows_and_spearman_match_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=15)
    y = rng.normal(size=(5, 15))
    assert np.allclose(stats.pearson_rows(x, y), [np.corrcoef(x, row)[0, 1] for row in y])
    assert stats.spearman(x, y[0]) == pytest.approx(np.corrcoef(naive_ranks(x), naive_ranks(y[0]))[0, 1])


@pytest.mark.parametrize("seed", range(5))
def test_benjamini_hochberg_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(12) ** 3
    m = p.size
    order = np.argsort(p)
    ranks = np.empty(m, dtype=int)
    ranks[order] = np.arange(1, m + 1)
    # q_i = min over p_j >= p_i of p_j * m / rank_j
    want = np.array([min(min(1.0, p[j] * m / ranks[j]) for j in range(m) if p[j] >= p[i]) for i in range(m)])
    assert np.allclose(stats.bh_adjust(p), want)
    with_nan = np.append(p, np.nan)
    assert np.isnan(stats.bh_adjust(with_nan)[-1])
    assert np.allclose(stats.bh_adjust(with_nan)[:-1], want)


@pytest.mark.parametrize("table", [(5, 5, 0, 20), (3, 4, 1, 10), (0, 3, 2, 5), (2, 2, 2, 2)])
def test_fisher_exact_matches_the_hypergeometric_sum(table):
    a, n_in, c, n_out = table
    n, f = n_in + n_out, a + c
    want = sum(math.comb(f, k) * math.comb(n - f, n_in - k) for k in range(a, min(f, n_in) + 1)) / math.comb(n, n_in)
    assert stats.fisher_exact_greater(a, n_in, c, n_out) == pytest.approx(want)


def test_leave_one_out_z_matches_a_loop():
    y = np.array([2.796, 3.171, 2.888, 2.932, 2.9])
    z, rel = stats.leave_one_out_z(y, 0.005)
    for i in range(y.size):
        others = np.delete(y, i)
        med = np.median(others)
        scale = max(1.4826 * np.median(np.abs(others - med)), 0.005 * abs(med))
        assert z[i] == pytest.approx((y[i] - med) / scale)
        assert rel[i] == pytest.approx((y[i] - med) / abs(med))


def test_bias_corrected_interval_contains_the_estimate():
    samples = np.linspace(0.91, 0.97, 101)  # all above the estimate, as within-config resampling gives
    lo, hi = stats.bias_corrected_ci(samples, 0.9, 0.95, 0.0, 1.0)
    assert lo < 0.9 < hi
    assert stats.percentile_ci(samples)[0] > 0.9  # the plain interval misses it
