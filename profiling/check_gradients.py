"""Per-layer gradients of one checkpoint: norm, max, zero and non-finite shares, with vanishing/exploding flags.

    python profiling/check_gradients.py CHECKPOINT --model-fn MOD:FN --batch-fn MOD:FN
        [--loss-fn MOD:FN] [--code-path DIR ...] [--run-dir RUN] [--steps N] [--device auto|cpu|cuda] [--out DIR]

The checkpoint is loaded into `model_fn(params)` (params: the run's hyperparameters, from
--run-dir or the nearest run directory above the checkpoint), one batch from
`batch_fn(params)` goes through `--steps` forward/backward passes (train mode, loss
averaged), and the accumulated gradients are summarised per parameter exactly as the
pipeline's `gradients` probe does (mldebug_ray/probes/gradients.py). The flags are the
pipeline's own `vanishing_gradients` and `exploding_gradients` detectors with their default
thresholds (AutoTrainer's first/last-layer ratios, FIELD-NOTES), run on these rows.
No Ray. With --out the `gradients` and `findings` tables are written as Parquet.
"""

from __future__ import annotations

import argparse
import math

from _common import add_model_args, fail, frame, probe, write_tables


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3e}" if math.isfinite(x) else str(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_model_args(parser)
    parser.add_argument("--steps", type=int, default=1, help="forward/backward passes whose gradients are accumulated (probes.model_steps)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        fail(f"--steps must be >= 1, got {args.steps}")

    from mldebug_ray.detectors import DETECTORS, DetectorsConfig, RunEvidence
    from mldebug_ray.findings import findings_frame

    run_id, step, rows, device = probe(args, ["gradients"], model_steps=args.steps)
    grads = frame("gradients", rows["gradients"], run_id, step)
    if grads.height == 0:
        fail(f"{args.checkpoint}: the model has no trainable parameters")
    ev = RunEvidence(run_id, gradients=grads)
    cfg = DetectorsConfig()
    findings = [f for name in ("vanishing_gradients", "exploding_gradients") for f in DETECTORS[name].fn(ev, getattr(cfg, name))]

    print(f"gradients of {args.checkpoint} (run {run_id}, step {step}, {device}, {args.steps} step(s)), {grads.height} parameters, in model order:")
    width = max(len(name) for name in grads["layer"])
    print(f"  {'layer':{width}s}  {'grad_norm_l2':>12s}  {'grad_max_abs':>12s}  {'zero_frac':>9s}  {'nonfinite':>9s}")
    for r in grads.iter_rows(named=True):
        mark = "  <- non-finite" if r["nonfinite_frac"] else ("  <- all zero" if r["zero_frac"] == 1.0 else "")
        print(f"  {r['layer']:{width}s}  {_num(r['grad_norm_l2']):>12s}  {_num(r['grad_max_abs']):>12s}  "
              f"{r['zero_frac']:9.3f}  {r['nonfinite_frac']:9.3f}{mark}")
    norms = [x for x in grads["grad_norm_l2"].to_list() if x is not None and math.isfinite(x) and x > 0]
    if norms:
        print(f"largest / smallest non-zero norm: {max(norms) / min(norms):.3g}")
    if findings:
        for f in findings:
            print(f"FLAG {f.kind} ({f.severity}, confidence {f.confidence:.2f}): {f.summary}")
    else:
        print("no vanishing or exploding gradients flagged")
    if args.out is not None:
        write_tables(args.out, run_id, {"gradients": grads, "findings": findings_frame(findings)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
