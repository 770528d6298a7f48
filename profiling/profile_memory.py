"""Peak memory of one checkpoint's training step by phase (forward, backward, optimizer), and of one inference forward.

    python profiling/profile_memory.py CHECKPOINT --model-fn MOD:FN --batch-fn MOD:FN
        [--loss-fn MOD:FN] [--code-path DIR ...] [--run-dir RUN] [--steps N] [--device auto|cpu|cuda] [--out DIR]

The checkpoint is loaded into `model_fn(params)`, one batch from `batch_fn(params)` goes
through `--steps` forward/backward passes and an AdamW step (lr=0), each phase measured
as the pipeline's `memory` probe does (mldebug_ray/probes/memory.py): the CUDA caching
allocator's peak on a GPU; on the CPU the peak of live tensor storage (weights, batch,
activations, gradients, optimizer state; kernel scratch buffers are not seen). Then one
eval-mode forward under inference_mode with the same measure (probes/deploy.py). Each
phase's peak starts from what is alive when it begins, so the backward includes the
activations the forward saved. No Ray. With --out the `memory` table is written as Parquet.
"""

from __future__ import annotations

import argparse

from _common import add_model_args, fail, frame, human_bytes, probe, write_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_model_args(parser)
    parser.add_argument("--steps", type=int, default=1, help="forward/backward passes before the optimizer step (probes.model_steps)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        fail(f"--steps must be >= 1, got {args.steps}")

    from mldebug_ray.probes.deploy import DeployConfig

    # The deployment probe's inference peak; one timed repeat only (its latency is not reported here).
    deploy = DeployConfig(warmup=0, repeats=1, inference_memory=True)
    run_id, step, rows, device = probe(args, ["memory", "deployment"], model_steps=args.steps, deploy=deploy)
    memory = frame("memory", rows["memory"], run_id, step)
    if memory.height == 0:
        fail(f"{args.checkpoint}: no phase was measured")
    size = rows["deployment"][0] if rows["deployment"] else {}
    total = memory["device_total_bytes"][0]

    print(f"peak memory of {args.checkpoint} (run {run_id}, step {step}) on {memory['device'][0]}, device memory {human_bytes(total)}")
    if size:
        print(f"parameters: {size['n_params']:,} ({human_bytes(size['param_bytes'])}), buffers {human_bytes(size['buffer_bytes'])}, "
              f"batch of {size['batch_size']}")
    print(f"  {'phase':10s}  {'peak allocated':>15s}  {'reserved':>10s}  {'of device':>9s}")
    for r in memory.iter_rows(named=True):
        share = f"{100 * r['peak_allocated_bytes'] / total:8.2f}%" if total else "-"
        print(f"  {r['phase']:10s}  {human_bytes(r['peak_allocated_bytes']):>15s}  {human_bytes(r['reserved_bytes']):>10s}  {share:>9s}")
    if size.get("peak_inference_bytes") is not None:
        print(f"  {'inference':10s}  {human_bytes(size['peak_inference_bytes']):>15s}")
    worst = memory.sort("peak_allocated_bytes", descending=True).row(0, named=True)
    print(f"largest: {worst['phase']} ({human_bytes(worst['peak_allocated_bytes'])})"
          + (f", {worst['peak_allocated_bytes'] / size['param_bytes']:.1f}x the parameter bytes" if size.get("param_bytes") else ""))
    if args.out is not None:
        write_tables(args.out, run_id, {"memory": memory})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
