"""Downsampling: bounded points, spikes kept, NaN/Inf as markers and gaps; the lazy query matches numpy."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from mldebug_ray.render.downsample import Curve, curves_from_buckets, downsample, downsample_scan


def test_a_143k_point_curve_comes_back_with_at_most_max_points():
    steps = np.arange(143_000)
    curve = downsample(steps, np.random.default_rng(0).normal(size=steps.size), max_points=600)
    assert 0 < curve.n_points <= 600
    assert np.all(np.diff(curve.x) >= 0), "points stay in step order"


def test_a_short_curve_keeps_every_point():
    curve = downsample([1, 2, 3, 4], [4.0, 3.0, 2.5, 2.0], max_points=600)
    assert curve.x.tolist() == [1, 2, 3, 4] and curve.y.tolist() == [4.0, 3.0, 2.5, 2.0]


def test_a_one_step_spike_survives_downsampling():
    values = np.ones(100_000)
    values[77_777] = 50.0
    curve = downsample(np.arange(values.size), values, max_points=200)
    assert curve.y.max() == 50.0 and 77_777 in curve.x


def test_nan_and_inf_become_markers_and_a_gap_not_points():
    values = np.array([1.0, 2.0, np.nan, np.nan, 3.0, np.inf, -np.inf, 4.0])
    curve = downsample(np.arange(8), values, max_points=600)
    assert curve.nan_x.tolist() == [2, 3]
    assert curve.posinf_x.tolist() == [5] and curve.neginf_x.tolist() == [6]
    finite = curve.y[np.isfinite(curve.y)]
    assert finite.tolist() == [1.0, 2.0, 3.0, 4.0]
    gap = np.flatnonzero(np.isnan(curve.y))
    assert gap.size >= 1 and 1 < gap[0] < curve.n_points - 1, "the line breaks where the run broke"


def test_a_run_that_ends_in_nan_keeps_its_last_finite_point_and_marks_the_rest():
    values = np.concatenate([np.linspace(3, 1, 60_000), np.full(40_000, np.nan)])
    curve = downsample(np.arange(values.size), values, max_points=300)
    assert curve.n_points <= 300
    assert curve.finite_y().min() == pytest.approx(1.0, abs=1e-3)
    assert curve.nan_x.min() == 60_000


def test_none_values_are_dropped_not_drawn_as_nan():
    curve = downsample([1, 2, 3], [1.0, None, 3.0])
    assert curve.x.tolist() == [1, 3] and curve.nan_x.size == 0


def test_empty_input_gives_an_empty_curve():
    curve = downsample([], [])
    assert isinstance(curve, Curve) and curve.n_points == 0


def test_max_points_below_two_is_refused():
    with pytest.raises(ValueError, match="max_points"):
        downsample([1, 2], [1.0, 2.0], max_points=1)


@pytest.mark.parametrize("seed", range(6))
def test_the_lazy_query_gives_the_same_curves_as_numpy_on_random_series(seed):
    rng = np.random.default_rng(seed)
    frames, expected = [], {}
    for sid in ("a", "b", "c"):
        n = int(rng.integers(1, 5000))
        steps = np.sort(rng.choice(20_000, size=n, replace=False))
        values = rng.normal(size=n) * 10 ** rng.integers(0, 6)
        for special in (np.nan, np.inf, -np.inf):
            values[rng.random(n) < 0.02] = special
        values[rng.random(n) < 0.01] = 7.0  # ties between min/max candidates
        max_points = int(rng.choice([4, 50, 600]))
        expected[sid] = (downsample(steps, values, max_points), max_points)
        frames.append(pl.DataFrame({"sid": sid, "step": steps, "value": values, "nb": max_points // 2}))
    buckets = downsample_scan(pl.concat(frames).lazy(), pl.col("nb"))
    got = curves_from_buckets(buckets)
    for sid, (want, max_points) in expected.items():
        have = got[sid]
        assert have.n_points <= max_points
        np.testing.assert_array_equal(have.x, want.x)
        np.testing.assert_array_equal(have.y, want.y)
        for name in ("nan_x", "posinf_x", "neginf_x"):
            np.testing.assert_array_equal(getattr(have, name), getattr(want, name))


def test_buckets_can_share_one_range_so_heatmap_columns_line_up():
    frame = pl.DataFrame({
        "sid": ["early"] * 2 + ["late"] * 2, "rk": "run", "step": [0, 10, 90, 99], "value": [1.0, 2.0, 3.0, math.nan],
    })
    buckets = downsample_scan(frame.lazy(), 10, range_key="rk")
    late = buckets.filter(pl.col("sid") == "late")
    assert late["bucket"].to_list() == [9] and late["_lo"].to_list() == [0] and late["nonfinite_step"].to_list() == [99]
