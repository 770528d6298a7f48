"""Slow convergence: a run learns far slower than its peers in the sweep (a sweep-level detector)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import SweepTables, sweep_detector
from mldebug_ray.detectors.layer_grads import sustained_onset
from mldebug_ray.detectors.series import CANONICAL, MAD_TO_SIGMA, finding_id, fmt, metric_ref, metric_role, split_of
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding

# Param names (any dotted part) that differ between runs without changing the experiment.
_SEED = re.compile(r"seed", re.IGNORECASE)
_BOOKKEEPING = frozenset(
    {
        "dir", "path", "name", "id", "uuid", "time", "date", "timestamp", "host", "hostname", "output", "outdir",
        "logdir", "wandb", "tag", "tags", "note", "notes", "comment", "version", "git", "commit", "sha", "rank",
        "port", "pid", "resume", "job", "slurm", "overrides", "override", "run", "user", "cwd",
    }
)
_NUMBER = re.compile(r"[-+]?\d+(\.\d+)?([eE][-+]?\d+)?")
_SEED_IN_NAME = re.compile(r"(seed|rep|replica|repeat)[-_=]?\d+", re.IGNORECASE)


@dataclass
class SlowConvergenceConfig:
    """Thresholds of the `slow_convergence` detector (keys `detectors.slow_convergence.*`)."""

    min_peers: int = 3
    """Fewest peers (besides the run) that must cover a compared step."""
    grid_points: int = 50
    """Steps where curves are compared, over the range the run shares with its peers: half evenly
    spaced, half evenly in log(step)."""
    skip_frac: float = 0.005
    """The first share of that range is skipped: every run starts at the same initial loss."""
    seed_min_rel_gap: float = 0.05
    """Seed peers (same config): behind means above the peers' median by this share of it ..."""
    seed_spread_k: float = 3.0
    """... and by this many robust sigmas of the peers' own seed-to-seed spread."""
    sibling_min_rel_gap: float = 0.25
    """Sibling peers (configs differ): behind means above the siblings' median by this share."""
    sustain_frac: float = 0.8
    """The run must be behind on this share of the compared steps from its onset to the end ..."""
    min_behind_frac: float = 0.5
    """... and that stretch must cover at least this share of the compared steps, ending behind."""
    bins_per_run: int = 200
    """Each run's curve is reduced to the medians of about this many step bins (smoothing)."""
    min_points: int = 5
    """Fewest finite loss points a run needs to be compared."""

    def __post_init__(self) -> None:
        if self.min_peers < 2:
            raise ConfigError(f"detectors.slow_convergence.min_peers must be >= 2, got {self.min_peers}")
        if self.grid_points < 5:
            raise ConfigError(f"detectors.slow_convergence.grid_points must be >= 5, got {self.grid_points}")
        for name in ("skip_frac",):
            if not 0.0 <= getattr(self, name) < 0.5:
                raise ConfigError(f"detectors.slow_convergence.{name} must be in [0, 0.5), got {getattr(self, name)}")
        for name in ("seed_min_rel_gap", "sibling_min_rel_gap"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"detectors.slow_convergence.{name} must be > 0, got {getattr(self, name)}")
        if self.seed_spread_k < 0:
            raise ConfigError(f"detectors.slow_convergence.seed_spread_k must be >= 0, got {self.seed_spread_k}")
        for name in ("sustain_frac", "min_behind_frac"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"detectors.slow_convergence.{name} must be in (0, 1], got {getattr(self, name)}")
        if self.bins_per_run < 10:
            raise ConfigError(f"detectors.slow_convergence.bins_per_run must be >= 10, got {self.bins_per_run}")
        if self.min_points < 2:
            raise ConfigError(f"detectors.slow_convergence.min_points must be >= 2, got {self.min_points}")


def parent_of(run_id: str) -> str:
    return run_id.rsplit("/", 1)[0] if "/" in run_id else ""


def name_template(run_id: str) -> str:
    """The run folder's name with its numbers masked: `trial_3` -> `trial_#`, `lr0.003_seed1` -> `lr#_seed#`."""
    return _NUMBER.sub("#", run_id.rsplit("/", 1)[-1])


def seed_template(run_id: str) -> str:
    """The run folder's name with seed numbers masked: `70m-seed2` -> `70m-seed#` (other numbers kept)."""
    return _SEED_IN_NAME.sub(lambda m: re.sub(r"\d+$", "#", m.group(0)), run_id.rsplit("/", 1)[-1])


def ignored_param(key: str) -> bool:
    """Seed-like and bookkeeping params: they differ between runs of one configuration."""
    parts = [p for p in re.split(r"[._/\-]", key.lower()) if p]
    return bool(_SEED.search(key)) or any(p in _BOOKKEEPING for p in parts)


def _loss_series_choice(summary: pl.DataFrame) -> pl.DataFrame:
    """Per (run, split family) the best loss key: canonical spelling, then most finite points.

    Returns [run_id, key, split, family, n_finite, n_nonfinite, first_step, last_step]
    with family 'val' or 'train'.
    """
    keys = summary["key"].unique().to_list()
    roles = {k: metric_role(k) for k in keys}
    rows = []
    for r in summary.iter_rows(named=True):
        if roles.get(r["key"]) != "loss":
            continue
        split = split_of(r["key"], r["split"])
        family = "val" if split == "val" else ("train" if split in ("train", None) else None)
        if family is None:
            continue
        canonical = " ".join(r["key"].lower().split()) in CANONICAL["loss"]
        rows.append({**r, "family": family, "rank": (0 if canonical else 1, -r["n_finite"], r["key"])})
    if not rows:
        return pl.DataFrame()
    best: dict[tuple[str, str], dict] = {}
    for r in rows:
        k = (r["run_id"], r["family"])
        if k not in best or r["rank"] < best[k]["rank"]:
            best[k] = r
    return pl.DataFrame([{k: v for k, v in r.items() if k != "rank"} for r in best.values()])


@sweep_detector("slow_convergence")
def slow_convergence(tables: SweepTables, cfg: SlowConvergenceConfig) -> list[Finding]:
    """A run learns far slower than its peers (SPEC §5 `slow_convergence`).

    Peers: runs in the same parent folder. When at least 3 of them share the run's params
    except seed-like (`seed`, `data_seed`, ...) and bookkeeping keys (paths, names, ids,
    Hydra overrides), those seed peers are the reference; a run without params has seed peers
    in the siblings whose folder names differ only by a seed number (`70m-seed1..4`).
    Otherwise, when the run has no params, all its siblings; else the siblings whose folder names follow the same
    template (`trial_#`, `lr#_seed#`): the members of one study or grid, not unrelated
    experiments that happen to share a folder.

    Curves: the validation loss when the run and >= 3 peers log one, else the train loss;
    each run reduced to the medians of about 200 bins (equal in log step) and interpolated at
    50 steps of the range the run shares with >= 3 peers (half evenly spaced, half evenly in
    log step; the first 0.5% skipped: all runs start at the same initial loss). Runs with NaN/Inf in the series are left out (the divergence detectors own them).

    Behind at a step: above the peers' median by >= 5% of it and by >= 3 robust sigmas of the
    seed peers' spread (seed peers: seed noise is the yardstick), or by >= 25% of it (siblings:
    their configs differ, so only a large gap says more than "a worse hyperparameter"; AlgoPerf
    marks a trial healthy within 15% of its study's median final loss, corpus README). Fires
    when the run is behind on >= 80% of the compared steps from an onset on, that stretch covers
    >= half of the compared steps, and it is behind at the last one; the onset is where the
    lag starts. Pythia 70m seed 2 is 4.47 vs 3.85 at step 1000 and ends 0.24-0.38 nats above
    its three seed peers (seed-to-seed spread ~0.07), which this rule catches from the start.
    """
    metrics = tables.scan("metrics")
    summary = (
        metrics.group_by("run_id", "key", "split")
        .agg(
            pl.col("value").is_finite().sum().alias("n_finite"),
            (pl.col("value").is_not_null() & ~pl.col("value").is_finite()).sum().alias("n_nonfinite"),
            pl.col("step").filter(pl.col("value").is_finite()).min().alias("first_step"),
            pl.col("step").filter(pl.col("value").is_finite()).max().alias("last_step"),
        )
        .collect(engine="streaming")  # one pass over every run's metrics, in bounded memory
    )
    if summary.height == 0:
        return []
    choice = _loss_series_choice(summary)
    if choice.height == 0:
        return []
    choice = choice.filter((pl.col("n_finite") >= cfg.min_points) & (pl.col("n_nonfinite") == 0))
    if choice.height == 0:
        return []
    runs = sorted(set(choice["run_id"].to_list()))
    peers = _peer_groups(tables, runs, cfg)
    if not peers:
        return []
    binned = _binned_frame(metrics, choice, cfg)
    logged = set(binned.select("run_id", "family").unique().iter_rows())
    # The exact comparison (`_compare`) runs only on the runs that can fire: behind their
    # peers at the last compared step, which is computed for all runs at once.
    behind = sorted(_behind_at_end(peers, logged, binned, cfg))
    needed = set(behind) | {p for rid in behind for p in peers[rid][1]}
    curves = _curves_of(binned.filter(pl.col("run_id").is_in(sorted(needed))))
    out = []
    for rid in behind:
        mode, group = peers[rid]
        finding = _compare(rid, mode, group, choice, curves, cfg)
        if finding is not None:
            out.append(finding)
    return out


def _family_for(rid: str, group: list[str], curves, cfg: SlowConvergenceConfig) -> str | None:
    """The loss family compared: validation when the run and >= min_peers peers log it, else train.

    `curves` is anything holding the logged (run, family) pairs (the curve dict or a set).
    """
    for fam in ("val", "train"):
        if (rid, fam) in curves and sum((p, fam) in curves for p in group) >= cfg.min_peers:
            return fam
    return None


# A run whose gap at the last compared step is within this relative margin of the line is
# still compared exactly: polars and numpy may round an interpolation or median differently.
_ROUNDING_MARGIN = 1e-6


def _behind_at_end(peers: dict[str, tuple[str, list[str]]], logged: set[tuple[str, str]], binned: pl.DataFrame, cfg: SlowConvergenceConfig) -> set[str]:
    """Runs behind their peers' median at the last compared step, for all runs at once.

    `_compare` fires only when the run is behind at its last compared (covered) grid step,
    so every other run is skipped. Same grid, coverage, interpolation and medians as
    `_compare`, vectorised: numpy for the grids, polars joins for coverage and values.
    """
    pair_rows = []
    for rid, (mode, group) in peers.items():
        family = _family_for(rid, group, logged, cfg)
        if family is None:
            continue
        pair_rows += [(rid, family, mode, p) for p in group if (p, family) in logged]
    if not pair_rows:
        return set()
    pairs = pl.DataFrame(pair_rows, schema={"run_id": pl.String, "family": pl.String, "mode": pl.String, "peer": pl.String}, orient="row")
    ranges = binned.group_by("run_id", "family").agg(pl.col("step").min().alias("first"), pl.col("step").max().alias("last"))
    peer_ranges = ranges.rename({"run_id": "peer", "first": "p_first", "last": "p_last"})
    pairs = pairs.join(peer_ranges, on=["peer", "family"])
    k = cfg.min_peers - 1
    runs = (
        pairs.group_by("run_id", "family", "mode")
        .agg(pl.col("p_first").sort().get(k).alias("p_lo"), pl.col("p_last").sort(descending=True).get(k).alias("p_hi"))
        .join(ranges, on=["run_id", "family"])
        .with_columns(pl.max_horizontal("first", "p_lo").alias("lo"), pl.min_horizontal("last", "p_hi").alias("hi"))
        .filter(pl.col("hi") > pl.col("lo"))
        .sort("run_id")
    )
    if runs.height == 0:
        return set()
    lo = runs["lo"].to_numpy().astype(float)
    hi = runs["hi"].to_numpy().astype(float)
    lo = lo + cfg.skip_frac * (hi - lo)
    half = cfg.grid_points // 2
    lin = np.linspace(lo, hi, half, axis=1)
    log = lo[:, None] - 1 + np.geomspace(np.ones_like(lo), hi - lo + 1, cfg.grid_points - half, axis=1)
    grid = np.sort(np.concatenate((lin, log), axis=1), axis=1)
    keep = np.ones(grid.shape, dtype=bool)
    keep[:, 1:] = grid[:, 1:] != grid[:, :-1]  # np.unique per run
    row, col = np.nonzero(keep)
    points = pl.DataFrame({"run_id": runs["run_id"].gather(row), "family": runs["family"].gather(row), "x": grid[row, col]})
    # Coverage: peers whose curve spans the point; the last covered point is where it must be behind.
    cover = (
        points.join(pairs.select("run_id", "p_first", "p_last"), on="run_id")
        .group_by("run_id", "family", "x")
        .agg(((pl.col("x") >= pl.col("p_first")) & (pl.col("x") <= pl.col("p_last"))).sum().alias("n_cover"))
        .filter(pl.col("n_cover") >= cfg.min_peers)
    )
    last = cover.group_by("run_id", "family").agg(pl.len().alias("n_covered"), pl.col("x").max()).filter(pl.col("n_covered") >= 5)
    if last.height == 0:
        return set()
    own = _interp_at(last.select("run_id", "family", "x", pl.col("run_id").alias("curve")), binned, clamp=True)
    at_peers = _interp_at(
        last.join(pairs.select("run_id", "peer"), on="run_id").select("run_id", "family", "x", pl.col("peer").alias("curve")),
        binned,
        clamp=False,
    ).drop_nulls("v")
    med = at_peers.group_by("run_id").agg(pl.col("v").median().alias("med"))
    spread = at_peers.join(med, on="run_id").group_by("run_id").agg((pl.col("v") - pl.col("med")).abs().median().alias("mad"))
    judged = (
        own.select("run_id", pl.col("v").alias("run_v"))
        .join(med, on="run_id")
        .join(spread, on="run_id")
        .join(runs.select("run_id", "mode"), on="run_id")
        .with_columns(pl.col("med").abs().alias("scale"))
        .with_columns(
            pl.when(pl.col("mode") == "seed")
            .then(pl.max_horizontal(cfg.seed_min_rel_gap * pl.col("scale"), cfg.seed_spread_k * MAD_TO_SIGMA * pl.col("mad")))
            .otherwise(cfg.sibling_min_rel_gap * pl.col("scale"))
            .alias("need")
        )
    )
    margin = _ROUNDING_MARGIN * (pl.col("need").abs() + pl.col("scale") + pl.col("run_v").abs())
    behind = judged.filter((pl.col("run_v") - pl.col("med") > pl.col("need") - margin) & (pl.col("scale") > 0))
    return set(behind["run_id"].to_list())


def _interp_at(points: pl.DataFrame, binned: pl.DataFrame, *, clamp: bool) -> pl.DataFrame:
    """np.interp of each point's curve (`curve`, `family`) at `x`, as column `v`; outside the
    curve's steps the end value when `clamp`, else null (not covered)."""
    curve = (
        binned.select(pl.col("run_id").alias("curve"), "family", pl.col("step").alias("s0"), pl.col("value").alias("v0"))
        .with_columns(
            pl.col("s0").shift(-1).over("curve", "family").alias("s1"),
            pl.col("v0").shift(-1).over("curve", "family").alias("v1"),
        )
        .sort("s0")
    )
    # Sorted by x and s0 overall, hence within every `by` group.
    joined = points.sort("x").join_asof(
        curve, left_on="x", right_on="s0", by=["curve", "family"], strategy="backward", check_sortedness=False
    )
    slope = (pl.col("v1") - pl.col("v0")) / (pl.col("s1") - pl.col("s0"))
    inner = pl.when(pl.col("s1").is_null()).then(pl.col("v0")).otherwise(slope * (pl.col("x") - pl.col("s0")) + pl.col("v0"))
    ends = binned.group_by(pl.col("run_id").alias("curve"), "family").agg(
        pl.col("step").min().alias("first_step"), pl.col("step").max().alias("last_step"), pl.col("value").first().alias("v_first")
    )
    joined = joined.join(ends, on=["curve", "family"], how="left")
    if clamp:  # np.interp: the first value before the first point, the last after the last
        value = pl.when(pl.col("x") < pl.col("first_step")).then(pl.col("v_first")).otherwise(inner)
    else:
        inside = (pl.col("x") >= pl.col("first_step")) & (pl.col("x") <= pl.col("last_step"))
        value = pl.when(inside).then(inner).otherwise(None)
    joined = joined.with_columns(value.alias("v"))
    return joined.select("run_id", "family", "x", "curve", "v")


def _peer_groups(tables: SweepTables, runs: list[str], cfg: SlowConvergenceConfig) -> dict[str, tuple[str, list[str]]]:
    """{run: (mode, peers)} for runs with >= min_peers peers; mode 'seed' or 'siblings'."""
    params = (
        tables.scan("params")
        .filter(pl.col("run_id").is_in(runs))
        .select("run_id", "key", "value")
        .collect()
    )
    # A run's configuration as one string: its kept (key, value) pairs sorted by key. The
    # separators are control characters no key or value holds; a null value has its own mark.
    signature: dict[str, str] = {}
    if params.height:
        ignored = [k for k in params["key"].unique().to_list() if ignored_param(k)]
        pair = pl.concat_str([pl.col("key"), pl.col("value").fill_null("\x00null")], separator="\x1f")
        kept = params.filter(~pl.col("key").is_in(ignored)).group_by("run_id").agg(pair.sort().str.join("\x1e").alias("sig"))
        signature = dict(kept.iter_rows())
        for rid in params["run_id"].unique().to_list():
            signature.setdefault(rid, "")
    by_parent: dict[str, list[str]] = {}
    for rid in runs:
        by_parent.setdefault(parent_of(rid), []).append(rid)
    out: dict[str, tuple[str, list[str]]] = {}
    for members in by_parent.values():
        if len(members) < cfg.min_peers + 1:
            continue
        # Each grouping once per folder (members in order), not once per pair of runs.
        same_config: dict[str, list[str]] = {}
        same_template: dict[str, list[str]] = {}
        same_seed_name: dict[str, list[str]] = {}
        without_params: list[str] = []
        for r in members:
            same_template.setdefault(name_template(r), []).append(r)
            if r in signature:
                same_config.setdefault(signature[r], []).append(r)
            else:
                without_params.append(r)
                same_seed_name.setdefault(seed_template(r), []).append(r)
        for rid in members:
            if rid in signature:
                seed_peers = [r for r in same_config[signature[rid]] if r != rid]
                if len(seed_peers) >= cfg.min_peers:
                    out[rid] = ("seed", seed_peers)
                    continue
                siblings = [r for r in same_template[name_template(rid)] if r != rid]
            else:
                # No params: folder names that differ only by a seed number are seed peers.
                named = seed_template(rid)
                seed_peers = [r for r in same_seed_name[named] if r != rid]
                if named != rid.rsplit("/", 1)[-1] and len(seed_peers) >= cfg.min_peers:
                    out[rid] = ("seed", seed_peers)
                    continue
                siblings = [r for r in without_params if r != rid]
            if len(siblings) >= cfg.min_peers:
                out[rid] = ("siblings", siblings)
    return out


def _binned_frame(metrics: pl.LazyFrame, choice: pl.DataFrame, cfg: SlowConvergenceConfig) -> pl.DataFrame:
    """[run_id, family, bin, step, value, row_step, row_value]: medians of ~bins_per_run step bins
    of each chosen series, sorted by run, family and step."""
    wanted = choice.select("run_id", "key", "split", "family", "first_step", "last_step").lazy()
    joined = metrics.join(wanted, on=["run_id", "key"], how="inner")
    # A null split matches a null split (join on nulls does not).
    joined = joined.filter(
        (pl.col("split").is_null() & pl.col("split_right").is_null()) | (pl.col("split") == pl.col("split_right"))
    )
    # Bins equal in log(step): single steps early, where the loss moves fast, wide bins late.
    span = (pl.col("last_step") - pl.col("first_step")).cast(pl.Float64).log1p().clip(lower_bound=1e-9)
    position = (pl.col("step") - pl.col("first_step")).cast(pl.Float64).log1p() / span
    return (
        joined.filter(pl.col("value").is_finite())
        .with_columns((position * cfg.bins_per_run).floor().cast(pl.Int64).alias("bin"))
        .group_by("run_id", "family", "bin")
        .agg(
            pl.col("step").median().alias("step"),
            pl.col("value").median().alias("value"),
            pl.col("step").first().alias("row_step"),  # one real logged row per bin, for evidence
            pl.col("value").first().alias("row_value"),
        )
        .sort("run_id", "family", "step")
        .collect(engine="streaming")
    )


def _curves_of(binned: pl.DataFrame) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """{(run, family): (steps, values, row_steps, row_values)} of the binned curves."""
    out = {}
    for (rid, family), frame in binned.group_by(["run_id", "family"], maintain_order=True):
        out[(rid, family)] = (
            frame["step"].to_numpy().astype(float),
            frame["value"].to_numpy(),
            frame["row_step"].to_numpy(),
            frame["row_value"].to_numpy(),
        )
    return out


def _binned_curves(metrics: pl.LazyFrame, choice: pl.DataFrame, cfg: SlowConvergenceConfig):
    """{(run, family): (steps, values, row_steps, row_values)}: medians of ~bins_per_run step bins."""
    return _curves_of(_binned_frame(metrics, choice, cfg))


def _compare(rid, mode, group, choice, curves, cfg: SlowConvergenceConfig) -> Finding | None:
    """The exact comparison of one run with its peers (the definition of a finding)."""
    family = _family_for(rid, group, curves, cfg)
    if family is None:
        return None
    peers = [p for p in group if (p, family) in curves]
    s_run, v_run = curves[(rid, family)][:2]
    ranges = np.array([(curves[(p, family)][0][0], curves[(p, family)][0][-1]) for p in peers])
    lo = max(s_run[0], np.sort(ranges[:, 0])[cfg.min_peers - 1])
    hi = min(s_run[-1], np.sort(ranges[:, 1])[::-1][cfg.min_peers - 1])
    if not hi > lo:
        return None
    lo = lo + cfg.skip_frac * (hi - lo)
    # Half the points evenly spaced in steps (the end of training weighs), half in log(step)
    # (the early phase, where a lag starts, gets resolution).
    half = cfg.grid_points // 2
    log_grid = lo - 1 + np.geomspace(1, hi - lo + 1, cfg.grid_points - half)
    grid = np.unique(np.concatenate((np.linspace(lo, hi, half), log_grid)))
    run_at = np.interp(grid, s_run, v_run)
    peer_at = np.full((len(peers), grid.size), np.nan)
    for j, p in enumerate(peers):
        s, v = curves[(p, family)][:2]
        inside = (grid >= s[0]) & (grid <= s[-1])
        peer_at[j, inside] = np.interp(grid[inside], s, v)
    covered = np.sum(np.isfinite(peer_at), axis=0) >= cfg.min_peers
    if covered.sum() < 5:
        return None
    grid, run_at, peer_at = grid[covered], run_at[covered], peer_at[:, covered]
    med = np.nanmedian(peer_at, axis=0)
    scale = np.abs(med)
    gap = run_at - med
    if mode == "seed":
        sigma = MAD_TO_SIGMA * np.nanmedian(np.abs(peer_at - med), axis=0)
        need = np.maximum(cfg.seed_min_rel_gap * scale, cfg.seed_spread_k * sigma)
    else:
        need = cfg.sibling_min_rel_gap * scale
    behind = (gap > need) & (scale > 0)
    onset = sustained_onset(behind, cfg.sustain_frac, max(5, int(np.ceil(cfg.min_behind_frac * grid.size))))
    if onset is None or not behind[-1]:
        return None
    rel = gap / np.where(scale > 0, scale, np.nan)
    auc_rel = float(np.nanmean(rel[onset:]))
    key = choice.filter((pl.col("run_id") == rid) & (pl.col("family") == family))["key"][0]
    _, _, row_steps, _ = curves[(rid, family)]
    later = row_steps[row_steps >= grid[onset]]
    g0 = int(later[0]) if later.size else int(round(grid[onset]))  # a step the run logged
    g1 = int(round(grid[-1]))
    word = "validation" if family == "val" else "train"
    peer_desc = f"{len(peers)} {'seed peers (same config but the seed)' if mode == 'seed' else 'sibling runs'}"
    evidence = [
        _nearest_ref(rid, key, family, curves, grid[onset], f"{word} loss {fmt(run_at[onset])} near step {g0} vs peer median {fmt(med[onset])}"),
        _nearest_ref(rid, key, family, curves, grid[-1], f"{word} loss {fmt(run_at[-1])} near step {g1} vs peer median {fmt(med[-1])} ({fmt(100 * rel[-1])}% higher)"),
    ]
    for p in peers[:3]:
        pkey = choice.filter((pl.col("run_id") == p) & (pl.col("family") == family))["key"][0]
        evidence.append(_nearest_ref(p, pkey, family, curves, grid[-1], f"peer `{p}`: smoothed {fmt(np.interp(grid[-1], *curves[(p, family)][:2]))} near step {g1}"))
    confidence = 0.85 if mode == "seed" else (0.8 if rel[-1] >= 2 * cfg.sibling_min_rel_gap else 0.7)
    return Finding(
        kind="slow_convergence",
        severity="medium",
        confidence=confidence,
        summary=(
            f"learns slower than its {peer_desc}: smoothed {word} loss `{key}` behind the peers' median from step {g0} on "
            f"(on {fmt(100 * float(np.mean(behind[onset:])))}% of the compared steps), {fmt(run_at[-1])} vs {fmt(med[-1])} "
            f"near step {g1} ({fmt(100 * rel[-1])}% higher; {fmt(100 * auc_rel)}% higher on average over the curve)"
        ),
        evidence=tuple(evidence),
        detector="slow_convergence",
        run_id=rid,
        scope="run",
        run_ids=tuple([rid] + peers),
        finding_id=finding_id("slow_convergence", rid, family),
        onset_step=g0,
        end_step=g1,
        fix=(
            "Compare this run's config and data with its peers': with the same config (seed peers) check its data "
            "order/shard and initialisation, rerun with another seed, and report results over several seeds; with "
            "different configs, move the slow setting (e.g. the learning rate or warm-up) towards the peers' values."
        ),
        expected_impact=f"The {word} loss tracks its peers' median (about {fmt(med[-1])} near step {g1}).",
        verify_by=(
            f"Rerun (another seed, or the peers' setting) and compare the smoothed {word} loss with the peers' median "
            f"at steps {g0}-{g1}: within {fmt(100 * (cfg.seed_min_rel_gap if mode == 'seed' else cfg.sibling_min_rel_gap))}%."
        ),
    )


def _nearest_ref(rid: str, key: str, family: str, curves, step: float, text: str) -> EvidenceRef:
    """A reference to the logged row nearest `step` (bin medians themselves are not rows)."""
    _, _, row_steps, row_values = curves[(rid, family)]
    i = int(np.argmin(np.abs(row_steps - step)))
    return metric_ref(rid, int(row_steps[i]), key, float(row_values[i]), f"{text}; logged {fmt(row_values[i])} at step {int(row_steps[i])}")
