"""Memory pressure: an out-of-memory error was logged, or peak memory came close to the device's limit."""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.known_error import SIGNATURES
from mldebug_ray.detectors.layer_grads import probe_table
from mldebug_ray.detectors.log_events import event_ref, matching, one_line, where_text
from mldebug_ray.detectors.series import finding_id, fmt, is_timing_key
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding

OOM_TEXT = "|".join(s.pattern for s in SIGNATURES if s.name in ("cuda_oom", "host_oom"))

_MEMORY = re.compile(r"(^|[^a-z])(mem|memory|vram)([^a-z]|$)|memory|mem_|_mem")
_LIMIT = re.compile(r"(total|capacity|limit|available|device_memory|gpu_memory_(gb|gib|mb|mib|bytes)$)")
_FREE = re.compile(r"(free|avail)")
_UNITS = (
    (re.compile(r"(percent|pct|%|memoryallocated$)"), "percent"),
    (re.compile(r"(_frac|fraction|_ratio|_share)"), "frac"),
    (re.compile(r"(gib|gb|gigabytes?)([^a-z]|$)"), 2**30),
    (re.compile(r"(mib|mb|megabytes?)([^a-z]|$)"), 2**20),
    (re.compile(r"(kib|kb)([^a-z]|$)"), 2**10),
    (re.compile(r"bytes?([^a-z]|$)"), 1),
)


def unit_of(key: str):
    """'percent', 'frac', bytes per unit (from the key's spelling), or None when the key does not say."""
    k = key.lower()
    for pattern, unit in _UNITS:
        if pattern.search(k):
            return unit
    return None


@dataclass
class MemoryPressureConfig:
    """Thresholds of the `memory_pressure` detector (keys `detectors.memory_pressure.*`)."""

    max_used_frac: float = 0.95
    """Peak memory above this share of the device limit is pressure (`medium`) ..."""
    high_used_frac: float = 0.99
    """... and above this share, `high`."""

    def __post_init__(self) -> None:
        if not 0.0 < self.max_used_frac <= 1.0:
            raise ConfigError(f"detectors.memory_pressure.max_used_frac must be in (0, 1], got {self.max_used_frac}")
        if not self.max_used_frac <= self.high_used_frac <= 1.0:
            raise ConfigError(
                f"detectors.memory_pressure.high_used_frac must be in [max_used_frac={self.max_used_frac}, 1], got {self.high_used_frac}"
            )


@detector("memory_pressure")
def memory_pressure(ev: RunEvidence, cfg: MemoryPressureConfig) -> list[Finding]:
    """Peak memory close to the device limit, or an OOM seen (SPEC §5 `memory_pressure`).

    Evidence: `oom` events and log lines matching the CUDA/host out-of-memory signatures of
    `known_error`; memory metrics whose key states a share (`*_percent`, W&B's
    `memoryAllocated`, `*_frac`) or a byte unit (`*_bytes`, `*_gib`, `(MB)`) compared with a
    device limit stated in params or metrics (`*total*`, `*capacity*`, `*limit*` with a
    unit), and the memory probe's peaks against the same limit. A key whose unit cannot be
    read from its name is never compared (guessing MB vs GB would invent pressure). The memory
    probe's peaks are compared with the device total it recorded (`device_total_bytes`).

    Thresholds: 95% of the device is pressure: PyTorch's caching allocator rounds and splits
    blocks, and fragmentation commonly costs several percent of capacity (the reason for
    `max_split_size_mb` and `expandable_segments` in its docs), so a peak above 95% leaves no
    headroom for a longer batch; above 99% is `high`. An OOM event is `critical`.
    """
    rid = ev.run_id
    out: list[Finding] = []
    ooms = matching(ev.events, OOM_TEXT, kinds=("oom",))
    if ooms.height:
        r = ooms.row(0, named=True)
        rows = [r] + ([ooms.row(ooms.height - 1, named=True)] if ooms.height > 1 else [])
        step = r["step"]
        out.append(
            Finding(
                kind="memory_pressure",
                severity="critical",
                confidence=0.95,
                summary=(
                    f"out of memory at {where_text(r)}: \"{one_line(r['match'] or r['text'])}\""
                    + (f" ({ooms.height} OOM events)" if ooms.height > 1 else "")
                ),
                evidence=tuple(event_ref(rid, x, f"{where_text(x)}: {one_line(x['match'] or x['text'])}") for x in rows),
                detector="memory_pressure",
                run_id=rid,
                finding_id=finding_id("memory_pressure", rid, "oom"),
                onset_step=int(step) if step is not None else None,
                fix=(
                    "Lower the micro-batch size (keep the global batch with gradient accumulation), shorten sequences, "
                    "enable activation checkpointing or mixed precision; if the OOM followed a batch-size or model-size "
                    "change, return to the last setting that fit."
                ),
                expected_impact="The run passes the step where it ran out of memory, with peak memory below ~90% of the device.",
                verify_by="Rerun with the smaller micro-batch and log torch.cuda.max_memory_allocated() each step: no OOM, peak below 90%.",
            )
        )
    pressure = _near_limit(ev, cfg)
    if pressure is not None:
        out.append(pressure)
    return out


def _limit_bytes(ev: RunEvidence) -> tuple[float, EvidenceRef] | None:
    """A device-memory limit in bytes stated in params or metrics, with its reference."""
    for row in ev.params.filter(pl.col("value_num").is_not_null() & (pl.col("value_num") > 0)).iter_rows(named=True):
        key = row["key"].lower()
        unit = unit_of(key)
        if _MEMORY.search(key) and _LIMIT.search(key) and not _FREE.search(key) and isinstance(unit, int):
            return row["value_num"] * unit, EvidenceRef("params", {"run_id": ev.run_id, "key": row["key"]}, row["value_num"], f"{row['key']} = {row['value']}")
    m = ev.metrics
    if m.height:
        for key in sorted(m["key"].unique().to_list()):
            k = key.lower()
            unit = unit_of(k)
            if _MEMORY.search(k) and _LIMIT.search(k) and not _FREE.search(k) and isinstance(unit, int):
                rows = m.filter((pl.col("key") == key) & pl.col("value").is_finite() & (pl.col("value") > 0))
                if rows.height:
                    r = rows.sort("value").row(rows.height - 1, named=True)
                    return r["value"] * unit, EvidenceRef("metrics", {"run_id": ev.run_id, "step": int(r["step"]), "key": key}, r["value"], f"{key} = {fmt(r['value'])}")
    return None


def _near_limit(ev: RunEvidence, cfg: MemoryPressureConfig) -> Finding | None:
    rid = ev.run_id
    limit = _limit_bytes(ev)
    candidates = []  # (used_frac, step, ref, text)
    m = ev.metrics
    if m.height:
        for key in m["key"].unique().to_list():
            k = key.lower()
            if not _MEMORY.search(k) or _LIMIT.search(k) or _FREE.search(k) or is_timing_key(k):
                continue
            unit = unit_of(k)
            if unit is None or (isinstance(unit, int) and limit is None):
                continue
            rows = m.filter((pl.col("key") == key) & pl.col("value").is_finite())
            if rows.height == 0:
                continue
            scale = {"percent": 0.01, "frac": 1.0}.get(unit) if isinstance(unit, str) else unit / limit[0]
            rows = rows.with_columns((pl.col("value") * scale).alias("used_frac"))
            over = rows.filter(pl.col("used_frac") >= cfg.max_used_frac).sort("step")
            if over.height:
                peak = over.sort("used_frac").row(over.height - 1, named=True)
                first = over.row(0, named=True)
                candidates.append((peak["used_frac"], int(first["step"]), [
                    EvidenceRef("metrics", {"run_id": rid, "step": int(first["step"]), "key": key}, first["value"], f"{key} = {fmt(first['value'])} at step {first['step']}: {fmt(100 * first['used_frac'])}% of the device"),
                    EvidenceRef("metrics", {"run_id": rid, "step": int(peak["step"]), "key": key}, peak["value"], f"peak {fmt(peak['value'])} at step {peak['step']}: {fmt(100 * peak['used_frac'])}%"),
                ], key))
    probe = probe_table(ev, "memory")
    if probe is not None:
        # The probe records the device's memory with each peak (device_total_bytes) when it can.
        if "device_total_bytes" in probe.columns:
            total = pl.when(pl.col("device_total_bytes") > 0).then(pl.col("device_total_bytes").cast(pl.Float64))
            total = total.otherwise(pl.lit(limit[0] if limit is not None else None, dtype=pl.Float64))
        else:
            total = pl.lit(limit[0] if limit is not None else None, dtype=pl.Float64)
        peak = pl.max_horizontal(pl.col("peak_allocated_bytes"), pl.col("reserved_bytes") if "reserved_bytes" in probe.columns else pl.col("peak_allocated_bytes"))
        rows = probe.with_columns((peak.cast(pl.Float64) / total).alias("used_frac")).filter(pl.col("used_frac") >= cfg.max_used_frac)
        if rows.height:
            r = rows.sort("used_frac").row(rows.height - 1, named=True)
            where = {"run_id": rid, "step": int(r["step"]), "phase": r["phase"]}
            candidates.append((r["used_frac"], int(r["step"]), [EvidenceRef("memory", where, r["used_frac"], f"{r['phase']}: {fmt(100 * r['used_frac'])}% of the device")], f"memory probe ({r['phase']})"))
    if not candidates:
        return None
    used, onset, evidence, what = max(candidates, key=lambda c: c[0])
    if limit is not None:
        evidence = evidence + [limit[1]]
    return Finding(
        kind="memory_pressure",
        severity="high" if used >= cfg.high_used_frac else "medium",
        confidence=0.85,
        summary=f"{what} peaks at {fmt(100 * used)}% of the device memory (from step {onset}), above the {fmt(100 * cfg.max_used_frac)}% headroom line",
        evidence=tuple(evidence),
        detector="memory_pressure",
        run_id=rid,
        finding_id=finding_id("memory_pressure", rid, "near-limit", what),
        onset_step=onset,
        fix="Leave headroom: lower the micro-batch or sequence length, enable activation checkpointing, or set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True against fragmentation.",
        expected_impact=f"Peak memory below {fmt(100 * cfg.max_used_frac)}% of the device; no OOM on longer batches.",
        verify_by=f"Rerun and check {what} stays below {fmt(100 * cfg.max_used_frac)}% of the device at every step.",
    )
