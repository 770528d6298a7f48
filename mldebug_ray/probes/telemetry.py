"""GPU telemetry while probes run (the `gpu` table): NVML sampled from a background thread.

Which device: the one the probes use, found by UUID (`torch.cuda.get_device_properties(i).uuid`,
looked up with `nvmlDeviceGetHandleByUUID`), so the match holds whatever
CUDA_VISIBLE_DEVICES renumbers (Ray sets it per task); when torch cannot tell the UUID,
the i-th entry of CUDA_VISIBLE_DEVICES (an index or a `GPU-...` UUID), else NVML index i.

Each sample: t_s (seconds since sampling began), device_uuid, util_frac
(`nvmlDeviceGetUtilizationRates().gpu / 100`: share of the last sample period a kernel
ran), mem_used_bytes (`nvmlDeviceGetMemoryInfo().used`, all processes), power_w, temp_c,
and throttle_reasons (the `nvmlDeviceGetCurrentClocksEventReasons` bit mask, 0 when the
clocks are not held back; fields NVML cannot give on this device are null).

Without a GPU or driver (`pynvml.NVMLError_LibraryNotFound`, FIELD-NOTES) or without
`pynvml` there are no rows and one debug log line: telemetry is optional evidence.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 0.2


def _uuid_of(device: Any) -> str | None:
    """`GPU-...` UUID of a torch CUDA device, as NVML spells it."""
    try:
        import torch

        uuid = torch.cuda.get_device_properties(device).uuid
    except Exception:  # old torch, no CUDA
        return None
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def _handle(pynvml: Any, device: Any) -> Any:
    uuid = _uuid_of(device)
    if uuid:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(uuid)
        except pynvml.NVMLError:
            pass
    index = getattr(device, "index", None) or 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible):
        entry = visible[index]
        if entry.startswith(("GPU-", "MIG-")):
            return pynvml.nvmlDeviceGetHandleByUUID(entry)
        if entry.isdigit():
            return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _read(pynvml: Any, handle: Any, field: str) -> Any:
    try:
        if field == "util":
            return pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
        if field == "mem":
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        if field == "power":
            return pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
        if field == "temp":
            return float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
        if field == "throttle":
            reasons = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
            return int(reasons(handle))
    except (pynvml.NVMLError, AttributeError):
        return None
    return None


class GpuSampler:
    """`with GpuSampler(device):` samples NVML every `interval_s` until the block ends; then `rows`."""

    def __init__(self, device: Any, interval_s: float = DEFAULT_INTERVAL_S):
        self.device = device
        self.interval_s = interval_s
        self.rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pynvml: Any = None

    def __enter__(self) -> "GpuSampler":
        if getattr(self.device, "type", None) != "cuda":
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = _handle(pynvml, self.device)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
        except ImportError:
            log.debug("GPU telemetry off: pynvml (nvidia-ml-py) is not installed")
            return self
        except Exception as exc:  # pynvml.NVMLError_LibraryNotFound without a driver, ...
            log.debug("GPU telemetry off: %s: %s", type(exc).__name__, exc)
            return self
        self._pynvml = pynvml
        uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        self._thread = threading.Thread(target=self._run, args=(handle, uuid), name="mldebug-gpu-telemetry", daemon=True)
        self._thread.start()
        return self

    def _run(self, handle: Any, uuid: str) -> None:
        pynvml = self._pynvml
        start = time.perf_counter()
        while True:
            self.rows.append(
                {
                    "t_s": time.perf_counter() - start,
                    "device_uuid": uuid,
                    "util_frac": _read(pynvml, handle, "util"),
                    "mem_used_bytes": _read(pynvml, handle, "mem"),
                    "power_w": _read(pynvml, handle, "power"),
                    "temp_c": _read(pynvml, handle, "temp"),
                    "throttle_reasons": _read(pynvml, handle, "throttle"),
                }
            )
            if self._stop.wait(self.interval_s):
                return

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._pynvml is not None:
            try:
                self._pynvml.nvmlShutdown()
            except Exception as exc:  # shutdown failures do not matter to the evidence
                log.debug("nvmlShutdown: %s", exc)
            self._pynvml = None
