"""A generated sweep of many small runs: wall time, runs/s, driver and worker peak memory.

    python benchmarks/scale_sweep.py --runs 10000 [--steps 50] [--cpus 2]

Issue 10's target: 10,000 runs complete with the driver's peak RSS under 1.5 GB and no
bulk data in Ray's object store (tasks write Parquet parts and return summaries). The
driver's peak is read from getrusage(RUSAGE_SELF) at the end (Linux: KiB); each Ray
task reports its worker process's peak and the largest is printed. The baseline in the
same run is reading the same runs serially without Ray (`read_run` on a 200-run sample,
extrapolated): the ratio is what detectors, probes and writes cost on top of reading.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import mldebug_ray
from mldebug_ray.api import compose_config
from mldebug_ray.pipeline import run_pipeline


def generate(root: Path, n: int, steps: int) -> None:
    for i in range(n):
        run = root / f"group{i // 100:03d}" / f"run{i:05d}"
        run.mkdir(parents=True)
        lines = []
        for step in range(1, steps + 1):
            loss = 2.5 / (1 + 0.03 * step) + 0.01 * ((i * 7919 + step) % 13) / 13
            lines.append(json.dumps({"step": step, "train_loss": loss, "lr": 1e-3}))
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="mldebug_scale_"))
    root, out = base / "sweep", base / "out"
    t0 = time.perf_counter()
    generate(root, args.runs, args.steps)
    gen_s = time.perf_counter() - t0

    sample = sorted(root.glob("group*/run*"))[:200]
    t0 = time.perf_counter()
    for run in sample:
        mldebug_ray.read_run(run)
    serial_per_run = (time.perf_counter() - t0) / len(sample)

    t0 = time.perf_counter()
    cfg = compose_config([root], out, overrides={"cluster.num_cpus": args.cpus, "progress": "lines"})
    result = run_pipeline(cfg, out, print_summary=False)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_files = sum(1 for _ in (out / "evidence").rglob("*.parquet"))
    print(f"runs={args.runs} steps={args.steps} generate={gen_s:.1f}s")
    print(f"analyze wall={wall:.1f}s rate={args.runs / wall:.1f} runs/s driver_peak_rss={peak_mb:.0f} MB "
          f"workers_peak_rss={result.worker_peak_rss_bytes / 2**20:.0f} MB parquet_files={n_files}")
    print(f"baseline serial read_run (no detectors, no writes) {serial_per_run * 1000:.1f} ms/run -> "
          f"{serial_per_run * args.runs:.1f}s extrapolated; pipeline/serial-read ratio {wall / (serial_per_run * args.runs):.2f}")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
