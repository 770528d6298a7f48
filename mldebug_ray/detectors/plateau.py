"""Plateau: the loss is stuck from the start (no learning), e.g. at chance level."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import adaptive_window, finding_id, fmt, metric_ref, pick_series, rolling_median
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding


@dataclass
class PlateauConfig:
    """Thresholds of the `plateau` detector (keys `detectors.plateau.*`)."""

    min_points: int = 20
    """Fewest finite loss points needed to judge."""
    edge_frac: float = 0.1
    """Share of the points whose median is the end level (and the smoothing window); the
    start level is the median of the first min(5, this share) points."""
    min_rel_decrease: float = 0.01
    """The loss is stuck when (start - best smoothed level) / |start| is below this."""
    chance_tol: float = 0.02
    """The loss is at chance when its end level is within this share of ln(num_classes)."""
    max_start_frac: float = 0.05
    """'From the start' needs the first logged step within this share of the last step
    (a resumed run's log says nothing about its beginning)."""
    class_keys: list[str] = field(
        default_factory=lambda: ["num_classes", "n_classes", "num_labels", "nclasses", "vocab_size", "n_vocab", "padded_vocab_size"]
    )
    """Param names (last dotted part) that give the number of classes of the loss, preferred first."""

    def __post_init__(self) -> None:
        if self.min_points < 3:
            raise ConfigError(f"detectors.plateau.min_points must be >= 3, got {self.min_points}")
        if not 0.0 < self.edge_frac <= 0.5:
            raise ConfigError(f"detectors.plateau.edge_frac must be in (0, 0.5], got {self.edge_frac}")
        if not 0.0 <= self.min_rel_decrease < 1.0:
            raise ConfigError(f"detectors.plateau.min_rel_decrease must be in [0, 1), got {self.min_rel_decrease}")
        if not 0.0 <= self.chance_tol < 1.0:
            raise ConfigError(f"detectors.plateau.chance_tol must be in [0, 1), got {self.chance_tol}")
        if not 0.0 <= self.max_start_frac <= 1.0:
            raise ConfigError(f"detectors.plateau.max_start_frac must be in [0, 1], got {self.max_start_frac}")


def num_classes(params: pl.DataFrame, names: list[str]) -> tuple[str, float] | None:
    """(param key, value) of the numeric param naming the number of classes, earliest in `names`
    first (a classifier's `n_classes` wins over its input `vocab_size`)."""
    if params.height == 0:
        return None
    order = {n.lower(): i for i, n in enumerate(names)}
    best = None
    for row in params.filter(pl.col("value_num").is_not_null() & (pl.col("value_num") >= 2)).iter_rows(named=True):
        rank = order.get(row["key"].lower().rsplit(".", 1)[-1])
        if rank is not None and (best is None or (rank, row["key"]) < best[0]):
            best = ((rank, row["key"]), row["key"], float(row["value_num"]))
    return None if best is None else (best[1], best[2])


@detector("plateau")
def plateau(ev: RunEvidence, cfg: PlateauConfig) -> list[Finding]:
    """Loss stuck from the start: no learning, or stuck at chance (SPEC §5 `plateau`).

    Evidence: the train loss (validation loss if no train loss); params naming the number
    of classes (`num_classes`, `vocab_size`, ...). Fires when the best level the loss
    ever reached (a rolling median over 10% of the points) is less than 1% below its start
    (median of the first min(5, 10%) points): the run learned nothing; or when the median
    of the last 10% of points is within 2% of ln(num_classes), the cross-entropy of a
    uniform guess. Needs >= 20 points and a log that starts near step 0. Comparing the
    first and last 10% instead calls fast-converging runs stuck (Pythia-70m is at its
    final level after 10% of 143k steps; AlgoPerf criteo after 10 of 8000 steps).

    Thresholds: SageMaker Debugger's LossNotDecreasing asks for >= 0.1% decrease every
    10 steps; over a whole run that is far stricter than "no learning", so we take 1%
    from start to end, which every healthy corpus run exceeds by far (Pythia 11.07 ->
    2.80, nanogpt ~10.8 -> 3.3, AlgoPerf criteo 0.37 -> 0.12). 2% of ln(C) is the width
    of chance level seen in practice: a model that learned only the label frequencies
    sits a few percent under ln(C).
    """
    series = pick_series(ev.metrics, "loss", "train")
    which = "train"
    if series.height == 0:
        series = pick_series(ev.metrics, "loss", "val")
        which = "validation"
    series = series.filter(pl.col("value").is_finite())
    if series.height < cfg.min_points:
        return []
    steps = series["step"].to_numpy()
    x = series["value"].to_numpy()
    key = series["key"][0]
    k = max(1, int(round(x.size * cfg.edge_frac)))
    k_start = min(k, 5)
    start, end = float(np.median(x[:k_start])), float(np.median(x[-k:]))
    smooth = rolling_median(x, adaptive_window(x.size, frac=cfg.edge_frac, lo=3, hi=51, odd=True), center=True)
    i_best = int(np.argmin(smooth))
    best = float(smooth[i_best])
    rel_decrease = (start - best) / abs(start) if start != 0 else 0.0
    from_start = steps[0] <= cfg.max_start_frac * max(steps[-1], 1)
    stuck = from_start and rel_decrease < cfg.min_rel_decrease

    chance = None
    classes = num_classes(ev.params, cfg.class_keys)
    if classes is not None:
        level = math.log(classes[1])
        if abs(end - level) <= cfg.chance_tol * level:
            chance = (classes[0], classes[1], level)
    if not stuck and chance is None:
        return []

    rid = ev.run_id
    i_start = int(np.argmin(np.abs(x[:k_start] - start)))
    i_end = x.size - k + int(np.argmin(np.abs(x[-k:] - end)))
    evidence = [
        metric_ref(rid, steps[i_start], key, x[i_start], f"{which} loss at the start: {fmt(x[i_start])} (median of the first {k_start} points {fmt(start)})"),
        metric_ref(rid, steps[i_end], key, x[i_end], f"{which} loss near the end: {fmt(x[i_end])} (median of the last {k} points {fmt(end)})"),
    ]
    if stuck and i_best not in (i_start, i_end):
        evidence.append(metric_ref(rid, steps[i_best], key, x[i_best], f"lowest smoothed {which} loss {fmt(best)} at step {int(steps[i_best])}"))
    reasons = []
    if stuck:
        if rel_decrease > 0:
            reasons.append(f"its smoothed best {fmt(best)} is only {fmt(100 * rel_decrease)}% below its start {fmt(start)} over {x.size} points")
        else:
            reasons.append(f"over {x.size} points it never got below its start {fmt(start)} (smoothed best {fmt(best)})")
    if chance is not None:
        pkey, n, level = chance
        evidence.append(EvidenceRef("params", {"run_id": rid, "key": pkey}, n, f"{pkey} = {int(n)}: chance-level cross-entropy ln({int(n)}) = {fmt(level)}"))
        reasons.append(f"it ends at {fmt(end)}, within {fmt(100 * abs(end - level) / level)}% of chance level ln({int(n)}) = {fmt(level)}")
    confidence = 0.9 if (stuck and chance) else (0.8 if chance else 0.7)
    return [
        Finding(
            kind="plateau",
            severity="high",
            confidence=confidence,
            summary=f"{which} loss `{key}` is stuck from the start: " + "; ".join(reasons),
            evidence=tuple(evidence),
            detector="plateau",
            run_id=rid,
            finding_id=finding_id("plateau", rid, key),
            onset_step=int(steps[0]),
            end_step=int(steps[-1]),
            fix=(
                "Check that the learning rate is not zero or tiny (and the schedule is applied), that gradients "
                "reach the parameters (no detached tensors, frozen layers, optimizer built over the right "
                "parameters), that labels match the inputs, and that the initial output scale is sane; then "
                "try a 10x higher learning rate on a small subset."
            ),
            expected_impact=f"The loss falls well below {fmt(start)} within the first few hundred steps; a model that can overfit a small batch proves the pipeline learns.",
            verify_by=f"Train on one small batch for ~200 steps: the loss must drop towards 0; then rerun and check the {which} loss falls more than {fmt(100 * cfg.min_rel_decrease)}% by the end.",
        )
    ]
