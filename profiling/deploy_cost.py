"""What the deployment checks cost per checkpoint, next to the other model probes (benchmarks/README.md, "Deployment checks").

    python profiling/deploy_cost.py [--repeats 5] [--threads N] [--device auto|cpu|cuda] [--json PATH]

Two models, each with one checkpoint written as safetensors and timed through the
pipeline's `probe_checkpoint` (checkpoint load, model_fn, batch_fn included), median of
`--repeats` after one warm-up, wall and CPU time of this process:
- the demo's TinyLM (27k parameters) with its validation batch of 256;
- an MLP of about 10M parameters (profiling/probe_overhead.py's) with a random batch of 64.
Variants: the five training-side probes (gradients, activations, outputs, memory,
precision) without deployment; `deployment` alone with the defaults (3 warm-up + 20 timed
forwards, the inference-memory forward); alone without the memory forward; alone with
the profiler trace (probes.deploy.profile_trace). The deployment row's own median
latency is printed too: the probe's cost is about (3 + 20 + 1) times it plus the load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probe_overhead import build_mlp  # noqa: E402

from mldebug_ray.config import ProbesConfig  # noqa: E402
from mldebug_ray.probes.deploy import DeployConfig  # noqa: E402
from mldebug_ray.probes.model_loop import EntryPoints  # noqa: E402
from mldebug_ray.probes.run_probes import probe_checkpoint  # noqa: E402

TRAINING = ["gradients", "activations", "outputs", "memory", "precision"]


def _mlp_entry() -> EntryPoints:
    def model_fn(_params):
        torch.manual_seed(0)
        return build_mlp(10e6)

    def batch_fn(_params):
        gen = torch.Generator().manual_seed(0)
        return torch.randn(64, 512, generator=gen), torch.randint(0, 1000, (64,), generator=gen)

    return EntryPoints(model_fn, batch_fn)


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    out = fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    from safetensors.torch import save_file

    from mldebug_ray.demo.models import batch_fn, model_fn
    from mldebug_ray.demo.scenarios import baseline

    cases = {"demo TinyLM, batch 256": (EntryPoints(model_fn, batch_fn), baseline()), "MLP 10M, batch 64": (_mlp_entry(), {})}
    variants = {
        "training probes (5, no deployment)": (TRAINING, DeployConfig()),
        "deployment (defaults)": (["deployment"], DeployConfig()),
        "deployment, no memory forward": (["deployment"], DeployConfig(inference_memory=False)),
        "deployment + profiler trace": (["deployment"], DeployConfig()),
    }
    results: dict = {"device": str(device), "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for case, (entry, params) in cases.items():
            save_file(entry.model_fn(params).state_dict(), str(root / "step_1.safetensors"))
            row = {"path": "step_1.safetensors", "format": "safetensors", "step": 1}
            print(f"{case} on {device}, {torch.get_num_threads()} thread(s), median of {args.repeats}:")
            print(f"   {'variant':38s} {'wall ms':>9s} {'cpu ms':>9s}")
            results[case] = {}
            for name, (probes_list, deploy) in variants.items():
                cfg = ProbesConfig(model_fn="x:y", batch_fn="x:y", model_probes=probes_list, deploy=deploy)
                trace = root / "trace.pt.trace.json" if "trace" in name else None
                wall, cpu, out = _timed(lambda: probe_checkpoint(entry, params, root, row, device, cfg, None, trace_path=trace), args.repeats)
                results[case][name] = {"wall_ms": 1e3 * wall, "cpu_ms": 1e3 * cpu}
                print(f"   {name:38s} {1e3 * wall:9.1f} {1e3 * cpu:9.1f}")
                if name == "deployment (defaults)":
                    dep = out["deployment"][0]
                    results[case]["latency_ms_median"] = dep["latency_ms_median"]
                    print(f"   (its row: latency median {dep['latency_ms_median']:.2f} ms, p90 {dep['latency_ms_p90']:.2f} ms, "
                          f"{dep['n_params']:,} parameters, peak inference {dep['peak_inference_bytes'] / 2**20:.1f} MiB)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
