"""The data probe on constructed splits whose truth is known: leaks, near copies, labels, shift, fingerprints, streaming."""

from __future__ import annotations

import tracemalloc
import weakref

import numpy as np
import polars as pl
import pytest
import torch

from mldebug_ray.errors import ConfigError
from mldebug_ray.probes.data import (
    DataProbeConfig,
    MinHasher,
    data_tables,
    iter_split,
    kolmogorov_q,
    ks_two_sample,
    normalise_text,
    numeric_psi,
    similarity,
)

WORDS = [f"w{i}" for i in range(5000)]


def batches(x, y=None, ids=None, features=None, size=256):
    """A split callable: a fresh iterator of batches of `size` over the given columns."""

    def split():
        n = len(x)
        for i in range(0, n, size):
            batch = {"x": x[i : i + size]}
            if y is not None:
                batch["y"] = y[i : i + size]
            if ids is not None:
                batch["id"] = ids[i : i + size]
            if features is not None:
                batch["features"] = {k: v[i : i + size] for k, v in features.items()}
            yield batch

    return split


def texts(rng: np.random.Generator, n: int, words: int = 40) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=words)) for _ in range(n)]


def run(splits, **cfg) -> tuple[dict[str, pl.DataFrame], list[str]]:
    problems: list[str] = []
    return data_tables("run", splits, DataProbeConfig(**cfg), problems), problems


def overlap(tables, split_b: str, kind: str) -> dict:
    rows = tables["data_overlap"].filter((pl.col("split_b") == split_b) & (pl.col("kind") == kind))
    assert rows.height == 1, tables["data_overlap"]
    return rows.row(0, named=True)


def test_k_leaked_numeric_examples_are_found_exactly_with_their_ids():
    g = torch.Generator().manual_seed(1)
    train = torch.randn(3000, 32, generator=g)
    val = torch.randn(800, 32, generator=g)
    leaked_train = [5, 77, 1200, 2999, 1500, 42, 43]
    leaked_val = [0, 10, 255, 256, 511, 700, 799]  # across batch borders
    for t, v in zip(leaked_train, leaked_val):
        val[v] = train[t]
    train_ids = [f"img-{i}" for i in range(3000)]
    tables, problems = run({"train": batches(train, ids=train_ids), "val": batches(val)})
    exact = overlap(tables, "val", "exact")
    assert exact["n_examples_b"] == exact["n_pairs"] == len(leaked_val)
    assert exact["example_ids_b"] == [f"val:{v}" for v in leaked_val]
    assert exact["example_ids_a"] == [f"img-{t}" for t in leaked_train]
    assert exact["overlap_frac"] == pytest.approx(7 / 800)
    assert overlap(tables, "val", "near")["n_examples_b"] == 0  # exact copies are not counted twice
    assert not problems


def test_exact_text_duplicates_ignore_case_unicode_form_and_whitespace():
    rng = np.random.default_rng(2)
    train = texts(rng, 500)
    test = texts(rng, 200)
    test[3] = "  " + train[10].upper().replace(" ", " \t ") + "\n"
    test[150] = train[499]
    cafe = "caf\u00e9 au lait " + train[7]
    train[7] = cafe
    test[42] = cafe.replace("\u00e9", "e\u0301")  # decomposed form: NFC makes it the same text
    assert normalise_text(test[42]) == normalise_text(cafe)
    tables, _ = run({"train": batches(train, size=64), "test": batches(test, size=64)})
    exact = overlap(tables, "test", "exact")
    assert sorted(exact["example_ids_b"]) == ["test:150", "test:3", "test:42"]
    assert dict(zip(exact["example_ids_b"], exact["example_ids_a"])) == {"test:3": "train:10", "test:42": "train:7", "test:150": "train:499"}


def test_near_duplicate_texts_are_found_above_the_documented_jaccard():
    rng = np.random.default_rng(3)
    train = texts(rng, 2000, words=60)
    val = texts(rng, 500, words=60)
    planted = {}
    for k, (v, t) in enumerate([(1, 100), (50, 900), (333, 1999), (499, 0)]):
        words = train[t].split()
        words[10 + k] = "changed"  # one word of 60: 3 of 58 shingles change, Jaccard 55/61 = 0.90
        val[v] = " ".join(words)
        planted[f"val:{v}"] = f"train:{t}"
    tables, _ = run({"train": batches(train), "val": batches(val)})
    near = overlap(tables, "val", "near")
    assert near["threshold"] == 0.8
    assert dict(zip(near["example_ids_b"], near["example_ids_a"])) == planted
    assert near["similarity_min"] >= 0.8
    assert overlap(tables, "val", "exact")["n_examples_b"] == 0


def test_near_duplicate_tensors_are_found_and_unrelated_ones_are_not():
    g = torch.Generator().manual_seed(4)
    train = torch.randn(4000, 64, generator=g)
    val = torch.randn(1000, 64, generator=g)
    planted = {}
    for v, t in [(3, 30), (600, 3999), (999, 1)]:
        val[v] = 2.0 * train[t] + 0.01 * torch.randn(64, generator=g) + 5.0  # rescaled, shifted, jittered copy
        planted[f"val:{v}"] = f"train:{t}"
    tables, _ = run({"train": batches(train), "val": batches(val)})
    near = overlap(tables, "val", "near")
    assert dict(zip(near["example_ids_b"], near["example_ids_a"])) == planted
    assert near["similarity_min"] >= 0.999


def test_disjoint_splits_show_no_leakage():
    g = torch.Generator().manual_seed(5)
    rng = np.random.default_rng(5)
    tables, _ = run({"train": batches(torch.randn(10000, 32, generator=g), size=1000), "val": batches(torch.randn(5000, 32, generator=g))})
    assert tables["data_overlap"]["n_examples_b"].to_list() == [0, 0]
    tables, _ = run({"train": batches(texts(rng, 3000)), "test": batches(texts(rng, 1000))})
    assert tables["data_overlap"]["n_examples_b"].to_list() == [0, 0]


def test_minhash_estimate_follows_the_exact_jaccard_of_the_shingle_sets():
    rng = np.random.default_rng(6)
    hasher = MinHasher(64, 3, seed=0)
    a, b = [], []
    for _ in range(60):
        base = list(rng.choice(WORDS[:300], size=50))
        other = list(base)
        for i in rng.choice(50, size=int(rng.integers(0, 25)), replace=False):
            other[i] = str(rng.choice(WORDS[:300]))
        a.append(" ".join(base))
        b.append(" ".join(other))

    def shingles(t):
        w = t.split()
        return {tuple(w[i : i + 3]) for i in range(len(w) - 2)}

    exact = np.array([len(shingles(x) & shingles(y)) / len(shingles(x) | shingles(y)) for x, y in zip(a, b)])
    estimate = similarity("text", hasher.text_signatures(a), hasher.text_signatures(b))
    assert exact.min() < 0.5 < 0.9 < exact.max()
    assert np.mean(np.abs(estimate - exact)) < 0.05  # sd of a 64-permutation estimate is <= 0.0625


def test_label_counts_and_the_imbalance_ratio_are_exact():
    y = torch.tensor([0] * 500 + [1] * 50 + [2] * 5)[torch.randperm(555, generator=torch.Generator().manual_seed(0))]
    val_y = torch.tensor([0] * 90 + [1] * 10)
    tables, _ = run({"train": batches(torch.randn(555, 4), y=y), "val": batches(torch.randn(100, 4), y=val_y)})
    splits = {r["split"]: r for r in tables["data_splits"].iter_rows(named=True)}
    assert splits["train"]["imbalance_ratio"] == 100.0
    assert (splits["train"]["max_class_count"], splits["train"]["min_class_count"], splits["train"]["n_classes"]) == (500, 5, 3)
    assert splits["val"]["imbalance_ratio"] == 9.0 and splits["val"]["n_classes"] == 2
    labels = tables["data_labels"].filter(pl.col("split") == "val").sort("label")
    assert labels["count"].to_list() == [90, 10, 0]  # class 2 missing from val: a row with 0
    assert labels["frac"].to_list() == [0.9, 0.1, 0.0]


def test_a_shifted_feature_is_found_and_an_unshifted_one_is_not():
    g = torch.Generator().manual_seed(7)
    train = torch.randn(30000, 3, generator=g)
    prod = torch.randn(30000, 3, generator=g)
    prod[:, 1] = prod[:, 1] * 1.0 + 0.8  # f1 moved by 0.8 sd
    prod[:, 2] = prod[:, 2] * 2.0  # f2 twice as spread, same mean
    colour_train = ["red"] * 20000 + ["blue"] * 10000
    colour_prod = ["red"] * 10000 + ["blue"] * 10000 + ["green"] * 10000
    tables, _ = run({
        "train": batches(train, features={"colour": colour_train}, size=4096),
        "production": batches(prod, features={"colour": colour_prod}, size=4096),
    })
    f = {r["feature"]: r for r in tables["data_features"].iter_rows(named=True)}
    assert set(f) == {"colour"}  # explicit features replace the per-column defaults
    assert f["colour"]["psi"] > 1 and f["colour"]["top_category"] == "green"
    assert f["colour"]["top_category_ref_frac"] == 0.0 and f["colour"]["top_category_frac"] == pytest.approx(1 / 3)
    tables, _ = run({"train": batches(train, size=4096), "production": batches(prod, size=4096)})
    f = {r["feature"]: r for r in tables["data_features"].iter_rows(named=True)}
    assert f["f0"]["psi"] < 0.01 and f["f0"]["ks_p_adjusted"] > 0.01 and f["f0"]["ks_stat"] < 0.03
    assert f["f1"]["psi"] > 0.25 and f["f1"]["ks_p_adjusted"] < 1e-10 and f["f1"]["mean"] == pytest.approx(0.8, abs=0.03)
    assert f["f2"]["psi"] > 0.25 and f["f2"]["ks_stat"] > 0.1


def test_psi_of_a_count_feature_sees_moves_between_tied_values():
    ref = np.array([3.0] * 900 + [4.0] * 100)
    assert numeric_psi(ref, ref.copy(), 10) == pytest.approx(0.0)
    assert numeric_psi(ref, np.array([3.0] * 500 + [4.0] * 500), 10) > 0.25
    assert numeric_psi(ref, np.array([7.0] * 1000), 10) > 5  # a value train never had


def test_ks_statistic_matches_a_brute_force_oracle_and_known_p_values():
    rng = np.random.default_rng(8)
    for _ in range(20):
        a, b = rng.normal(size=int(rng.integers(5, 60))), rng.normal(0.3, size=int(rng.integers(5, 60)))
        grid = np.concatenate([a, b])
        oracle = max(abs((a <= t).mean() - (b <= t).mean()) for t in grid)
        assert ks_two_sample(a, b)[0] == pytest.approx(oracle)
    # Kolmogorov distribution: P(K > 1.36) = 0.05, P(K > 1.63) = 0.01 (standard tables)
    assert kolmogorov_q(1.358) == pytest.approx(0.05, abs=5e-4)
    assert kolmogorov_q(1.628) == pytest.approx(0.01, abs=2e-4)
    assert kolmogorov_q(0.0) == 1.0


def test_fingerprints_ignore_order_and_batching_and_change_with_one_example_or_label():
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(1000, 8, generator=g), torch.randint(0, 3, (1000,), generator=g)
    perm = torch.randperm(1000, generator=g)

    def fp(x, y, size=128):
        tables, _ = run({"train": batches(x, y=y, size=size)})
        return tables["data_splits"]["fingerprint"][0]

    base = fp(x, y)
    assert fp(x[perm], y[perm], size=333) == base
    x2 = x.clone()
    x2[500, 3] += 1e-6
    assert fp(x2, y) != base
    y2 = y.clone()
    y2[10] = (y2[10] + 1) % 3
    assert fp(x, y2) != base
    assert fp(x[:-1], y[:-1]) != base
    dup = torch.cat([x, x[:1]]), torch.cat([y, y[:1]])
    assert fp(*dup) != base  # a repeated example counts (a multiset, not a set)


def test_a_split_larger_than_a_batch_is_streamed_without_holding_batches():
    alive: list[weakref.ref] = []
    peak = [0]

    def split():
        g = torch.Generator().manual_seed(10)
        for _ in range(20):
            x = torch.randn(500, 64, generator=g)
            alive.append(weakref.ref(x))
            peak[0] = max(peak[0], sum(r() is not None for r in alive))
            yield {"x": x}

    tables, _ = run({"train": split, "val": split})
    assert tables["data_splits"]["n_examples"].to_list() == [10000, 10000]
    assert peak[0] <= 2  # the batch being read and at most the one before it
    assert overlap(tables, "val", "exact")["n_examples_b"] == 10000  # the same generator: every example leaked


@pytest.mark.slow  # tracemalloc slows every allocation: ~17 s
def test_memory_grows_far_slower_than_the_streamed_text():
    def split_of(n_batches):
        def split():
            rng = np.random.default_rng(11)
            for _ in range(n_batches):
                words = rng.integers(0, 5000, size=(100, 400)).tolist()
                yield {"x": [" ".join(map(str, row)) for row in words]}  # ~2 kB per text

        return split

    def peak(n_batches):
        tracemalloc.start()
        try:
            tables, _ = run({"train": split_of(n_batches), "val": split_of(n_batches)})
            return tracemalloc.get_traced_memory()[1], tables
        finally:
            tracemalloc.stop()

    small, _ = peak(3)
    big, tables = peak(12)
    assert tables["data_splits"]["n_examples"].to_list() == [1200, 1200]
    extra_examples = 2 * 900  # ~3.6 MB more text streamed
    assert big - small < extra_examples * 1000, (small, big)  # under 1 kB of state per example


def test_a_bad_split_is_an_error_row_naming_the_key_and_the_others_go_on():
    good = batches(torch.randn(100, 4), y=torch.zeros(100, dtype=torch.long))

    def wrong_labels():
        yield {"x": torch.randn(10, 4), "y": torch.zeros(9, dtype=torch.long)}

    def broken():
        yield {"x": torch.randn(10, 4)}
        raise OSError("disk went away")

    tables, problems = run({"train": good, "val": wrong_labels, "test": broken, "production": lambda: [{"x": 3}]})
    rows = {r["split"]: r for r in tables["data_splits"].iter_rows(named=True)}
    assert rows["train"]["status"] == "ok" and rows["train"]["n_examples"] == 100
    assert rows["val"]["status"] == "error" and "'y' must have shape [10]" in rows["val"]["reason"] and "'val'" in rows["val"]["reason"]
    assert rows["test"]["status"] == "error" and "disk went away" in rows["test"]["reason"]
    assert rows["production"]["status"] == "error" and "'x' must be a torch tensor" in rows["production"]["reason"]
    assert len(problems) == 3


def test_iter_split_normalises_the_contract_for_other_probes():
    split = batches(torch.arange(10).reshape(5, 2), y=[1, 0, 1, 1, 0], size=2)
    got = list(iter_split(split, "val"))
    assert [len(b) for b in got] == [2, 2, 1]
    assert got[1].ids == ["val:2", "val:3"] and got[1].kind == "tokens"
    assert got[2].y.dtype == torch.int64 and got[2]["y"].tolist() == [0]
    assert [len(b) for b in iter_split(split, "val", max_examples=3)] == [2, 1]


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="probes.data.minhash_perms"):
        DataProbeConfig(minhash_perms=30)
    with pytest.raises(ConfigError, match="probes.data.near_min_jaccard"):
        DataProbeConfig(near_min_jaccard=0.0)


def test_ids_given_only_from_a_later_batch_keep_the_default_ids_before_them():
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(12))

    def train():
        yield {"x": x[:3]}
        yield {"x": x[3:], "id": ["d", "e", "f"]}

    tables, _ = run({"train": train, "val": batches(x[[1, 4]])})
    assert overlap(tables, "val", "exact")["example_ids_a"] == ["train:1", "e"]


def test_near_duplicate_token_sequences_are_found_by_minhash():
    g = torch.Generator().manual_seed(13)
    train = torch.randint(0, 30000, (2000, 64), generator=g)
    val = torch.randint(0, 30000, (500, 64), generator=g)
    val[7] = train[1234]
    val[7, 30] = 5  # one token of 64 changed: 3 of 62 shingles differ, Jaccard 59/65 = 0.91
    val[8] = train[99]
    tables, _ = run({"train": batches(train), "val": batches(val)})
    assert overlap(tables, "val", "exact")["example_ids_b"] == ["val:8"]
    near = overlap(tables, "val", "near")
    assert near["example_ids_b"] == ["val:7"] and near["example_ids_a"] == ["train:1234"]
    assert "3-token shingles" in near["method"]


def test_the_compose_path_takes_data_probe_and_detector_overrides(tmp_path):
    from mldebug_ray.api import compose_config

    cfg = compose_config([tmp_path], tmp_path / "out", overrides={"probes.data.near_min_jaccard": 0.7, "detectors.class_imbalance.medium_ratio": 5})
    assert cfg.probes.data.near_min_jaccard == 0.7 and cfg.detectors.class_imbalance.medium_ratio == 5
    with pytest.raises(ConfigError, match="probes.data.minhash_perms"):
        compose_config([tmp_path], tmp_path / "out", overrides={"probes.data.minhash_perms": 30})


def test_feature_values_of_every_form_are_typed_numeric_or_categorical():
    n = 300
    features = {
        "flag": torch.arange(n) % 2 == 0,  # bool tensor: categories
        "half": torch.randn(n, dtype=torch.bfloat16),  # numeric
        "count": [np.int64(i % 5) for i in range(n)],  # numpy ints: numeric
        "city": ["a" if i % 3 else None for i in range(n)],  # strings with a null: categories
    }
    tables, problems = run({"train": batches(torch.randn(n, 4), features=features, size=100), "val": batches(torch.randn(n, 4), features=features, size=100)})
    kinds = dict(tables["data_features"].select("feature", "feature_kind").iter_rows())
    assert kinds == {"flag": "categorical", "half": "numeric", "count": "numeric", "city": "categorical"}
    assert tables["data_features"]["psi"].max() < 1e-6 and not problems  # the same values on both sides


def test_the_streamed_feature_sample_is_uniform_over_the_whole_split():
    from mldebug_ray.probes.data import NumericSample

    sample = NumericSample(2000, np.random.default_rng(0))
    for start in range(0, 100_000, 777):  # batches of odd size, the sample full after the third
        sample.add(np.arange(start, min(start + 777, 100_000), dtype=float))
    assert sample.values.size == 2000 and np.unique(sample.values).size == 2000 and sample.n == 100_000
    counts = np.histogram(sample.values, bins=5, range=(0, 100_000))[0]
    assert counts.min() > 340 and counts.max() < 460  # 400 each, +-3.4 sd of a binomial(2000, 0.2)


def test_splits_of_different_shapes_are_compared_exactly_only():
    g = torch.Generator().manual_seed(14)
    tables, problems = run({"train": batches(torch.randn(500, 32, generator=g)), "val": batches(torch.randn(200, 48, generator=g))})
    assert tables["data_splits"]["status"].to_list() == ["ok", "ok"]
    assert tables["data_overlap"]["kind"].to_list() == ["exact"]
    assert any("no near-duplicate comparison" in p for p in problems)
