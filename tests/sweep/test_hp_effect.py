"""hp_effect: permutation tests with few seeds, BH correction, importance, and the null's false-positive rate."""

import numpy as np
import pytest

from mldebug_ray.errors import ConfigError
from mldebug_ray.sweep import stats
from mldebug_ray.sweep.hp_effect import HpEffectConfig, hp_effect

from synthetic import Run, curve

LRS = (1e-4, 3e-3, 3e-2)


def lr_grid(levels, noise, seeds=3, rng=None, extra=None):
    rng = rng or np.random.default_rng(0)
    return [
        Run(f"lr_grid/lr{lr}_seed{s}", params={"optimizer.lr": lr, "seed": s, **(extra or {})},
            val=curve(level + noise * rng.normal()))
        for lr, level in zip(LRS, levels)
        for s in range(seeds)
    ]


def test_a_u_shaped_learning_rate_effect_under_seed_noise_is_found(sweep, evidence_holds, tmp_path):
    found = hp_effect(sweep(lr_grid([2.5, 2.1, 2.3], noise=0.03)), HpEffectConfig())
    assert len(found) == 1
    f = found[0]
    assert (f.kind, f.scope) == ("hp_effect", "sweep")
    assert f.summary.startswith("optimizer.lr has a significant effect")
    for word in ("epsilon^2", "permutation p", "BH q", "best at optimizer.lr=0.003", "worst at optimizer.lr=0.0001"):
        assert word in f.summary, word
    assert {e.where.get("key") for e in f.evidence if e.table == "params"} == {"optimizer.lr"}
    evidence_holds(tmp_path / "out", found)


def test_a_learning_rate_with_no_effect_stays_silent(sweep):
    assert hp_effect(sweep(lr_grid([2.0, 2.0, 2.0], noise=0.05)), HpEffectConfig()) == []


def test_false_positive_rate_under_the_null_stays_at_alpha(sweep):
    """Many random null sweeps (3 learning rates x 3 seeds, pure seed noise): any finding at most ~alpha of the time."""
    rng = np.random.default_rng(42)
    cfg = HpEffectConfig(n_perm=199, n_boot=100, measures=["final"], rng_seed=7)
    n_sweeps = 120
    hits = sum(bool(hp_effect(sweep(lr_grid([2.0] * 3, 0.05, rng=rng), name=f"null{i}"), cfg)) for i in range(n_sweeps))
    # Binomial(120, 0.05): mean 6, sd 2.4; 13 is about the 99.7th percentile.
    assert hits <= 13, hits


def test_the_permutation_test_is_uniform_under_the_null():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(3), 3)
    pvals = []
    for _ in range(600):
        r = stats.rankdata(rng.normal(size=9))
        _, p = stats.permutation_test(lambda Y: stats.group_sum_stat(Y, g, 3), r - r.mean(),
                                      lambda b: stats.permutations_within(np.zeros(9, dtype=np.int64), b, rng), 199)
        pvals.append(p)
    pvals = np.array(pvals)
    assert 0.025 <= np.mean(pvals <= 0.05) <= 0.08
    assert 0.4 <= np.mean(pvals <= 0.5) <= 0.6


def test_in_a_factorial_grid_only_the_hyperparameter_that_matters_is_named(sweep):
    rng = np.random.default_rng(1)
    runs = []
    for lr, level in zip(LRS, [2.5, 2.1, 2.3]):
        for wd in (0.0, 0.1):
            for s in range(3):
                runs.append(Run(f"fx/lr{lr}_wd{wd}_seed{s}", params={"lr": lr, "wd": wd, "seed": s},
                                val=curve(level + 0.03 * rng.normal())))
    found = hp_effect(sweep(runs), HpEffectConfig())
    assert [f.summary.split(" ")[0] for f in found] == ["lr"]
    assert "within strata" in found[0].summary


def random_search(finals=None, symptom=False):
    """5 trials x 5 studies, every hyperparameter different per trial (AlgoPerf-like); trial_2 worst in every study."""
    hps = {1: (1.3e-3, 0.1, 0.16), 2: (8.4e-4, 0.2, 0.08), 3: (1.2e-3, 0.0, 0.12), 4: (5e-3, 0.0, 0.11), 5: (1.7e-3, 0.0, 0.08)}
    finals = finals or {1: 0.049, 2: 0.061, 3: 0.052, 4: 0.046, 5: 0.047}
    rng = np.random.default_rng(3)
    runs = []
    for study in range(5):
        for t, (lr, ls, wd) in hps.items():
            runs.append(Run(
                f"baseline/study_{study}/ogbg/trial_{t}", params={"learning_rate": lr, "label_smoothing": ls, "weight_decay": wd},
                val=curve(finals[t] + 0.0005 * rng.normal()),
                findings=[("overfitting", "medium", 500)] if symptom and t == 2 else [],
            ))
    return runs


def test_random_search_reports_the_configuration_effect_and_says_attribution_is_not_identifiable(sweep, evidence_holds, tmp_path):
    found = hp_effect(sweep(random_search(symptom=True)), HpEffectConfig())
    assert len(found) == 1
    f = found[0]
    assert f.summary.startswith("Configurations differ beyond seed noise")
    assert "trial_2 is worst" in f.summary and "cannot be identified" in f.summary
    assert "`overfitting`" in f.summary
    cited = {e.where.get("key") for e in f.evidence if e.table == "params"}
    assert "learning_rate" in cited
    evidence_holds(tmp_path / "out", found)


def test_random_search_without_real_differences_stays_silent(sweep):
    assert hp_effect(sweep(random_search(finals=dict.fromkeys(range(1, 6), 0.05))), HpEffectConfig()) == []


@pytest.mark.parametrize("field, value", [("alpha", 0.0), ("n_perm", 10), ("measures", ["mean"]), ("symptom_min_severity", "bad")])
def test_bad_settings_name_their_key(field, value):
    with pytest.raises(ConfigError, match=f"detectors.hp_effect.{field}"):
        HpEffectConfig(**{field: value})
