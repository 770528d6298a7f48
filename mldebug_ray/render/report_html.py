"""`report.html`: one self-contained page (no CDN, no external file) with the sweep overview, run panels and plots.

Plotting choice: inline SVG written by this package (render/svg.py), not a JavaScript
charting library and not matplotlib.

- Offline by construction: the page has no <script src> or <link href> to fetch; an SVG
  chart is markup, so it renders even with JavaScript off, prints, and shows up in a
  headless screenshot without waiting for a script to draw.
- Size: a downsampled curve (render/downsample.py, at most HtmlConfig.max_points points)
  is a few KB of path text; a heatmap is one PNG of layers x columns pixels. A vendored
  uPlot (~50 KB minified, MIT) would be small too, but it would still need our data
  serialised as JSON next to it, an npm fetch at build time, and a copy of a third-party
  library to keep patched inside the wheel. matplotlib (plus pillow, fonttools, kiwisolver:
  tens of MB installed) would be a heavy dependency of every install for what is a few
  hundred lines of SVG here, and its PNGs are larger than the equivalent SVG and not
  searchable or diffable.
- What we give up: zooming and pan. Native `<title>` tooltips show exact values, and every
  finding's span links to its root cause (and back), which is the interaction that matters
  for debugging.

The page stays bounded for any sweep size: full panels only for the HtmlConfig.max_run_panels
worst runs, every run as one row of a table that JavaScript pages through (50 rows in the
DOM at a time; the rows themselves are a compact JSON array, ~100 bytes per run), a
severity/kind/text filter over both, and curves downsampled in the query that reads them.
The data, confusion, robustness and deployment panels (render/probe_panels.py) are capped
by HtmlConfig too (classes, features, example ids, checkpoints per run).
Measured on a 2-core box: the 23-run demo (with its probe and data tables) gives ~910 KB in
about 1 s, ~160 KB of it the probe panels (reading them: 0.1-0.3 s); 10,000 runs with
findings 765 KB in 0.4-1.2 s; 10,000 runs with metric parts and a parameter grid 1.2 MB in 3.5 s.
Renderers only read: this module formats what render/report_data.py reads.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from html import escape
from pathlib import Path
from typing import Any

from mldebug_ray import paths
from mldebug_ray.evidence.io import atomic_write_bytes
from mldebug_ray.findings import KINDS
from mldebug_ray.render import svg
from mldebug_ray.render.assets import CSS, JS
from mldebug_ray.render.guides import GUIDE_PATH_TEMPLATE, guide_html
from mldebug_ray.render.probe_panels import available_probe_panels, probe_panels
from mldebug_ray.render.probe_views import ProbeView, load_probe_views
from mldebug_ray.render.report_data import (
    CURVE_PANELS,
    SEVERITY_ORDER,
    HpPanel,
    HtmlConfig,
    RunView,
    anchor,
    load_run_views,
    load_sweep_panels,
    rank_runs,
    worst_severity,
)

log = logging.getLogger(__name__)

PANEL_IDS = ("overview", "sweep", "runs", "all-runs", "guides")  # the page's top-level sections, in order
MAX_MARKS_PER_RUN = 9
MAX_TABLE_ISSUE_CHARS = 110
# A root cause's evidence table -> the chart that shows it.
TABLE_PANEL = {
    "layers": "params", "gradients": "heatmap", "memory": "memory", "precision": "precision",
    "data_labels": "labels", "data_splits": "splits", "data_overlap": "overlap", "data_features": "shift",
    "confusion": "confusion", "robustness": "robustness", "deployment": "deployment",
}
# A root cause's kind -> the chart that shows it. A probe panel of the kind wins over the cited
# tables' charts (class_imbalance cites data_splits before data_labels; its chart is the label shares).
KIND_PANEL = {
    "architecture_imbalance": "params", "vanishing_gradients": "heatmap", "exploding_gradients": "heatmap",
    "grad_norm_spike": "grad_norm", "loss_scale_collapse": "loss_scale", "fp16_overflow": "precision",
    "memory_pressure": "memory", "lr_schedule_anomaly": "lr", "overfitting": "loss",
    "data_leakage": "overlap", "class_imbalance": "labels", "distribution_shift": "shift",
    "adversarial_fragility": "robustness", "deployment_limit": "deployment",
}


def e(text: Any) -> str:
    return escape("" if text is None else str(text), quote=True)


def _badge(sev: str) -> str:
    return f'<span class="badge sev-{e(sev)}">{e(sev)}</span>'


def _value_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return svg.fmt_num(value)
    return str(value)


# ---- run panels ----------------------------------------------------------------------


def _available_panels(view: RunView | None, probe: ProbeView | None = None) -> list[str]:
    out = []
    if view is not None:
        out = [pid for pid, _, _ in CURVE_PANELS if pid in view.charts]
        out += [pid for pid, present in (("heatmap", view.heatmap), ("params", view.shares), ("memory", view.memory), ("precision", view.precision)) if present]
    return out + available_probe_panels(probe)


def _plot_for_cause(cause: dict[str, Any], view: RunView | None, probe: ProbeView | None = None) -> str | None:
    """The panel id that shows a root cause: a probe kind's own panel, else the chart of its first cited metric or table, else by kind."""
    panels = _available_panels(view, probe)
    if not panels:
        return None
    kind_pid = KIND_PANEL.get(cause.get("kind", ""))
    if kind_pid in available_probe_panels(probe):
        return kind_pid
    for ev in cause.get("evidence", []):
        if ev.get("table") == "metrics" and view is not None:
            pid = view.chart_keys.get(str(ev.get("where", {}).get("key", "")))
            if pid in panels:
                return pid
        pid = TABLE_PANEL.get(ev.get("table", ""))
        if pid in panels:
            return pid
    if kind_pid in panels:
        return kind_pid
    return "loss" if "loss" in panels else panels[0]


def _evidence_table(evidence: list[dict[str, Any]], limit: int, show_run_id: bool) -> str:
    """The cited rows; inside a run's panel its run_id is implied and left out."""
    if not evidence:
        return ""
    rows = []
    for ev in evidence[:limit]:
        where = ", ".join(f"{k}={v}" for k, v in ev.get("where", {}).items() if show_run_id or k != "run_id")
        rows.append(f"<tr><td><code>{e(ev.get('table'))}</code></td><td><code>{e(where)}</code></td>"
                    f"<td class=num>{e(_value_text(ev.get('value')))}</td><td>{e(ev.get('text'))}</td></tr>")
    more = f'<tr><td colspan=4 class=muted>{len(evidence) - limit} more in diagnosis.json</td></tr>' if len(evidence) > limit else ""
    return ("<table class=ev><thead><tr><th>table</th><th>rows (where)</th><th class=num>value</th><th>what it shows</th></tr></thead><tbody>"
            + "".join(rows) + more + "</tbody></table>")


def _guide_link(kind: str) -> str:
    return f'<a href="#guide-{e(kind)}" title="{e(GUIDE_PATH_TEMPLATE.format(kind=kind))}">guide: {e(kind)}</a>'


def _cause_card(cause: dict[str, Any], card_id: str, plot_id: str | None, cfg: HtmlConfig, show_run_id: bool = False) -> str:
    onset = f" · from step {cause['onset_step']}" if cause.get("onset_step") is not None else ""
    links = [f'<a href="#{e(plot_id)}">plot</a>'] if plot_id else []
    links.append(_guide_link(cause["kind"]))
    fields = "".join(
        f"<dt>{label}</dt><dd>{e(cause.get(name))}</dd>"
        for label, name in (("fix", "fix"), ("expected impact", "expected_impact"), ("verify by", "verify_by")) if cause.get(name)
    )
    return (
        f'<div class="cause sev-{e(cause["severity"])}" id="{e(card_id)}">'
        f'<div class=head>{_badge(cause["severity"])}<span class=kind>{e(cause["kind"])}</span>'
        f'<span class=muted>confidence {cause.get("confidence", 0):.2f}{e(onset)}</span><span class=links>{"".join(links)}</span></div>'
        f"<div>{e(cause.get('issue'))}</div>"
        + _evidence_table(cause.get("evidence", []), cfg.max_evidence_rows, show_run_id)
        + (f"<dl>{fields}</dl>" if fields else "")
        + "</div>"
    )


def _marks(view: RunView, causes: list[dict[str, Any]], run_anchor: str) -> list[tuple[svg.Span, str]]:
    """Each finding of the run as a chart span, linked to the root cause that reports its kind."""
    cause_of_kind = {}
    for i, c in enumerate(causes):
        cause_of_kind.setdefault(c["kind"], i)
    seen = set()
    out = []
    for m in view.marks:
        if m.onset_step is None or (m.kind, m.onset_step, m.end_step) in seen:
            continue
        seen.add((m.kind, m.onset_step, m.end_step))
        n = len(out) + 1
        span_text = f"steps {m.onset_step}–{m.end_step}" if m.end_step is not None and m.end_step != m.onset_step else f"step {m.onset_step}"
        target = cause_of_kind.get(m.kind, 0 if causes else None)
        href = f"#{run_anchor}-c{target}" if target is not None else ""
        color = svg.SEVERITY_COLORS.get(m.severity, "#888")
        span = svg.Span(float(m.onset_step), float(m.end_step) if m.end_step is not None else None, color, str(n),
                        f"{n}: {m.kind} ({m.severity}), {span_text}: {m.summary}", href)
        item = (f'<li><span class=n style="background:{color}">{n}</span><strong>{e(m.kind)}</strong> '
                f'<span class=muted>({e(m.severity)}, {e(span_text)})</span> {e(m.summary)}'
                + (f' <a href="{e(href)}">root cause</a>' if href else "") + "</li>")
        out.append((span, item))
        if len(out) >= MAX_MARKS_PER_RUN:
            break
    return out


def _charts(view: RunView, run_anchor: str, spans: list[svg.Span]) -> list[str]:
    charts = []
    for pid, _, title in CURVE_PANELS:
        lines = view.charts.get(pid)
        if not lines:
            continue
        drawn = [svg.Line(label, curve, svg.PALETTE[i % len(svg.PALETTE)]) for i, (label, curve) in enumerate(lines)]
        logged = sum(view.n_points_logged.get(label.split(" (")[0], 0) for label, _ in lines)
        plotted = sum(c.n_points for _, c in lines)
        note = f'<div class=muted style="font-size:11.5px">{plotted:,} of {logged:,} logged points drawn (min/max per step bucket)</div>' if logged > plotted else ""
        charts.append(f'<div class=panel>{svg.line_chart(f"{run_anchor}-{pid}", title, drawn, spans)}{note}</div>')
    hm = view.heatmap
    if hm is not None:
        title = "Gradient norm per layer" + (" (gradients probe)" if hm.source == "gradients" else "")
        note = f" — {len(hm.rows)} of {hm.n_layers_total} layers" if hm.n_layers_total > len(hm.rows) else ""
        charts.append(f'<div class=panel>{svg.heatmap(f"{run_anchor}-heatmap", title + note, hm.rows, hm.col_edges, hm.matrix, hm.nonfinite, spans=spans, col_steps=hm.col_steps)}</div>')
    if view.shares:
        total = sum(n for _, n in view.shares) or 1
        bars = [svg.Bar(mt, 100.0 * n / total, svg.PALETTE[i % len(svg.PALETTE)], f"{100.0 * n / total:.1f}% ({n:,})", f"{mt}: {n:,} parameters")
                for i, (mt, n) in enumerate(view.shares[:12])]
        step = f" at checkpoint step {view.shares_step}" if view.shares_step is not None else ""
        charts.append(f'<div class=panel>{svg.bar_chart(f"{run_anchor}-params", f"Parameter share by module type{step} ({total:,} parameters)", bars, max_value=100.0)}</div>')
    if view.memory:
        bars = [svg.Bar(f"{r['device'] or ''} {r['phase']}".strip(), float(r["peak_allocated_bytes"] or 0), svg.PALETTE[i % 3],
                        svg.fmt_bytes(float(r["peak_allocated_bytes"] or 0)) + (f" (reserved {svg.fmt_bytes(float(r['reserved_bytes']))})" if r.get("reserved_bytes") else ""),
                        f"{r['phase']}: peak allocated over {r['n_probes']} probe(s)")
                for i, r in enumerate(view.memory[:12])]
        charts.append(f'<div class=panel>{svg.bar_chart(f"{run_anchor}-memory", "Peak memory by phase", bars)}</div>')
    if view.precision:
        rows = "".join(
            f"<tr><td>{e(r['dtype'])}</td><td class=num>{e(_value_text(r['rel_err_median']))}</td><td class=num>{e(_value_text(r['rel_err_max']))}</td>"
            f"<td class=num>{e(_value_text(r['overflow_frac_max']))}</td><td class=num>{e(_value_text(r['underflow_frac_max']))}</td><td class=num>{r['n_layers']}</td></tr>"
            for r in view.precision
        )
        worst = "".join(
            f"<tr><td>{e(r['dtype'])}</td><td><code>{e(r['layer'])}</code></td><td class=num>{e(_value_text(r['rel_err_vs_fp32']))}</td>"
            f"<td class=num>{e(_value_text(r['overflow_frac']))}</td><td class=num>{e(_value_text(r['underflow_frac']))}</td></tr>"
            for r in view.precision_layers
        )
        charts.append(
            f'<div class=panel id="{run_anchor}-precision"><h3>Mixed precision vs fp32</h3>'
            "<table><thead><tr><th>dtype</th><th class=num>rel. error (median)</th><th class=num>rel. error (max)</th><th class=num>overflow frac</th><th class=num>underflow frac</th><th class=num>layers</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
            + (f"<h3>Layers with the largest error</h3><table><thead><tr><th>dtype</th><th>layer</th><th class=num>rel. error</th><th class=num>overflow</th><th class=num>underflow</th></tr></thead><tbody>{worst}</tbody></table>" if worst else "")
            + "</div>"
        )
    return charts


def _run_section(rid: str, entry: dict[str, Any], view: RunView | None, cfg: HtmlConfig, open_: bool, probe: ProbeView | None = None) -> str:
    run_anchor = anchor(rid)
    causes = entry.get("root_causes", [])
    worst = worst_severity(entry)
    kinds = " ".join(dict.fromkeys(c["kind"] for c in causes))
    top = causes[0]["issue"] if causes else ("no findings" if entry.get("status") == "ok" else entry.get("reason", ""))
    parts = [
        f'<details class=run id="{run_anchor}" data-rid="{e(rid)}" data-sev="{worst}" data-kinds="{e(kinds)}"{" open" if open_ else ""}>'
        f"<summary>{_badge(worst)}<span class=rid>{e(rid)}</span><span class='status-{e(entry.get('status'))}'>{e(entry.get('status'))}</span>"
        f"<span class=top>{e(top)}</span></summary><div class=body>"
    ]
    if entry.get("reason"):
        parts.append(f"<p><strong>Read problems:</strong> {e(entry['reason'])}</p>")
    for i, cause in enumerate(causes):
        pid = _plot_for_cause(cause, view, probe)
        parts.append(_cause_card(cause, f"{run_anchor}-c{i}", f"{run_anchor}-{pid}" if pid else None, cfg))
    if entry.get("requests"):
        parts.append("<p><strong>More data would help:</strong> " + " ".join(e(r) for r in entry["requests"]) + "</p>")
    if view is not None or probe is not None:
        marks = _marks(view, causes, run_anchor) if view is not None else []
        charts = (_charts(view, run_anchor, [m for m, _ in marks]) if view is not None else []) + probe_panels(probe, run_anchor)
        if charts:
            parts.append("<div class=charts>" + "".join(charts) + "</div>")
        else:
            parts.append("<p class=muted>No metric curves, layer statistics or probe tables were read for this run.</p>")
        if marks:
            parts.append("<ul class=marks>" + "".join(item for _, item in marks) + "</ul>")
        if view is not None and view.other_keys:
            parts.append(f"<p class=muted>{view.other_keys} more metric key(s) are in the metrics table, not plotted.</p>")
    parts.append("</div></details>")
    return "".join(parts)


# ---- overview and sweep --------------------------------------------------------------


def _overview(diagnosis: dict[str, Any]) -> tuple[str, Counter]:
    runs = diagnosis["runs"]
    status = Counter(e.get("status", "ok") for e in runs.values())
    worst = Counter(worst_severity(e) for e in runs.values())
    kinds = Counter()
    for entry in runs.values():
        for kind in {c["kind"] for c in entry.get("root_causes", []) if c["severity"] in ("critical", "high", "medium")}:
            kinds[kind] += 1
    status_colors = {"ok": svg.SEVERITY_COLORS["none"], "partial": svg.SEVERITY_COLORS["high"], "unreadable": svg.SEVERITY_COLORS["critical"]}
    charts = [
        svg.bar_chart("overview-status", "Runs by read status", [svg.Bar(s, status[s], status_colors.get(s, "#888"), f"{status[s]:,}") for s in ("ok", "partial", "unreadable") if status[s]], width=420),
        svg.bar_chart("overview-severity", "Runs by worst severity", [svg.Bar(s, worst[s], svg.SEVERITY_COLORS[s], f"{worst[s]:,}") for s in SEVERITY_ORDER if worst[s]], width=420),
    ]
    if kinds:
        charts.append(svg.bar_chart(
            "overview-causes", "Top root causes (runs, severity medium or worse)",
            [svg.Bar(k, n, svg.PALETTE[0], f"{n:,}", f"{k}: {n} runs — click to filter the runs", "#runs", {"data-filter-kind": k}) for k, n in kinds.most_common(10)], width=420,
        ))
    html = "<div class=cards>" + "".join(f"<div class=panel>{c}</div>" for c in charts) + "</div>"
    return html, kinds


def _ranking_table(panel: HpPanel) -> str:
    r = panel.ranking
    if r is None:
        return ""
    head = "".join(f"<th class=num>{e(rep)}</th>" for rep in r.repeats)
    body = "".join(
        f"<tr><td class=num>{e(svg.fmt_num(x))}</td>" + "".join(f"<td class=num>{'' if v is None else v}</td>" for v in row) + "</tr>"
        for x, row in zip(r.values, r.ranks)
    )
    verdict = ("<strong>the ranking changes across repeats</strong>" if r.flips else "the ranking is the same in every repeat")
    return (f"<p class=muted>Rank of each {e(panel.key)} value within each repeat (1 = lowest final {e(panel.outcome_key)}; failed runs last): {verdict}.</p>"
            f"<table><thead><tr><th class=num>{e(panel.key)}</th>{head}</tr></thead><tbody>{body}</tbody></table>")


def _sweep_section(diagnosis: dict[str, Any], panels: list[HpPanel], cfg: HtmlConfig) -> str:
    causes = diagnosis.get("sweep", {}).get("root_causes", [])
    plot_of = {p.cause_index: f"sweep-hp-{i}" for i, p in enumerate(panels) if p.cause_index is not None}
    parts = []
    if causes:
        for i, cause in enumerate(causes):
            parts.append(_cause_card(cause, f"sweep-c{i}", plot_of.get(i, "sweep-hp-0" if panels else None), cfg, show_run_id=True))
    else:
        parts.append("<p class=muted>No sweep-level findings (seed sensitivity, hyperparameter effects, instability boundaries) were reported.</p>")
    if panels:
        cards = []
        for i, p in enumerate(panels):
            chart = svg.interval_plot(f"sweep-hp-{i}", p.title, p.groups, x_label=p.key, y_label=f"final {p.outcome_key}", boundary=p.boundary)
            cause_link = f' <a href="#sweep-c{p.cause_index}">root cause</a>' if p.cause_index is not None else ""
            cards.append(f"<div class=panel>{chart}<p class=muted>{p.n_runs} runs; {e(p.note)}{cause_link}</p>{_ranking_table(p)}</div>")
        parts.append("<div class=charts>" + "".join(cards) + "</div>")
    elif causes:
        parts.append("<p class=muted>No hyperparameter plot: the params table has no numeric key that varies across runs with a loss logged.</p>")
    return "".join(parts)


def _table_data(diagnosis: dict[str, Any], ranked: list[str], panel_runs: set[str], cfg: HtmlConfig) -> str:
    kinds = sorted({c["kind"] for e in diagnosis["runs"].values() for c in e.get("root_causes", [])})
    kind_idx = {k: i for i, k in enumerate(kinds)}
    rows = []
    for rid in ranked:
        entry = diagnosis["runs"][rid]
        causes = entry.get("root_causes", [])
        issue = causes[0]["issue"] if causes else (entry.get("reason") or "")
        if len(issue) > MAX_TABLE_ISSUE_CHARS:
            issue = issue[: MAX_TABLE_ISSUE_CHARS - 1] + "…"
        onset = causes[0].get("onset_step") if causes else None
        rows.append([rid, entry.get("status", "ok"), SEVERITY_ORDER.index(worst_severity(entry)),
                     sorted({kind_idx[c["kind"]] for c in causes}), issue, onset, anchor(rid) if rid in panel_runs else ""])
    text = json.dumps({"severities": list(SEVERITY_ORDER), "kinds": kinds, "page_size": cfg.page_size, "runs": rows}, separators=(",", ":"), default=str)
    return text.replace("</", "<\\/")  # never close the <script> early


def _guides(kinds: list[str]) -> str:
    parts = []
    for kind in kinds:
        body = guide_html(kind)
        path = GUIDE_PATH_TEMPLATE.format(kind=kind)
        if body is None:
            body = f"<p class=muted>See <code>{e(path)}</code> in the mldebug_ray repository.</p>"
        parts.append(f'<details class=guide id="guide-{e(kind)}"><summary>{e(kind)}</summary>{body}<p class=muted>Source: <code>{e(path)}</code></p></details>')
    return "".join(parts)


# ---- the page ------------------------------------------------------------------------


def render_html(out_dir: Path, diagnosis: dict[str, Any], sweep_name: str, cfg: HtmlConfig | None = None) -> str:
    """The whole report page as a string (reads the evidence tables of the runs it shows)."""
    cfg = cfg or HtmlConfig()
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    ranked = rank_runs(diagnosis)
    panel_runs = ranked[: cfg.max_run_panels]
    views = load_run_views(out_dir, panel_runs, cfg)
    probes = load_probe_views(out_dir, panel_runs, cfg)
    sweep_panels = load_sweep_panels(out_dir, diagnosis, cfg)
    t_read = time.perf_counter() - t0
    runs = diagnosis["runs"]
    overview, top_kinds = _overview(diagnosis)
    kinds_present = sorted({c["kind"] for e_ in runs.values() for c in e_.get("root_causes", [])} | {c["kind"] for c in diagnosis.get("sweep", {}).get("root_causes", [])},
                           key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS))
    n_findings = sum(1 for e_ in runs.values() if e_.get("root_causes"))
    sev_boxes = "".join(
        f'<label><input type=checkbox data-sev="{s}" checked> {_badge(s)}</label>' for s in SEVERITY_ORDER
    )
    kind_options = '<option value="">all kinds</option>' + "".join(f'<option value="{e(k)}">{e(k)}</option>' for k in kinds_present)
    run_sections = "".join(_run_section(rid, runs[rid], views.get(rid), cfg, open_=i < cfg.open_run_panels, probe=probes.get(rid)) for i, rid in enumerate(panel_runs))
    rest = len(ranked) - len(panel_runs)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="mldebug_ray"><title>mldebug_ray report — {e(sweep_name)}</title><style>{CSS}</style></head>
<body>
<header class="top"><h1>mldebug_ray report: sweep <code style="background:#32475a;color:#fff">{e(sweep_name)}</code></h1>
<div class="meta">{len(runs):,} runs · {n_findings:,} with root causes · diagnosis {e(diagnosis.get("status"))} ({e(diagnosis.get("agent", "rules"))} agent) · evidence in <code style="background:#32475a;color:#fff">{e(paths.EVIDENCE_DIR)}/</code></div>
<nav><a href="#overview">Overview</a><a href="#sweep">Sweep</a><a href="#runs">Runs</a><a href="#all-runs">All runs</a><a href="#guides">Finding guides</a></nav></header>
<div id="controls"><strong>Filter</strong> {sev_boxes}
<label>kind <select id="f-kind">{kind_options}</select></label>
<label>run <input type="search" id="f-search" placeholder="run id contains…"></label>
<button id="expand-all" type="button">expand all</button><button id="collapse-all" type="button">collapse all</button>
<span class="count" id="match-count"></span></div>
<main>
<section id="overview"><h2>Overview</h2>{overview}</section>
<section id="sweep"><h2>Sweep</h2>{_sweep_section(diagnosis, sweep_panels, cfg)}</section>
<section id="runs"><h2>Runs: the {len(panel_runs)} worst of {len(ranked):,}</h2>
<p class="muted">Worst severity first. Shaded ranges on the charts are findings (numbered, coloured by severity; click one for its root cause); magenta ticks are NaN/Inf values.{f" The other {rest:,} runs are in the table below." if rest > 0 else ""}</p>
{run_sections}</section>
<section id="all-runs"><h2>All runs</h2>
<div class="pager"><button id="page-prev" type="button">◀ prev</button><span id="page-info"></span><button id="page-next" type="button">next ▶</button></div>
<table><thead><tr><th>run</th><th>status</th><th>worst</th><th>root causes</th><th class="num">onset</th><th>top root cause</th></tr></thead><tbody id="all-runs-body"></tbody></table>
<noscript><p>The table of all runs needs JavaScript; diagnosis.json and report.md list every run.</p></noscript>
</section>
<section id="guides"><h2>Finding guides</h2>{_guides(kinds_present) or '<p class="muted">No findings.</p>'}</section>
</main>
<script type="application/json" id="runs-data">{_table_data(diagnosis, ranked, set(panel_runs), cfg)}</script>
<script>{JS}</script>
</body></html>
"""
    log.info("report.html: %d run panels, %d sweep plots, %.2fs reading, %.1f KB", len(panel_runs), len(sweep_panels), t_read, len(page) / 1024)
    return page


def write_report_html(out_dir: Path, diagnosis: dict[str, Any], sweep_name: str, cfg: HtmlConfig | None = None) -> bool:
    """Render and write report.html atomically; False (logged) if rendering failed, so the rest of the outputs still land."""
    try:
        page = render_html(out_dir, diagnosis, sweep_name, cfg)
    except Exception:  # a renderer bug must not cost the user the diagnosis.json of a long sweep
        log.exception("report.html could not be rendered; report.md and diagnosis.json are still written")
        return False
    atomic_write_bytes(Path(out_dir) / paths.REPORT_HTML, page.encode("utf-8"))
    return True
