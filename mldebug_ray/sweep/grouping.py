"""Configurations of a sweep: which runs are comparable, which share hyperparameters, which are repeats.

The rules, in order:

1. **Comparison groups** come from the run_id path. Every '/'-separated segment is read
   as three parts:
   - *repeat components*: `<word><number>` where the word is one of
     `GroupingConfig.repeat_words` (`seed2`, `study_3`, `repeat-1`, `seed=4`), at the
     start of the segment or after a separator (`_ - . , =`), e.g. `70m-seed2` ->
     repeat `seed2`; and hex ids (a UUID, or 8+ hex digits mixing digits and letters, like
     modded-nanogpt's per-run folder) when `hash_segments_are_repeats`;
   - what remains *indexes* a configuration when it ends in a digit (`trial_3`,
     `lr0.001`, `12-00-00`): its numbers are masked (`trial_#`) in the group key;
   - otherwise the segment is *literal* (`criteo1tb_pytorch`, `baseline`) and must be
     equal for runs to be compared.
   Runs whose masked paths are equal form one group: for AlgoPerf
   `<submission>/study_<k>/<workload>/trial_<n>` that is one submission x workload with
   its 5 trials x 5 studies; for `pythia/70m-seed<N>` the 4 seeds.
2. **Hyperparameters** are the `params` keys that are neither seed-like
   (`GroupingConfig.seed_keys`: `seed`, `*_seed`, `rng*`, `data_order*`, `study`,
   `repeat`, ...) nor bookkeeping (`GroupingConfig.ignore_keys`: results such as
   AlgoPerf's `summary.score`, paths, run names, timestamps). Patterns are fnmatch globs,
   case-insensitive, tried on the whole dotted key and on its last component.
3. **Configurations** within a group: runs with equal values of every hyperparameter that
   varies in the group (a key a run lacks counts as the value `<unset>`). When no
   hyperparameter varies (params absent or identical), the path decides: runs with the
   same index components (the same `trial_3`) are one configuration, and runs differing
   only in repeat components (`seed1` vs `seed2`, `study_0` vs `study_1`) are repeats.
4. A run's **repeat label** is its repeat components (`study_0`), else the seed-like
   params that vary in its group (`seed=3`); its **seed** for nondeterminism checks is
   all its seed-like params together (`data.task_seed=1234, seed=3`), else a repeat
   component whose word is `seed`/`rng` (a `study_0` folder says nothing about the seed
   used inside it).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Optional

import polars as pl

from mldebug_ray.errors import ConfigError

UNSET = "<unset>"
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_HEX_TOKEN = re.compile(r"^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{8,64})$")
_TOKEN_SPLIT = re.compile(r"([_\-.,=])")
_SEED_WORDS = ("seed", "rng")


@dataclass
class GroupingConfig:
    """How runs are grouped into configurations and repeats (keys `detectors.<name>.grouping.*`)."""

    seed_keys: list[str] = field(
        default_factory=lambda: [
            "seed", "*_seed", "seed_*", "*seed", "rng*", "*_rng", "random_state", "data_order*", "*shuffle_seed*",
            "study", "study_*", "repeat", "repeat_*", "trial_repeat", "replicate", "replica",
        ]
    )
    """Param keys that only pick a random draw or a repeat, never a hyperparameter (fnmatch, case-insensitive)."""
    ignore_keys: list[str] = field(
        default_factory=lambda: [
            "summary.*", "hydra.*", "_wandb*", "wandb.*", "*_dir", "*_path", "*_file", "output*", "logdir",
            "run_name", "run_id", "experiment_name", "*timestamp*", "*_time_s", "*.date", "date",
        ]
    )
    """Param keys that are neither hyperparameters nor seeds: results, paths, names, timestamps."""
    repeat_words: list[str] = field(
        default_factory=lambda: ["seed", "study", "repeat", "rep", "replicate", "replica", "trial_repeat", "rng"]
    )
    """Words that, followed by a number in a run's path (`seed2`, `study_3`), name a repeat."""
    hash_segments_are_repeats: bool = True
    """Hex ids in a run's path (UUIDs, hashes) name a repeat of the same configuration."""
    max_label_keys: int = 3
    """Hyperparameters shown in a configuration's label when the path gives no trial name."""

    def __post_init__(self) -> None:
        for name in ("seed_keys", "ignore_keys", "repeat_words"):
            values = getattr(self, name)
            if any(not isinstance(v, str) or not v.strip() for v in values):
                raise ConfigError(f"detectors.<sweep detector>.grouping.{name} must hold non-empty strings, got {values}")
        bad = [w for w in self.repeat_words if not re.fullmatch(r"[A-Za-z_]+", w)]
        if bad:
            raise ConfigError(f"detectors.<sweep detector>.grouping.repeat_words must be letters/underscores, got {bad}")
        if self.max_label_keys < 1:
            raise ConfigError(f"detectors.<sweep detector>.grouping.max_label_keys must be >= 1, got {self.max_label_keys}")

    def key(self) -> tuple:
        """A hashable summary of the settings (cache key)."""
        return (tuple(self.seed_keys), tuple(self.ignore_keys), tuple(self.repeat_words), self.hash_segments_are_repeats)


def matches_key(key: str, patterns: list[str]) -> bool:
    """Whether `key` or its last dotted component matches one of the fnmatch `patterns` (case-insensitive)."""
    k = key.lower()
    leaf = k.rsplit(".", 1)[-1]
    return any(fnmatch.fnmatchcase(k, p.lower()) or fnmatch.fnmatchcase(leaf, p.lower()) for p in patterns)


def is_seed_key(key: str, cfg: GroupingConfig) -> bool:
    return matches_key(key, cfg.seed_keys)


def is_ignored_key(key: str, cfg: GroupingConfig) -> bool:
    return matches_key(key, cfg.ignore_keys)


@dataclass(frozen=True)
class PathParts:
    """A run_id read as its group key, configuration index and repeat label."""

    group: str
    index: str
    repeat: str
    seed: Optional[str]  # a repeat component named like a seed (`seed2`), if any


def _repeat_regex(words: list[str]) -> re.Pattern:
    alternatives = "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))
    return re.compile(rf"(?i)(?:^|(?<=[_\-.,=]))((?:{alternatives})[_\-=]?\d+)(?=$|[_\-.,=])")


def parse_path(run_id: str, cfg: GroupingConfig, _cache: dict | None = None) -> PathParts:
    """Split a run_id into group key, index and repeat parts (module docstring, rule 1)."""
    regex = _repeat_regex(cfg.repeat_words)
    group, index, repeat = [], [], []
    seed = None
    for segment in run_id.split("/"):
        found = [m.group(1) for m in regex.finditer(segment)]
        rest = regex.sub("", segment)
        if cfg.hash_segments_are_repeats:
            if _is_hex_id(rest):
                found.append(rest)
                rest = ""
            else:
                tokens = _TOKEN_SPLIT.split(rest)
                hexes = [t for t in tokens[::2] if _is_hex_id(t)]
                if hexes:
                    found += hexes
                    rest = "".join(t if i % 2 or t not in hexes else "" for i, t in enumerate(tokens))
        rest = re.sub(r"[_\-.,=]{2,}", lambda m: m.group(0)[0], rest).strip("_-.,=")
        if found:
            repeat.extend(found)
            seed = seed or next((f for f in found if f.lower().startswith(_SEED_WORDS)), None)
        masked = "~".join("<id>" if _is_hex_id(f) else _NUMBER.sub("#", f) for f in found)
        if rest and rest[-1].isdigit():
            index.append(rest)
            part = _NUMBER.sub("#", rest)
        else:
            part = rest
        group.append(part + (f"~{masked}" if masked else ""))
    return PathParts("/".join(group), "/".join(index), "/".join(repeat), seed)


def _is_hex_id(token: str) -> bool:
    t = token.lower()
    if not _HEX_TOKEN.match(t):
        return False
    digits = sum(c.isdigit() for c in t)
    return digits >= 2 and digits < len(t.replace("-", ""))


@dataclass
class Grouping:
    """The sweep's runs with their group, configuration and repeat, plus the hyperparameters that vary."""

    runs: pl.DataFrame
    """One row per run: run_id, group, config, config_label, repeat, seed, index, status, has_params."""
    hparams: pl.DataFrame
    """run_id, group, key, value, value_num for each hyperparameter that varies within its group."""
    seed_params: pl.DataFrame
    """run_id, key, value of the seed-like params found."""

    def group_runs(self, group: str) -> pl.DataFrame:
        return self.runs.filter(pl.col("group") == group)

    def varying_keys(self, group: str) -> list[str]:
        return sorted(self.hparams.filter(pl.col("group") == group)["key"].unique().to_list())


def build_grouping(runs: pl.DataFrame, params: pl.DataFrame, cfg: GroupingConfig) -> Grouping:
    """Group `runs` (run_id, status) by the rules of the module docstring using `params` (SPEC §4 `params`)."""
    parts = [parse_path(r, cfg) for r in runs["run_id"].to_list()]
    base = runs.select("run_id", "status").with_columns(
        pl.Series("group", [p.group for p in parts], dtype=pl.String),
        pl.Series("index", [p.index for p in parts], dtype=pl.String),
        pl.Series("path_repeat", [p.repeat for p in parts], dtype=pl.String),
        pl.Series("path_seed", [p.seed for p in parts], dtype=pl.String),
    )
    keys = params["key"].unique().to_list() if params.height else []
    seed_keys = sorted(k for k in keys if is_seed_key(k, cfg))
    hp_keys = sorted(k for k in keys if k not in seed_keys and not is_ignored_key(k, cfg))
    has_params = params.select("run_id").unique().with_columns(pl.lit(True).alias("has_params"))

    seeds = params.filter(pl.col("key").is_in(seed_keys)).select("run_id", "key", "value")
    # A run's seed is all its seed-like params together (two runs share a seed only when
    # every one is equal); its repeat label names only those that vary in its group.
    seeds_g = seeds.join(base.select("run_id", "group"), on="run_id", how="inner")
    seed_varies = (
        seeds_g.group_by("group", "key").agg(pl.col("value").n_unique().alias("n_values"), pl.len().alias("n_runs"))
        .join(base.group_by("group").agg(pl.len().alias("group_size")), on="group")
        .filter((pl.col("n_values") > 1) | (pl.col("n_runs") < pl.col("group_size")))
        .select("group", "key", pl.lit(True).alias("varies"))
    )
    seed_of = (
        seeds_g.join(seed_varies, on=["group", "key"], how="left")
        .sort("run_id", "key")
        .group_by("run_id", maintain_order=True)
        .agg(
            pl.format("{}={}", pl.col("key"), pl.col("value")).str.join(", ").alias("param_seed"),
            pl.format("{}={}", pl.col("key"), pl.col("value")).filter(pl.col("varies").fill_null(False)).str.join(", ").alias("param_repeat"),
        )
        .with_columns(pl.when(pl.col("param_repeat") != "").then(pl.col("param_repeat")).alias("param_repeat"))
    )

    hp = params.filter(pl.col("key").is_in(hp_keys)).select("run_id", "key", "value", "value_num")
    hp = hp.join(base.select("run_id", "group"), on="run_id", how="inner")
    sizes = base.group_by("group").agg(pl.len().alias("group_size"))
    varying = (
        hp.group_by("group", "key")
        .agg(pl.col("value").n_unique().alias("n_values"), pl.len().alias("n_runs"))
        .join(sizes, on="group")
        .filter((pl.col("n_values") > 1) | (pl.col("n_runs") < pl.col("group_size")))
        .select("group", "key")
    )
    # Every run of a group gets a row per varying key; a missing key reads `<unset>`.
    full = (
        base.select("run_id", "group")
        .join(varying, on="group", how="inner")
        .join(hp.select("run_id", "key", "value", "value_num"), on=["run_id", "key"], how="left")
        .with_columns(pl.col("value").fill_null(UNSET))
        .sort("run_id", "key")
    )
    config_of = full.group_by("run_id", maintain_order=True).agg(
        pl.format("{}={}", pl.col("key"), pl.col("value")).str.join(", ").alias("hp_config")
    )
    out = (
        base.join(config_of, on="run_id", how="left")
        .join(seed_of, on="run_id", how="left")
        .join(has_params, on="run_id", how="left")
        .with_columns(
            pl.col("has_params").fill_null(False),
            pl.coalesce(pl.col("hp_config"), pl.lit("path:") + pl.col("index")).alias("config"),
            pl.when(pl.col("path_repeat") != "").then(pl.col("path_repeat")).otherwise(pl.col("param_repeat")).alias("repeat"),
            pl.coalesce(pl.col("param_seed"), pl.col("path_seed")).alias("seed"),
        )
    )
    out = out.with_columns(_labels(out, cfg).alias("config_label"))
    return Grouping(
        runs=out.select("run_id", "group", "config", "config_label", "repeat", "seed", "index", "status", "has_params").sort("run_id"),
        hparams=full.select("run_id", "group", "key", "value", "value_num"),
        seed_params=seeds,
    )


def _labels(frame: pl.DataFrame, cfg: GroupingConfig) -> pl.Series:
    """A short human name per configuration: its path index (`trial_3`) when that names it uniquely, else its values."""
    per_config = frame.group_by("group", "config").agg(pl.col("index").unique().alias("indexes"))
    index_owner = frame.group_by("group", "index").agg(pl.col("config").n_unique().alias("n_configs"))
    unique_index = {(g, i) for g, i, n in index_owner.iter_rows() if n == 1 and i}
    # Index components equal across a group (a root name like `algoperf_v06`) name nothing.
    varying_pos: dict[str, list[int]] = {}
    for group, indexes in frame.group_by("group").agg(pl.col("index").unique()).iter_rows():
        split = [i.split("/") for i in indexes]
        width = max(len(s) for s in split)
        varying_pos[group] = [
            j for j in range(width) if len({s[j] if j < len(s) else None for s in split}) > 1
        ] or list(range(width))
    names: dict[tuple[str, str], str] = {}
    for group, config, indexes in per_config.iter_rows():
        if len(indexes) == 1 and (group, indexes[0]) in unique_index:
            split = indexes[0].split("/")
            names[(group, config)] = "/".join(split[j] for j in varying_pos[group] if j < len(split))
        elif config.startswith("path:"):
            names[(group, config)] = config[5:] or "(all runs)"
        else:
            items = config.split(", ")
            label = ", ".join(items[: cfg.max_label_keys])
            names[(group, config)] = label + (", ..." if len(items) > cfg.max_label_keys else "")
    return pl.Series([names[(g, c)] for g, c in frame.select("group", "config").iter_rows()], dtype=pl.String)
