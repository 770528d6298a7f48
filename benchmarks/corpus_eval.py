"""Analyse the whole real-log corpus and score the findings against its labels.

    python benchmarks/corpus_eval.py [--corpus ../shared/corpus] [--out /tmp/corpus_out]

Prints per-sweep recall of expected findings, the share of healthy runs left without a
critical/high finding, forbidden-kind violations, and the wall time; writes
`scores.json` into the output dir.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mldebug_ray
from mldebug_ray.evaluate import load_labels, score

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=HERE.parent.parent / "shared" / "corpus")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mldebug_corpus_out"))
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--verbose", action="store_true", help="list every miss and false alarm")
    args = parser.parse_args()
    labels = load_labels(args.corpus / "labels.json")
    roots = sorted(p for p in args.corpus.iterdir() if p.is_dir())
    t0 = time.perf_counter()
    mldebug_ray.analyze([str(r) for r in roots], out_dir=args.out, overrides={"cluster.num_cpus": args.cpus, "progress": "off"})
    elapsed = time.perf_counter() - t0
    scores = score(args.out, labels)
    print(f"corpus: {len(roots)} sweep roots analysed in {elapsed:.1f}s -> {args.out}")
    print(f"{'sweep':<14} {'recall':>12} {'healthy clean':>15} {'forbid viol.':>13} {'missing':>8}")
    for sweep, s in sorted(scores.items()):
        print(f"{sweep:<14} {s.matched:>4}/{s.expected:<4} {s.recall:5.2f} {s.healthy_clean:>5}/{s.healthy:<4} {s.forbid_violations:>4}/{s.forbid_checked:<4} {s.missing_runs:>8}")
        if args.verbose:
            for line in s.misses + s.false_alarms:
                print("   ", line[:300])
    (args.out / "scores.json").write_text(json.dumps({k: v.to_json() for k, v in scores.items()}, indent=2))


if __name__ == "__main__":
    main()
