"""Series helpers: metric roles, splits, picking the best key, robust statistics vs slow oracles."""

import math

import numpy as np
import pytest

from mldebug_ray.detectors.series import (
    is_timing_key,
    metric_role,
    pick_series,
    rolling_median,
    running_min,
    split_of,
    trailing_median_mad,
)

ROLE_SPELLINGS = {
    "loss": ["loss", "train/loss", "train_loss", "lm loss", "lm_loss", "train/lm_loss", "eval_loss", "val_loss",
             "val/loss", "validation/loss", "test/loss", "trl", "tel", "train_loss_step", "val_loss_epoch"],
    "grad_norm": ["grad_norm", "train/grad_norm", "grad norm", "gradient_norm", "norm"],
    "lr": ["lr", "learning_rate", "train/lr", "lr-AdamW"],
    "loss_scale": ["loss_scale", "loss scale", "scaler/scale"],
    "accuracy": ["accuracy", "acc", "val/accuracy", "eval_accuracy"],
    "layer_grad_norm": ["grad_norm/blocks.0.attn.weight", "grad_norm/fc1"],
    "epoch": ["epoch", "train/epoch"],
}


@pytest.mark.parametrize("role,key", [(r, k) for r, keys in ROLE_SPELLINGS.items() for k in keys])
def test_common_spellings_get_their_role(role, key):
    assert metric_role(key) == role


@pytest.mark.parametrize("key", ["step_avg", "train_time", "tokens_per_second", "validation/num_examples", "score"])
def test_other_keys_have_no_role(key):
    assert metric_role(key) is None


def test_timing_keys_are_recognised():
    assert is_timing_key("step_avg") and is_timing_key("train_time_ms") and is_timing_key("elapsed time per iteration (ms)")
    assert not is_timing_key("train/loss") and not is_timing_key("grad_norm")


@pytest.mark.parametrize(
    "key,column,expected",
    [
        ("loss", "val", "val"),
        ("loss", None, None),
        ("train/loss", None, "train"),
        ("val/loss", None, "val"),
        ("eval_loss", None, "val"),
        ("validation/loss", None, "val"),
        ("test/loss", None, "test"),
        ("loss_train", None, "train"),
        ("tel", None, "val"),
        ("trl", None, "train"),
        ("loss", "validation", "val"),
    ],
)
def test_split_comes_from_the_column_then_the_key(key, column, expected):
    assert split_of(key, column) == expected


def test_pick_series_prefers_canonical_names_and_sorts_by_step(make_ev):
    ev = make_ev([(2, "aux_loss", 9.0), (1, "aux_loss", 9.0), (3, "train/loss", 1.0), (1, "train/loss", 3.0), (2, "train/loss", 2.0), (1, "val/loss", 5.0)])
    train = pick_series(ev.metrics, "loss", "train")
    assert train["key"].unique().to_list() == ["train/loss"]
    assert train["step"].to_list() == [1, 2, 3] and train["value"].to_list() == [3.0, 2.0, 1.0]
    assert pick_series(ev.metrics, "loss", "val")["key"][0] == "val/loss"
    assert pick_series(ev.metrics, "grad_norm", "train").height == 0


def test_pick_series_prefers_a_key_spanning_the_run_over_a_short_prefix(make_ev):
    per_step = [(s, "loss", 1.0) for s in range(100)]  # AlgoPerf: per-step loss for steps 0-99 only
    per_eval = [(s, "train/loss", 1.0) for s in range(0, 9000, 500)]
    ev = make_ev(per_step + per_eval)
    assert pick_series(ev.metrics, "loss", "train")["key"][0] == "train/loss"


def test_pick_series_prefers_the_per_step_loss_over_a_one_row_run_average(make_ev):
    # Hugging Face's final log_history row carries `train_loss`, the average over the run.
    ev = make_ev([(s, "loss", 2.0 - 0.01 * s) for s in range(1, 100)] + [(99, "train_loss", 1.6)])
    assert pick_series(ev.metrics, "loss", "train")["key"][0] == "loss"


def test_pick_series_keeps_nan_values(make_ev):
    ev = make_ev([(0, "loss", 1.0), (1, "loss", math.nan)])
    assert math.isnan(pick_series(ev.metrics, "loss", "train")["value"][1])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("window", [1, 2, 5, 20])
def test_rolling_median_matches_a_slow_oracle(seed, window):
    x = np.random.default_rng(seed).standard_normal(int(np.random.default_rng(seed).integers(1, 80)))
    n = x.size
    left, right = window // 2, window - 1 - window // 2
    centred = [np.median(x[max(0, i - left) : i + right + 1]) for i in range(n)]
    causal = [np.median(x[max(0, i - window + 1) : i + 1]) for i in range(n)]
    if window <= n:
        np.testing.assert_allclose(rolling_median(x, window, center=True), centred)
    np.testing.assert_allclose(rolling_median(x, window, center=False), causal if window <= n else [np.median(x[: i + 1]) for i in range(n)])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("window", [1, 3, 20])
def test_trailing_median_mad_matches_a_slow_oracle(seed, window):
    x = np.random.default_rng(seed).standard_normal(50)
    med, mad = trailing_median_mad(x, window, min_periods=1)
    assert np.isnan(med[0])
    for i in range(1, x.size):
        prev = x[max(0, i - window) : i]
        assert med[i] == pytest.approx(np.median(prev))
        assert mad[i] == pytest.approx(np.median(np.abs(prev - np.median(prev))))


def test_running_min_ignores_nan():
    np.testing.assert_array_equal(running_min([3.0, np.nan, 2.0, 4.0]), [3.0, 3.0, 2.0, 2.0])


def test_robust_helpers_are_fast_on_long_series():
    import time

    x = np.random.default_rng(0).standard_normal(143_000)
    started = time.perf_counter()
    rolling_median(x, 51)
    trailing_median_mad(x, 20)
    assert time.perf_counter() - started < 2.0
