"""memory_pressure: OOM events, and memory metrics near a stated device limit."""

import pytest

from events_frames import with_events
from mldebug_ray.detectors.memory_pressure import MemoryPressureConfig, memory_pressure, unit_of
from mldebug_ray.errors import ConfigError


def test_oom_event_is_critical(make_ev, well_formed):
    ev = with_events(make_ev([(s, "loss", 2.0) for s in range(100)]), [
        {"step": 99, "kind": "oom", "text": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.50 GiB"},
    ])
    found = memory_pressure(ev, MemoryPressureConfig())
    assert [(f.severity, f.onset_step) for f in found] == [("critical", 99)]
    well_formed(ev, found)


def test_peak_memory_near_a_stated_limit(make_ev, well_formed):
    used = [60.0 + 0.2 * s for s in range(100)]  # GiB, ends at 79.8 of 80
    ev = make_ev([(s, "memory/max_allocated_gib", v) for s, v in enumerate(used)], params={"hardware.gpu_memory_gb": 80})
    found = memory_pressure(ev, MemoryPressureConfig())
    assert [(f.severity, f.onset_step) for f in found] == [("high", 80)]
    assert any(ref.table == "params" for ref in found[0].evidence)
    well_formed(ev, found)


def test_percent_metric_needs_no_limit(make_ev):
    ev = make_ev([(s, "system.gpu.0.memoryAllocated", 90.0 + 0.06 * s) for s in range(100)])
    found = memory_pressure(ev, MemoryPressureConfig())
    assert [f.severity for f in found] == ["medium"]


def test_headroom_and_unitless_keys_stay_silent(make_ev):
    ev = make_ev(
        [(s, "memory/max_allocated_gib", 40.0) for s in range(50)] + [(s, "gpu_mem", 79.9) for s in range(50)],
        params={"gpu_memory_gb": 80},
    )
    assert memory_pressure(ev, MemoryPressureConfig()) == []


def test_units_are_read_from_key_names():
    assert unit_of("max_memory_allocated_bytes") == 1 and unit_of("mem_used_mb") == 2**20
    assert unit_of("memory_gib") == 2**30 and unit_of("gpu_memory_percent") == "percent" and unit_of("embedding_dim") is None


def test_config_rejects_impossible_values_naming_the_key():
    with pytest.raises(ConfigError, match="detectors.memory_pressure.max_used_frac"):
        MemoryPressureConfig(max_used_frac=1.5)
    with pytest.raises(ConfigError, match="detectors.memory_pressure.high_used_frac"):
        MemoryPressureConfig(max_used_frac=0.95, high_used_frac=0.9)


def test_memory_probe_peak_against_the_device_total_it_recorded(make_ev, well_formed):
    from events_frames import with_table
    from mldebug_ray import schema

    if "device_total_bytes" not in schema.TABLES["memory"]:
        pytest.skip("the memory probe table has no device_total_bytes column yet")
    gib = 2**30
    ev = with_table(make_ev([(0, "loss", 1.0)]), "memory", [
        {"step": 10, "phase": "forward", "device": "cuda:0", "peak_allocated_bytes": 40 * gib, "reserved_bytes": 42 * gib, "device_total_bytes": 80 * gib},
        {"step": 10, "phase": "backward", "device": "cuda:0", "peak_allocated_bytes": 78 * gib, "reserved_bytes": 79 * gib, "device_total_bytes": 80 * gib},
    ])
    found = memory_pressure(ev, MemoryPressureConfig())
    assert [(f.severity, f.onset_step) for f in found] == [("medium", 10)]
    assert found[0].evidence[0].where == {"run_id": ev.run_id, "step": 10, "phase": "backward"}
    well_formed(ev, found)
