"""Probe speed: checkpoint-scan throughput (GB/s) against naive statistics and a plain read, and model probe time per checkpoint.

    python benchmarks/probe_speed.py [--mb 256] [--repeats 3] [--threads N] [--device auto|cpu|cuda] [--keep DIR] [--json PATH]

1. Checkpoint scan. A synthetic checkpoint of `--mb` MB of float32 (a GPT-like mix of
   tensor shapes, random values) written once as safetensors and once with `torch.save`,
   then, file in the page cache, each timed `--repeats` times (median; wall and CPU):
   - plain read: `open().read()` of the safetensors file: the I/O floor, no statistics;
   - scan_weights: this package's fast path (probes/weights.py: one chunked pass per
     tensor computing the `layers` columns plus fp16/bf16 cast shares, one sync per
     tensor), on the CPU and, when CUDA is available, on the GPU (tensors moved chunk by
     chunk, the copy included in the time);
   - tensor_stats: the reference path (probes/checkpoint_scan.py, float64 per chunk, a
     Python float per reduction) over the safetensors file;
   - torch.load + naive: `torch.load(weights_only=True)` of the torch file, then per tensor
     the obvious whole-tensor float64 computations (isfinite, masked norm, mean, std, max,
     zeros, and the two casts), one statement each.
   Throughput is checkpoint bytes / wall seconds.
2. Model probes per checkpoint. The demo's TinyLM (the baseline run's config) and its
   validation batch of 256 examples: one checkpoint written with safetensors, then
   `probe_checkpoint` timed with all model probes and with each probe alone.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mldebug_ray.probes.checkpoint_scan import tensor_stats  # noqa: E402
from mldebug_ray.probes.weights import checkpoint_tensors, scan_weights  # noqa: E402

GB = 1e9


def synthetic_state(total_mb: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """GPT-like blocks (embedding, attention, MLP, norms) of float32 until `total_mb` is reached."""
    gen = torch.Generator().manual_seed(seed)
    dim = 1024
    state = {"embed.weight": torch.randn(8192, dim, generator=gen) * 0.02}
    budget = total_mb * 2**20 / 4 - state["embed.weight"].numel()
    layer = 0
    while budget > 0:
        block = {
            f"layers.{layer}.attn.qkv.weight": torch.randn(3 * dim, dim, generator=gen) * 0.02,
            f"layers.{layer}.attn.proj.weight": torch.randn(dim, dim, generator=gen) * 0.02,
            f"layers.{layer}.mlp.fc1.weight": torch.randn(4 * dim, dim, generator=gen) * 0.02,
            f"layers.{layer}.mlp.fc2.weight": torch.randn(dim, 4 * dim, generator=gen) * 0.02,
            f"layers.{layer}.norm.weight": torch.ones(dim),
            f"layers.{layer}.norm.bias": torch.zeros(dim),
        }
        state.update(block)
        budget -= sum(t.numel() for t in block.values())
        layer += 1
    return state


def naive_stats(tensor: torch.Tensor) -> dict[str, float]:
    """What one would write without caring: whole-tensor float64, one statement per statistic."""
    x = tensor.double()
    finite = torch.isfinite(x)
    xf = x[finite]
    h, b = tensor.to(torch.float16), tensor.to(torch.bfloat16)
    return {
        "norm_l2": float(xf.norm()),
        "mean": float(xf.mean()),
        "std": float(xf.std(unbiased=False)),
        "max_abs": float(xf.abs().max()),
        "zero_frac": float((x == 0).double().mean()),
        "nonfinite_frac": float((~finite).double().mean()),
        "fp16_overflow_frac": float((torch.isinf(h) & finite).double().mean()),
        "fp16_underflow_frac": float(((h == 0) & (x != 0)).double().mean()),
        "bf16_overflow_frac": float((torch.isinf(b) & finite).double().mean()),
        "bf16_underflow_frac": float(((b == 0) & (x != 0)).double().mean()),
    }


def timed(fn, repeats: int, sync=lambda: None) -> tuple[float, float]:
    """(median wall s, median CPU s) over `repeats` runs after one warm-up."""
    fn()
    sync()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        sync()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def bench_scan(root: Path, mb: float, repeats: int, device: torch.device | None) -> dict:
    from safetensors.torch import save_file

    state = synthetic_state(mb)
    st_path, pt_path = root / "model.safetensors", root / "model.pt"
    save_file(state, str(st_path))
    torch.save(state, pt_path)
    size = st_path.stat().st_size
    del state

    def plain_read() -> None:
        with open(st_path, "rb") as fh:
            while fh.read(1 << 24):
                pass

    def fast_cpu() -> None:
        scan_weights(root, st_path.name, "safetensors")

    def reference() -> None:
        with checkpoint_tensors(root, st_path.name, "safetensors") as source:
            for name, get in source.items():
                tensor_stats(name, get())

    def load_naive() -> None:
        for tensor in torch.load(pt_path, map_location="cpu", weights_only=True).values():
            naive_stats(tensor)

    cases = {"plain read": plain_read, "scan_weights (cpu)": fast_cpu, "tensor_stats (reference)": reference, "torch.load + naive": load_naive}
    sync = lambda: None  # noqa: E731
    if device is not None and device.type == "cuda":
        cases["scan_weights (cuda)"] = lambda: scan_weights(root, st_path.name, "safetensors", device)
        sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    out = {"bytes": size}
    print(f"\n1. checkpoint scan: {size / 2**20:.0f} MiB float32 ({st_path.name}, page cache warm), median of {repeats}")
    print(f"   {'path':28s} {'wall s':>8s} {'cpu s':>8s} {'GB/s':>8s}")
    for name, fn in cases.items():
        wall, cpu = timed(fn, repeats, sync)
        out[name] = {"wall_s": wall, "cpu_s": cpu, "gb_per_s": size / GB / wall}
        print(f"   {name:28s} {wall:8.3f} {cpu:8.3f} {size / GB / wall:8.3f}")
    return out


def bench_model(root: Path, repeats: int, device: torch.device) -> dict:
    from safetensors.torch import save_file

    from mldebug_ray.config import ProbesConfig
    from mldebug_ray.demo.scenarios import baseline
    from mldebug_ray.probes.model_loop import load_entry_points
    from mldebug_ray.probes.run_probes import MODEL_PROBES, probe_checkpoint

    params = baseline()
    probes = ProbesConfig(model_fn="mldebug_ray.demo.models:model_fn", batch_fn="mldebug_ray.demo.models:batch_fn")
    entry = load_entry_points(probes)
    model = entry.model_fn(params)
    save_file(model.state_dict(), str(root / "step_1.safetensors"))
    row = {"path": "step_1.safetensors", "format": "safetensors", "step": 1}
    n_params = sum(p.numel() for p in model.parameters())
    out = {"model": f"demo TinyLM, {n_params} parameters, batch 256", "device": str(device)}
    print(f"\n2. model probes per checkpoint: {out['model']}, device {device}, median of {repeats}")
    print(f"   {'probes':28s} {'wall ms':>9s} {'cpu ms':>9s}")
    for name in ("all", *MODEL_PROBES):
        wanted = list(MODEL_PROBES) if name == "all" else [name]
        cfg = ProbesConfig(model_fn=probes.model_fn, batch_fn=probes.batch_fn, model_probes=wanted)
        wall, cpu = timed(lambda: probe_checkpoint(entry, params, root, row, device, cfg, None), repeats)
        out[name] = {"wall_ms": 1e3 * wall, "cpu_ms": 1e3 * cpu}
        print(f"   {name:28s} {1e3 * wall:9.1f} {1e3 * cpu:9.1f}")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--keep", type=Path, default=None, help="write the checkpoints here and keep them")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)" + (f", GPU {torch.cuda.get_device_name(device)}" if cuda else ", no GPU"))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        results = {"threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name(device) if cuda else None}
        results["scan"] = bench_scan(root, args.mb, args.repeats, device if cuda else None)
        results["model"] = bench_model(root, args.repeats, device)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
