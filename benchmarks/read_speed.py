"""Reading speed: the whole corpus through `read_run`, and a generated ~150 MB TensorBoard event file.

    python benchmarks/read_speed.py [--corpus ../shared/corpus] [--tb-mb 150] [--no-corpus] [--no-tb] [--keep DIR]

1. Corpus: every run of every sweep root read with `mldebug_ray.read_run` (the same
   readers as the pipeline, no Ray), one process: runs/s, metric rows/s, MB/s of the
   run files, against reading the same bytes with plain `open().read()` (the I/O floor).
2. TensorBoard: an event file of `--tb-mb` MB of one-scalar events (8 tags, ~2.8M
   scalars at 150 MB), written here record by record as TensorFlow's writer frames them
   (u64 length, masked CRC-32C of the length, Event protobuf, masked CRC-32C of the
   data; CRCs computed vectorised with numpy), decoded by our reader with CRC checking
   off and on, against plain `open().read()` in the same process on the same file. CPU
   seconds are printed next to wall seconds (the machine may be shared). The comparison
   with TensorBoard's EventAccumulator and tbparse on a whole 100 MB+ file written by
   the real writer is benchmarks/tb_speed.py.
"""

from __future__ import annotations

import argparse
import os
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TAGS = [f"train/loss_{i}" for i in range(8)]
FIRST_STEP = 1 << 21  # steps in [2^21, 2^28) all encode as 4-byte varints: fixed-size records


# --------------------------------------------------------------------------- corpus


def corpus_speed(corpus: Path) -> None:
    from mldebug_ray.api import read_run
    from mldebug_ray.discover import discover
    from mldebug_ray.readers import READERS

    roots = sorted(p for p in corpus.iterdir() if p.is_dir())
    runs = [(root.name, Path(r.path)) for root in roots for r in discover([str(root)])]
    files: set[Path] = set()
    for _, run_dir in runs:
        for reader in READERS.values():
            files.update(reader.detect(run_dir))
    total_bytes = sum(p.stat().st_size for p in files)
    t0 = time.perf_counter()
    for path in files:
        with open(path, "rb") as handle:
            handle.read()
    io_s = time.perf_counter() - t0
    rows = 0
    statuses: dict[str, int] = {}
    per_sweep: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for sweep, run_dir in runs:
        started = time.perf_counter()
        read = read_run(run_dir)
        per_sweep[sweep] = per_sweep.get(sweep, 0.0) + time.perf_counter() - started
        rows += read.metrics.height
        statuses[read.status] = statuses.get(read.status, 0) + 1
    read_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    mb = total_bytes / 1e6
    print(f"corpus {corpus}: {len(runs)} runs, {len(files)} files, {mb:.1f} MB, {rows:,} metric rows, status {statuses}")
    print(f"  read_run:      {read_s:7.2f} s  {len(runs) / read_s:7.1f} runs/s  {rows / read_s:12,.0f} rows/s  {mb / read_s:7.1f} MB/s"
          f"  (CPU {cpu_s:.2f} s)")
    print(f"  open().read(): {io_s:7.2f} s  {mb / io_s:7.1f} MB/s   (read_run is {read_s / io_s:.0f}x the raw I/O time)")
    print("  per sweep: " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(per_sweep.items())))


# --------------------------------------------------------------------------- TensorBoard file


def _crc32c_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table[i] = crc
    return table


_TABLE = _crc32c_table()


def masked_crc32c_rows(rows: np.ndarray) -> np.ndarray:
    """Masked CRC-32C (TFRecord's) of every row of a uint8 matrix, one numpy pass per byte column."""
    crc = np.full(rows.shape[0], 0xFFFFFFFF, dtype=np.uint32)
    for j in range(rows.shape[1]):
        crc = _TABLE[(crc ^ rows[:, j]) & 0xFF] ^ (crc >> 8)
    crc ^= np.uint32(0xFFFFFFFF)
    return (((crc >> 15) | (crc << 17)) + np.uint32(0xA282EAD8)).astype(np.uint32)


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    crc_len = masked_crc32c_rows(np.frombuffer(length, dtype=np.uint8)[None, :])[0]
    crc_data = masked_crc32c_rows(np.frombuffer(data, dtype=np.uint8)[None, :])[0]
    return length + struct.pack("<I", crc_len) + data + struct.pack("<I", crc_data)


def write_event_file(path: Path, target_mb: float) -> tuple[int, int]:
    """A TFRecord event file of one-scalar events (simple_value) of about `target_mb` MB.

    Returns (scalar count, bytes of the leading file_version record); every scalar
    record after it has the same size.
    """
    header = b"\x09" + struct.pack("<d", 1.7e9) + b"\x1a" + bytes([len(b"brain.Event:2")]) + b"brain.Event:2"
    tag_len = len(TAGS[0])
    value_len = 2 + tag_len + 5
    event_len = 9 + 5 + 2 + 2 + value_len
    record_len = 8 + 4 + event_len + 4
    n = int(target_mb * 1e6 // record_len)
    i = np.arange(n, dtype=np.int64)
    steps = FIRST_STEP + i // len(TAGS)
    ev = np.zeros((n, event_len), dtype=np.uint8)
    ev[:, 0] = 0x09
    ev[:, 1:9] = (1.7e9 + steps.astype(np.float64) * 0.01).view(np.uint8).reshape(n, 8)
    ev[:, 9] = 0x10
    for k in range(4):
        ev[:, 10 + k] = ((steps >> (7 * k)) & 0x7F) | (0x80 if k < 3 else 0)
    ev[:, 14] = 0x2A
    ev[:, 15] = 2 + value_len
    ev[:, 16] = 0x0A
    ev[:, 17] = value_len
    ev[:, 18] = 0x0A
    ev[:, 19] = tag_len
    tags = np.frombuffer(b"".join(t.encode() for t in TAGS), dtype=np.uint8).reshape(len(TAGS), tag_len)
    ev[:, 20 : 20 + tag_len] = tags[i % len(TAGS)]
    ev[:, 20 + tag_len] = 0x15
    values = (2.0 + np.sin(i / 1000.0) + (i % len(TAGS))).astype(np.float32)
    ev[:, 21 + tag_len : 25 + tag_len] = values.view(np.uint8).reshape(n, 4)
    rec = np.zeros((n, record_len), dtype=np.uint8)
    length = struct.pack("<Q", event_len)
    rec[:, 0:8] = np.frombuffer(length, dtype=np.uint8)
    rec[:, 8:12] = np.frombuffer(struct.pack("<I", masked_crc32c_rows(np.frombuffer(length, dtype=np.uint8)[None, :])[0]), dtype=np.uint8)
    rec[:, 12 : 12 + event_len] = ev
    rec[:, 12 + event_len :] = masked_crc32c_rows(ev).view(np.uint8).reshape(n, 4)
    first = _record(header)
    with open(path, "wb") as handle:
        handle.write(first)
        handle.write(rec.tobytes())
    return n, len(first)


def _timed(fn, repeat: int = 1):
    """(best wall seconds of `repeat` calls, the last result); also records the CPU seconds of that call."""
    global LAST_CPU_S
    best = None
    out = None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        if best is None or elapsed < best:
            best, LAST_CPU_S = elapsed, cpu
    return best, out


LAST_CPU_S = 0.0


def tensorboard_speed(tb_mb: float, keep: Path | None) -> None:
    from mldebug_ray.readers.tensorboard import read_event_file

    folder = keep or Path(tempfile.mkdtemp(prefix="tb_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "events.out.tfevents.1700000000.bench"
    t0 = time.perf_counter()
    n, header_bytes = write_event_file(path, tb_mb)
    mb = path.stat().st_size / 1e6
    print(f"\nTensorBoard: {path} {mb:.1f} MB, {n:,} scalars (written in {time.perf_counter() - t0:.1f} s)")
    io_s, _ = _timed(lambda: path.read_bytes(), repeat=3)
    off_s, (frame_off, problems_off, _) = _timed(lambda: read_event_file(path, check_crc=False), repeat=3)
    off_cpu = LAST_CPU_S
    on_s, (frame_on, problems_on, _) = _timed(lambda: read_event_file(path, check_crc=True), repeat=2)
    on_cpu = LAST_CPU_S
    print(f"  open().read():            {io_s:7.2f} s  {mb / io_s:8.1f} MB/s")
    print(f"  ours, CRC off:            {off_s:7.2f} s  {mb / off_s:8.1f} MB/s  {frame_off.height:,} scalars  (CPU {off_cpu:.2f} s) {problems_off or ''}")
    print(f"  ours, CRC on:             {on_s:7.2f} s  {mb / on_s:8.1f} MB/s  {frame_on.height:,} scalars  (CPU {on_cpu:.2f} s) {problems_on or ''}")
    print(f"  ratios: CRC off = {off_s / io_s:.1f}x raw I/O time, CRC on = {on_s / off_s:.2f}x CRC off")
    if keep is None:
        os.unlink(path)
        os.rmdir(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=HERE.parent.parent / "shared" / "corpus")
    parser.add_argument("--tb-mb", type=float, default=150.0, help="size of the generated event file (MB)")
    parser.add_argument("--no-corpus", action="store_true")
    parser.add_argument("--no-tb", action="store_true", help="skip the generated event file")
    parser.add_argument("--keep", type=Path, default=None, help="write the event file here and keep it")
    args = parser.parse_args()
    if not args.no_corpus:
        corpus_speed(args.corpus)
    if not args.no_tb:
        tensorboard_speed(args.tb_mb, args.keep)


if __name__ == "__main__":
    main()
