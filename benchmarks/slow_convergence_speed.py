"""The sweep-level slow_convergence detector on 10,000 runs: this version against an earlier commit's.

    python benchmarks/slow_convergence_speed.py [--before 3a30dea~1]

The sweep is tests/sweep/test_scale.py's `write_big_sweep` (10 workloads x 200 configs x 5
seeds, 20 evaluations each). The earlier version is loaded from git (`git show
COMMIT:mldebug_ray/detectors/slow_convergence.py`); both run twice, alternating, in this
process, and must return the same findings (run, onset, summary).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = "mldebug_ray/detectors/slow_convergence.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="3a30dea~1", help="commit holding the earlier version")
    args = parser.parse_args()
    source = subprocess.run(["git", "show", f"{args.before}:{MODULE}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    old = types.ModuleType("slow_convergence_before")
    sys.modules[old.__name__] = old
    # Not registered again: the decorator would refuse a second `slow_convergence`.
    exec(compile(source.replace('@sweep_detector("slow_convergence")', ""), old.__name__, "exec"), old.__dict__)

    import mldebug_ray.detectors.slow_convergence as new
    from mldebug_ray.detectors import SweepTables

    sys.path.insert(0, str(ROOT / "tests" / "sweep"))
    from test_scale import write_big_sweep

    out = tempfile.mkdtemp(prefix="slow_convergence_speed_")
    n = write_big_sweep(out)
    tables, cfg = SweepTables(out), new.SlowConvergenceConfig()
    reference = None
    for name, fn in (("before", old.slow_convergence), ("after", new.slow_convergence)) * 2:
        wall, cpu = time.perf_counter(), time.process_time()
        found = fn(tables, cfg)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        got = [(f.run_id, f.onset_step, f.summary) for f in found]
        reference = reference or got
        assert got == reference, f"{name}: different findings"
        print(f"{name:>6}: {wall:5.1f}s wall {cpu:5.1f}s CPU, {len(found)} findings on {n} runs")


if __name__ == "__main__":
    main()
