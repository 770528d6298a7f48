"""fp16 overflow: bursts of overflow-skipped steps (OVERFLOW! lines, overflow_skip events, skip counters)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.layer_grads import probe_table
from mldebug_ray.detectors.log_events import event_ref, matching, one_line, where_text
from mldebug_ray.detectors.series import finding_id, fmt, metric_ref
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding

# DeepSpeed `[deepscale] OVERFLOW! Rank 0 Skipping step`, Apex/Megatron `Gradient overflow.
# Skipping step`, torch.amp's `found inf` (when logged).
OVERFLOW_TEXT = r"OVERFLOW!|Gradient overflow|Skipping step|skipped step|overflow detected|found[_ ]inf"
# Megatron `number of skipped iterations: N` (per logging interval), `number of nan
# iterations: N`; DeepSpeed `skipped=N` (cumulative); other trainers' skip counters.
_SKIP_KEY = re.compile(
    r"^(number of (skipped|nan) iterations|skipped|skipped_(iters|iterations|steps)|num_skipped(_(iters|iterations|steps))?|"
    r"(train|optim|amp)[/_.]skipped(_(iters|iterations|steps))?|skipped_iter)$"
)


@dataclass
class Fp16OverflowConfig:
    """Thresholds of the `fp16_overflow` detector (keys `detectors.fp16_overflow.*`)."""

    min_burst: int = 3
    """Skipped steps that make a burst when no two are more than window_steps apart ..."""
    window_steps: int = 100
    """... steps; isolated skips are dynamic loss scaling working as designed."""
    high_burst: int = 5
    """A burst of at least this many skips, or one that lasts to the end of the log, is `high`."""
    calibration_steps: int = 10
    """A burst that starts at a step <= this is the scaler finding its initial scale: ignored."""
    min_overflow_frac: float = 0.001
    """Precision probe: a layer whose overflow_frac exceeds this overflows the format."""

    def __post_init__(self) -> None:
        if self.min_burst < 2:
            raise ConfigError(f"detectors.fp16_overflow.min_burst must be >= 2, got {self.min_burst}")
        if self.high_burst < self.min_burst:
            raise ConfigError(f"detectors.fp16_overflow.high_burst must be >= min_burst={self.min_burst}, got {self.high_burst}")
        if self.window_steps < 1:
            raise ConfigError(f"detectors.fp16_overflow.window_steps must be >= 1, got {self.window_steps}")
        if self.calibration_steps < 0:
            raise ConfigError(f"detectors.fp16_overflow.calibration_steps must be >= 0, got {self.calibration_steps}")
        if not 0.0 <= self.min_overflow_frac < 1.0:
            raise ConfigError(f"detectors.fp16_overflow.min_overflow_frac must be in [0, 1), got {self.min_overflow_frac}")


def skip_key(key: str) -> bool:
    """True for a metric counting skipped (overflowed) iterations."""
    return bool(_SKIP_KEY.match(" ".join(key.strip().lower().split())))


def skipped_steps(ev: RunEvidence) -> tuple[pl.DataFrame, list[EvidenceRef]]:
    """Every overflow-skipped step the logs show: a frame [step, count, i] and, at position i, the
    reference to its row.

    From `overflow_skip` events and overflow lines (one skip each), else from skip counters:
    a counter that never decreases is cumulative (each increase is that many skips), one that
    does (Megatron's per-interval count) counts the skips of its interval.
    """
    rows: list[tuple[int, int, EvidenceRef]] = []
    events = matching(ev.events, OVERFLOW_TEXT, kinds=("overflow_skip",))
    for r in events.filter(pl.col("step").is_not_null()).iter_rows(named=True):
        rows.append((int(r["step"]), 1, event_ref(ev.run_id, r, f"{where_text(r)}: {one_line(r['match'] or r['text'])}")))
    if not rows and ev.metrics.height:
        keys = [k for k in ev.metrics["key"].unique().to_list() if skip_key(k)]
        for key in sorted(keys):
            s = ev.metrics.filter((pl.col("key") == key) & pl.col("value").is_finite()).sort("step")
            steps, values = s["step"].to_numpy(), s["value"].to_numpy()
            if values.size == 0:
                continue
            cumulative = bool(np.all(np.diff(values) >= 0)) and "number of" not in key.lower()
            counts = np.diff(values, prepend=0.0) if cumulative else values
            for i in np.flatnonzero(counts > 0):
                rows.append((int(steps[i]), int(round(counts[i])), metric_ref(ev.run_id, steps[i], key, values[i], f"{key} = {fmt(values[i])} at step {int(steps[i])}")))
            if rows:
                break
    return pl.DataFrame(
        {"step": [r[0] for r in rows], "count": [r[1] for r in rows], "i": list(range(len(rows)))},
        schema={"step": pl.Int64, "count": pl.Int64, "i": pl.Int64},
    ).sort("step"), [r[2] for r in rows]


def bursts(skips: pl.DataFrame, cfg: Fp16OverflowConfig) -> list[tuple[int, int, int, list[int]]]:
    """(first step, last step, skips, row indices) of each burst but the calibration, largest first."""
    s = skips
    if s.height == 0:
        return []
    steps = s["step"].to_numpy()
    gaps = np.diff(steps)
    cluster = np.concatenate(([0], np.cumsum(gaps > cfg.window_steps)))
    out = []
    for c in np.unique(cluster):
        members = np.flatnonzero(cluster == c)
        total = int(s["count"].to_numpy()[members].sum())
        if total >= cfg.min_burst and steps[members[0]] > cfg.calibration_steps:
            out.append((int(steps[members[0]]), int(steps[members[-1]]), total, [int(s["i"][int(m)]) for m in members]))
    return sorted(out, key=lambda b: (-b[2], b[0]))


@detector("fp16_overflow")
def fp16_overflow(ev: RunEvidence, cfg: Fp16OverflowConfig) -> list[Finding]:
    """Values overflow the low-precision format: bursts of skipped steps (SPEC §5 `fp16_overflow`).

    Evidence: `overflow_skip` events and log lines such as DeepSpeed's `OVERFLOW! Rank 0
    Skipping step` or Apex's `Gradient overflow. Skipping step`; else skip counters
    (Megatron `number of skipped iterations`, DeepSpeed `skipped=N`); the precision probe's
    `overflow_frac` when present (float16 rows only where no loss scale >= 1 ran clean). A dynamic loss scaler skips a step and halves the scale on
    any Inf/NaN and grows it again after 2000 clean steps (torch.amp GradScaler defaults,
    FIELD-NOTES), so an isolated skip every few thousand steps is the scaler working. A
    burst, >= 3 skips with no gap above 100 steps, means the values overflow whatever the
    scale. A burst starting in the first 10 steps is ignored: DeepSpeed starts at scale 2^32
    and skips one step per halving from the first step until it finds a usable scale. Severity `high` for >= 5 skips or a
    burst that lasts to the end of the log, else `medium`.
    """
    rid = ev.run_id
    out: list[Finding] = []
    skips, refs = skipped_steps(ev)
    found = bursts(skips, cfg)
    if found:
        first, last, total, members = found[0]
        last_logged = _last_step(ev)
        to_the_end = last_logged is not None and last_logged - last <= cfg.window_steps
        severity = "high" if total >= cfg.high_burst or to_the_end else "medium"
        cited = [refs[i] for i in (members[:3] + members[-1:] if len(members) > 3 else members)]
        more = f"; {len(found) - 1} more burst(s)" if len(found) > 1 else ""
        out.append(
            Finding(
                kind="fp16_overflow",
                severity=severity,
                confidence=0.9,
                summary=(
                    f"{total} overflow-skipped steps between steps {first} and {last}"
                    + (" lasting to the end of the log" if to_the_end else "")
                    + f": values overflow the fp16 range whatever the loss scale{more}"
                ),
                evidence=tuple(cited),
                detector="fp16_overflow",
                run_id=rid,
                finding_id=finding_id("fp16_overflow", rid, first),
                onset_step=first,
                end_step=last,
                fix=(
                    f"Find what overflows from step {first} on (unnormalised inputs, exploding activations or logits, a too-high LR); "
                    "train in bf16 or keep softmax/normalisation/loss in fp32, and clip gradients."
                ),
                expected_impact="No more than an isolated overflow-skipped step every few thousand steps; the loss scale stays stable.",
                verify_by=f"Rerun through step {last}: fewer than {cfg.min_burst} skipped steps within any {cfg.window_steps} steps.",
            )
        )
    out.extend(_precision_probe(ev, cfg))
    return out


def _last_step(ev: RunEvidence) -> int | None:
    steps = [int(t["step"].max()) for t in (ev.metrics, ev.events) if t.height and t["step"].drop_nulls().len()]
    return max(steps) if steps else None


def _beyond_loss_scaling(table: pl.DataFrame) -> pl.DataFrame:
    """The precision rows without the float16 rows of probe steps where a loss scale >= 1 runs
    clean (the probe's `recommended_loss_scale`): overflow at the starting scale 2^16 is then
    GradScaler calibrating, which one skipped step fixes, not values beyond fp16."""
    if "recommended_loss_scale" not in table.columns:
        return table
    scale = pl.col("recommended_loss_scale")
    clean = table.filter(pl.col("layer").is_null() & (pl.col("dtype") == "float16") & scale.is_finite() & (scale >= 1.0))["step"]
    return table.filter(~((pl.col("dtype") == "float16") & pl.col("step").is_in(clean.implode())))


def _precision_probe(ev: RunEvidence, cfg: Fp16OverflowConfig) -> list[Finding]:
    table = probe_table(ev, "precision")
    if table is None or "overflow_frac" not in table.columns:
        return []
    table = _beyond_loss_scaling(table)
    bad = table.filter(pl.col("overflow_frac") > cfg.min_overflow_frac).sort(["step", "overflow_frac"], descending=[False, True])
    if bad.height == 0:
        return []
    r = bad.row(0, named=True)
    where = {"run_id": ev.run_id, "step": int(r["step"]), "dtype": r["dtype"]}
    if r.get("layer") is not None:
        where["layer"] = r["layer"]
    return [
        Finding(
            kind="fp16_overflow",
            severity="high" if r["overflow_frac"] > 100 * cfg.min_overflow_frac else "medium",
            confidence=0.85,
            summary=f"{fmt(100 * r['overflow_frac'])}% of `{r.get('layer') or 'all'}` values overflow {r['dtype']} at step {r['step']} ({bad.height} probe row(s) above {fmt(100 * cfg.min_overflow_frac)}%)",
            evidence=(EvidenceRef("precision", where, r["overflow_frac"], f"overflow_frac {fmt(r['overflow_frac'])}"),),
            detector="fp16_overflow",
            run_id=ev.run_id,
            finding_id=finding_id("fp16_overflow", ev.run_id, "probe", r["step"], r.get("layer")),
            onset_step=int(r["step"]),
            fix=f"Keep `{r.get('layer') or 'the overflowing ops'}` in fp32 or switch to bf16; rescale inputs/activations that exceed the fp16 range (65504).",
            expected_impact="overflow_frac 0 in the precision probe; no skipped steps.",
            verify_by="Rerun the precision probe on the fixed model: overflow_frac below the threshold for every layer.",
        )
    ]
