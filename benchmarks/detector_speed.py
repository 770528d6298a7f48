"""Run detectors over a generated sweep's whole `metrics` table: vectorised screen vs a per-run loop.

    python benchmarks/detector_speed.py [--runs 1000] [--steps 20000] [--val-every 100] [--out DIR]

Generates a sweep of N runs x S steps with 4 metrics (per-step train_loss, lr, grad_norm and a
val_loss every --val-every steps), realistic curves (exponential-decay loss with 3% step noise,
warm-up + cosine LR to 10% of its peak, a grad norm that settles with 10% noise) and a few
planted faults (loss spikes, divergence, NaN, a plateau at chance with a zero LR, grad-norm
spikes); writes it as the `metrics` table with the package's writer; then, each in its own
process (so each reports its own peak RSS):

- `vectorised`: `detectors.screen.run_detectors_all` over the whole table (polars screen of
  all runs at once, exact detectors on the candidate runs only);
- `loop`: the straightforward per-run loop: every run's rows sliced out of the table and every
  run-level detector (`run_detectors`, numpy per run) called on it.

Both compute the same detectors; the script asserts the same findings (ids, kinds, onsets)
and prints wall and CPU seconds, the speed-up and each process's peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`). Reading the Parquet table is timed apart.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from mldebug_ray import schema
from mldebug_ray.evidence.io import scan_table, write_table

FAULTS = ("loss_spike", "divergence", "nan", "plateau_lr0", "grad_spike")


def make_run(rng: np.random.Generator, n_steps: int, val_every: int, fault: str | None) -> dict[str, np.ndarray]:
    """One run's four series (train_loss, val_loss, lr, grad_norm) as {key: (steps, values)}."""
    steps = np.arange(n_steps)
    tau = rng.uniform(0.1, 0.25) * n_steps
    floor, height = rng.uniform(0.4, 0.8), rng.uniform(2.0, 3.0)
    clean = floor + height * np.exp(-steps / tau)
    train = clean * np.exp(0.03 * rng.standard_normal(n_steps))
    peak = 10 ** rng.uniform(-4, -3)
    warm = max(1, n_steps // 40)
    lr = np.where(steps < warm, peak * (0.01 + 0.99 * steps / warm),
                  peak * (0.1 + 0.45 * (1 + np.cos(np.pi * (steps - warm) / max(1, n_steps - warm)))))
    grad = (1 + 2 * np.exp(-steps / (0.05 * n_steps))) * np.exp(0.1 * rng.standard_normal(n_steps))
    v_steps = steps[::val_every]
    val = (clean[::val_every] + 0.05) * np.exp(0.005 * rng.standard_normal(v_steps.size))
    at = int(rng.integers(n_steps // 4, 3 * n_steps // 4))
    if fault == "loss_spike":
        train[at] *= 1.8
    elif fault == "divergence":
        rise = np.clip((steps - at) / (0.02 * n_steps), 0, None)
        train *= 1 + 3 * np.minimum(rise, 1)
        grad[at:] *= 8
        val *= 1 + 3 * np.minimum(np.clip((v_steps - at) / (0.02 * n_steps), 0, None), 1)
    elif fault == "nan":
        train[at:] = np.nan
        grad[at:] = np.inf
        val[v_steps >= at] = np.nan
    elif fault == "plateau_lr0":
        chance = math.log(10)
        train = chance * np.exp(0.003 * rng.standard_normal(n_steps))
        val = np.full(v_steps.size, chance + 1e-3)
        lr = np.zeros(n_steps)
    elif fault == "grad_spike":
        grad[at] *= 12
    return {"train_loss": (steps, train), "val_loss": (v_steps, val), "lr": (steps, lr), "grad_norm": (steps, grad)}


def make_metrics(n_runs: int, n_steps: int, val_every: int, seed: int = 0, fault_every: int = 50) -> tuple[pl.DataFrame, dict[str, str]]:
    """The whole sweep's `metrics` table (rows grouped by run) and {run_id: planted fault}."""
    rng = np.random.default_rng(seed)
    planted: dict[str, str] = {}
    frames = []
    for i in range(n_runs):
        rid = f"sweep/run_{i:05d}"
        fault = FAULTS[(i // fault_every) % len(FAULTS)] if i % fault_every == fault_every - 1 else None
        if fault:
            planted[rid] = fault
        for key, (steps, values) in make_run(rng, n_steps, val_every, fault).items():
            frames.append(pl.DataFrame({
                "run_id": pl.Series([rid], dtype=pl.String).new_from_index(0, steps.size),
                "step": steps.astype(np.int64),
                "key": pl.Series([key], dtype=pl.String).new_from_index(0, steps.size),
                "value": values.astype(np.float64),
                "split": pl.Series(["val" if key == "val_loss" else "train"], dtype=pl.String).new_from_index(0, steps.size),
            }))
    return pl.concat(frames, rechunk=True), planted


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _findings_table(findings) -> pl.DataFrame:
    return pl.DataFrame(
        [{"run_id": f.run_id, "finding_id": f.finding_id, "kind": f.kind, "severity": f.severity, "onset_step": f.onset_step} for f in findings],
        schema={"run_id": pl.String, "finding_id": pl.String, "kind": pl.String, "severity": pl.String, "onset_step": pl.Int64},
    )


def phase(out: Path, which: str) -> None:
    """One measured phase in this process: read the table, detect, write findings + timings."""
    from mldebug_ray.detectors import DetectorsConfig, RunEvidence, run_detectors
    from mldebug_ray.detectors.screen import run_detectors_all

    cfg = DetectorsConfig()
    t0 = time.perf_counter()
    metrics = scan_table(out, "metrics").select("run_id", "step", "key", "value", "split").collect()
    read_s = time.perf_counter() - t0
    wall, cpu = time.perf_counter(), time.process_time()
    extra = {}
    if which == "vectorised":
        result = run_detectors_all({"metrics": metrics}, cfg)
        findings, problems = result.findings, result.problems
        extra = {"screen_s": result.screen_s, "candidates": result.candidates.height, "reasons": result.candidates.group_by("reason").len().sort("len", descending=True).rows()}
    else:
        findings, problems = [], []
        offsets = metrics.select("run_id").with_row_index().group_by("run_id", maintain_order=True).agg(pl.col("index").min(), pl.len())
        for rid, start, length in offsets.iter_rows():
            ev = RunEvidence(rid, metrics=metrics.slice(start, length))
            found, bad = run_detectors(ev, cfg)
            findings += found
            problems += [f"{rid}: {p}" for p in bad]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    _findings_table(findings).write_parquet(out / f"findings_{which}.parquet")
    (out / f"timing_{which}.json").write_text(json.dumps({
        "read_s": read_s, "wall_s": wall, "cpu_s": cpu, "peak_rss_bytes": _peak_rss_bytes(),
        "n_findings": len(findings), "problems": problems[:10], **extra,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--phase", choices=["vectorised", "loop"], help=argparse.SUPPRESS)
    parser.add_argument("--skip-loop", action="store_true", help="time only the vectorised path")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="detector_speed_"))
    if args.phase:
        phase(out, args.phase)
        return
    t0 = time.perf_counter()
    metrics, planted = make_metrics(args.runs, args.steps, args.val_every)
    write_table(out, "metrics", schema.validate("metrics", metrics), "all")
    print(f"generated {args.runs} runs x {args.steps} steps: {metrics.height:,} metric rows, "
          f"{len(planted)} planted faults, in {time.perf_counter() - t0:.1f}s -> {out}")
    del metrics
    phases = ["vectorised"] + ([] if args.skip_loop else ["loop"])
    timing = {}
    for which in phases:
        subprocess.run([sys.executable, __file__, "--out", str(out), "--phase", which], check=True)
        timing[which] = json.loads((out / f"timing_{which}.json").read_text())
        t = timing[which]
        print(f"{which:>10}: {t['wall_s']:7.1f}s wall {t['cpu_s']:7.1f}s CPU, {t['n_findings']} findings, "
              f"peak RSS {t['peak_rss_bytes'] / 2**30:.2f} GiB (table read {t['read_s']:.1f}s, not counted)")
        if t["problems"]:
            print("   problems:", t["problems"])
    v = timing["vectorised"]
    print(f"vectorised: screen {v['screen_s']:.1f}s wall, then the exact detectors on {v['candidates']} candidate runs of {args.runs}; reasons: {v['reasons']}")
    found_v = pl.read_parquet(out / "findings_vectorised.parquet")
    kinds = found_v.group_by("kind").len().sort("kind").rows()
    print(f"findings by kind: {kinds}")
    missed = sorted(set(planted) - set(found_v["run_id"].to_list()))
    print(f"planted runs without any finding: {missed}")
    if "loop" in timing:
        found_l = pl.read_parquet(out / "findings_loop.parquet")
        cols = ["run_id", "finding_id", "kind", "severity", "onset_step"]
        assert found_v.height == found_l.height, f"vectorised {found_v.height} findings, loop {found_l.height}"
        assert found_v.sort(cols).equals(found_l.sort(cols)), "the two paths found different findings"
        l = timing["loop"]
        print(f"same {found_v.height} findings; speed-up {l['wall_s'] / v['wall_s']:.1f}x wall, {l['cpu_s'] / v['cpu_s']:.1f}x CPU")


if __name__ == "__main__":
    main()
