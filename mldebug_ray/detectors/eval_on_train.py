"""Eval on train: the "validation" numbers are the training numbers (identical series at the same steps)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt, is_timing_key, metric_ref, metric_role, split_of
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import Finding

_SPLIT_TOKEN = re.compile(r"(^|[/_ .-])(train|training|trn|val|valid|validation|eval|dev|test)(?=$|[/_ .-])")


def base_name(key: str) -> str:
    """The key without its split word: `train/loss`, `val_loss`, `eval_loss` -> `loss`."""
    k = " ".join(key.strip().lower().split())
    k = _SPLIT_TOKEN.sub(r"\1", k)
    return re.sub(r"[/_ .-]+", "_", k).strip("_")


@dataclass
class EvalOnTrainConfig:
    """Thresholds of the `eval_on_train` detector (keys `detectors.eval_on_train.*`)."""

    rel_tol: float = 1e-6
    """Two values are identical when they differ by at most this share of their magnitude."""
    min_common: int = 3
    """Fewest steps where both series are logged."""
    min_identical_frac: float = 0.9
    """Share of the common steps that must be identical."""
    min_distinct: int = 3
    """Fewest distinct non-zero values on which the two series agree (two saturated accuracies of
    1.0, or two zeros, prove nothing)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.rel_tol < 0.01:
            raise ConfigError(f"detectors.eval_on_train.rel_tol must be in [0, 0.01), got {self.rel_tol}")
        if self.min_common < 2:
            raise ConfigError(f"detectors.eval_on_train.min_common must be >= 2, got {self.min_common}")
        if not 0.5 <= self.min_identical_frac <= 1.0:
            raise ConfigError(f"detectors.eval_on_train.min_identical_frac must be in [0.5, 1], got {self.min_identical_frac}")
        if self.min_distinct < 2:
            raise ConfigError(f"detectors.eval_on_train.min_distinct must be >= 2, got {self.min_distinct}")


@detector("eval_on_train")
def eval_on_train(ev: RunEvidence, cfg: EvalOnTrainConfig) -> list[Finding]:
    """The validation series equals the training series at the same steps (SPEC §5 `eval_on_train`).

    Evidence: every validation (or test) metric and the training metric of the same name
    (`train/loss` ~ `val/loss`) or role (loss, accuracy), joined on step. Fires when, on at
    least 3 common steps, >= 90% of the pairs agree to 1e-6
    relative: two evaluations on different data never agree to six digits at several steps,
    while an evaluation loop fed the training loader (or a logging typo that writes the train
    value under the validation key) gives exactly this. The agreement must hold on at least 3
    distinct non-zero values: saturated or dead series (accuracy 1.0, BLEU 0) agree without
    any bug.
    """
    m = ev.metrics
    if m.height == 0:
        return []
    has_split = "split" in m.columns
    combos = m.select(["key", "split"] if has_split else ["key"]).unique().iter_rows(named=True)
    train, held_out = [], []
    for row in combos:
        key, split_value = row["key"], row.get("split")
        if is_timing_key(key):
            continue
        split = split_of(key, split_value)
        entry = (key, split_value, metric_role(key), base_name(key))
        if split in ("val", "test"):
            held_out.append((split, entry))
        elif split == "train" or (split is None and entry[2] in ("loss", "accuracy")):
            train.append(entry)
    if not train or not held_out:
        return []
    rid = ev.run_id
    out = []
    for split, (vkey, vsplit, vrole, vbase) in sorted(held_out, key=lambda e: e[1][0]):
        partners = [t for t in train if t[0] != vkey and (t[3] == vbase or (vrole is not None and t[2] == vrole))]
        for tkey, tsplit, _, _ in sorted(partners, key=lambda t: (t[3] != vbase, t[0])):
            joined = _series(m, vkey, vsplit, has_split).join(_series(m, tkey, tsplit, has_split), on="step", suffix="_train")
            if joined.height < cfg.min_common:
                continue
            same = (pl.col("value") - pl.col("value_train")).abs() <= cfg.rel_tol * pl.max_horizontal(
                pl.col("value").abs(), pl.col("value_train").abs(), pl.lit(1e-12)
            )
            share = float(joined.select(same.mean()).item())
            # Agreement must be on varying values: two series stuck at 0 (a collapsed model's
            # accuracy, a BLEU of 0) or at 1.0 agree without any bug.
            varied = joined.filter(same & (pl.col("value") != 0))["value"].n_unique()
            if share < cfg.min_identical_frac or varied < cfg.min_distinct:
                continue
            first, last = joined.row(0, named=True), joined.row(joined.height - 1, named=True)
            word = "validation" if split == "val" else "test"
            out.append(
                Finding(
                    kind="eval_on_train",
                    severity="high",
                    confidence=0.9 if share == 1.0 else 0.8,
                    summary=(
                        f"the {word} series `{vkey}` equals the training series `{tkey}` at {fmt(100 * share)}% of their "
                        f"{joined.height} common steps (e.g. {fmt(first['value'])} at step {first['step']}): the "
                        f"{word} numbers are training numbers"
                    ),
                    evidence=(
                        metric_ref(rid, first["step"], vkey, first["value"], f"{vkey} {fmt(first['value'])} at step {first['step']}"),
                        metric_ref(rid, first["step"], tkey, first["value_train"], f"{tkey} {fmt(first['value_train'])} at step {first['step']}"),
                        metric_ref(rid, last["step"], vkey, last["value"], f"{vkey} {fmt(last['value'])} at step {last['step']}"),
                        metric_ref(rid, last["step"], tkey, last["value_train"], f"{tkey} {fmt(last['value_train'])} at step {last['step']}"),
                    ),
                    detector="eval_on_train",
                    run_id=rid,
                    finding_id=finding_id("eval_on_train", rid, vkey, tkey),
                    onset_step=int(first["step"]),
                    end_step=int(last["step"]),
                    fix=(
                        f"Point the evaluation loop at the held-out {word} loader (not the training one), and check the "
                        f"logging code writes the {word} result under `{vkey}`."
                    ),
                    expected_impact=f"`{vkey}` measures held-out data: it differs from `{tkey}` and shows the generalisation gap.",
                    verify_by=f"Rerun one evaluation: `{vkey}` differs from `{tkey}` at the same step, and the {word} set has no overlap with the training set.",
                )
            )
            break  # one training partner per held-out series
    return out


def _series(m: pl.DataFrame, key: str, split_value: str | None, has_split: bool) -> pl.DataFrame:
    frame = m.filter(pl.col("key") == key)
    if has_split:
        frame = frame.filter(pl.col("split").is_null() if split_value is None else pl.col("split") == split_value)
    return (
        frame.filter(pl.col("value").is_finite())
        .select(pl.col("step").cast(pl.Int64), pl.col("value").cast(pl.Float64))
        .unique(subset=["step"], keep="last")
        .sort("step")
    )
