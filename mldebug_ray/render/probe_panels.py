"""The run panels of report.html for the data probe, confusion, robustness and deployment tables (formats render/probe_views.py).

Each panel is built only from a view that has rows, so a run without a table gets no
empty panel; each is bounded by HtmlConfig (classes, features, ids, checkpoints), so a
panel's size does not grow with the data set or the number of checkpoints.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from mldebug_ray.render import svg
from mldebug_ray.render.probe_views import ConfusionView, DataView, ProbeView, RobustnessView

FINGERPRINT_CHARS = 8  # shown of a split's fingerprint; the whole one is its tooltip
CLEAN_COLOR = "#7f7f7f"
# Panel ids (the suffix after the run's anchor), in page order.
PROBE_PANEL_IDS = ("labels", "splits", "overlap", "shift", "confusion", "robustness", "deployment")


def e(text: Any) -> str:
    return escape("" if text is None else str(text), quote=True)


def _num(v: Any) -> str:
    return "" if v is None else svg.fmt_num(float(v))


def _int(v: Any) -> str:
    return "" if v is None else f"{int(v):,}"


def _pct(v: float | None) -> str:
    return "" if v is None or not math.isfinite(v) else f"{100 * v:.3g}%"


def available_probe_panels(view: ProbeView | None) -> list[str]:
    """The probe panel ids this run shows, in page order."""
    if view is None:
        return []
    data = view.data or DataView()
    present = {
        "labels": data.labels is not None, "splits": bool(data.splits), "overlap": bool(data.overlap), "shift": bool(data.shift),
        "confusion": view.confusion is not None, "robustness": view.robustness is not None, "deployment": bool(view.deployment),
    }
    return [pid for pid in PROBE_PANEL_IDS if present[pid]]


def probe_panels(view: ProbeView | None, run_anchor: str) -> list[str]:
    """The `<div class=panel>` of each probe panel the run has."""
    if view is None:
        return []
    out = []
    data = view.data
    if data is not None:
        if data.labels is not None:
            out.append(_labels_panel(data, run_anchor))
        if data.splits:
            out.append(_splits_panel(data, run_anchor))
        if data.overlap:
            out.append(_overlap_panel(data, run_anchor))
        if data.shift:
            out.append(_shift_panel(data, run_anchor))
    if view.confusion is not None:
        out.append(_confusion_panel(view.confusion, run_anchor))
    if view.robustness is not None:
        out.append(_robustness_panel(view.robustness, run_anchor))
    if view.deployment:
        out.append(_deployment_panel(view, run_anchor))
    return out


# ---- data ----------------------------------------------------------------------------


def _labels_panel(data: DataView, run_anchor: str) -> str:
    lc = data.labels
    cats = [str(lab) for lab in lc.labels]
    series = []
    for i, split in enumerate(lc.splits):
        tips = [
            f"class {lab}, {split}: " + ("no row" if c is None else f"{c:,} examples ({_pct(f)})")
            for lab, c, f in zip(lc.labels, lc.counts[split], lc.fracs[split])
        ]
        series.append(svg.Series(split, lc.fracs[split], svg.PALETTE[i % len(svg.PALETTE)], tips))
    shown = f" — {len(lc.labels)} of {lc.n_labels_total:,} classes (most frequent and rarest)" if lc.n_labels_total > len(lc.labels) else ""
    chart = svg.grouped_columns(f"{run_anchor}-labels", f"Label share per split{shown}", cats, series, log=lc.log, y_label="share of split")
    notes = [f"largest / smallest class share within a split: {svg.fmt_num(lc.max_ratio)}:1"]
    if lc.n_zero:
        notes.append(f"{lc.n_zero} (split, class) pair(s) with no example" + (" (hollow marks)" if lc.log else ""))
    return f'<div class=panel>{chart}<p class=muted style="font-size:11.5px">{e("; ".join(notes))}.</p></div>'


def _splits_panel(data: DataView, run_anchor: str) -> str:
    rows = []
    for r in data.splits:
        fp = r.get("fingerprint") or ""
        fp_html = f'<code title="{e(fp)}">{e(fp[:FINGERPRINT_CHARS])}</code>' if fp else ""
        if r["status"] != "ok":
            rows.append(f"<tr><td>{e(r['split'])}</td><td>{e(r['role'])}</td><td colspan=6 class=status-partial>{e(r['status'])}: {e(r.get('reason'))}</td></tr>")
            continue
        shape = " ".join(x for x in (r.get("kind"), r.get("x_shape")) if x)
        ratio = f"{svg.fmt_num(r['imbalance_ratio'])}:1" if r.get("imbalance_ratio") is not None else ""
        rows.append(
            f"<tr><td>{e(r['split'])}</td><td>{e(r['role'])}</td><td>{e(shape)}</td><td class=num>{_int(r.get('n_examples'))}</td>"
            f"<td class=num>{_int(r.get('n_duplicate_examples'))}</td><td class=num>{_int(r.get('n_classes'))}</td><td class=num>{e(ratio)}</td><td>{fp_html}</td></tr>"
        )
    return (
        f'<div class=panel id="{run_anchor}-splits"><h3>Data splits</h3>'
        "<table><thead><tr><th>split</th><th>role</th><th>x</th><th class=num>examples</th><th class=num title='examples repeating an earlier one of the same split'>repeats</th>"
        "<th class=num>classes</th><th class=num title='largest / smallest class count'>max:min</th><th>fingerprint</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        '<p class=muted style="font-size:11.5px">Equal fingerprints: the same examples and labels (in any order).</p></div>'
    )


def _overlap_cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "<td class=muted>not tested</td>"
    frac = f" ({_pct(r['overlap_frac'])})" if r.get("overlap_frac") is not None else ""
    text = f"{r['n_examples_b']:,}{frac}"
    tip = f"{r['n_examples_b']:,} of {_int(r.get('n_b'))} held-out examples, {r['n_pairs']:,} pair(s); {r.get('method') or ''}"
    return f'<td class=num style="white-space:nowrap" title="{e(tip)}">' + (f"<strong>{e(text)}</strong>" if r["n_examples_b"] > 0 else e(text)) + "</td>"


def _overlap_ids(r: dict[str, Any] | None) -> str:
    if r is None or not r.get("example_ids_b"):
        return ""
    sims = r.get("similarities") or []
    pairs = []
    for i, (b, a) in enumerate(zip(r["example_ids_b"], r.get("example_ids_a") or [])):
        sim = f" ({svg.fmt_num(sims[i])})" if r["kind"] == "near" and i < len(sims) and sims[i] is not None else ""
        pairs.append(f"<code>{e(b)}</code> ~ <code>{e(a)}</code>{e(sim)}")
    return f"{r['kind']}: " + ", ".join(pairs) + (" …" if r["n_examples_b"] > len(pairs) else "")


def _overlap_panel(data: DataView, run_anchor: str) -> str:
    rows = []
    near_methods = {}
    for o in data.overlap:
        if o.near is not None:
            near_methods[o.near.get("method") or "near"] = o.near.get("threshold")
        n_b = next((r["n_b"] for r in (o.exact, o.near) if r is not None and r.get("n_b") is not None), None)
        ids = "<br>".join(x for x in (_overlap_ids(o.exact), _overlap_ids(o.near)) if x)
        rows.append(f"<tr><td>{e(o.split_b)}</td><td class=num>{_int(n_b)}</td><td>{e(o.split_a)}</td>{_overlap_cell(o.exact)}{_overlap_cell(o.near)}<td>{ids}</td></tr>")
    near = "; ".join(f"near: {m} ≥ {_num(t)}" for m, t in near_methods.items())
    return (
        f'<div class=panel id="{run_anchor}-overlap"><h3>Held-out examples also in train</h3>'
        "<table><thead><tr><th>held-out</th><th class=num>examples</th><th>in</th><th class=num>exact copies</th><th class=num>near copies</th><th>e.g. (held-out ~ train)</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f'<p class=muted style="font-size:11.5px">Held-out examples with at least one partner in train{e("; " + near) if near else ""}. The data_overlap table keeps more ids.</p></div>'
    )


def _shift_panel(data: DataView, run_anchor: str) -> str:
    rows = []
    for r in data.shift:
        if r.get("feature_kind") == "categorical" and r.get("top_category") is not None:
            moved = f"{e(r['top_category'])}: {_pct(r.get('top_category_ref_frac'))} → {_pct(r.get('top_category_frac'))}"
        else:
            moved = f"mean {_num(r.get('mean_ref'))} → {_num(r.get('mean'))}"
        ks = f"{_num(r.get('ks_stat'))} (p {_num(r.get('ks_p_adjusted'))})" if r.get("ks_stat") is not None else ""
        rows.append(f"<tr><td>{e(r['split'])} vs {e(r['reference_split'])}</td><td><code>{e(r['feature'])}</code></td>"
                    f"<td class=num>{_num(r.get('psi'))}</td><td class=num>{e(ks)}</td><td>{moved}</td></tr>")
    shown = f" — {len(data.shift)} of {data.n_features_total:,}" if data.n_features_total > len(data.shift) else ""
    return (
        f'<div class=panel id="{run_anchor}-shift"><h3>Most shifted features (largest PSI first){e(shown)}</h3>'
        "<table><thead><tr><th>split</th><th>feature</th><th class=num>PSI</th><th class=num>KS (adj. p)</th><th>reference → split</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        '<p class=muted style="font-size:11.5px">PSI over the reference split\'s deciles; KS p-values Bonferroni-adjusted over the run\'s tests.</p></div>'
    )


# ---- model probes --------------------------------------------------------------------


def _confusion_panel(c: ConfusionView, run_anchor: str) -> str:
    acc = c.n_correct / c.n_examples if c.n_examples else math.nan
    where = " ".join(x for x in (f"on {c.split}" if c.split else "", f"at step {c.step}" if c.step is not None else "") if x)
    title = f"Confusion matrix {where} — accuracy {_pct(acc)} of {c.n_examples:,}"
    chart = svg.matrix_heatmap(f"{run_anchor}-confusion", title, c.row_labels, c.col_labels, c.counts)
    notes = []
    if c.pooled:
        notes.append(f"{len(c.row_labels) - 1} of {c.n_classes_total:,} classes shown (those with the most errors); the rest are pooled as “other”")
    if "none" in c.col_labels:
        notes.append("“none”: NaN/Inf scores, no prediction")
    if c.worst:
        notes.append("lowest per-class accuracy: " + ", ".join(f"class {lab} {right:,}/{n:,} ({_pct(right / n)})" for lab, right, n in c.worst))
    return f'<div class=panel>{chart}<p class=muted style="font-size:11.5px">{e("; ".join(notes))}.</p></div>'


def _robustness_panel(r: RobustnessView, run_anchor: str) -> str:
    rows = r.rows
    cleans = {row["clean_acc_frac"] for row in rows if row["clean_acc_frac"] is not None}
    first = rows[0]
    bars = []
    one_clean = len(cleans) == 1  # one clean bar for all attacks (the same batch), else the clean value beside each
    if one_clean:
        clean = cleans.pop()
        bars.append(svg.Bar("clean", clean, CLEAN_COLOR, _pct(clean), f"clean accuracy on {_int(first['n_examples'])} examples"))
    for row in rows:
        label = f"{(row['attack'] or '?').upper()} ε={svg.fmt_num(row['epsilon'])}" if row["epsilon"] is not None else (row["attack"] or "?").upper()
        steps = f", {row['attack_steps']} step(s)" if row.get("attack_steps") else ""
        adv = row["adv_acc_frac"]
        text = _pct(adv) + ("" if one_clean else f" (clean {_pct(row['clean_acc_frac'])})")
        bars.append(svg.Bar(label, adv if adv is not None else math.nan, svg.SEVERITY_COLORS["high"], text,
                            f"{label}: ε {svg.fmt_num(row['epsilon'])} x the input's std (absolute {_num(row.get('epsilon_abs'))}) at {row.get('site') or 'input'}{steps}; "
                            f"accuracy {_pct(row['clean_acc_frac'])} → {_pct(adv)} on {_int(row['n_examples'])} examples"))
    n_classes = first.get("n_classes")
    chance = 1.0 / n_classes if n_classes else None
    at = f" at step {r.step}" if r.step is not None else ""
    title = f"Accuracy clean vs attacked{at}" + (f" ({first['n_examples']:,} examples)" if first["n_examples"] is not None else "")
    chart = svg.bar_chart(f"{run_anchor}-robustness", title, bars, max_value=1.0, limit=chance, limit_label=f"chance 1/{n_classes}")
    notes = [f"ε is the L∞ budget relative to the perturbed tensor's std ({first.get('site') or 'input'})"]
    if r.n_steps > 1:
        notes.append(f"newest of {r.n_steps} probed steps")
    return f'<div class=panel>{chart}<p class=muted style="font-size:11.5px">{e("; ".join(notes))}.</p></div>'


def _deployment_panel(view: ProbeView, run_anchor: str) -> str:
    rows = view.deployment
    newest = rows[0]

    def label(r: dict[str, Any]) -> str:
        return f"step {r['step']}" if r["step"] is not None else "checkpoint"

    charts = []
    if any(r["latency_ms_median"] is not None for r in rows):
        bars = [svg.Bar(label(r), r["latency_ms_median"] if r["latency_ms_median"] is not None else math.nan, svg.PALETTE[0],
                        f"{_num(r['latency_ms_median'])} ms" + (f" (p90 {_num(r['latency_ms_p90'])})" if r.get("latency_ms_p90") is not None else ""),
                        f"{label(r)} on {r['device']}, batch {r.get('batch_size')}: median {_num(r['latency_ms_median'])} ms, p90 {_num(r.get('latency_ms_p90'))} ms, "
                        f"min {_num(r.get('latency_ms_min'))} ms over {r.get('n_repeats')} repeats")
                for r in rows]
        at = f" ({newest['device']}, batch {newest['batch_size']})" if newest.get("batch_size") else f" ({newest['device']})"
        charts.append(svg.bar_chart(f"{run_anchor}-deployment", f"Inference latency, median{at}", bars, limit=newest.get("max_latency_ms"),
                                    limit_label=f"max_latency_ms {_num(newest.get('max_latency_ms'))}"))
    size_id = f"{run_anchor}-deployment" if not charts else f"{run_anchor}-deployment-size"
    bars = [svg.Bar(label(r), float(r["param_bytes"]) if r["param_bytes"] is not None else math.nan, svg.PALETTE[2],
                    (svg.fmt_bytes(r["param_bytes"]) if r["param_bytes"] is not None else "") + (f" ({_int(r['n_params'])} params)" if r.get("n_params") is not None else ""),
                    f"{label(r)}: parameters {_int(r.get('n_params'))}, {_int(r.get('param_bytes'))} bytes; buffers {_int(r.get('buffer_bytes'))} bytes")
            for r in rows]
    limit_b = newest.get("max_param_bytes")
    charts.append(svg.bar_chart(size_id, "Model size (parameter bytes)", bars, limit=float(limit_b) if limit_b is not None else None,
                                limit_label=f"max_param_bytes {svg.fmt_bytes(limit_b)}" if limit_b is not None else ""))
    if newest.get("max_params") is not None:
        bars = [svg.Bar(label(r), float(r["n_params"]) if r["n_params"] is not None else math.nan, svg.PALETTE[3], _int(r["n_params"])) for r in rows]
        charts.append(svg.bar_chart(f"{run_anchor}-deployment-params", "Parameters", bars, limit=float(newest["max_params"]),
                                    limit_label=f"max_params {_int(newest['max_params'])}"))
    notes = []
    if newest.get("peak_inference_bytes") is not None:
        notes.append(f"peak inference memory {svg.fmt_bytes(newest['peak_inference_bytes'])}")
    if newest.get("num_threads") is not None:
        notes.append(f"{newest['num_threads']} CPU thread(s)")
    if not any(newest.get(k) is not None for k in ("max_latency_ms", "max_params", "max_param_bytes")):
        notes.append("no probes.deploy limits set")
    if view.n_deployment_rows > len(rows):
        notes.append(f"newest {len(rows)} of {view.n_deployment_rows} probed checkpoints")
    if newest.get("trace_path"):
        notes.append(f"profiler trace {newest['trace_path']}")
    note = f'<p class=muted style="font-size:11.5px">{e("; ".join(notes))}.</p>' if notes else ""
    return "<div class=panel>" + "".join(charts) + note + "</div>"
