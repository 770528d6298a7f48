"""Known error: a log line matches a known failure signature, each mapped to its likely cause and fix."""

from __future__ import annotations

from dataclasses import dataclass, field

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.log_events import event_ref, matching, one_line, where_text
from mldebug_ray.detectors.series import finding_id
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import Finding


@dataclass(frozen=True)
class Signature:
    """One known failure: a regex over event text (case-insensitive) and what it means."""

    name: str
    pattern: str
    severity: str
    cause: str
    fix: str
    verify_by: str


# The signature library. Severity: `critical` for failures that stop the job or corrupt the
# training state (OOM, hung collectives, device asserts, minimum loss scale), `high` for
# failures that break the run's artifacts or resumption, `medium` for warnings that make
# numbers silently wrong. Order matters only for the summary; every signature is checked.
SIGNATURES: tuple[Signature, ...] = (
    Signature(
        "cuda_oom",
        r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|RESOURCE_EXHAUSTED: Out of memory|"
        r"HIP out of memory|MPS backend out of memory",
        "critical",
        "The device ran out of memory: micro-batch, sequence length or model state exceed the GPU's memory "
        "(often right after a batch-size or sequence-length change, or from fragmentation).",
        "Lower the micro-batch size (keep the global batch with gradient accumulation), enable activation "
        "checkpointing or mixed precision, or set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True against fragmentation.",
        "Rerun with the smaller micro-batch and log torch.cuda.max_memory_allocated(): the peak stays below ~90% of device memory.",
    ),
    Signature(
        "nccl_timeout",
        r"NCCL[^\n]*(time ?out|timed out)|Watchdog caught collective operation timeout|ProcessGroupNCCL[^\n]*(Timeout|watchdog)|"
        r"ncclSystemError|ncclInternalError|ncclUnhandledCudaError|NCCL communicator was aborted",
        "critical",
        "A collective operation hung: one rank crashed, stalled (slow data loading, a checkpoint write) or called "
        "a different collective than the others, and the rest waited until the NCCL watchdog gave up.",
        "Find the first error on the other ranks' logs; run with NCCL_DEBUG=INFO and TORCH_NCCL_ASYNC_ERROR_HANDLING=1, "
        "make every rank run the same collectives in the same order, and move slow I/O off the training ranks. "
        "Raise the process-group timeout only for legitimately long steps.",
        "Rerun past the failing step with NCCL_DEBUG=INFO: no watchdog timeout, every rank logs the step.",
    ),
    Signature(
        "var_degrees_of_freedom",
        r"(var|std)(_mean)?\(\): degrees of freedom is <= 0",
        "medium",
        "A variance/std was taken over a single element (a batch or group of size 1, e.g. the last incomplete "
        "batch in a normalisation or a statistics computation): the result is NaN.",
        "Drop incomplete batches (drop_last=True), make sure normalised dimensions have > 1 element, or use "
        "correction=0 (unbiased=False) where one sample is legitimate.",
        "Rerun and check the warning is gone and no NaN appears in the statistics/loss at those steps.",
    ),
    Signature(
        "loss_scale_minimum",
        r"Current loss scale already at minimum|loss scale already at minimum|minimum loss scale reached|"
        r"cannot decrease (the )?(loss )?scale anymore",
        "critical",
        "Mixed-precision overflow on every step: the dynamic loss scaler halved the scale down to its minimum and "
        "gave up. The forward/backward pass produces Inf/NaN whatever the scale (unnormalised inputs, a too-high LR, "
        "an fp16 range overflow in activations).",
        "Find the first non-finite tensor (unnormalised data shard, exploding activations, LR); train in bf16 or keep "
        "the overflowing ops (softmax, norms, loss) in fp32; lower the LR or clip gradients.",
        "Rerun from the last good checkpoint: the loss scale stays at or above its value before the collapse and no "
        "OVERFLOW/skip lines follow.",
    ),
    Signature(
        "no_space_left",
        r"No space left on device|\[Errno 28\]|ENOSPC|Disk quota exceeded|\[Errno 122\]",
        "high",
        "The disk filled up while writing checkpoints or logs: the job died or left truncated files.",
        "Free space or write to a larger volume, keep fewer checkpoints (e.g. save_total_limit), and write "
        "checkpoints atomically (temp file + rename) so a full disk never leaves a truncated one.",
        "Rerun: every checkpoint loads and the log shows no write error.",
    ),
    Signature(
        "illegal_memory_access",
        r"illegal memory access|misaligned address|CUDA error: unspecified launch failure|CUDA error: an illegal instruction",
        "critical",
        "A CUDA kernel read or wrote out of bounds: usually an index out of range (token id >= vocab size, label "
        "outside the classes), a custom kernel bug, or a driver/hardware fault.",
        "Rerun with CUDA_LAUNCH_BLOCKING=1 to find the failing op; check input ids < vocab size and labels < number "
        "of classes; if it moves between runs, test the GPU (dcgmi diag).",
        "Rerun the same steps with CUDA_LAUNCH_BLOCKING=1: no CUDA error.",
    ),
    Signature(
        "device_side_assert",
        r"device-side assert triggered|Assertion `[^`]*` failed|srcIndex < srcSelectDimSize|t >= 0 && t < n_classes",
        "critical",
        "A CUDA kernel assertion failed: typically a class label or token id outside the valid range.",
        "Check the data: labels in [0, num_classes), token ids in [0, vocab_size), no -1 padding outside ignore_index; "
        "reproduce on CPU for a readable error.",
        "Run one epoch's batches through a range check (min/max of labels and ids) and rerun: no assert.",
    ),
    Signature(
        "segfault",
        r"Segmentation fault|SIGSEGV|signal 11|core dumped|Fatal Python error",
        "critical",
        "A native crash: incompatible compiled extensions (CUDA/driver/library versions), a data-loader worker "
        "crashing in a C library, or exhausted shared memory.",
        "Check library versions match the CUDA/driver build, run with num_workers=0 to see if the loader is at "
        "fault, and get a native stack trace (faulthandler, gdb).",
        "Rerun with the fixed environment: the job passes the crashing step.",
    ),
    Signature(
        "device_mismatch",
        r"Expected all tensors to be on the same device",
        "critical",
        "A tensor or submodule was left on another device (CPU vs GPU, or another GPU) than the rest of the model.",
        "Move every module and input with one `.to(device)`; create new tensors with device=x.device; register "
        "constant tensors as buffers so they move with the model.",
        "Rerun the first training step: no device error.",
    ),
    Signature(
        "state_dict_mismatch",
        r"size mismatch for|Error\(s\) in loading state_dict|Missing key\(s\) in state_dict|Unexpected key\(s\) in state_dict",
        "high",
        "The checkpoint does not match the model: a changed architecture (vocab size, hidden size, head), "
        "a prefix difference (`module.` from DDP) or the wrong checkpoint.",
        "Load the checkpoint written by the same model config; strip/add the `module.` prefix; resize the "
        "embeddings/head deliberately and load with strict=False only for those keys.",
        "Load the checkpoint with strict=True: no missing/unexpected/size-mismatched keys.",
    ),
    Signature(
        "dataloader_worker_killed",
        r"DataLoader worker \(pid[^\n]*\) (is killed by signal|exited unexpectedly)|DataLoader worker[^\n]*killed|"
        r"insufficient shared memory|Bus error",
        "high",
        "A data-loader worker died: the host ran out of RAM or of shared memory (/dev/shm is small in containers), "
        "or the worker crashed in a C library.",
        "Lower num_workers and prefetch_factor, enlarge /dev/shm (docker --shm-size), or avoid copying large "
        "Python objects into every worker.",
        "Rerun the epoch with the new loader settings: no worker dies and host memory stays below its limit.",
    ),
    Signature(
        "host_oom",
        r"Out of memory: Kill(ed)? process|oom-kill|OOMKilled|\bMemoryError\b|Cannot allocate memory",
        "critical",
        "The host (CPU) ran out of RAM: the kernel OOM killer stopped the job (dataset loaded into memory, too "
        "many loader workers, memory leak from accumulated tensors).",
        "Stream or memory-map the dataset, lower num_workers, detach/`.item()` values you keep across steps, "
        "and request more host memory.",
        "Rerun and watch host RSS: it stays flat across epochs and below the node's memory.",
    ),
    Signature(
        "shape_mismatch",
        r"mat1 and mat2 shapes cannot be multiplied|shape '\[[^\]]*\]' is invalid for input of size|"
        r"The size of tensor a \(\d+\) must match the size of tensor b|Expected input batch_size \(\d+\) to match target batch_size",
        "critical",
        "Tensor shapes disagree: the model's layer sizes do not fit the data (input features, sequence length, "
        "number of classes) or a reshape assumes a fixed batch size.",
        "Print the shapes at the failing op; derive layer sizes from the data config; avoid hard-coded batch sizes in reshapes.",
        "Run one batch through the model: no shape error.",
    ),
    Signature(
        "dtype_mismatch",
        r"expected scalar type \w+ but found \w+|Input type \([^)]*\) and weight type \([^)]*\) should be the same|"
        r"expected (mat1|m1) and (mat2|m2) to have the same dtype",
        "critical",
        "Mixed dtypes in one op: fp16/bf16 activations against fp32 weights outside autocast, or integer labels of the wrong type.",
        "Run the model under autocast or cast inputs to the weight dtype; labels for cross-entropy must be int64.",
        "Run one batch through the model: no dtype error.",
    ),
    Signature(
        "inplace_autograd",
        r"modified by an inplace operation|Trying to backward through the graph a second time",
        "critical",
        "An autograd error: a tensor needed for backward was changed in place, or the graph was reused after backward.",
        "Replace the in-place op (x += ..., relu(inplace=True)) on that tensor with an out-of-place one; detach "
        "values carried across steps (e.g. RNN hidden state).",
        "Run with torch.autograd.set_detect_anomaly(True) for a few steps: no error.",
    ),
    Signature(
        "ddp_unused_parameters",
        r"Expected to have finished reduction in the prior iteration|parameters that were not used in producing loss",
        "critical",
        "DistributedDataParallel waited for gradients of parameters that did not take part in the forward pass.",
        "Make every parameter contribute to the loss, or pass find_unused_parameters=True (slower), or freeze the unused ones.",
        "Rerun the first steps on several ranks: no reduction error.",
    ),
    Signature(
        "nonfinite_loss_guard",
        r"Loss is (nan|inf)|non-finite loss|Function '\w+Backward\d*' returned nan values|"
        r"total norm of order [\d.]+ for gradients[^\n]*is non-finite|NaN or Inf found in input tensor",
        "high",
        "The training code itself detected a NaN/Inf loss or gradient (anomaly mode, a NaN guard, or grad clipping's check).",
        "Find the first non-finite value (lower LR, clip gradients, check inputs and fp16 ranges); resume from the last finite checkpoint.",
        "Rerun through the reported step: the loss and grad norm stay finite.",
    ),
    Signature(
        "truncated_checkpoint",
        r"PytorchStreamReader failed reading zip archive|failed finding central directory|"
        r"Error while deserializing header|safetensors_rust\.SafetensorError",
        "high",
        "A checkpoint file is truncated or corrupt (job killed or disk full during the write, incomplete copy).",
        "Restore the file from the job's storage or use the previous checkpoint; write checkpoints atomically (temp file + rename).",
        "Load the checkpoint with torch.load(weights_only=True) / safetensors: no error.",
    ),
    Signature(
        "cudnn_error",
        r"CUDNN_STATUS_\w+|cuDNN error",
        "critical",
        "cuDNN failed: very often a disguised out-of-memory, otherwise an unsupported configuration for this cuDNN version.",
        "Retry with a smaller batch; if it persists set torch.backends.cudnn.benchmark=False or update cuDNN.",
        "Rerun the failing step: no cuDNN error.",
    ),
    Signature(
        "no_kernel_image",
        r"no kernel image is available for execution on the device|sm_\d+ is not compatible with the current PyTorch installation",
        "critical",
        "The installed PyTorch/extension build does not include kernels for this GPU architecture.",
        "Install a build for the GPU's compute capability (matching CUDA version) or rebuild the extension for it.",
        "Run a tiny CUDA op on the node: no kernel-image error.",
    ),
    Signature(
        "job_time_limit",
        r"DUE TO TIME LIMIT|CANCELLED AT [^\n]* DUE TO|DUE TO PREEMPTION|Job step aborted",
        "high",
        "The scheduler stopped the job (wall-time limit or preemption) before training finished.",
        "Checkpoint regularly and resume automatically (e.g. a requeue on SIGUSR1), or request a longer time limit.",
        "The resumed job's metrics continue from the last checkpoint's step to the planned end.",
    ),
    Signature(
        "address_in_use",
        r"Address already in use|EADDRINUSE|The server socket has failed to listen",
        "high",
        "The distributed rendezvous port is taken (another job on the node, or a previous run's process still alive).",
        "Pick a free MASTER_PORT per job (e.g. derived from the job id) and make sure old processes exited.",
        "Start the job again: the process group initialises.",
    ),
)


@dataclass
class KnownErrorConfig:
    """Settings of the `known_error` detector (keys `detectors.known_error.*`)."""

    disabled: list[str] = field(default_factory=list)
    """Signature names (see SIGNATURES in known_error.py) that are not reported."""
    max_evidence: int = 3
    """Matching events cited per signature (the first ones, and the last)."""

    def __post_init__(self) -> None:
        names = {s.name for s in SIGNATURES}
        unknown = [n for n in self.disabled if n not in names]
        if unknown:
            raise ConfigError(f"detectors.known_error.disabled: unknown signature(s) {unknown}; known: {sorted(names)}")
        if self.max_evidence < 1:
            raise ConfigError(f"detectors.known_error.max_evidence must be >= 1, got {self.max_evidence}")


@detector("known_error")
def known_error(ev: RunEvidence, cfg: KnownErrorConfig) -> list[Finding]:
    """A log event matches a known failure signature (SPEC §5 `known_error`).

    Evidence: the `events` table (warnings, errors, tracebacks from the run's logs). Each
    signature in SIGNATURES is a case-insensitive regex over the event text mapped to a
    likely cause, a fix and a check; one finding per signature per run, at its first
    matching event, citing up to `max_evidence` events. No threshold: a single match
    counts, since each pattern is specific to one failure (e.g. `var(): degrees of freedom
    is <= 0`, `Current loss scale already at minimum`, `No space left on device`). Severity is the
    signature's own (documented above SIGNATURES).
    """
    events = ev.events
    if events.height == 0:
        return []
    rid = ev.run_id
    out: list[Finding] = []
    for sig in SIGNATURES:
        if sig.name in cfg.disabled:
            continue
        hits = matching(events, sig.pattern)
        if hits.height == 0:
            continue
        rows = list(hits.head(cfg.max_evidence - 1 if hits.height > cfg.max_evidence else cfg.max_evidence).iter_rows(named=True))
        if hits.height > cfg.max_evidence:
            rows.append(hits.row(hits.height - 1, named=True))
        first = rows[0]
        line = one_line(first["match"] or first["text"])
        evidence = tuple(event_ref(rid, r, f"{where_text(r)}: {one_line(r['match'] or r['text'])}") for r in rows)
        steps = hits["step"].drop_nulls()
        out.append(
            Finding(
                kind="known_error",
                severity=sig.severity,  # type: ignore[arg-type]
                confidence=0.9,
                summary=(
                    f"known error `{sig.name}` at {where_text(first)}: \"{line}\""
                    + (f" ({hits.height} matching events)" if hits.height > 1 else "")
                    + f". Likely cause: {sig.cause}"
                ),
                evidence=evidence,
                detector="known_error",
                run_id=rid,
                finding_id=finding_id("known_error", rid, sig.name),
                onset_step=int(steps.min()) if steps.len() else None,
                end_step=int(steps.max()) if steps.len() else None,
                fix=sig.fix,
                expected_impact=f"The `{sig.name}` failure no longer occurs and the run continues past step {int(steps.max()) if steps.len() else 'where it stopped'}.",
                verify_by=sig.verify_by,
            )
        )
    return out


def signature_of(finding: Finding) -> str | None:
    """The signature name of a known_error finding (from its summary), for the diagnosis rules."""
    if finding.kind != "known_error":
        return None
    text = finding.summary
    if text.startswith("known error `"):
        return text[len("known error `") :].split("`", 1)[0]
    return None

