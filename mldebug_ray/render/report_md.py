"""`report.md`: the compact text form of the diagnosis, and the terminal summary."""

from __future__ import annotations

from collections import Counter
from typing import Any

from mldebug_ray.findings import SEVERITIES

MAX_RUNS_LISTED = 200  # beyond this the report lists the worst runs only; diagnosis.json has all


def _worst(entry: dict[str, Any]) -> str:
    sev = [c["severity"] for c in entry["root_causes"]]
    return min(sev, key=SEVERITIES.index) if sev else "none"


def _evidence_line(ev: dict[str, Any]) -> str:
    where = ", ".join(f"{k}={v}" for k, v in ev["where"].items() if k != "run_id")
    value = "" if ev.get("value") is None else f" = {ev['value']:.6g}" if isinstance(ev["value"], float) else f" = {ev['value']}"
    return f"`{ev['table']}[{where}]`{value}" + (f" — {ev['text']}" if ev.get("text") else "")


def render_markdown(diagnosis: dict[str, Any], sweep_name: str) -> str:
    runs = diagnosis["runs"]
    status = Counter(e["status"] for e in runs.values())
    worst = Counter(_worst(e) for e in runs.values())
    kinds = Counter(c["kind"] for e in runs.values() for c in e["root_causes"] if c["severity"] in ("critical", "high", "medium"))
    out = [f"# mldebug_ray report: sweep `{sweep_name}`", ""]
    out.append(f"Diagnosis status: **{diagnosis['status']}** ({diagnosis.get('agent', 'rules')} agent)")
    out.append("")
    out.append(f"- Runs: {len(runs)} — " + ", ".join(f"{k}: {v}" for k, v in sorted(status.items())))
    out.append("- Worst severity per run: " + ", ".join(f"{s}: {worst[s]}" for s in (*SEVERITIES, "none") if worst[s]))
    if kinds:
        out.append("- Top root causes: " + ", ".join(f"{k} ({n} runs)" for k, n in kinds.most_common(8)))
    out.append("")
    if diagnosis["sweep"]["root_causes"]:
        out.append("## Sweep")
        for c in diagnosis["sweep"]["root_causes"]:
            out.append(f"- **{c['kind']}** ({c['severity']}, confidence {c['confidence']:.2f}): {c['issue']}")
        out.append("")
    ranked = sorted(runs.items(), key=lambda kv: ((*SEVERITIES, "none").index(_worst(kv[1])), kv[0]))
    shown = [(rid, e) for rid, e in ranked if e["root_causes"] or e["status"] != "ok"][:MAX_RUNS_LISTED]
    out.append("## Runs with findings")
    out.append("")
    for rid, entry in shown:
        out.append(f"### `{rid}` — {_worst(entry)} (status {entry['status']})")
        if entry.get("reason"):
            out.append(f"Read problems: {entry['reason']}")
        for c in entry["root_causes"]:
            onset = f" from step {c['onset_step']}" if c.get("onset_step") is not None else ""
            out.append(f"- **{c['kind']}** ({c['severity']}, confidence {c['confidence']:.2f}){onset}: {c['issue']}")
            for ev in c["evidence"][:4]:
                out.append(f"  - evidence: {_evidence_line(ev)}")
            if c["fix"]:
                out.append(f"  - fix: {c['fix']}")
            if c["expected_impact"]:
                out.append(f"  - expected impact: {c['expected_impact']}")
            if c["verify_by"]:
                out.append(f"  - verify by: {c['verify_by']}")
        if entry["requests"]:
            out.append("- more data needed: " + " ".join(entry["requests"]))
        out.append("")
    hidden = sum(1 for e in runs.values() if e["root_causes"] or e["status"] != "ok") - len(shown)
    if hidden > 0:
        out.append(f"_{hidden} more runs with findings are in diagnosis.json._")
    healthy = [rid for rid, e in runs.items() if not e["root_causes"] and e["status"] == "ok"]
    out.append(f"## Runs without findings ({len(healthy)})")
    out.append("")
    out.append(", ".join(f"`{r}`" for r in healthy[:MAX_RUNS_LISTED]) + (" ..." if len(healthy) > MAX_RUNS_LISTED else ""))
    out.append("")
    return "\n".join(out)


def terminal_summary(diagnosis: dict[str, Any], max_rows: int = 25) -> str:
    """A fixed-width table of the worst runs, printed at the end of an invocation."""
    rows = []
    for rid, e in diagnosis["runs"].items():
        top = e["root_causes"][0] if e["root_causes"] else None
        rows.append((rid, e["status"], _worst(e), top["kind"] if top else "-", (top["onset_step"] if top and top.get("onset_step") is not None else "")))
    order = (*SEVERITIES, "none")
    rows.sort(key=lambda r: (order.index(r[2]), r[0]))
    width = min(48, max([len("run_id")] + [len(r[0]) for r in rows]))
    lines = [f"{'run_id':<{width}}  {'status':<10}  {'worst':<8}  {'top root cause':<24}  onset"]
    lines.append("-" * len(lines[0]))
    for r in rows[:max_rows]:
        rid = r[0] if len(r[0]) <= width else "…" + r[0][-(width - 1):]
        lines.append(f"{rid:<{width}}  {r[1]:<10}  {r[2]:<8}  {r[3]:<24}  {r[4]}")
    if len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more runs (see report.md)")
    return "\n".join(lines)
