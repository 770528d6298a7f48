"""slow_convergence (sweep level): a run far behind its seed peers or sibling trials."""

import numpy as np
import polars as pl
import pytest

from mldebug_ray import paths, schema
from mldebug_ray.detectors.base import SweepTables
from mldebug_ray.detectors.slow_convergence import (
    SlowConvergenceConfig,
    ignored_param,
    name_template,
    seed_template,
    slow_convergence,
)
from mldebug_ray.errors import ConfigError
from mldebug_ray.evidence.io import read_table, write_table


def curve(n, final, speed=1.0, seed=0, noise=0.02, start=11.0):
    steps = np.arange(1, n + 1)
    rng = np.random.default_rng(seed)
    return final + (start - final) * np.exp(-speed * steps / (n / 20)) + noise * rng.standard_normal(n)


def write_sweep(out, runs: dict[str, tuple[np.ndarray, str]], params: dict[str, dict] | None = None, every: int = 1):
    for rid, (values, key) in runs.items():
        steps = np.arange(1, len(values) + 1) * every
        split = "val" if key.startswith("val") else None
        frame = pl.DataFrame(
            {"run_id": rid, "step": steps, "key": key, "value": values, "split": [split] * len(values)},
            schema_overrides={"split": pl.String},
        )
        write_table(out, "metrics", schema.validate("metrics", frame), paths.part_key(rid))
        rows = [{"run_id": rid, "key": k, "value": str(v), "value_num": float(v) if isinstance(v, (int, float)) else None} for k, v in (params or {}).get(rid, {}).items()]
        write_table(out, "params", pl.DataFrame(rows, schema=schema.schema_of("params")) if rows else schema.empty("params"), paths.part_key(rid))
    return SweepTables(out)


def check_refs(out, findings):
    metrics = read_table(out, "metrics")
    for f in findings:
        assert f.fix and f.expected_impact and f.verify_by
        for ref in f.evidence:
            rows = metrics
            for column, value in ref.where.items():
                rows = rows.filter(pl.col(column) == value)
            assert rows.height == 1, ref


def test_seed_run_behind_its_seed_peers_from_early_on(tmp_path):
    # Pythia-like: four seeds, no params; seed 2 lags from the start and ends ~10% higher.
    runs = {f"70m-seed{s}": (curve(3000, 2.85 + 0.03 * s, seed=s), "train/lm_loss") for s in (1, 3, 4)}
    runs["70m-seed2"] = (curve(3000, 3.15, speed=0.6, seed=2), "train/lm_loss")
    found = slow_convergence(write_sweep(tmp_path, runs), SlowConvergenceConfig())
    assert [f.run_id for f in found] == ["70m-seed2"]
    f = found[0]
    assert f.scope == "run" and set(f.run_ids) == set(runs) and f.onset_step < 500
    assert "seed peers" in f.summary
    check_refs(tmp_path, found)


def test_sibling_trials_with_different_params_need_a_large_gap(tmp_path):
    finals = {1: 1.55, 2: 1.6, 3: 3.2, 4: 1.5, 5: 1.65}  # AlgoPerf wmt: trial_3 ends ~2x its siblings
    runs = {f"study_0/wmt/trial_{t}": (curve(58, final, seed=t, noise=0.01), "validation/loss") for t, final in finals.items()}
    params = {rid: {"learning_rate": 0.001 * t, "seed": 0} for t, rid in enumerate(runs)}
    found = slow_convergence(write_sweep(tmp_path, runs, params, every=2000), SlowConvergenceConfig())
    assert [f.run_id for f in found] == ["study_0/wmt/trial_3"]
    check_refs(tmp_path, found)


def test_seed_noise_a_small_hp_difference_and_too_few_peers_stay_silent(tmp_path):
    runs = {f"grid/seed{s}": (curve(500, 2.0 + 0.02 * s, seed=s), "loss") for s in range(5)}  # seed noise only
    runs |= {f"other/trial_{t}": (curve(50, 1.5 * (1.1 if t == 1 else 1.0), seed=t), "val_loss") for t in range(4)}  # 10% worse trial
    runs |= {f"pair/seed{s}": (curve(100, 2.0 + s, seed=s), "loss") for s in range(3)}  # only 2 peers
    params = {rid: {"lr": 0.1 + 0.01 * int(rid[-1])} for rid in runs if rid.startswith("other/")}
    assert slow_convergence(write_sweep(tmp_path, runs, params), SlowConvergenceConfig()) == []


def test_runs_with_nan_are_left_out(tmp_path):
    runs = {f"s/seed{s}": (curve(300, 2.0, seed=s), "loss") for s in range(4)}
    bad = curve(300, 4.0, seed=9)
    bad[-1] = np.nan
    runs["s/seed9"] = (bad, "loss")
    assert slow_convergence(write_sweep(tmp_path, runs), SlowConvergenceConfig()) == []


def test_peer_rules_mask_seeds_and_bookkeeping():
    assert seed_template("pythia/70m-seed2") == seed_template("70m-seed4") == "70m-seed#"
    assert name_template("lr0.003_seed1") == name_template("lr1e-05_seed2") == "lr#_seed#"
    assert ignored_param("data.task_seed") and ignored_param("hydra.overrides") and ignored_param("output_dir")
    assert not ignored_param("optimizer.lr")


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.slow_convergence.min_peers"):
        SlowConvergenceConfig(min_peers=1)
    with pytest.raises(ConfigError, match="detectors.slow_convergence.sustain_frac"):
        SlowConvergenceConfig(sustain_frac=0.0)


def _every_run_compared(tables: SweepTables, cfg: SlowConvergenceConfig):
    """The obvious oracle: the exact per-run comparison on every run with peers (the detector
    before its vectorised pre-selection)."""
    from mldebug_ray.detectors.slow_convergence import _binned_curves, _compare, _loss_series_choice, _peer_groups

    metrics = tables.scan("metrics")
    summary = metrics.group_by("run_id", "key", "split").agg(
        pl.col("value").is_finite().sum().alias("n_finite"),
        (pl.col("value").is_not_null() & ~pl.col("value").is_finite()).sum().alias("n_nonfinite"),
        pl.col("step").filter(pl.col("value").is_finite()).min().alias("first_step"),
        pl.col("step").filter(pl.col("value").is_finite()).max().alias("last_step"),
    ).collect()
    choice = _loss_series_choice(summary).filter((pl.col("n_finite") >= cfg.min_points) & (pl.col("n_nonfinite") == 0))
    peers = _peer_groups(tables, sorted(set(choice["run_id"].to_list())), cfg)
    curves = _binned_curves(metrics, choice, cfg)
    found = [_compare(rid, mode, group, choice, curves, cfg) for rid, (mode, group) in sorted(peers.items())]
    return [f for f in found if f is not None]


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_selection_gives_the_same_findings_as_comparing_every_run(tmp_path, seed):
    """Random sweeps with seed groups, sibling studies and param-less seed folders, lags drawn
    around both thresholds (5% + 3 sigma of seed noise, 25% for siblings)."""
    rng = np.random.default_rng(seed)
    runs, params = {}, {}
    for g in range(12):
        n = int(rng.integers(40, 400))
        kind = ("seed", "siblings", "named")[g % 3]
        for r in range(int(rng.integers(4, 7))):
            lag = rng.choice([1.0, 1.0, rng.uniform(1.02, 1.4)])
            speed = rng.choice([1.0, rng.uniform(0.4, 1.0)])
            values = curve(n, 2.0 * lag, speed=speed, seed=int(rng.integers(1 << 30)), noise=float(rng.choice([0.005, 0.03])))
            if kind == "seed":
                rid = f"g{g}/run{r}"
                params[rid] = {"lr": 0.01, "seed": r}
            elif kind == "siblings":
                rid = f"g{g}/trial_{r}"
                params[rid] = {"lr": 0.001 * (r + 1), "seed": 0}
            else:
                rid = f"g{g}/m-seed{r}"
            runs[rid] = (values, "val/loss" if g % 2 else "loss")
    tables = write_sweep(tmp_path, runs, params)
    cfg = SlowConvergenceConfig()
    expected = _every_run_compared(tables, cfg)
    got = slow_convergence(tables, cfg)
    assert [(f.run_id, f.onset_step, f.summary, f.confidence) for f in got] == [(f.run_id, f.onset_step, f.summary, f.confidence) for f in expected]
    assert expected  # the sweep has slow runs at all
