"""ranking_inconsistency: configuration rankings that flip across studies, with the flips named."""

import itertools

import numpy as np
import pytest

from mldebug_ray.errors import ConfigError
from mldebug_ray.sweep.ranking_inconsistency import RankingInconsistencyConfig, kendall_w, ranking_inconsistency

from synthetic import Run, curve


def studies(finals_per_study):
    return [
        Run(f"sub/study_{s}/wl/trial_{t}", params={"lr": 10.0 ** -t}, val=curve(v))
        for s, finals in enumerate(finals_per_study)
        for t, v in enumerate(finals, start=1)
    ]


def test_rankings_that_disagree_across_studies_fire_and_name_the_flips(sweep, evidence_holds, tmp_path):
    rng = np.random.default_rng(0)
    finals = [list(1.0 + 0.01 * rng.permutation(5)) for _ in range(5)]
    found = ranking_inconsistency(sweep(studies(finals)), RankingInconsistencyConfig())
    assert len(found) == 1
    f = found[0]
    assert f.kind == "ranking_inconsistency" and f.severity == "medium"
    assert "Flips:" in f.summary and "beats" in f.summary and "study_" in f.summary
    assert "Kendall's W" in f.summary
    evidence_holds(tmp_path / "out", found)


def test_a_changing_winner_in_an_otherwise_stable_ranking_is_low(sweep):
    finals = [[1.00, 1.01, 1.2, 1.3, 1.4], [1.01, 1.00, 1.2, 1.3, 1.4], [1.00, 1.01, 1.2, 1.3, 1.4]]
    found = ranking_inconsistency(sweep(studies(finals)), RankingInconsistencyConfig())
    assert [f.severity for f in found] == ["low"]
    assert "trial_1 beats trial_2 in 2 repeat(s)" in found[0].summary


def test_identical_rankings_stay_silent(sweep):
    finals = [[1.0 + 0.1 * t + 0.001 * s for t in range(5)] for s in range(4)]
    assert ranking_inconsistency(sweep(studies(finals)), RankingInconsistencyConfig()) == []


def test_kendall_w_matches_its_formula():
    rng = np.random.default_rng(1)
    ranks = np.vstack([rng.permutation(6) + 1.0 for _ in range(4)])
    m, n = ranks.shape
    totals = ranks.sum(axis=0)
    s = sum((t - m * (n + 1) / 2) ** 2 for t in totals)
    assert kendall_w(ranks) == pytest.approx(12 * s / (m**2 * (n**3 - n)))
    assert kendall_w(np.vstack([np.arange(1.0, 7)] * 3)) == pytest.approx(1.0)
    # Mean pairwise Spearman equals (m W - 1) / (m - 1) without ties.
    rhos = [np.corrcoef(a, b)[0, 1] for a, b in itertools.combinations(ranks, 2)]
    assert np.mean(rhos) == pytest.approx((m * kendall_w(ranks) - 1) / (m - 1))


@pytest.mark.parametrize("field, value", [("min_configs", 2), ("rho_threshold", 1.0), ("measure", "x"), ("top_configs", 1)])
def test_bad_settings_name_their_key(field, value):
    with pytest.raises(ConfigError, match=f"detectors.ranking_inconsistency.{field}"):
        RankingInconsistencyConfig(**{field: value})
