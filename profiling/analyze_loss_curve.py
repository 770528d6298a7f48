"""One run directory's curves through the pipeline's run-level detectors: findings with their onset steps.

    python profiling/analyze_loss_curve.py RUN_DIR [--key SUBSTRING] [--out DIR]

The run is read with `mldebug_ray.read_run` (every reader of the pipeline: TensorBoard,
trainer_state.json, CSV/JSONL, MLflow, W&B, logs, ...), a summary of its loss-like curves
is printed (first, best with its step, last), and the enabled run-level detectors run on
it with their default thresholds (divergence, loss_spike, plateau, overfitting, nan_inf,
oscillation, lr_schedule_anomaly, ...; probe-based detectors stay silent: no model is run
here). Findings are listed by onset step. No Ray. With --out the run's tables (params,
metrics, events, checkpoints, findings, runs) are written as Parquet.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from _common import fail, write_tables


def _num(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--key", default="loss", help="curves whose key contains this are summarised (default: loss)")
    parser.add_argument("--out", type=Path, default=None, help="write the run's tables as Parquet under OUT/evidence/")
    args = parser.parse_args(argv)
    if not args.run_dir.is_dir():
        fail(f"{args.run_dir}: not a directory")

    import polars as pl

    from mldebug_ray import read_run, schema
    from mldebug_ray.detectors import DetectorsConfig, RunEvidence, run_detectors
    from mldebug_ray.findings import findings_frame

    run = read_run(args.run_dir)
    if run.status == "unreadable":
        fail(f"{args.run_dir}: unreadable run: {run.reason}")
    steps = run.metrics["step"].drop_nulls()
    runs = schema.validate("runs", pl.DataFrame([{
        "run_id": run.run_id, "path": run.path, "source_format": run.source_format, "status": run.status, "reason": run.reason,
        "n_steps": steps.n_unique(), "last_step": steps.max(), "n_metrics": run.metrics.height, "n_checkpoints": run.checkpoints.height,
    }], schema=schema.schema_of("runs"), strict=False))
    ev = RunEvidence(run.run_id, runs=runs, params=run.params, metrics=run.metrics, events=run.events, checkpoints=run.checkpoints)
    print(f"{run.path}: {run.source_format}, status {run.status}" + (f" ({run.reason})" if run.reason else "")
          + f", {run.metrics['key'].n_unique()} metrics over {steps.n_unique()} steps, {run.events.height} log events, {run.checkpoints.height} checkpoints")

    curves = run.metrics.filter(pl.col("key").str.to_lowercase().str.contains(args.key.lower(), literal=True)).sort("step")
    for (key, split), curve in curves.group_by("key", "split", maintain_order=True):
        values = curve["value"].to_list()
        finite = curve.filter(pl.col("value").is_finite())
        best = finite.sort("value").row(0, named=True) if finite.height else None
        print(f"  {key}{f' [{split}]' if split else ''}: {len(values)} points, first {_num(values[0])}, "
              + (f"best {_num(best['value'])} at step {best['step']}, " if best else "no finite value, ") + f"last {_num(values[-1])}")

    findings, problems = run_detectors(ev, DetectorsConfig())
    for problem in problems:
        print(f"  detector problem: {problem}")
    findings.sort(key=lambda f: (f.onset_step is None, f.onset_step if f.onset_step is not None else 0, f.kind))
    print(f"{len(findings)} finding(s)" + (":" if findings else ""))
    for f in findings:
        span = f"step {f.onset_step}" if f.onset_step is not None else "no onset"
        if f.end_step is not None and f.end_step != f.onset_step:
            span += f"-{f.end_step}"
        print(f"  [{span}] {f.kind} ({f.severity}, confidence {f.confidence:.2f}): {f.summary}")
    if args.out is not None:
        write_tables(args.out, run.run_id, {"params": run.params, "metrics": run.metrics, "events": run.events,
                                            "checkpoints": run.checkpoints, "findings": findings_frame(findings), "runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
