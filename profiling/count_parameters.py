"""Parameters and bytes of one checkpoint by module type (embedding/attention/MLP/norm/head) and by dtype; no model code.

    python profiling/count_parameters.py CHECKPOINT [--top N] [--stats] [--out DIR]

CHECKPOINT: a safetensors file, a torch.save file (loaded with weights_only=True and
mmap, never unpickled), a `*.index.json` of shards, or a torch.distributed.checkpoint
folder. Tensors are classified by name with the checkpoint scan's `module_type`
(mldebug_ray/probes/checkpoint_scan.py); safetensors are counted from their headers
without reading data. A DCP folder gives its total only: its per-tensor names and dtypes
live in a pickle this tool does not load. The pipeline's `architecture_imbalance` detector
(default limits) runs on the counts. --stats (implied by --out) adds the `layers` table's
per-tensor statistics (the pipeline's weight scan) and reports NaN/Inf tensors; --out
writes the `checkpoints` and `layers` tables as Parquet. No Ray.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import checkpoint_row, fail, human_bytes, write_tables

# safetensors header dtype codes -> torch dtype names (the safetensors format spec).
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
              "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def tensor_records(base: Path, row: dict) -> list[dict]:
    """(layer, module_type, dtype, n_params, bytes) per tensor of a safetensors or torch checkpoint."""
    from mldebug_ray.probes.checkpoint_scan import module_type
    from mldebug_ray.probes.weights import checkpoint_tensors
    from mldebug_ray.readers.checkpoints import SAFETENSORS_INDEX, safetensors_header, shard_files

    path = base / row["path"]
    records = []
    if row["format"] == "safetensors":
        for file in shard_files(path) if path.name.lower().endswith(SAFETENSORS_INDEX) else [path]:
            for name, info in safetensors_header(file).items():
                if name == "__metadata__":
                    continue
                n = 1
                for d in info["shape"]:
                    n *= int(d)
                start, end = info["data_offsets"]
                records.append({"layer": name, "dtype": _ST_DTYPES.get(info["dtype"], info["dtype"].lower()), "n_params": n, "bytes": end - start})
    else:
        with checkpoint_tensors(base, row["path"], row["format"]) as source:
            for name, get in source.items():
                t = get()  # memory-mapped: shape and dtype without reading the data
                records.append({"layer": name, "dtype": str(t.dtype).removeprefix("torch."), "n_params": int(t.numel()), "bytes": int(t.numel()) * t.element_size()})
    return [r | {"module_type": module_type(r["layer"])} for r in records]


def _table(title: str, groups, total_n: int) -> None:
    print(f"by {title}:")
    for name, n, nbytes in groups:
        print(f"  {name:14s} {n:>15,}  {100 * n / max(total_n, 1):6.2f}%  {human_bytes(nbytes):>10s}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--top", type=int, default=5, help="largest tensors listed (0: none)")
    parser.add_argument("--stats", action="store_true", help="per-tensor statistics (the `layers` table); reads every tensor")
    parser.add_argument("--out", type=Path, default=None, help="write the checkpoints and layers tables as Parquet under OUT/evidence/")
    parser.add_argument("--run-id", default=None, help="run_id of the written rows (default: the checkpoint's folder, above a checkpoints/ folder)")
    args = parser.parse_args(argv)

    import polars as pl

    from mldebug_ray import schema
    from mldebug_ray.detectors import DetectorsConfig, RunEvidence
    from mldebug_ray.detectors.architecture_imbalance import architecture_imbalance

    base, row = checkpoint_row(args.checkpoint)
    run_id = args.run_id or (base.parent.name if base.name.lower() in ("checkpoints", "checkpoint", "ckpt", "ckpts") else base.name)
    print(f"{args.checkpoint}: {row['format']}, step {row['step']}, {row['n_params']:,} parameters, {human_bytes(row['bytes'])} on disk")
    if row["format"] == "dcp":
        print("DCP folder: total only (per-tensor names and dtypes are in its pickled .metadata, which is never loaded)")
        records = []
    else:
        try:
            records = tensor_records(base, row)
        except Exception as exc:  # the readers' refusals name the file
            fail(f"{args.checkpoint}: {exc}")
        counts = pl.DataFrame(records, schema={"layer": pl.String, "dtype": pl.String, "n_params": pl.Int64, "bytes": pl.Int64, "module_type": pl.String})
        total = int(counts["n_params"].sum())
        for key in ("module_type", "dtype"):
            groups = counts.group_by(key).agg(pl.col("n_params").sum(), pl.col("bytes").sum()).sort("n_params", descending=True)
            _table(key.replace("_", " "), groups.iter_rows(), total)
        if args.top:
            print(f"largest {min(args.top, counts.height)} of {counts.height} tensors:")
            for r in counts.sort("n_params", descending=True).head(args.top).iter_rows(named=True):
                print(f"  {r['layer']:40s} {r['n_params']:>15,}  {r['dtype']:9s} {r['module_type']}")
        # The detector reads step, layer, module_type and n_params of the `layers` table; the statistics are not needed.
        counted = counts.drop("bytes").with_columns(pl.lit(run_id).alias("run_id"), pl.lit(row["step"], pl.Int64).alias("step"))
        for f in architecture_imbalance(RunEvidence(run_id, layers=counted), DetectorsConfig().architecture_imbalance):
            print(f"FLAG {f.kind} ({f.severity}): {f.summary}")
    if (args.stats or args.out is not None) and records:
        from mldebug_ray.probes.weights import scan_weights

        layers = scan_weights(base, row["path"], row["format"]).with_columns(pl.lit(run_id).alias("run_id"), pl.lit(row["step"], pl.Int64).alias("step"))
        bad = layers.filter(pl.col("nonfinite_frac") > 0)
        print(f"statistics: {layers.height} tensors scanned; " + (f"{bad.height} hold NaN/Inf: {', '.join(bad['layer'].head(5))}" if bad.height else "all finite"))
    if args.out is not None:
        frames = {"checkpoints": schema.validate("checkpoints", pl.DataFrame([row | {"run_id": run_id}], schema=schema.schema_of("checkpoints")))}
        if records:
            frames["layers"] = schema.validate("layers", layers)
        write_tables(args.out, run_id, frames)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
