"""Event-file reading: our decoder against TensorBoard's EventAccumulator and tbparse, same process, same file.

    python benchmarks/tb_speed.py [--scalars 2100000] [--tags 8] [--keep DIR | --file PATH]
                                  [--no-accumulator] [--no-tbparse]

1. The file: `--scalars` one-scalar events (old-style `simple_value`, `--tags` tags
   round-robin, steps 0.., float32 values from a seeded generator) written by the real
   writer, `torch.utils.tensorboard.SummaryWriter.add_scalar` (needs the `tensorboard`
   package). 2.1M scalars make a ~108 MB file (~51 bytes a record). `--file` reuses a
   file written before with `--keep` (its expected values are regenerated from the seed).
2. Timed on the WHOLE file, one process, page cache warm (the file was just written and
   read once): plain `open().read()` (the I/O floor); ours (`read_event_file`, CRC off
   and on, best of 3); TensorBoard's `EventAccumulator` with
   `size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE` (every tag type 0 = keep every point;
   the default reservoir-samples scalars to 10,000, FIELD-NOTES) then `Reload()`, once;
   `tbparse.SummaryReader(file).scalars` (it builds an EventAccumulator storing
   everything, then a pandas frame), once.
3. Checked, not only timed: every reader must return exactly `--scalars` points, and
   the (tag, step, value) of every point must equal what was written (float32 values,
   compared exactly after widening to float64); a mismatch exits 1.

CPU seconds are printed next to wall seconds: this machine is shared, so trust a ratio
where the two agree. Needs the `bench` extra (`pip install -e .[bench]`) for the two
baselines; without them it says so and times ours only.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEED = 20260525


def expected(n: int, n_tags: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(tags, tag index, step, float32 value) of the n scalars, in write order."""
    tags = [f"train/loss_{i}" for i in range(n_tags)]
    i = np.arange(n, dtype=np.int64)
    values = np.random.default_rng(SEED).standard_normal(n).astype(np.float32) + 2.0
    return tags, i % n_tags, i // n_tags, values


def write_with_summary_writer(folder: Path, n: int, n_tags: int) -> Path:
    """The event file as the real writer frames it; returns its path."""
    from torch.utils.tensorboard import SummaryWriter

    tags, tag_of, steps, values = expected(n, n_tags)
    writer = SummaryWriter(str(folder), max_queue=100_000, flush_secs=3600)
    add = writer.add_scalar
    for tag_index, step, value in zip(tag_of.tolist(), steps.tolist(), values.tolist()):
        add(tags[tag_index], value, step)
    writer.close()
    (path,) = folder.glob("events.out.tfevents.*")
    return path


def timed(fn, repeat: int = 1) -> tuple[float, float, object]:
    """(best wall s, CPU s of that call, result of the last call)."""
    best = cpu_best = None
    out = None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if best is None or wall < best:
            best, cpu_best = wall, cpu
    return best, cpu_best, out


def check(name: str, tags: list[str], tag_of: np.ndarray, steps: np.ndarray, values: np.ndarray, got: dict) -> bool:
    """Whether `got` (tag -> (steps, values) in step order) holds exactly the written points."""
    total = sum(len(s) for s, _ in got.values())
    ok = total == len(values) and set(got) == set(tags)
    for k, tag in enumerate(tags):
        if not ok:
            break
        mask = tag_of == k
        got_steps, got_values = got[tag]
        ok = (
            len(got_steps) == int(mask.sum())
            and np.array_equal(np.asarray(got_steps, dtype=np.int64), steps[mask])
            and np.array_equal(np.asarray(got_values, dtype=np.float64), values[mask].astype(np.float64))
        )
    print(f"    {name}: {total:,} points, every (tag, step, value) as written: {ok}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scalars", type=int, default=2_100_000)
    parser.add_argument("--tags", type=int, default=8)
    parser.add_argument("--keep", type=Path, default=None, help="write the event file into this folder and keep it")
    parser.add_argument("--file", type=Path, default=None, help="an event file written before with the same --scalars/--tags")
    parser.add_argument("--no-accumulator", action="store_true", help="skip EventAccumulator")
    parser.add_argument("--no-tbparse", action="store_true", help="skip tbparse")
    args = parser.parse_args()

    import polars as pl

    from mldebug_ray.readers.tensorboard import read_event_file

    tags, tag_of, steps, values = expected(args.scalars, args.tags)
    scratch = None
    if args.file:
        path = args.file
        print(f"event file: {path} (given; written earlier by SummaryWriter with these settings)")
    else:
        try:
            import tensorboard  # noqa: F401  (SummaryWriter needs it)
        except ImportError:
            print("tensorboard is not installed: cannot write the file with SummaryWriter; pip install -e .[bench]")
            return 2
        folder = args.keep or Path(tempfile.mkdtemp(prefix="tb_speed_"))
        scratch = None if args.keep else folder
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        path = write_with_summary_writer(folder, args.scalars, args.tags)
        print(f"event file: {path}, written by torch.utils.tensorboard.SummaryWriter in {time.perf_counter() - t0:.0f} s")
    mb = path.stat().st_size / 1e6
    print(f"  {mb:.1f} MB, {args.scalars:,} scalars, {args.tags} tags")
    all_ok = True
    try:
        rows = []
        io_s, io_cpu, _ = timed(path.read_bytes, repeat=3)
        rows.append(("open().read()", io_s, io_cpu, None))
        off_s, off_cpu, (frame, problems, _) = timed(lambda: read_event_file(path, check_crc=False), repeat=3)
        rows.append(("ours, CRC off", off_s, off_cpu, frame.height))
        on_s, on_cpu, (frame_on, problems_on, _) = timed(lambda: read_event_file(path, check_crc=True), repeat=3)
        rows.append(("ours, CRC on", on_s, on_cpu, frame_on.height))
        if problems or problems_on:
            print(f"  ours reported problems: {problems or problems_on}")
            all_ok = False
        print("  checks:")
        for name, f in (("ours, CRC off", frame), ("ours, CRC on", frame_on)):
            parts = f.sort(["key", "step"], maintain_order=True).partition_by("key", as_dict=True)
            got = {key[0]: (p["step"].to_numpy(), p["value"].to_numpy()) for key, p in parts.items()}
            all_ok &= check(name, tags, tag_of, steps, values, got)
        del frame, frame_on

        try:
            from tensorboard.backend.event_processing.event_accumulator import (
                STORE_EVERYTHING_SIZE_GUIDANCE,
                EventAccumulator,
            )
        except ImportError:
            EventAccumulator = None
            print("  EventAccumulator skipped: the tensorboard package is not installed (pip install -e .[bench])")
        if EventAccumulator is not None and not args.no_accumulator:

            def accumulate():
                acc = EventAccumulator(str(path), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
                acc.Reload()
                return acc

            ea_s, ea_cpu, acc = timed(accumulate)
            got = {}
            for tag in acc.Tags()["scalars"]:
                events = acc.Scalars(tag)
                got[tag] = ([e.step for e in events], [e.value for e in events])
            n_ea = sum(len(s) for s, _ in got.values())
            rows.append(("EventAccumulator (keep all)", ea_s, ea_cpu, n_ea))
            all_ok &= check("EventAccumulator", tags, tag_of, steps, values, got)
            del acc, got

        try:
            from tbparse import SummaryReader
        except ImportError:
            SummaryReader = None
            print("  tbparse skipped: the tbparse package is not installed (pip install -e .[bench])")
        if SummaryReader is not None and not args.no_tbparse:
            tb_s, tb_cpu, scalars = timed(lambda: SummaryReader(str(path)).scalars)
            rows.append(("tbparse SummaryReader.scalars", tb_s, tb_cpu, len(scalars)))
            sp = pl.from_pandas(scalars[["tag", "step", "value"]]).sort(["tag", "step"], maintain_order=True)
            got = {key[0]: (p["step"].to_numpy(), p["value"].to_numpy()) for key, p in sp.partition_by("tag", as_dict=True).items()}
            all_ok &= check("tbparse", tags, tag_of, steps, values, got)
            del scalars, sp, got

        print("\n  ratios: the baseline's seconds over ours (CRC off / CRC on), in wall and in CPU seconds")
        print(f"  {'reader':32s} {'wall s':>8s} {'CPU s':>8s} {'MB/s':>9s} {'points':>11s} {'wall ratio':>14s} {'CPU ratio':>14s}")
        for name, wall, cpu, n in rows:
            baseline = name.startswith(("Event", "tbparse"))
            wall_ratio = f"{wall / off_s:.1f}x/{wall / on_s:.1f}x" if baseline else ""
            cpu_ratio = f"{cpu / off_cpu:.1f}x/{cpu / on_cpu:.1f}x" if baseline else ""
            points = f"{n:,}" if n is not None else ""
            print(f"  {name:32s} {wall:8.2f} {cpu:8.2f} {mb / wall:9.1f} {points:>11s} {wall_ratio:>14s} {cpu_ratio:>14s}")
        print(f"\n  every reader returned every point as written: {all_ok}")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
