"""Catastrophic forgetting: an earlier task's metric collapses when a new task starts."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt, metric_ref, metric_role
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import Finding

_TASK = re.compile(r"(?i)(task|experience|exp)[-_ ]?(\d+)")
# A metric naming the task being trained (its value is the task id).
_TASK_ID = re.compile(r"(?i)^((train|trainer|cl)[/_.])?(task|task_id|current_task|task_idx|experience|exp_id|current_experience)$")
_HIGHER = re.compile(r"(?i)(acc|f1|bleu|auc|map|top1|top5|score|iou|recall|precision|rouge|exact_match)")
_LOWER = re.compile(r"(?i)(loss|error|err|perplexity|ppl|wer|cer|nll)")


@dataclass
class CatastrophicForgettingConfig:
    """Thresholds of the `catastrophic_forgetting` detector (keys `detectors.catastrophic_forgetting.*`)."""

    min_rel_drop: float = 0.3
    """A higher-is-better metric of an earlier task falling by this share of its level ..."""
    min_abs_drop: float = 0.1
    """... and by at least this much in absolute terms (on a 0-1 scale; x100 for percentages) ..."""
    min_rel_rise: float = 0.5
    """... or a lower-is-better metric (loss) rising by this share, once a later task starts."""
    tail_points: int = 3
    """The level before a task switch is the median of up to this many last points before it."""

    def __post_init__(self) -> None:
        if not 0.0 < self.min_rel_drop < 1.0:
            raise ConfigError(f"detectors.catastrophic_forgetting.min_rel_drop must be in (0, 1), got {self.min_rel_drop}")
        if not 0.0 <= self.min_abs_drop < 1.0:
            raise ConfigError(f"detectors.catastrophic_forgetting.min_abs_drop must be in [0, 1), got {self.min_abs_drop}")
        if not self.min_rel_rise > 0.0:
            raise ConfigError(f"detectors.catastrophic_forgetting.min_rel_rise must be > 0, got {self.min_rel_rise}")
        if self.tail_points < 1:
            raise ConfigError(f"detectors.catastrophic_forgetting.tail_points must be >= 1, got {self.tail_points}")


def task_keys(keys: list[str]) -> dict[str, dict[int, str]]:
    """Per-task metric keys grouped by family: {'val/task_{}/accuracy': {0: key, 1: key}}."""
    families: dict[str, dict[int, str]] = {}
    for key in keys:
        # Every task-like token may be the one that varies (Avalanche: `Task000/Exp001`).
        for m in _TASK.finditer(key):
            family = key[: m.start()] + m.group(1) + "{}" + key[m.end():]
            families.setdefault(family, {})[int(m.group(2))] = key
    return {f: t for f, t in families.items() if len(t) >= 2}


def _direction(family: str) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when the name does not say."""
    role = metric_role(family.replace("{}", "0"))
    if role == "accuracy" or (_HIGHER.search(family) and not _LOWER.search(family)):
        return 1
    if role == "loss" or _LOWER.search(family):
        return -1
    return 0


def _task_starts(m: pl.DataFrame, tasks: dict[int, str]) -> tuple[dict[int, tuple[int, str]], bool]:
    """{task: (first step, how we know)} and whether the boundaries were logged explicitly."""
    id_keys = [k for k in m["key"].unique().to_list() if _TASK_ID.match(k.strip())]
    for key in sorted(id_keys):
        s = m.filter((pl.col("key") == key) & pl.col("value").is_finite()).sort("step")
        if s.height == 0:
            continue
        ids, steps = s["value"].to_numpy(), s["step"].to_numpy()
        starts = {}
        for i in range(ids.size):
            t = int(round(ids[i]))
            if t not in starts and (i == 0 or ids[i] != ids[i - 1]):
                starts[t] = (int(steps[i]), key)
        if len(starts) >= 2:
            return starts, True
    first = {
        t: int(m.filter((pl.col("key") == key) & pl.col("value").is_finite())["step"].min() or 0) for t, key in tasks.items()
    }
    if len(set(first.values())) > 1:
        return {t: (s, tasks[t]) for t, s in first.items()}, True
    return {}, False


@detector("catastrophic_forgetting")
def catastrophic_forgetting(ev: RunEvidence, cfg: CatastrophicForgettingConfig) -> list[Finding]:
    """An earlier task's metric collapses when a new task starts (SPEC §5 `catastrophic_forgetting`).

    Evidence: per-task metric keys (`task0/acc`, `val/task_1/accuracy`, Avalanche's
    `.../Task000`), grouped by family; task switches from a task-id metric (`task`,
    `current_task`, `experience`), else from the step at which each task's metric first
    appears (continual-learning loops evaluate a task once it has been seen). For every task
    switch, each earlier task's level just before it (median of the last 3 points) is compared
    with its level until the next switch (median): forgetting when a higher-is-better metric
    falls by >= 30% and >= 0.1 absolute, or a loss rises by >= 50%. Rehearsal and
    regularisation methods keep the drop of earlier tasks to a few points on split
    benchmarks; plain fine-tuning loses most of it, which is what these margins separate.
    Without task-switch information (every task evaluated from the start and no task id) the
    detector stays silent: a drop could be noise or a schedule.
    """
    m = ev.metrics
    if m.height == 0:
        return []
    families = task_keys([k for k in m["key"].unique().to_list()])
    if not families:
        return []
    rid = ev.run_id
    worst = None
    n_cases = 0
    for family, tasks in sorted(families.items()):
        direction = _direction(family)
        if direction == 0:
            continue
        starts, _ = _task_starts(m, tasks)
        if len(starts) < 2:
            continue
        order = sorted(starts.items(), key=lambda kv: kv[1][0])
        for n, (new_task, (start, how)) in enumerate(order[1:], start=1):
            until = order[n + 1][1][0] if n + 1 < len(order) else None
            for old_task, _ in order[:n]:
                key = tasks.get(old_task)
                if key is None:
                    continue
                s = m.filter((pl.col("key") == key) & pl.col("value").is_finite()).sort("step")
                steps, x = s["step"].to_numpy(), s["value"].to_numpy()
                before_i = np.flatnonzero(steps < start)[-cfg.tail_points:]
                after_mask = steps >= start
                if until is not None:
                    after_mask &= steps < until
                after_i = np.flatnonzero(after_mask)
                if before_i.size == 0 or after_i.size == 0:
                    continue
                before = float(np.median(x[before_i]))
                after = float(np.median(x[after_i]))
                if direction > 0:
                    unit = 100.0 if max(before, float(x.max())) > 1.5 else 1.0
                    change = (before - after) / abs(before) if before else 0.0
                    hit = before > 0 and change >= cfg.min_rel_drop and before - after >= cfg.min_abs_drop * unit
                else:
                    change = (after - before) / abs(before) if before else 0.0
                    hit = before > 0 and change >= cfg.min_rel_rise
                if not hit:
                    continue
                n_cases += 1
                if worst is None or change > worst[0]:
                    worst = (change, key, old_task, new_task, start, how, steps, x, before_i, after_i, before, after, direction)
    if worst is None:
        return []
    change, key, old_task, new_task, start, how, steps, x, before_i, after_i, before, after, direction = worst
    b, a_first = int(before_i[-1]), int(after_i[0])
    a_extreme = int(after_i[np.argmin(x[after_i])] if direction > 0 else after_i[np.argmax(x[after_i])])
    evidence = [
        metric_ref(rid, steps[b], key, x[b], f"task {old_task} `{key}` {fmt(x[b])} at step {int(steps[b])}, before task {new_task} starts"),
        metric_ref(rid, steps[a_first], key, x[a_first], f"{fmt(x[a_first])} at step {int(steps[a_first])}, after task {new_task} started at step {start}"),
    ]
    if a_extreme != a_first:
        evidence.append(metric_ref(rid, steps[a_extreme], key, x[a_extreme], f"{'lowest' if direction > 0 else 'highest'} {fmt(x[a_extreme])} at step {int(steps[a_extreme])}"))
    start_rows = m.filter((pl.col("key") == how) & (pl.col("step") == start))
    if start_rows.height:
        evidence.append(metric_ref(rid, start, how, start_rows["value"][0], f"`{how}` shows task {new_task} from step {start}"))
    verb = "fell" if direction > 0 else "rose"
    return [
        Finding(
            kind="catastrophic_forgetting",
            severity="high",
            confidence=0.85,
            summary=(
                f"task {old_task} is forgotten when task {new_task} starts (step {start}): `{key}` {verb} from {fmt(before)} to "
                f"{fmt(after)} ({fmt(100 * change)}%)" + (f"; {n_cases} task pairs affected" if n_cases > 1 else "")
            ),
            evidence=tuple(evidence),
            detector="catastrophic_forgetting",
            run_id=rid,
            finding_id=finding_id("catastrophic_forgetting", rid, key, new_task),
            onset_step=int(steps[a_first]),
            end_step=int(steps[after_i[-1]]),
            fix=(
                "Keep earlier tasks in the training signal: replay/rehearsal of a buffer of earlier examples, "
                "regularisation of important weights (EWC, SI, LwF distillation), a lower LR or fewer steps per task, "
                "or task-specific heads/adapters."
            ),
            expected_impact=f"Task {old_task}'s `{key}` stays within a few points of {fmt(before)} after later tasks are trained.",
            verify_by=f"Rerun with replay/regularisation and compare `{key}` before and after step {start}: the drop is under {fmt(100 * cfg.min_rel_drop)}%.",
        )
    ]
