"""known_error: the signature library over event text, each match mapped to a cause and fix."""

import pytest

from events_frames import with_events
from mldebug_ray.detectors.known_error import SIGNATURES, KnownErrorConfig, known_error, signature_of
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import SEVERITIES

ENOSPC = (
    "Traceback (most recent call last): | File \"train.py\", line 188, in <module> | main() | "
    "File \"safetensors/torch.py\", line 286, in save_file | OSError: [Errno 28] No space left on device"
)

# One real-world line per signature: every signature must match its example.
EXAMPLES = {
    "cuda_oom": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB",
    "nccl_timeout": "[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1, OpType=ALLREDUCE, Timeout(ms)=600000) ran for 600012 milliseconds before timing out.",
    "var_degrees_of_freedom": "UserWarning: var(): degrees of freedom is <= 0. Correction should be strictly less than the reduction factor (input numel divided by output numel).",
    "loss_scale_minimum": "Exception: Current loss scale already at minimum - cannot decrease scale anymore. Exiting run.",
    "no_space_left": ENOSPC,
    "illegal_memory_access": "RuntimeError: CUDA error: an illegal memory access was encountered",
    "device_side_assert": "RuntimeError: CUDA error: device-side assert triggered",
    "segfault": "Fatal Python error: Segmentation fault",
    "device_mismatch": "RuntimeError: Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!",
    "state_dict_mismatch": "RuntimeError: Error(s) in loading state_dict for GPT: size mismatch for lm_head.weight: copying a param with shape torch.Size([50304, 768])",
    "dataloader_worker_killed": "RuntimeError: DataLoader worker (pid 12345) is killed by signal: Killed.",
    "host_oom": "Out of memory: Killed process 4242 (python) total-vm:123456kB",
    "shape_mismatch": "RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x512 and 256x10)",
    "dtype_mismatch": "RuntimeError: expected scalar type Half but found Float",
    "inplace_autograd": "RuntimeError: one of the variables needed for gradient computation has been modified by an inplace operation",
    "ddp_unused_parameters": "RuntimeError: Expected to have finished reduction in the prior iteration before starting a new one.",
    "nonfinite_loss_guard": "RuntimeError: Function 'LogSoftmaxBackward0' returned nan values in its 0th output.",
    "truncated_checkpoint": "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory",
    "cudnn_error": "RuntimeError: cuDNN error: CUDNN_STATUS_INTERNAL_ERROR",
    "no_kernel_image": "RuntimeError: CUDA error: no kernel image is available for execution on the device",
    "job_time_limit": "slurmstepd: error: *** JOB 123 ON node1 CANCELLED AT 2024-01-01T00:00:00 DUE TO TIME LIMIT ***",
    "address_in_use": "RuntimeError: The server socket has failed to listen on any local network address. port: 29500, useIPv6: 0, code: -98, name: EADDRINUSE, message: address already in use",
}


def test_every_signature_has_an_example_and_a_valid_severity():
    assert set(EXAMPLES) == {s.name for s in SIGNATURES}
    assert all(s.severity in SEVERITIES and s.cause and s.fix and s.verify_by for s in SIGNATURES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_signature_matches_its_example(make_ev, well_formed, name):
    ev = with_events(make_ev([(0, "loss", 1.0)]), [{"step": 7, "kind": "error", "text": EXAMPLES[name]}])
    found = known_error(ev, KnownErrorConfig())
    assert name in [signature_of(f) for f in found]
    assert all(f.onset_step == 7 for f in found)
    well_formed(ev, found)


def test_disk_full_traceback_cites_the_exception_line(make_ev, well_formed):
    ev = with_events(make_ev([(0, "loss", 1.0)]), [{"step": 120, "kind": "traceback", "text": ENOSPC, "line": 12}])
    found = known_error(ev, KnownErrorConfig())
    assert [(signature_of(f), f.severity, f.onset_step) for f in found] == [("no_space_left", "high", 120)]
    assert "No space left on device" in found[0].evidence[0].text and "Traceback" not in found[0].evidence[0].text
    assert found[0].evidence[0].where == {"run_id": ev.run_id, "file": "train.log", "line": 12}
    well_formed(ev, found)


def test_repeated_matches_make_one_finding_citing_first_and_last(make_ev):
    rows = [{"step": s, "kind": "warning", "text": EXAMPLES["var_degrees_of_freedom"]} for s in range(10, 100, 10)]
    found = known_error(with_events(make_ev([(0, "loss", 1.0)]), rows), KnownErrorConfig(max_evidence=3))
    assert len(found) == 1 and (found[0].onset_step, found[0].end_step) == (10, 90) and len(found[0].evidence) == 3
    assert "9 matching events" in found[0].summary


def test_benign_log_lines_stay_silent(make_ev):
    rows = [
        {"step": 1, "kind": "warning", "text": "UserWarning: The epoch parameter in `scheduler.step()` was not necessary and is being deprecated"},
        {"step": 2, "kind": "warning", "text": "[deepscale] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 65536.0, reducing to 32768.0"},
        {"step": 3, "kind": "restart", "text": "Resuming from checkpoint step_1000"},
        {"step": 4, "kind": "warning", "text": "memory (MB) | allocated: 1234.5 | max allocated: 2345.6 | reserved: 4096.0"},
    ]
    assert known_error(with_events(make_ev([(0, "loss", 1.0)]), rows), KnownErrorConfig()) == []


def test_a_disabled_signature_is_not_reported(make_ev):
    ev = with_events(make_ev([(0, "loss", 1.0)]), [{"step": 7, "kind": "error", "text": EXAMPLES["segfault"]}])
    assert known_error(ev, KnownErrorConfig(disabled=["segfault"])) == []


def test_config_rejects_unknown_signature_names():
    with pytest.raises(ConfigError, match="detectors.known_error.disabled"):
        KnownErrorConfig(disabled=["no_such_signature"])
