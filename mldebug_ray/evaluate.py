"""Score an analysis against labelled expectations (the corpus's labels.json format).

Label format (shared/corpus/README.md): cases[] = {sweep, run_id, expect: [{kind: [...],
onset_step: [lo, hi]}], forbid: [kinds not allowed at critical/high], healthy: bool}.
The analysed run id is `<sweep>/<run_id>` when several sweep roots were analysed together.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mldebug_ray.evidence.io import scan_table

SERIOUS = ("critical", "high")


@dataclass
class Score:
    expected: int = 0
    matched: int = 0
    healthy: int = 0
    healthy_clean: int = 0
    forbid_checked: int = 0
    forbid_violations: int = 0
    missing_runs: int = 0
    misses: list[str] = field(default_factory=list)
    false_alarms: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.matched / self.expected if self.expected else float("nan")

    @property
    def healthy_precision(self) -> float:
        return self.healthy_clean / self.healthy if self.healthy else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "matched": self.matched,
            "recall": round(self.recall, 3),
            "healthy": self.healthy,
            "healthy_clean": self.healthy_clean,
            "healthy_precision": round(self.healthy_precision, 3),
            "forbid_checked": self.forbid_checked,
            "forbid_violations": self.forbid_violations,
            "missing_runs": self.missing_runs,
            "misses": self.misses,
            "false_alarms": self.false_alarms,
        }


def _matches(f: dict[str, Any], expect: dict[str, Any]) -> bool:
    if f["kind"] not in expect["kind"]:
        return False
    if "onset_step" in expect and expect["onset_step"]:
        lo, hi = expect["onset_step"]
        return f["onset_step"] is not None and lo <= f["onset_step"] <= hi
    return True


def score(out_dir: Path, labels: dict[str, Any], *, prefix_with_sweep: bool = True) -> dict[str, Score]:
    """Per-sweep scores of the findings under `out_dir` against `labels`."""
    findings = scan_table(out_dir, "findings").select("run_id", "kind", "severity", "onset_step", "summary").collect()
    runs = set(scan_table(out_dir, "runs").select("run_id").collect()["run_id"].to_list())
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in findings.iter_rows(named=True):
        by_run[row["run_id"]].append(row)
    scores: dict[str, Score] = defaultdict(Score)
    for case in labels["cases"]:
        rid = f"{case['sweep']}/{case['run_id']}" if prefix_with_sweep else case["run_id"]
        s = scores[case["sweep"]]
        if rid not in runs:
            s.missing_runs += 1
        got = by_run.get(rid, [])
        for expect in case.get("expect", []):
            s.expected += 1
            if any(_matches(f, expect) for f in got):
                s.matched += 1
            else:
                s.misses.append(f"{rid}: expected {expect}, got {[(f['kind'], f['severity'], f['onset_step']) for f in got]}")
        serious = [f for f in got if f["severity"] in SERIOUS]
        if case.get("healthy"):
            s.healthy += 1
            if serious:
                s.false_alarms.append(f"{rid}: healthy but {[(f['kind'], f['severity'], f['onset_step']) for f in serious]}")
            else:
                s.healthy_clean += 1
        if case.get("forbid"):
            s.forbid_checked += 1
            bad = [f for f in serious if f["kind"] in case["forbid"]]
            if bad:
                s.forbid_violations += 1
                s.false_alarms.append(f"{rid}: forbidden {[(f['kind'], f['severity'], f['onset_step']) for f in bad]}")
    return dict(scores)


def load_labels(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def findings_frame_for(out_dir: Path, run_id: str) -> pl.DataFrame:
    return scan_table(out_dir, "findings").filter(pl.col("run_id") == run_id).collect()
