"""SVG helpers: well-formed charts, scales, ticks, escaping, the PNG inside heatmaps."""

from __future__ import annotations

import base64
import re
import struct
import xml.etree.ElementTree as ET
import zlib

import numpy as np
import pytest

from mldebug_ray.render import svg
from mldebug_ray.render.downsample import downsample

NS = "{http://www.w3.org/2000/svg}"


def parse(text: str) -> ET.Element:
    return ET.fromstring(text)


def curve(values, steps=None):
    values = np.asarray(values, float)
    return downsample(np.arange(values.size) if steps is None else steps, values)


def test_a_line_chart_is_well_formed_svg_with_one_polyline_per_finite_run_and_a_span():
    c = curve([3, 2, 1, np.nan, 1.5, 1.2])
    text = svg.line_chart("c1", "Loss", [svg.Line("train/loss", c)], [svg.Span(2, 4, "#b2182b", "1", "nan_inf at 3", "#cause")])
    root = parse(text)
    assert root.get("id") == "c1"
    assert len(root.findall(f".//{NS}polyline")) == 2, "the NaN breaks the line in two"
    links = root.findall(f".//{NS}a")
    assert links and links[0].get("href") == "#cause"
    assert "nan_inf at 3" in text


def test_labels_are_escaped():
    text = svg.line_chart("c2", "a <b> & c", [svg.Line('k"<script>', curve([1, 2]))])
    parse(text)
    assert "<script>" not in text


def test_a_chart_without_points_says_so():
    text = svg.line_chart("c3", "Empty", [svg.Line("k", curve([]))])
    assert "no points" in text
    parse(text)


def test_nonfinite_values_are_drawn_as_markers():
    text = svg.line_chart("c4", "Loss", [svg.Line("loss", curve([1.0, 2.0, np.inf, np.nan]))])
    root = parse(text)
    groups = [g for g in root.iter(f"{NS}g") if g.get("class") == "nonfinite"]
    titles = " ".join(g.find(f"{NS}title").text for g in groups)
    assert "+Inf from step 2" in titles and "NaN from step 3" in titles


def test_log_scale_only_when_positive_values_span_three_decades():
    assert svg.wants_log(np.array([1.0, 1e4]))
    assert not svg.wants_log(np.array([1.0, 50.0]))
    assert not svg.wants_log(np.array([-1.0, 1e6]))
    assert "(log scale)" in svg.line_chart("c5", "Grad norm", [svg.Line("g", curve([1, 10, 1e5]))])


def test_symlog_when_values_cross_zero_over_many_decades():
    assert svg.symlog_threshold(np.array([2.0, 1.5, 1.0, -1e20])) is not None
    assert svg.symlog_threshold(np.array([-1.0, 2.0])) is None
    text = svg.line_chart("c6", "Loss", [svg.Line("loss", curve([2.0, 1.5, 1.0, 0.5, -1e20]))])
    assert "(symlog)" in text
    parse(text)


@pytest.mark.parametrize("lo,hi", [(0, 1), (0.1234, 0.1245), (-3, 7), (1, 143_000), (5, 5)])
def test_nice_ticks_cover_the_range_with_distinct_labels(lo, hi):
    ticks = svg.nice_ticks(lo, hi, 5)
    assert ticks and all(lo - 1e-9 <= t <= hi + 1e-9 for t in ticks)
    labels = svg.tick_labels(ticks)
    assert len(set(labels)) == len(labels), labels


def test_log_and_symlog_ticks_are_powers_of_ten():
    assert svg.log_ticks(0.5, 2e4) == [1.0, 10.0, 100.0, 1000.0, 10000.0]
    ticks = svg.symlog_ticks(-1e20, 10, 1.0)
    assert 0.0 in ticks and -1e20 in ticks and len(ticks) <= 8


def test_step_labels_read_like_people_say_them():
    assert [svg.fmt_step(v) for v in (950, 12_000, 1_500_000)] == ["950", "12k", "1.5M"]


def test_overlapping_span_labels_stack_in_rows():
    assert svg.label_rows([100, 105, 300, 108]) == [0, 1, 0, 2]
    assert svg.label_rows([300, 100]) == [0, 0]


def _png_pixels(data: bytes) -> tuple[int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        if tag == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    return size[0], size[1], zlib.decompress(idat)


def test_png_rgb_writes_a_valid_png_of_the_given_pixels():
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[1, 2] = (255, 0, 10)
    w, h, raw = _png_pixels(svg.png_rgb(pixels))
    assert (w, h) == (3, 2)
    rows = [raw[i * (1 + 9) : (i + 1) * (1 + 9)] for i in range(2)]
    assert all(r[0] == 0 for r in rows)
    assert rows[1][1 + 6 : 1 + 9] == bytes([255, 0, 10])


def test_a_heatmap_has_one_pixel_per_cell_and_marks_nonfinite_cells():
    matrix = np.array([[1e-6, 1e-5, np.nan], [1.0, 10.0, 100.0]])
    bad = np.array([[False, False, False], [False, False, True]])
    text = svg.heatmap("h1", "Gradient norm per layer", ["layer.0", "layer.1"], [0, 10, 20, 30], matrix, bad)
    root = parse(text)
    href = root.find(f"{NS}image").get("href")
    w, h, raw = _png_pixels(base64.b64decode(href.split(",", 1)[1]))
    assert (w, h) == (3, 2)
    cell = lambda r, c: raw[r * (1 + 3 * w) + 1 + 3 * c : r * (1 + 3 * w) + 4 + 3 * c]  # noqa: E731
    assert cell(1, 2) == bytes((208, 28, 139)), "non-finite: magenta"
    assert cell(0, 2) == bytes((225, 225, 225)), "not logged: grey"
    assert "layer.1: 1 .. 100 (non-finite from step 20)" in text


def test_a_heatmap_over_probe_steps_labels_columns_by_step():
    text = svg.heatmap("h2", "probe", ["a"], [0, 50, 100, 101], np.ones((1, 3)), col_steps=[0, 50, 100])
    labels = re.findall(r'text-anchor="middle" fill="#444">([^<]+)</text>', text)
    assert labels[:3] == ["0", "50", "100"]


def test_bar_chart_values_and_links():
    text = svg.bar_chart("b1", "Shares", [svg.Bar("embedding", 79.0, text="79.0%", href="#x", link_attrs={"data-filter-kind": "k"})])
    root = parse(text)
    a = root.find(f".//{NS}a")
    assert a.get("href") == "#x" and a.get("data-filter-kind") == "k"
    assert "79.0%" in text


def test_interval_plot_shows_failed_runs_ci_and_boundary():
    groups = [svg.Group(1e-3, [1.0, 1.1, 1.2], 0, ["r1", "r2", "r3"]), svg.Group(1e-1, [0.8, 0.9], 1), svg.Group(1.0, [], 3)]
    text = svg.interval_plot("p1", "lr vs loss", groups, x_label="lr", y_label="final loss", boundary=0.3)
    parse(text)
    assert "95% CI" in text and "boundary" in text and "✕3" in text
    assert text.count("<circle") >= 5 + 1  # one per run, plus the legend's


def test_t95_matches_the_table_and_the_normal_limit():
    assert svg.t95(2) == pytest.approx(4.303)
    assert svg.t95(11) == pytest.approx(2.179)  # the next tabulated df above is conservative
    assert svg.t95(1000) == 1.96


def test_a_bar_chart_limit_is_a_line_at_its_value_and_widens_the_scale():
    text = svg.bar_chart("b2", "Latency", [svg.Bar("step 1", 5.0)], width=620, limit=10.0, limit_label="max_latency_ms 10")
    root = parse(text)
    limit = next(g for g in root.iter(f"{NS}g") if g.get("class") == "limit")
    line = limit.find(f"{NS}line")
    bar = next(r for r in root.iter(f"{NS}rect"))
    x0, bar_w = float(bar.get("x")), float(bar.get("width"))
    assert float(line.get("x1")) - x0 == pytest.approx(2 * bar_w, abs=0.2), "the bar is half the limit"
    assert "max_latency_ms 10" in text
    assert 'class="limit"' not in svg.bar_chart("b3", "Latency", [svg.Bar("s", 5.0)], limit=None)


def test_grouped_columns_draw_one_column_per_split_and_class_and_a_zero_as_a_hollow_mark_on_a_log_axis():
    series = [svg.Series("train", [0.6, 0.39, 0.01]), svg.Series("val", [0.7, 0.3, 0.0], svg.PALETTE[1])]
    text = svg.grouped_columns("g1", "Labels", ["0", "1", "2"], series, log=True)
    root = parse(text)
    filled = [r for r in root.iter(f"{NS}rect") if r.find(f"{NS}title") is not None and r.get("fill") != "none"]
    hollow = [r for r in root.iter(f"{NS}rect") if r.get("fill") == "none"]
    assert len(filled) == 5 and len(hollow) == 1
    assert hollow[0].find(f"{NS}title").text == "2, val: 0"
    assert "log scale" in text
    heights = {r.find(f"{NS}title").text: float(r.get("height")) for r in filled}
    assert heights["0, val: 0.7"] > heights["1, val: 0.3"] > heights["2, train: 0.01"] > 0
    assert "no values" in svg.grouped_columns("g2", "Labels", ["0"], [svg.Series("train", [None])])


def test_a_matrix_heatmap_colours_each_row_by_its_share_and_writes_counts_that_fit():
    counts = np.array([[90, 10, 0], [0, 0, 0], [5, 5, 1200]])
    text = svg.matrix_heatmap("m1", "Confusion", ["0", "1", "2"], ["0", "1", "2"], counts)
    root = parse(text)
    w, h, raw = _png_pixels(base64.b64decode(root.find(f"{NS}image").get("href").split(",", 1)[1]))
    assert (w, h) == (3, 3)
    cell = lambda r, c: raw[r * (1 + 3 * w) + 1 + 3 * c : r * (1 + 3 * w) + 4 + 3 * c]  # noqa: E731
    assert cell(0, 0) == bytes(svg.colormap(np.array([0.9]))[0])
    assert cell(1, 0) == bytes((225, 225, 225)), "a class without examples: grey"
    assert "true 0: 100 examples, 90 right (90%); most often taken for 1 (10)" in text
    assert ">1.2k<" in text and ">90<" in text
    assert svg.fmt_count(999) == "999" and svg.fmt_count(35_400) == "35k" and svg.fmt_count(1_250_000) == "1.2M"
