"""Analyse the whole real-log corpus and score the findings against its labels.

    python benchmarks/corpus_eval.py [--corpus ../shared/corpus] [--out /tmp/corpus_out] [--markdown FILE]

Prints per-sweep recall of expected findings, the share of healthy runs left without a
critical/high finding, forbidden-kind violations, and the wall time; then a table per
finding kind (recall, precision, healthy false-alarm rate); writes `scores.json` into the
output dir and, with --markdown, the per-kind table as Markdown.

Scoring rules (issue 4): an `expect` is met when a finding of one of its accepted kinds has
its onset in the expected range; a `healthy` run must have no critical/high finding; a
`forbid` kind must not appear at critical/high on that run. Per kind K:

- recall: expects that accept K and are met (by any accepted kind, the labels' own rule),
  over the expects that accept K; `met by K` counts those met by a K finding itself.
- true positive: a K finding (any severity) that meets an expect accepting K on its run.
- false positive: a critical/high K finding on a healthy run, or on a run that forbids K.
  Severity matters here because the labels only judge critical/high findings: a healthy
  run may carry a `low` note (an isolated grad-norm blip) without being wrong.
- precision: TP / (TP + FP).
- off range: K findings on a run that expects K but with the onset outside every range
  (a second real spike the labels did not list, or a wrong onset): shown, not counted.
- unlabelled: K findings on runs whose labels say nothing about K (neither expect, forbid,
  nor healthy), split into critical/high and lower: shown, not counted.
- lower on healthy/forbid: medium/low K findings on healthy runs or runs forbidding K
  (allowed by the labels): shown, not counted.
- healthy FA rate: share of healthy runs carrying a critical/high K finding.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import polars as pl

import mldebug_ray
from mldebug_ray.evaluate import SERIOUS, load_labels, score
from mldebug_ray.evidence.io import scan_table

HERE = Path(__file__).resolve().parent


@dataclass
class KindScore:
    expects: int = 0
    met: int = 0
    met_by_kind: int = 0
    tp: int = 0
    fp_healthy: int = 0
    fp_forbidden: int = 0
    off_range: int = 0
    unlabelled_serious: int = 0
    unlabelled_minor: int = 0
    allowed_minor: int = 0
    healthy_runs_alarmed: int = 0

    @property
    def fp(self) -> int:
        return self.fp_healthy + self.fp_forbidden

    @property
    def recall(self) -> float | None:
        return self.met / self.expects if self.expects else None

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None


def _in_range(onset, expect: dict) -> bool:
    if not expect.get("onset_step"):
        return True
    lo, hi = expect["onset_step"]
    return onset is not None and lo <= onset <= hi


def score_by_kind(findings: pl.DataFrame, labels: dict) -> tuple[dict[str, KindScore], int]:
    """Per-kind scores of run-scope `findings` [run_id, kind, severity, onset_step] against `labels`.

    Returns ({kind: KindScore}, number of healthy runs). Run ids are `<sweep>/<run_id>`.
    """
    by_run: dict[str, list[dict]] = defaultdict(list)
    for row in findings.iter_rows(named=True):
        if row["run_id"] is not None:
            by_run[row["run_id"]].append(row)
    scores: dict[str, KindScore] = defaultdict(KindScore)
    labelled: set[str] = set()
    n_healthy = 0
    for case in labels["cases"]:
        rid = f"{case['sweep']}/{case['run_id']}"
        labelled.add(rid)
        got = by_run.get(rid, [])
        expects = case.get("expect", [])
        forbid = set(case.get("forbid", []))
        healthy = bool(case.get("healthy"))
        n_healthy += healthy
        for expect in expects:
            met_kinds = {f["kind"] for f in got if f["kind"] in expect["kind"] and _in_range(f["onset_step"], expect)}
            for kind in expect["kind"]:
                s = scores[kind]
                s.expects += 1
                s.met += bool(met_kinds)
                s.met_by_kind += kind in met_kinds
        expected_kinds = {k for e in expects for k in e["kind"]}
        for f in got:
            s = scores[f["kind"]]
            serious = f["severity"] in SERIOUS
            if any(f["kind"] in e["kind"] and _in_range(f["onset_step"], e) for e in expects):
                s.tp += 1
            elif serious and healthy:
                s.fp_healthy += 1
            elif serious and f["kind"] in forbid:
                s.fp_forbidden += 1
            elif f["kind"] in expected_kinds:
                s.off_range += 1
            elif f["kind"] not in forbid and not healthy:
                if serious:
                    s.unlabelled_serious += 1
                else:
                    s.unlabelled_minor += 1
            else:
                s.allowed_minor += 1  # medium/low on a healthy run or of a forbidden kind: allowed
        if healthy:
            for kind in {f["kind"] for f in got if f["severity"] in SERIOUS}:
                scores[kind].healthy_runs_alarmed += 1
    # Findings on runs the labels do not list at all are unlabelled too.
    for rid, got in by_run.items():
        if rid in labelled:
            continue
        for f in got:
            if f["severity"] in SERIOUS:
                scores[f["kind"]].unlabelled_serious += 1
            else:
                scores[f["kind"]].unlabelled_minor += 1
    return dict(scores), n_healthy


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def kind_table(scores: dict[str, KindScore], n_healthy: int) -> str:
    """The per-kind scores as a Markdown table, kinds with labels first."""
    head = (
        "| kind | expects | met | met by kind | recall | TP | FP healthy | FP forbidden | precision "
        "| healthy FA rate | off range | unlabelled crit/high | unlabelled lower | lower on healthy/forbid |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    order = sorted(scores, key=lambda k: (-scores[k].expects, -(scores[k].tp + scores[k].fp), k))
    lines = []
    for kind in order:
        s = scores[kind]
        fa = s.healthy_runs_alarmed / n_healthy if n_healthy else None
        lines.append(
            f"| {kind} | {s.expects} | {s.met} | {s.met_by_kind} | {_pct(s.recall)} | {s.tp} | {s.fp_healthy} "
            f"| {s.fp_forbidden} | {_pct(s.precision)} | {_pct(fa)} | {s.off_range} | {s.unlabelled_serious} "
            f"| {s.unlabelled_minor} | {s.allowed_minor} |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=HERE.parent.parent / "shared" / "corpus")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mldebug_corpus_out"))
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--markdown", type=Path, help="also write the per-kind table as Markdown here")
    parser.add_argument("--score-only", action="store_true", help="score the findings already under --out")
    parser.add_argument("--verbose", action="store_true", help="list every miss and false alarm")
    args = parser.parse_args()
    labels = load_labels(args.corpus / "labels.json")
    roots = sorted(p for p in args.corpus.iterdir() if p.is_dir())
    t0 = time.perf_counter()
    if not args.score_only:
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
    findings = scan_table(args.out, "findings").filter(pl.col("scope") == "run").select("run_id", "kind", "severity", "onset_step").collect()
    by_kind, n_healthy = score_by_kind(findings, labels)
    table = kind_table(by_kind, n_healthy)
    print(f"\nper kind ({findings.height} run-scope findings, {n_healthy} healthy runs):\n")
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    (args.out / "scores.json").write_text(
        json.dumps(
            {
                "sweeps": {k: v.to_json() for k, v in scores.items()},
                "kinds": {k: {**vars(v), "recall": v.recall, "precision": v.precision} for k, v in by_kind.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
