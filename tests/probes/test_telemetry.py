"""GPU telemetry: silent and empty without a GPU; the sampling thread against a fake NVML; a real GPU when there is one."""

from __future__ import annotations

import logging
import sys
import time
import types

import pytest
import torch

from mldebug_ray.probes import telemetry
from mldebug_ray.probes.telemetry import GpuSampler


def test_no_rows_on_the_cpu_and_nvml_is_not_touched(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # importing it would raise
    with GpuSampler(torch.device("cpu")) as sampler:
        pass
    assert sampler.rows == []


class _NVMLError(Exception):
    pass


class _LibraryNotFound(_NVMLError):
    pass


def _fake_pynvml(*, init_error: Exception | None = None, power_error: bool = False) -> types.ModuleType:
    fake = types.ModuleType("pynvml")
    fake.NVMLError = _NVMLError
    fake.NVML_TEMPERATURE_GPU = 0
    fake.calls = []

    def init():
        if init_error is not None:
            raise init_error

    def power(handle):
        if power_error:
            raise _NVMLError("not supported")
        return 215_000

    fake.nvmlInit = init
    fake.nvmlShutdown = lambda: fake.calls.append("shutdown")
    fake.nvmlDeviceGetHandleByUUID = lambda uuid: ("handle", uuid)
    fake.nvmlDeviceGetHandleByIndex = lambda i: ("handle", f"index{i}")
    fake.nvmlDeviceGetUUID = lambda handle: b"GPU-1234"
    fake.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(gpu=87)
    fake.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(used=3 * 2**30)
    fake.nvmlDeviceGetPowerUsage = power
    fake.nvmlDeviceGetTemperature = lambda handle, sensor: 64
    fake.nvmlDeviceGetCurrentClocksEventReasons = lambda handle: 4
    return fake


def test_without_a_driver_there_are_no_rows_and_one_debug_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(init_error=_LibraryNotFound("NVML Shared Library Not Found")))
    with caplog.at_level(logging.DEBUG, logger="mldebug_ray.probes.telemetry"), GpuSampler(torch.device("cuda", 0)) as sampler:
        pass
    assert sampler.rows == []
    assert any("GPU telemetry off" in r.message and "Library" in r.message for r in caplog.records)
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_the_real_pynvml_without_a_gpu_gives_no_rows():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the no-driver path cannot be shown here")
    with GpuSampler(torch.device("cuda", 0)) as sampler:
        time.sleep(0.05)
    assert sampler.rows == []


def test_samples_have_every_field_and_the_thread_stops(monkeypatch):
    fake = _fake_pynvml(power_error=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(telemetry, "_uuid_of", lambda device: "GPU-1234")
    with GpuSampler(torch.device("cuda", 0), interval_s=0.01) as sampler:
        time.sleep(0.1)
    n = len(sampler.rows)
    time.sleep(0.05)
    assert len(sampler.rows) == n >= 3  # no sample after the block
    row = sampler.rows[0]
    assert row == {
        "t_s": row["t_s"], "device_uuid": "GPU-1234", "util_frac": 0.87, "mem_used_bytes": 3 * 2**30,
        "power_w": None, "temp_c": 64.0, "throttle_reasons": 4,
    }
    assert [r["t_s"] for r in sampler.rows] == sorted(r["t_s"] for r in sampler.rows)
    assert fake.calls == ["shutdown"]


def test_devices_are_matched_by_uuid_then_cuda_visible_devices(monkeypatch):
    fake = _fake_pynvml()
    monkeypatch.setattr(telemetry, "_uuid_of", lambda device: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-abcd")
    assert telemetry._handle(fake, torch.device("cuda", 0)) == ("handle", "index3")
    assert telemetry._handle(fake, torch.device("cuda", 1)) == ("handle", "GPU-abcd")
    monkeypatch.setattr(telemetry, "_uuid_of", lambda device: "GPU-ffff")
    assert telemetry._handle(fake, torch.device("cuda", 0)) == ("handle", "GPU-ffff")


@pytest.mark.gpu
def test_a_real_gpu_is_sampled_while_it_works(cuda):
    with GpuSampler(cuda, interval_s=0.05) as sampler:
        x = torch.randn(4096, 4096, device=cuda)
        for _ in range(50):
            x = x @ x
            x = x / x.norm()
        torch.cuda.synchronize()
        time.sleep(0.2)
    assert len(sampler.rows) >= 3
    assert all(r["device_uuid"].startswith(("GPU-", "MIG-")) for r in sampler.rows)
    assert max(r["mem_used_bytes"] for r in sampler.rows) > 64 * 2**20
    assert all(0.0 <= r["util_frac"] <= 1.0 for r in sampler.rows)
