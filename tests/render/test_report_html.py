"""report.html from a synthetic out_dir: self-contained, every panel there, every link lands, bounded."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import polars as pl
import pytest
from render_fixtures import LONG_STEPS

from mldebug_ray import paths
from mldebug_ray.evidence.io import write_table
from mldebug_ray.findings import KINDS
from mldebug_ray.render.guides import GUIDES_DIR, markdown_to_html
from mldebug_ray.render.report_data import HtmlConfig, anchor, load_run_views, rank_runs, scan_runs
from mldebug_ray.render.report_html import PANEL_IDS, render_html, write_report_html


@pytest.fixture(scope="module")
def page(rich_out) -> str:
    out, diagnosis = rich_out
    return render_html(out, diagnosis, "synthetic")


def ids_of(html: str) -> set[str]:
    return set(re.findall(r'\sid="([^"]+)"', html))


def test_the_page_has_every_section_and_the_table_data(page):
    ids = ids_of(page)
    assert set(PANEL_IDS) <= ids
    assert {"runs-data", "all-runs-body", "f-kind", "f-search", "page-prev", "page-next"} <= ids
    data = json.loads(re.search(r'<script type="application/json" id="runs-data">(.*?)</script>', page, re.S).group(1))
    assert len(data["runs"]) == 17 and data["severities"][0] == "critical"


def test_the_page_fetches_nothing(page):
    assert not re.search(r"<(script|img|iframe)[^>]+src=", page)
    assert "<link" not in page and "@import" not in page
    assert not re.search(r"url\(\s*['\"]?https?:", page)
    assert not re.search(r'(href|src)="https?:', page)


def test_a_probed_run_has_curves_heatmap_shares_memory_and_precision(page):
    a = anchor("probed/fp16")
    assert {f"{a}-loss", f"{a}-heatmap", f"{a}-params", f"{a}-memory", f"{a}-precision"} <= ids_of(page)
    assert "Peak memory by phase" in page and "Mixed precision vs fp32" in page


def test_memory_and_precision_panels_are_omitted_where_the_tables_are_empty(page):
    a = anchor("grid/lr0.001_seed0")
    ids = ids_of(page)
    assert f"{a}-loss" in ids and f"{a}-memory" not in ids and f"{a}-precision" not in ids


def test_the_gradients_probe_table_becomes_a_heatmap(page):
    assert f'{anchor("probed/gradients_table")}-heatmap' in ids_of(page)
    assert "Gradient norm per layer (gradients probe)" in page


def test_heatmap_rows_follow_the_checkpoint_order_not_the_alphabet(rich_out):
    out, diagnosis = rich_out
    views = load_run_views(out, ["probed/fp16"], HtmlConfig())
    assert views["probed/fp16"].heatmap.rows == ["embed.weight", "block.0.weight", "block.1.weight", "block.2.weight", "head.weight"]


def test_every_in_page_link_lands_on_an_element(page):
    ids = ids_of(page)
    markup = re.sub(r"<script.*?</script>", "", page, flags=re.S)  # the table's rows are built by the script
    targets = set(re.findall(r'href="#([^"]+)"', markup))
    assert targets, "the page links root causes to plots and guides"
    assert targets - ids == set()


def test_every_root_cause_links_to_a_plot_and_a_guide_and_lists_its_evidence(page, rich_out):
    _, diagnosis = rich_out
    for rid, entry in diagnosis["runs"].items():
        for i, _cause in enumerate(entry["root_causes"]):
            card = re.search(rf'<div class="cause sev-\w+" id="{anchor(rid)}-c{i}">(.*?)</div><(?:div class="cause|div class=charts|p|/div)', page, re.S)
            assert card, (rid, i)
            body = card.group(1)
            assert "guide:" in body and "<table class=ev>" in body
            if rid != "broken":  # a run without metrics has nothing to plot
                assert re.search(rf'href="#{anchor(rid)}-\w+">plot</a>', body), (rid, body[:300])


def test_finding_spans_are_drawn_on_the_curves_and_link_back(page):
    a = anchor("grid/lr1_seed0")
    loss_chart = re.search(rf'<svg id="{a}-loss".*?</svg>', page, re.S).group(0)
    assert 'class="span"' in loss_chart and f'href="#{a}-c0"' in loss_chart
    assert "nan_inf (critical), steps 150–200" in loss_chart


def test_the_sweep_panel_plots_the_boundary_the_finding_cites(page):
    chart = re.search(r'<svg id="sweep-hp-0".*?</svg>', page, re.S).group(0)
    assert "hp_instability_boundary" in chart and "boundary" in chart and "✕3" in chart
    assert 'href="#sweep-c0">root cause</a>' in page
    assert "the ranking is the same in every repeat" in page


def test_a_143k_step_curve_is_drawn_with_a_bounded_number_of_points(page):
    chart = re.search(rf'<svg id="{anchor("long/pythia_like")}-loss".*?</svg>', page, re.S).group(0)
    points = sum(len(p.split()) for p in re.findall(r'<polyline points="([^"]+)"', chart))
    assert 0 < points <= HtmlConfig().max_points
    assert f"of {LONG_STEPS:,} logged points drawn" in page


def test_text_from_the_runs_is_escaped(page):
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_only_the_worst_runs_get_full_panels(rich_out):
    out, diagnosis = rich_out
    html = render_html(out, diagnosis, "synthetic", HtmlConfig(max_run_panels=3, open_run_panels=1))
    assert html.count('<details class=run ') == 3
    assert html.count("<details class=run id=") == 3 and html.count(" open>") == 1
    worst = rank_runs(diagnosis)[:3]
    assert all(f'id="{anchor(r)}"' in html for r in worst)
    assert worst[0].startswith("grid/lr1_")


def test_load_run_views_reads_only_the_runs_asked_for(rich_out):
    out, _ = rich_out
    views = load_run_views(out, ["grid/lr0.01_seed1"], HtmlConfig())
    assert list(views) == ["grid/lr0.01_seed1"]
    assert {m.kind for m in views["grid/lr0.01_seed1"].marks} == set()
    assert set(views["grid/lr0.01_seed1"].charts) == {"loss", "grad_norm", "lr"}


def test_a_renderer_failure_is_logged_and_leaves_no_file(tmp_path, caplog):
    assert write_report_html(tmp_path, {"not": "a diagnosis"}, "x") is False
    assert not (tmp_path / paths.REPORT_HTML).exists()
    assert "report.html could not be rendered" in caplog.text


def test_html_config_rejects_impossible_values():
    with pytest.raises(ValueError, match="render.max_run_panels"):
        HtmlConfig(max_run_panels=0)
    with pytest.raises(ValueError, match="render.max_points"):
        HtmlConfig(max_points=1)


def test_every_finding_kind_has_a_guide_with_the_three_parts():
    for kind in KINDS:
        path = GUIDES_DIR / f"{kind}.md"
        assert path.is_file(), f"docs/findings/{kind}.md is missing"
        text = path.read_text()
        for heading in ("## What it means", "## Evidence behind it", "## What to try"):
            assert heading in text, (kind, heading)


def test_the_guides_of_the_kinds_present_are_in_the_page(page):
    for kind in ("nan_inf", "hp_instability_boundary", "architecture_imbalance"):
        assert f'id="guide-{kind}"' in page
        assert f"docs/findings/{kind}.md" in page
    assert 'id="guide-dead_units"' not in page


def test_markdown_subset():
    html = markdown_to_html("# T\n\nsome `code` and **bold**\nwrapped\n\n- one\n  more\n- two <x>\n")
    assert "<h3>T</h3>" in html and "<code>code</code>" in html and "<strong>bold</strong>" in html
    assert "<li>one more</li>" in html and "&lt;x&gt;" in html and "wrapped" in html


@pytest.mark.slow
def test_the_pipeline_writes_report_html_and_points_diagnosis_at_it(tmp_path, jsonl_run):
    for i in range(3):
        jsonl_run(tmp_path / "sweep" / f"seed{i}", [2.0 - 0.01 * s for s in range(50)], {"seed": i, "lr": 0.1})
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "mldebug_ray", "+sweep=paths", f"sweep.roots=[{tmp_path / 'sweep'}]", f"out_dir={out}", "cluster.num_cpus=2"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    diagnosis = json.loads((out / paths.DIAGNOSIS_FILE).read_text())
    assert diagnosis["analysis_artifacts"]["report"] == paths.REPORT_HTML
    html = (out / paths.REPORT_HTML).read_text()
    assert all(f'id="{anchor(f"seed{i}")}"' in html for i in range(3))


def _runs_part(out, rid):
    write_table(out, "runs", pl.DataFrame([{"run_id": rid, "path": rid, "source_format": "jsonl", "status": "ok", "reason": None,
                                            "n_steps": 2, "last_step": 2}]), paths.part_key(rid))


def _metrics_frame(rid, key="loss"):
    return pl.DataFrame({"run_id": [rid, rid], "step": [1, 2], "key": key, "value": [2.0, 1.0], "split": None})


def test_scan_runs_opens_each_runs_own_parts_in_the_per_run_layout(tmp_path):
    for rid in ("a", "b"):
        _runs_part(tmp_path, rid)
    write_table(tmp_path, "metrics", _metrics_frame("a"), paths.part_key("a"))  # b logged nothing: no part
    write_table(tmp_path, "metrics", _metrics_frame("zzz"), "junk-that-must-not-be-opened")
    (paths.part_path(tmp_path, "metrics", "junk-that-must-not-be-opened")).write_bytes(b"not parquet")
    got = scan_runs(tmp_path, "metrics", ["a", "b"]).collect()
    assert got["run_id"].to_list() == ["a", "a"]
    assert scan_runs(tmp_path, "memory", ["a"]).collect().height == 0


def test_scan_runs_falls_back_to_every_part_for_other_layouts(tmp_path):
    write_table(tmp_path, "metrics", pl.concat([_metrics_frame("a"), _metrics_frame("b")]), "batch-0")
    got = scan_runs(tmp_path, "metrics", ["b"]).collect()
    assert got["run_id"].to_list() == ["b", "b"]
