"""One Ray task's work (analyze_runs) on 100 generated runs (5 diverging), with the group
screen (detectors/screen.py) and with every run's detectors, same process, alternating.

    python benchmarks/task_screen_speed.py [STEPS]

Includes reading the JSON-lines logs and writing the parts, so it shows what the screen
saves in a task, not the detectors alone (benchmarks/detector_speed.py does that).
"""
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mldebug_ray import analyze_run as ar
from mldebug_ray.api import compose_config
from mldebug_ray.discover import discover

def gen(root, n, steps, rng):
    for i in range(n):
        run = root / f"r{i:04d}"; run.mkdir(parents=True)
        fault = "divergence" if i % 20 == 0 else None
        at = rng.randrange(steps // 4, 3 * steps // 4)
        with open(run / "metrics.jsonl", "w") as fh:
            for s in range(steps):
                loss = 0.5 + 2.5 * math.exp(-s / (steps / 5)) * math.exp(0.03 * rng.gauss(0, 1))
                if fault and s >= at: loss *= 4
                row = {"step": s, "train_loss": loss, "lr": 1e-3, "grad_norm": 1 + 0.1 * rng.random()}
                if s % 20 == 0: row["val_loss"] = loss + 0.05
                fh.write(json.dumps(row) + "\n")

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
tmp = Path(tempfile.mkdtemp()); root = tmp / "sweep"; gen(root, 100, steps, random.Random(0))
runs = discover([str(root)]); cfg = compose_config(root, tmp / "x")
orig = ar._screened_out
for rep in range(2):
    for name, fn in (("per-run detectors", lambda g, c: set()), ("screened", orig)):
        ar._screened_out = fn
        out = tmp / f"{name}{rep}"
        t0, c0 = time.perf_counter(), time.process_time()
        ar.analyze_runs(runs, cfg, str(out))
        print(f"{name:18s} steps={steps} wall={time.perf_counter()-t0:6.2f}s cpu={time.process_time()-c0:6.2f}s")
shutil.rmtree(tmp)
