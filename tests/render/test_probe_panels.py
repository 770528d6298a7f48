"""The data, confusion, robustness and deployment panels of report.html: there with the table's numbers when a run has rows, absent when not, bounded."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
from render_fixtures import N_SHIFT_FEATURES, PROBE_RUN, TRAIN_LABELS, VAL_LABELS, write_probe_tables

from mldebug_ray.evidence.io import write_table
from mldebug_ray.render.probe_panels import PROBE_PANEL_IDS, available_probe_panels
from mldebug_ray.render.probe_views import NO_PREDICTION, OTHER, load_probe_views
from mldebug_ray.render.report_data import HtmlConfig, anchor
from mldebug_ray.render.report_html import render_html

A = anchor(PROBE_RUN)


@pytest.fixture(scope="module")
def page(rich_out) -> str:
    out, diagnosis = rich_out
    return render_html(out, diagnosis, "synthetic")


def panel(page: str, pid: str) -> str:
    """The markup of one run panel: from its id to the next panel."""
    start = page.index(f'id="{A}-{pid}"')
    start = page.rindex("<div class=panel", 0, start)
    end = page.find("<div class=panel", start + 1)
    return page[start:end if end > 0 else None]


def test_a_run_with_every_probe_table_shows_every_probe_panel(page):
    for pid in PROBE_PANEL_IDS:
        assert f'id="{A}-{pid}"' in page, pid


def test_runs_without_probe_rows_get_no_probe_panels(page):
    for rid in ("grid/lr0.001_seed0", "probed/fp16", "long/pythia_like"):
        for pid in PROBE_PANEL_IDS:
            assert f'id="{anchor(rid)}-{pid}"' not in page, (rid, pid)


def test_the_label_chart_shows_each_split_share_on_a_log_axis_and_marks_the_missing_class(page):
    chart = panel(page, "labels")
    assert "log scale" in chart, "75:1 is past HtmlConfig.label_log_ratio"
    total = sum(TRAIN_LABELS.values())
    assert f"class 2, train: 60 examples ({100 * 60 / total:.3g}%)" in chart
    assert "class 3, val: 0 examples" in chart
    assert 'fill="none"' in chart, "a zero on a log axis is a hollow mark, not a missing bar"
    assert "1 (split, class) pair(s) with no example" in chart


def test_the_label_chart_is_linear_when_the_classes_are_balanced(tmp_path):
    rid = "balanced"
    write_table(tmp_path, "data_labels", pl.DataFrame(
        [{"run_id": rid, "split": "train", "label": k, "count": 100 + k, "frac": None} for k in range(5)]), "all")
    lc = load_probe_views(tmp_path, [rid], HtmlConfig())[rid].data.labels
    assert not lc.log and lc.splits == ["train"] and lc.labels == [0, 1, 2, 3, 4]
    assert lc.fracs["train"][0] == pytest.approx(100 / 510), "a null frac is the count over the split's total"


def test_the_splits_table_lists_sizes_short_fingerprints_and_errors(page):
    table = panel(page, "splits")
    assert "5,000" in table and "1,000" in table and "75:1" in table
    assert '<code title="fb230eb48136f6e9">fb230eb4</code>' in table
    assert "x has shape [8], train [16] &lt;b&gt;" in table
    assert table.index(">train<") < table.index(">val<"), "the train split first"


def test_the_overlap_table_counts_exact_and_near_copies_with_a_few_ids(page):
    table = panel(page, "overlap")
    assert "<strong>10 (1%)</strong>" in table and "<strong>3 (0.3%)</strong>" in table
    assert "<code>val:0</code> ~ <code>train:100</code>" in table and "<code>val:2</code>" in table
    assert "val:3<" not in table, "HtmlConfig.max_overlap_ids ids per row"
    assert "simhash-512 cosine ≥ 0.999" in table


def test_the_shift_table_lists_the_largest_psi_first_and_says_how_many_are_left_out(page):
    table = panel(page, "shift")
    rows = re.findall(r"<tr><td>val vs train</td><td><code>(f\d+)</code></td><td class=num>([^<]+)</td>", table)
    assert len(rows) == HtmlConfig().max_shifted_features
    assert rows[0] == ("f19", "0.9") and rows[1][0] == "f18"
    assert f"{len(rows)} of {N_SHIFT_FEATURES}" in table


def test_the_confusion_matrix_is_the_newest_step_with_its_accuracy(page, rich_out):
    out, _ = rich_out
    view = load_probe_views(out, [PROBE_RUN], HtmlConfig())[PROBE_RUN].confusion
    assert view.step == 200 and view.split == "val"
    assert view.row_labels == ["0", "1", "2"] and view.col_labels == ["0", "1", "2", NO_PREDICTION]
    n = sum(VAL_LABELS.values())
    right = sum(round(k * 0.8) for k in VAL_LABELS.values() if k)
    assert view.n_examples == n and view.n_correct == right
    assert view.counts[1, 1] == round(380 * 0.8) and view.counts[1, 0] == 380 - round(380 * 0.8) - 1 and view.counts[1, 3] == 1
    chart = panel(page, "confusion")
    assert f"accuracy {100 * right / n:.3g}% of {n:,}" in chart and "at step 200" in chart
    assert "true 2: 20 examples, 16 right (80%)" in chart
    assert "“none”: NaN/Inf scores, no prediction" in chart


def test_a_confusion_matrix_of_many_classes_is_capped_and_keeps_every_count(tmp_path):
    rng = np.random.default_rng(0)
    rid, k = "many", 40
    counts = rng.integers(0, 5, (k, k)) + np.eye(k, dtype=int) * 50
    counts[7, 3] = 90  # class 7 taken for 3: both must be among the shown classes
    rows = [{"run_id": rid, "step": 5, "split": "val", "true_label": t, "pred_label": p, "count": int(counts[t, p])}
            for t in range(k) for p in range(k) if counts[t, p]]
    write_table(tmp_path, "confusion", pl.DataFrame(rows), "all")
    cfg = HtmlConfig(max_confusion_classes=8)
    view = load_probe_views(tmp_path, [rid], cfg)[rid].confusion
    assert view.pooled and len(view.row_labels) == 8 and view.row_labels[-1] == OTHER and view.n_classes_total == k
    assert {"3", "7"} <= set(view.row_labels)
    assert view.counts.sum() == counts.sum(), "pooling moves counts, never drops them"
    i7, i3 = view.row_labels.index("7"), view.col_labels.index("3")
    assert view.counts[i7, i3] == 90
    assert view.n_correct == int(np.trace(counts))
    diagnosis = {"status": "diagnosis_complete", "runs": {rid: {"status": "ok", "root_causes": []}}, "sweep": {"root_causes": []}}
    html = render_html(tmp_path, diagnosis, "many", cfg)
    assert f"7 of {k} classes shown (those with the most errors); the rest are pooled as “other”" in html


def test_the_label_chart_of_many_classes_shows_the_most_frequent_and_the_rarest(tmp_path):
    rid = "many"
    train = {k: 1000 - 10 * k for k in range(60)}
    val = {k: (0 if k == 30 else 100) for k in range(60)}  # class 30 is mid-frequency in train but missing from val
    rows = [{"run_id": rid, "split": s, "label": lab, "count": n, "frac": None} for s, d in (("train", train), ("val", val)) for lab, n in d.items()]
    write_table(tmp_path, "data_labels", pl.DataFrame(rows), "all")
    lc = load_probe_views(tmp_path, [rid], HtmlConfig(max_label_classes=10))[rid].data.labels
    assert len(lc.labels) == 10 and lc.n_labels_total == 60
    assert 30 in lc.labels, "a class missing from a split counts as the rarest"
    assert 0 in lc.labels and 59 in lc.labels
    assert lc.n_zero == 1


def test_the_robustness_chart_shows_clean_and_attacked_accuracy_at_the_newest_step_with_chance(page):
    chart = panel(page, "robustness")
    assert "at step 200" in chart and "newest of 2 probed steps" in chart
    labels = re.findall(r'text-anchor="end" fill="#333">([^<]+)</text>', chart)
    assert labels == ["clean", "FGSM ε=0.016", "PGD ε=0.016"]
    assert ">90%<" in chart and ">30%<" in chart and ">10%<" in chart
    assert "chance 1/4" in chart and 'class="limit"' in chart


def test_the_deployment_panel_shows_latency_and_size_against_their_limits(page):
    p = panel(page, "deployment")
    assert "12.5 ms (p90 15)" in p and "9 ms (p90 10.8)" in p
    assert "max_latency_ms 10" in p and "max_param_bytes 97.7 KiB" in p
    assert p.count('class="limit"') == 2, "a limit line on latency and on bytes; max_params is not set"
    assert "162.0 KiB (41,468 params)" in p
    assert p.index("step 200") < p.index("step 100"), "newest checkpoint first"


def test_a_run_without_limits_has_no_limit_lines(tmp_path):
    rid = "free"
    write_table(tmp_path, "deployment", pl.DataFrame([{"run_id": rid, "step": 3, "device": "cuda:0", "latency_ms_median": 2.0, "n_params": 10, "param_bytes": 40}]), "all")
    view = load_probe_views(tmp_path, [rid], HtmlConfig())[rid]
    assert available_probe_panels(view) == ["deployment"]
    diagnosis = {"status": "diagnosis_complete", "runs": {rid: {"status": "ok", "root_causes": []}}, "sweep": {"root_causes": []}}
    html = render_html(tmp_path, diagnosis, "free")
    assert f'id="{anchor(rid)}-deployment"' in html and 'class="limit"' not in html
    assert "no probes.deploy limits set" in html


@pytest.mark.parametrize("kind, pid", [
    ("class_imbalance", "labels"), ("data_leakage", "overlap"), ("distribution_shift", "shift"),
    ("adversarial_fragility", "robustness"), ("deployment_limit", "deployment"),
])
def test_each_new_kind_links_its_root_cause_to_its_panel(page, rich_out, kind, pid):
    _, diagnosis = rich_out
    causes = diagnosis["runs"][PROBE_RUN]["root_causes"]
    i = next(i for i, c in enumerate(causes) if c["kind"] == kind)
    card = re.search(rf'<div class="cause sev-\w+" id="{A}-c{i}">(.*?)</div>', page, re.S).group(1)
    assert f'href="#{A}-{pid}">plot</a>' in card


def test_probe_views_are_read_for_the_runs_asked_for_only(rich_out, tmp_path):
    out, _ = rich_out
    views = load_probe_views(out, ["grid/lr1_seed0"], HtmlConfig())
    assert set(views) == {"grid/lr1_seed0"} and available_probe_panels(views["grid/lr1_seed0"]) == []
    other = tmp_path / "other"
    findings = write_probe_tables(other, "a")
    write_probe_tables(other, "b")
    assert findings and set(load_probe_views(other, ["b"], HtmlConfig())) == {"b"}
    assert load_probe_views(other, ["b"], HtmlConfig())["b"].confusion.n_examples == sum(VAL_LABELS.values())


def test_html_config_rejects_impossible_probe_panel_bounds():
    for bad in ({"max_confusion_classes": 1}, {"max_label_classes": 0}, {"label_log_ratio": 1.0}, {"max_overlap_ids": -1}):
        with pytest.raises(ValueError, match="render." + next(iter(bad))):
            HtmlConfig(**bad)


def test_probe_rows_with_nulls_render_without_error(tmp_path):
    rid = "sparse"
    write_table(tmp_path, "robustness", pl.DataFrame([{"run_id": rid, "step": None, "attack": "fgsm", "epsilon": None,
                                                      "clean_acc_frac": None, "adv_acc_frac": None, "n_examples": None}]), "all")
    write_table(tmp_path, "deployment", pl.DataFrame([{"run_id": rid, "step": None, "device": "cpu", "latency_ms_median": None, "n_params": None, "param_bytes": None}]), "all")
    write_table(tmp_path, "data_splits", pl.DataFrame([{"run_id": rid, "split": "val", "role": "held_out", "status": "ok"}]), "all")
    diagnosis = {"status": "diagnosis_complete", "runs": {rid: {"status": "ok", "root_causes": []}}, "sweep": {"root_causes": []}}
    html = render_html(tmp_path, diagnosis, "sparse")
    a = anchor(rid)
    assert f'id="{a}-robustness"' in html and f'id="{a}-deployment"' in html and f'id="{a}-splits"' in html
    assert f'id="{a}-labels"' not in html and f'id="{a}-confusion"' not in html
