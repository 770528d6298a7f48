"""Leakage detection speed: the data probe on two splits of N examples each (train, val), with planted duplicates.

    python benchmarks/leakage_speed.py [--n 1000000] [--kinds numeric,text] [--batch 8192] [--planted 1000] [--threads 1]

Per kind, in a fresh child process (so its peak RSS is its own):
- numeric: examples of 16 float32 values (standard normal); text: 12 words drawn from a
  50,000-word vocabulary (about 80 bytes per text);
- val holds `--planted` exact copies of train examples and as many near copies (numeric:
  the train vector plus noise at 1% of its spread, cosine about 0.9999; text: the train text
  with one word appended, 10 of its 11 3-word shingles shared, Jaccard 0.91);
- `data_tables` (probes/data.py) streams train, builds the index, streams val against it:
  exact hashes, near-duplicate signatures and LSH lookups, labels, fingerprints, feature
  samples, PSI and KS.

Reported: `probe s`, the wall seconds of `data_tables` less `gen s`, the seconds a pass of
the same generators takes with no probe; CPU seconds of `data_tables` (generation
included); examples (both splits) per probe second; the child's peak RSS and its RSS
before the probe (imports, one generator pass); the planted copies found among the listed
matches (recall) and matches that are not planted copies (false).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VOCAB = 50_000
TEXT_WORDS = 12
DIM = 16


def numeric_splits(n: int, batch: int, planted: int):
    import torch

    def train():
        g = torch.Generator().manual_seed(1)
        for i in range(0, n, batch):
            m = min(batch, n - i)
            yield {"x": torch.randn(m, DIM, generator=g), "y": torch.randint(0, 10, (m,), generator=g)}

    def val():
        g = torch.Generator().manual_seed(2)
        # The planted copies: train rows 0..planted-1 (exact) and planted..2*planted-1 (near) sit in train's first batches.
        src = torch.cat([b["x"] for b, _ in zip(train(), range(-(-2 * planted // batch)))])[: 2 * planted]
        noise = torch.Generator().manual_seed(3)
        for i in range(0, n, batch):
            m = min(batch, n - i)
            x = torch.randn(m, DIM, generator=g)
            y = torch.randint(0, 10, (m,), generator=g)
            for j in range(m):
                k = i + j
                if k < 2 * planted:
                    x[j] = src[k] if k < planted else src[k] + 0.01 * torch.randn(DIM, generator=noise)
            yield {"x": x, "y": y}

    return {"train": train, "val": val}


def text_splits(n: int, batch: int, planted: int):
    import numpy as np

    words = np.array([f"w{i}" for i in range(VOCAB)])

    def texts(seed: int, start: int, m: int) -> list[str]:
        rng = np.random.default_rng([seed, start])
        return [" ".join(row) for row in words[rng.integers(0, VOCAB, size=(m, TEXT_WORDS))].tolist()]

    def train():
        for i in range(0, n, batch):
            m = min(batch, n - i)
            yield {"x": texts(1, i, m), "y": list(np.random.default_rng([9, i]).integers(0, 10, m))}

    def val():
        src = [t for b in train() for t in b["x"]][: 2 * planted] if planted else []
        for i in range(0, n, batch):
            m = min(batch, n - i)
            x = texts(2, i, m)
            for j in range(m):
                k = i + j
                if k < 2 * planted:
                    x[j] = src[k] if k < planted else src[k] + " extra"
            yield {"x": x, "y": list(np.random.default_rng([8, i]).integers(0, 10, m))}

    return {"train": train, "val": val}


def child(kind: str, n: int, batch: int, planted: int, threads: int) -> dict:
    import polars as pl
    import torch

    from mldebug_ray.probes.data import DataProbeConfig, data_tables

    torch.set_num_threads(threads)
    splits = (numeric_splits if kind == "numeric" else text_splits)(n, batch, planted)
    started = time.perf_counter()
    for split in splits.values():  # the generators alone: their cost is not the probe's
        for _ in split():
            pass
    gen_s = time.perf_counter() - started
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    problems: list[str] = []
    tables = data_tables("bench", splits, DataProbeConfig(max_ids=2 * planted), problems)
    wall = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    found = {r["kind"]: r for r in tables["data_overlap"].iter_rows(named=True)}

    def recall(kind_: str, first: int) -> tuple[int, int]:
        """(planted copies found, other matches) of one overlap kind."""
        row = found.get(kind_)
        if row is None:
            return 0, 0
        hits = len(set(row["example_ids_b"]) & {f"val:{k}" for k in range(first, first + planted)})
        return hits, row["n_examples_b"] - hits

    exact_found, exact_false = recall("exact", 0)
    near_found, near_false = recall("near", planted)
    return {
        "kind": kind, "n_per_split": n, "batch": batch, "wall_s": wall,
        "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "generate_s": gen_s, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_before_bytes": rss_before, "planted": planted, "exact_found": exact_found, "exact_false": exact_false,
        "near_found": near_found, "near_false": near_false,
        "near_similarity_min": (found.get("near") or {}).get("similarity_min"), "problems": problems,
        "fingerprints": tables["data_splits"].select(pl.col("fingerprint")).to_series().to_list(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--kinds", default="numeric,text")
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--planted", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.batch, args.planted, args.threads)))
        return
    results = []
    for kind in args.kinds.split(","):
        cmd = [sys.executable, __file__, "--child", kind, "--n", str(args.n), "--batch", str(args.batch),
               "--planted", str(args.planted), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{'kind':8} {'n/split':>9} {'probe s':>8} {'cpu s':>7} {'gen s':>6} {'ex/s':>9} {'peak RSS MB':>12} {'before MB':>10} "
          f"{'exact found':>12} {'false':>6} {'near found':>11} {'false':>6}")
    for r in results:
        probe_s = max(1e-9, r["wall_s"] - r["generate_s"])
        print(f"{r['kind']:8} {r['n_per_split']:>9,} {probe_s:>8.1f} {r['cpu_s']:>7.1f} {r['generate_s']:>6.1f} "
              f"{2 * r['n_per_split'] / probe_s:>9,.0f} {r['peak_rss_bytes'] / 2**20:>12,.0f} {r['rss_before_bytes'] / 2**20:>10,.0f} "
              f"{r['exact_found']:>5}/{r['planted']:<6} {r['exact_false']:>6} {r['near_found']:>5}/{r['planted']:<5} {r['near_false']:>6}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
