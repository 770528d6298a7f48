"""What the probes cost next to a plain training step on the same model and batch (Cockpit-style ratios).

    python profiling/probe_overhead.py [--params 10e6] [--batch 64] [--repeats 15] [--device auto|cpu|cuda] [--threads N] [--json PATH]

The model is an MLP of about `--params` parameters (Linear/ReLU and Linear/Tanh blocks, a
class head), the batch random. Every variant is timed `--repeats` times after two
warm-up runs, interleaved round-robin so a busy machine slows them alike; the median
wall time and the median CPU time of this process are reported, with the ratio to the
plain step (CUDA work is synchronised before the clock stops):

- step: zero_grad, forward, cross-entropy, backward, AdamW step (the baseline, 1.00x);
- step + gradients: the step, then `probes.gradients.gradient_rows` (per-parameter norm,
  max, zero and non-finite shares; one device sync);
- step + activations: the step with `probes.activations.ActivationRecorder` hooks on
  every leaf module during the forward, then its rows;
- step + gradients + activations: both, the closest match to Cockpit's "economy"
  preset (Cockpit, NeurIPS 2021: 1.51x per step, 1.04x when run every 16th step);
  also shown amortised over 16 steps, as Cockpit reports it;
- memory-tracked step: the step under `probes.memory.PhaseMemory` (CUDA allocator counters
  on a GPU; on the CPU a TorchDispatchMode counting tensor storage: a Python call per op);
- precision probe: `probes.precision.precision_rows` (fp32 + fp16 + bf16 autocast passes
  and the loss-scale search), once per checkpoint in the pipeline, not per step;
- outputs probe: an eval-mode forward and `probes.outputs.output_diversity`.

The issue's target is <= 1.10x for gradient + activation statistics at this size.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mldebug_ray.probes.activations import ActivationRecorder  # noqa: E402
from mldebug_ray.probes.gradients import gradient_rows  # noqa: E402
from mldebug_ray.probes.memory import PhaseMemory  # noqa: E402
from mldebug_ray.probes.outputs import output_diversity  # noqa: E402
from mldebug_ray.probes.precision import precision_rows  # noqa: E402


def build_mlp(params: float, in_dim: int = 512, classes: int = 1000) -> nn.Module:
    """Four hidden layers of equal width w, sized so the total is about `params`."""
    # in*w + 3*w*w + w*classes (+ biases) = params  ->  3w^2 + (in + classes)w - params = 0
    a, b, c = 3.0, float(in_dim + classes), -float(params)
    width = int((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))
    return nn.Sequential(
        nn.Linear(in_dim, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, width), nn.Tanh(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, classes),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=float, default=10e6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    torch.manual_seed(0)
    model = build_mlp(args.params).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.randn(args.batch, model[0].in_features, device=device)
    y = torch.randint(0, model[-1].out_features, (args.batch,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(recorder: ActivationRecorder | None = None) -> None:
        optimizer.zero_grad(set_to_none=True)
        if recorder is not None:
            with recorder:
                loss = nn.functional.cross_entropy(model(x), y)
        else:
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    def plain() -> None:
        step()

    def with_gradients() -> None:
        step()
        gradient_rows(model)

    def with_activations() -> None:
        recorder = ActivationRecorder(model)
        step(recorder)
        recorder.rows()

    def with_both() -> None:
        recorder = ActivationRecorder(model)
        step(recorder)
        gradient_rows(model)
        recorder.rows()

    def memory_tracked() -> None:
        mem = PhaseMemory(device)
        optimizer.zero_grad(set_to_none=True)
        with mem.phase("forward", model, x, optimizer):
            loss = nn.functional.cross_entropy(model(x), y)
        with mem.phase("backward"):
            loss.backward()
        with mem.phase("optimizer"):
            optimizer.step()
        mem.rows()

    def precision() -> None:
        precision_rows(model, (x, y), None, device, None)

    def outputs() -> None:
        model.eval()
        with torch.no_grad():
            output_diversity(model(x))
        model.train()

    variants = {
        "step": plain,
        "step + gradients": with_gradients,
        "step + activations": with_activations,
        "step + gradients + activations": with_both,
        "memory-tracked step": memory_tracked,
        "precision probe (per checkpoint)": precision,
        "outputs probe (per checkpoint)": outputs,
    }
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for rnd in range(args.repeats + 2):
        for name, fn in variants.items():
            sync()
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            if rnd >= 2:  # two warm-up rounds
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
    base_w, base_c = statistics.median(wall["step"]), statistics.median(cpu["step"])
    results = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "n_params": n_params,
        "batch": args.batch,
        "repeats": args.repeats,
        "variants": {},
    }
    print(f"model: MLP, {n_params / 1e6:.2f}M parameters, batch {args.batch}, device {results['device']}, "
          f"{results['threads']} CPU thread(s), median of {args.repeats}")
    print(f"{'variant':36s} {'wall ms':>9s} {'ratio':>7s} {'cpu ms':>9s} {'ratio':>7s}")
    for name in variants:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        results["variants"][name] = {"wall_ms": 1e3 * w, "wall_ratio": w / base_w, "cpu_ms": 1e3 * c, "cpu_ratio": c / base_c}
        print(f"{name:36s} {1e3 * w:9.2f} {w / base_w:6.3f}x {1e3 * c:9.2f} {c / base_c:6.3f}x")
    both = results["variants"]["step + gradients + activations"]
    every16 = 1.0 + (both["wall_ratio"] - 1.0) / 16
    results["every_16_steps_ratio"] = every16
    print(f"{'gradients + activations every 16th step':36s} {'':9s} {every16:6.3f}x   (Cockpit economy: 1.51x every step, 1.04x every 16)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
