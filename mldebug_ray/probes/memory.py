"""Peak memory by phase of a probe training step (the `memory` table): forward, backward, optimizer.

On a CUDA device, the CUDA caching allocator's own counters, reset before each phase:
- peak_allocated_bytes: `torch.cuda.max_memory_allocated` during the phase: every live
  tensor of the process on that device (weights, batch, activations, gradients,
  optimizer state), as `torch.cuda.OutOfMemoryError` counts it;
- reserved_bytes: `torch.cuda.max_memory_reserved`: what the allocator held from the
  driver, fragmentation and cache included;
- device_total_bytes: the device's memory (`get_device_properties().total_memory`).

On the CPU torch keeps no allocator statistics, and the process's resident set is a
poor stand-in (measured here: the first AdamW step of a 40k-parameter model grew it by
83 MB of one-off library state, and a second probe reusing freed heap pages grew it by
nothing). So the CPU measure counts tensor storage instead, with the same meaning as the
CUDA counter:
- peak_allocated_bytes: the largest total of live tensor storage during the phase:
  the storages of the model's parameters, buffers and gradients, the batch and the
  optimizer state at the phase's start, plus every storage an operator creates during
  the phase (seen by a `TorchDispatchMode` that records each op's new output storages
  and a finalizer that subtracts them when they are freed). Ops of the backward pass run
  under the mode too. NOT counted: scratch buffers an operator allocates and frees
  inside its kernel (matmul/convolution workspaces), memory of non-tensor Python objects
  and of libraries, allocator overhead and fragmentation;
- reserved_bytes: null (no allocator cache to report);
- device_total_bytes: physical memory of the machine.
The tracking costs a Python call per operator during the measured step only.
"""

from __future__ import annotations

import os
import weakref
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

PHASES = ("forward", "backward", "optimizer")


def _physical_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def live_tensors(*roots: Any) -> Iterator[Any]:
    """Every tensor in modules (parameters, buffers, gradients), optimizers (state) and nested batches."""
    import torch

    for root in roots:
        if root is None:
            continue
        if isinstance(root, torch.Tensor):
            yield root
        elif isinstance(root, torch.nn.Module):
            for p in root.parameters():
                yield p
                if p.grad is not None:
                    yield p.grad
            yield from root.buffers()
        elif isinstance(root, torch.optim.Optimizer):
            for state in root.state.values():
                yield from live_tensors(*state.values())
        elif isinstance(root, dict):
            yield from live_tensors(*root.values())
        elif isinstance(root, (list, tuple)):
            yield from live_tensors(*root)


def _storage_tracker() -> Any:
    """A TorchDispatchMode counting live tensor-storage bytes (see the module docstring)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    from torch.utils.weak import WeakIdKeyDictionary
    import torch

    class LiveStorageBytes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live = 0
            self.peak = 0
            self.tracked = WeakIdKeyDictionary()

        def track(self, tensor: Any) -> None:
            if tensor.device.type == "meta":
                return
            storage = tensor.untyped_storage()
            if storage in self.tracked:
                return
            n = int(storage.nbytes())
            self.tracked[storage] = n
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, n)

        def _free(self, n: int) -> None:
            self.live -= n

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            # An output sharing an input's storage (a view, an in-place op) is no allocation.
            inputs = WeakIdKeyDictionary()
            for t in tree_leaves((args, kwargs)):
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    inputs[t.untyped_storage()] = True
            out = func(*args, **kwargs)
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.device.type != "meta" and t.untyped_storage() not in inputs:
                    self.track(t)
            return out

    return LiveStorageBytes()


class PhaseMemory:
    """`with mem.phase(name, model, batch, optimizer):` around each phase; `rows()` afterwards.

    The roots name the tensors alive at the phase's start that no earlier phase saw being
    created (CPU accounting only; the CUDA allocator knows them itself). As with
    `torch.cuda.reset_peak_memory_stats`, each phase's peak starts from what is live when
    it begins: the backward phase's peak includes the activations the forward saved.
    """

    def __init__(self, device: Any):
        import torch

        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.peaks: dict[str, tuple[int, int | None]] = {}
        self.total = int(torch.cuda.get_device_properties(self.device).total_memory) if self.is_cuda else _physical_bytes()
        self._tracker = None if self.is_cuda else _storage_tracker()

    @contextmanager
    def phase(self, name: str, *roots: Any) -> Iterator[None]:
        import torch

        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            peak, reserved = int(torch.cuda.max_memory_allocated(self.device)), int(torch.cuda.max_memory_reserved(self.device))
        else:
            tracker = self._tracker
            for tensor in live_tensors(*roots):
                tracker.track(tensor)
            tracker.peak = tracker.live
            with tracker:
                yield
            peak, reserved = tracker.peak, None
        old_peak, old_reserved = self.peaks.get(name, (0, None))
        self.peaks[name] = (max(old_peak, peak), reserved if old_reserved is None else max(old_reserved, reserved or 0))

    def rows(self) -> list[dict[str, Any]]:
        """One row (without run_id/step) per phase measured, in PHASES order."""
        label = f"cuda:{self.device.index or 0}" if self.is_cuda else "cpu"
        return [
            {"phase": p, "device": label, "peak_allocated_bytes": self.peaks[p][0], "reserved_bytes": self.peaks[p][1], "device_total_bytes": self.total}
            for p in PHASES
            if p in self.peaks
        ]


def tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind `tensors` (the oracle tests compare with)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = int(storage.nbytes())
    return sum(seen.values())
