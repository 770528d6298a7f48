"""What the profiling/ tools share: one-line errors (exit 2), checkpoint and run lookup, the model entry points, table writing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mldebug_ray.errors import EXIT_BAD_INVOCATION  # noqa: E402


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2 (SPEC §2's bad invocation), no traceback."""
    print(f"{Path(sys.argv[0]).name}: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INVOCATION)


def checkpoint_row(path: Path) -> tuple[Path, dict[str, Any]]:
    """(folder the path is relative to, the checkpoints reader's row) for a checkpoint file, a
    `*.index.json` of shards or a DCP folder; fail() when it is none of these or unreadable."""
    from mldebug_ray.readers.checkpoints import DCP_METADATA, read

    if not Path(path).exists():
        fail(f"{path}: no such file or directory")
    path = Path(path).resolve()  # the folder names above it give the run id
    if path.is_dir():
        if not (path / DCP_METADATA).is_file():
            fail(f"{path}: a folder, but not a torch.distributed.checkpoint folder (no {DCP_METADATA}); give a checkpoint file")
        path = path / DCP_METADATA
    base = path.parent.parent if path.name == DCP_METADATA else path.parent
    try:
        row = read(base, [path]).checkpoints.row(0, named=True)
    except Exception as exc:  # the reader's own refusals name the file
        fail(f"{path}: {exc}")
    if row["status"] != "ok":
        fail(f"{path}: unreadable checkpoint: {row['reason']}")
    return base, row


def run_dir_of(checkpoint: Path, given: Path | None) -> Path:
    """The run directory whose params `model_fn` gets: `given`, else the nearest ancestor (3 levels) holding params."""
    from mldebug_ray import read_run

    if given is not None:
        if not given.is_dir():
            fail(f"--run-dir {given}: not a directory")
        return given
    for candidate in list(Path(checkpoint).resolve().parents)[:3]:
        try:
            if read_run(candidate).params.height:
                return candidate
        except Exception:  # not a run directory
            continue
    fail(f"{checkpoint}: no run with hyperparameters found above it; give --run-dir")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """CHECKPOINT and the SPEC §9 entry points, as the sweep config names them."""
    parser.add_argument("checkpoint", type=Path, help="checkpoint file (safetensors / torch.save) or a *.index.json of shards")
    parser.add_argument("--model-fn", required=True, help="module:function(params) -> nn.Module (probes.model_fn)")
    parser.add_argument("--batch-fn", required=True, help="module:function(params) -> batch (probes.batch_fn)")
    parser.add_argument("--loss-fn", default=None, help="module:function(model, batch) -> loss (probes.loss_fn); optional")
    parser.add_argument("--code-path", action="append", default=[], help="folder to import the functions from (repeatable)")
    parser.add_argument("--run-dir", type=Path, default=None, help="run whose hyperparameters model_fn gets (default: found above the checkpoint)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=None, help="also write the tables as Parquet under OUT/evidence/<table>/")


def probe(args: argparse.Namespace, probe_names: list[str], **settings: Any) -> tuple[str, int | None, dict[str, list[dict[str, Any]]], Any]:
    """(run_id, step, rows by probe, device): the package's probe_checkpoint with only `probe_names`
    (`settings`: more ProbesConfig fields, e.g. model_steps)."""
    from mldebug_ray import read_run
    from mldebug_ray.config import ProbesConfig
    from mldebug_ray.errors import MldebugError
    from mldebug_ray.probes.device import resolve_device
    from mldebug_ray.probes.model_loop import load_entry_points, run_params
    from mldebug_ray.probes.run_probes import probe_checkpoint

    base, row = checkpoint_row(args.checkpoint)
    if row["format"] == "dcp":
        fail(f"{args.checkpoint}: DCP checkpoints are not loaded into a model (their data needs the pickled .metadata)")
    run_dir = run_dir_of(args.checkpoint, args.run_dir)
    try:
        probes = ProbesConfig(model_fn=args.model_fn, batch_fn=args.batch_fn, loss_fn=args.loss_fn, code_paths=args.code_path,
                              model_probes=probe_names, device=args.device, **settings)
        entry = load_entry_points(probes, run_dir)
        problems: list[str] = []
        device = resolve_device(args.device, problems)
        rows = probe_checkpoint(entry, run_params(read_run(run_dir).params), base, row, device, probes, None)
    except MldebugError as exc:
        fail(str(exc))
    except Exception as exc:  # the user's model code failing on this checkpoint or batch
        fail(f"{args.checkpoint}: {type(exc).__name__}: {exc}")
    return run_dir.name, row["step"], rows, device


def write_tables(out: Path, run_id: str, frames: dict[str, Any]) -> None:
    """Each frame as the run's part of its table under `out` (the package's validated, atomic writer)."""
    from mldebug_ray import paths
    from mldebug_ray.evidence.io import write_table

    for table, frame in frames.items():
        write_table(out, table, frame, paths.part_key(run_id))
    print(f"wrote {', '.join(frames)} under {out / paths.EVIDENCE_DIR}")


def frame(table: str, rows: list[dict[str, Any]], run_id: str, step: int | None) -> Any:
    """Rows of a probe as the table's frame, with run_id and step, validated against the table's schema."""
    import polars as pl

    from mldebug_ray import schema

    if not rows:
        return schema.empty(table)
    columns = schema.schema_of(table)
    data = pl.DataFrame([{"run_id": run_id, "step": step, **r} for r in rows], schema={k: columns[k] for k in ("run_id", "step", *rows[0])})
    return schema.validate(table, data)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
