"""Inline SVG charts built as strings: line charts with finding spans, heatmaps, bars, interval plots.

No plotting library: every chart is a few hundred short SVG elements whose count is
bounded by the downsampling (render/downsample.py), so a report with dozens of charts
stays small, opens offline and diffs as text. Native `<title>` elements give hover
tooltips without JavaScript. A heatmap is one tiny PNG (written here with zlib) stretched
over the plot area, so its size does not grow with rows x columns of SVG rectangles.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from dataclasses import dataclass, field
from html import escape
from typing import Sequence

import numpy as np

from mldebug_ray.render.downsample import Curve

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
SEVERITY_COLORS = {
    "critical": "#b2182b",
    "high": "#e66101",
    "medium": "#d4a017",
    "low": "#4393c3",
    "info": "#8c8c8c",
    "none": "#4d9221",
}
NONFINITE_COLOR = "#d01c8b"
# Matplotlib's viridis at 9 stops (CC0): perceptually uniform and readable by colour-blind viewers.
VIRIDIS = (
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
)
FONT = "font-family:system-ui,-apple-system,'Segoe UI','DejaVu Sans',sans-serif"
# A log y axis once the finite values span this many decades (a grad-norm blow-up to 1e19
# flattens every healthy step onto the x axis of a linear plot).
LOG_SPAN_DECADES = 3.0
# A heatmap whose values span more decades than this gets a percentile-clipped colour scale.
HEATMAP_CLIP_DECADES = 6.0


def attr(text: object) -> str:
    return escape(str(text), quote=True)


def fmt_num(v: float) -> str:
    """Short tick/tooltip text: 3 significant digits, SI-free, no trailing zeros."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NaN"
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e5 or a < 1e-3:
        mant, exp = f"{v:.2e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(exp)}"
    if a >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def fmt_count(n: float) -> str:
    """A count in at most 4 characters: 950, 1.2k, 35k, 1.2M."""
    n = float(n)
    if abs(n) < 1000:
        return f"{n:.0f}"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            v = n / div
            return f"{v:.1f}{unit}" if abs(v) < 10 else f"{v:.0f}{unit}"
    return f"{n:.0f}"


def truncate(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(1, n - 1)] + "…"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ---- scales and ticks ----------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Maps data [lo, hi] to pixels [p0, p1]; log10 when `log`."""

    lo: float
    hi: float
    p0: float
    p1: float
    log: bool = False
    linthresh: float | None = None  # symmetric log: linear within +-linthresh, log10 beyond (negative blow-ups)

    def _t(self, v: float) -> float:
        if self.linthresh:
            return math.copysign(math.log10(1 + abs(v) / self.linthresh), v)
        return math.log10(v) if self.log else v

    def __call__(self, v: float) -> float:
        lo, hi = self._t(self.lo), self._t(self.hi)
        if hi == lo:
            return (self.p0 + self.p1) / 2
        return self.p0 + (self._t(v) - lo) / (hi - lo) * (self.p1 - self.p0)

    def ticks(self, n: int = 5) -> list[float]:
        if self.linthresh:
            return symlog_ticks(self.lo, self.hi, self.linthresh)
        return log_ticks(self.lo, self.hi) if self.log else nice_ticks(self.lo, self.hi, n)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi == lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(v, 12))
        v += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten in [lo, hi], thinned to at most 7."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    exps = [e for e in range(a, b + 1) if lo <= 10 ** e <= hi * (1 + 1e-9)]
    stride = max(1, math.ceil(len(exps) / 7))
    return [10.0 ** e for e in exps[::stride]]


def symlog_ticks(lo: float, hi: float, linthresh: float) -> list[float]:
    """0 and +-powers of ten above `linthresh` within [lo, hi], thinned to about 7."""
    k0 = math.ceil(math.log10(linthresh))
    top = max(abs(lo), abs(hi))
    exps = list(range(k0, math.floor(math.log10(top)) + 1)) if top >= 10 ** k0 else []
    stride = max(1, math.ceil(2 * len(exps) / 6))
    exps = exps[::-1][::stride][::-1]
    ticks = [-(10.0 ** k) for k in reversed(exps)] + [0.0] + [10.0 ** k for k in exps]
    return [t for t in ticks if lo <= t <= hi]


def symlog_threshold(values: np.ndarray) -> float | None:
    """A linear-zone width when values cross zero and span >= LOG_SPAN_DECADES decades, else None."""
    if values.size == 0 or values.min() >= 0:
        return None
    mags = np.abs(values[values != 0])
    if mags.size == 0:
        return None
    small = float(np.percentile(mags, 10))
    big = float(mags.max())
    if small <= 0 or math.log10(big / small) < LOG_SPAN_DECADES:
        return None
    return 10.0 ** math.floor(math.log10(small))


def padded_range(values: np.ndarray, log: bool) -> tuple[float, float]:
    lo, hi = float(np.min(values)), float(np.max(values))
    if log:
        return lo / 1.5, hi * 1.5
    if hi == lo:
        pad = abs(hi) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.06
    return lo - pad, hi + pad


def wants_log(values: np.ndarray) -> bool:
    """True when positive values span >= LOG_SPAN_DECADES decades."""
    if values.size == 0 or np.min(values) <= 0:
        return False
    return math.log10(float(np.max(values)) / float(np.min(values))) >= LOG_SPAN_DECADES


# ---- line charts with finding spans --------------------------------------------------


@dataclass
class Line:
    label: str
    curve: Curve
    color: str = PALETTE[0]


@dataclass
class Span:
    """A finding drawn on a chart: a shaded [start, end] range and an onset line with a label."""

    start: float
    end: float | None
    color: str
    label: str
    title: str
    href: str = ""


@dataclass
class Frame:
    width: int = 620
    height: int = 240
    left: int = 62
    right: int = 14
    top: int = 30
    bottom: int = 34

    @property
    def x0(self) -> float:
        return self.left

    @property
    def x1(self) -> float:
        return self.width - self.right

    @property
    def y0(self) -> float:
        return self.height - self.bottom

    @property
    def y1(self) -> float:
        return self.top


def _svg_open(frame: Frame, elem_id: str, label: str, css_class: str = "chart") -> str:
    return (
        f'<svg id="{attr(elem_id)}" class="{css_class}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {frame.width} {frame.height}" role="img" aria-label="{attr(label)}" style="{FONT}">'
    )


def _polyline_segments(xs: np.ndarray, ys: np.ndarray) -> list[str]:
    """Points strings of the finite runs of (xs, ys); a NaN y breaks the line."""
    segments, current = [], []
    for x, y in zip(xs, ys):
        if math.isfinite(y):
            current.append(f"{x:.1f},{y:.1f}")
        elif current:
            segments.append(" ".join(current))
            current = []
    if current:
        segments.append(" ".join(current))
    return segments


def fmt_step(v: float) -> str:
    """A step count as people say it: 950, 12k, 1.5M."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def tick_labels(ticks: Sequence[float], fmt=fmt_num) -> list[str]:
    """Labels for `ticks` with just enough digits that no two read the same."""
    labels = [fmt(t) for t in ticks]
    digits = 4
    while len(set(labels)) < len(labels) and digits <= 10:
        labels = [f"{t:.{digits}g}" for t in ticks]
        digits += 1
    return labels


def _axes(frame: Frame, sx: Scale, sy: Scale, x_label: str) -> list[str]:
    out = [f'<rect x="{frame.x0}" y="{frame.y1}" width="{frame.x1 - frame.x0}" height="{frame.y0 - frame.y1}" fill="#fff" stroke="#bbb"/>']
    y_ticks = [t for t in sy.ticks() if frame.y1 - 0.5 <= sy(t) <= frame.y0 + 0.5]
    for t, text in zip(y_ticks, tick_labels(y_ticks)):
        y = sy(t)
        out.append(f'<line x1="{frame.x0}" x2="{frame.x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{frame.x0 - 5}" y="{y + 3.5:.1f}" font-size="10" text-anchor="end" fill="#444">{text}</text>')
    x_ticks = [t for t in sx.ticks(6) if frame.x0 - 0.5 <= sx(t) <= frame.x1 + 0.5]
    for t, text in zip(x_ticks, tick_labels(x_ticks, fmt_step if x_label == "step" else fmt_num)):
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{frame.y0}" y2="{frame.y0 + 4}" stroke="#888"/>')
        out.append(f'<text x="{x:.1f}" y="{frame.y0 + 15}" font-size="10" text-anchor="middle" fill="#444">{text}</text>')
    out.append(f'<text x="{(frame.x0 + frame.x1) / 2:.1f}" y="{frame.height - 4}" font-size="10" text-anchor="middle" fill="#666">{attr(x_label)}</text>')
    return out


def _legend(frame: Frame, title: str, lines: Sequence[Line], y_log: bool, scale_note: str = "") -> list[str]:
    note = "log scale" if y_log else scale_note
    out = [f'<text x="{frame.x0}" y="13" font-size="12" font-weight="600" fill="#222">{attr(title)}'
           + (f' <tspan font-size="10" font-weight="400" fill="#888">({note})</tspan>' if note else "") + "</text>"]
    # Legend entries right-aligned on the title row, truncated so they never run off the chart.
    x = frame.x1
    for line in reversed(list(lines)):
        label = line.label if len(line.label) <= 28 else "…" + line.label[-27:]
        w = 6.2 * len(label) + 16
        if x - w < frame.x0 + 7.5 * len(title) + 70:
            break
        x -= w
        out.append(f'<line x1="{x:.1f}" x2="{x + 10:.1f}" y1="9" y2="9" stroke="{line.color}" stroke-width="2.5"/>')
        out.append(f'<text x="{x + 13:.1f}" y="12.5" font-size="10" fill="#333"><title>{attr(line.label)}</title>{attr(label)}</text>')
    return out


def line_chart(
    elem_id: str, title: str, lines: Sequence[Line], spans: Sequence[Span] = (), *, x_label: str = "step",
    frame: Frame | None = None, y_log: bool | None = None,
) -> str:
    """A chart of `lines` over steps with each span shaded and its onset marked; None y_log: decide from the data."""
    frame = frame or Frame()
    xs = [c for ln in lines for c in (ln.curve.x, ln.curve.nan_x, ln.curve.posinf_x, ln.curve.neginf_x) if c.size]
    finite_y = np.concatenate([ln.curve.finite_y() for ln in lines]) if lines else np.empty(0)
    out = [_svg_open(frame, elem_id, title)]
    if not xs:
        out += _legend(frame, title, lines, False)
        out.append(f'<text x="{frame.width / 2}" y="{frame.height / 2}" text-anchor="middle" font-size="12" fill="#888">no points</text></svg>')
        return "".join(out)
    all_x = np.concatenate(xs + [np.asarray([s.start for s in spans], float)])
    x_lo, x_hi = float(all_x.min()), float(all_x.max())
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    sx = Scale(x_lo, x_hi, frame.x0 + 4, frame.x1 - 4)
    log = wants_log(finite_y) if y_log is None else (y_log and finite_y.size > 0 and finite_y.min() > 0)
    linthresh = None if log or y_log is False else symlog_threshold(finite_y)
    y_lo, y_hi = padded_range(finite_y, log) if finite_y.size else (0.0, 1.0)
    if linthresh:
        y_lo, y_hi = float(finite_y.min()) * 1.5 if finite_y.min() < 0 else 0.0, float(finite_y.max()) * 1.5 if finite_y.max() > 0 else 0.0
    sy = Scale(y_lo, y_hi, frame.y0, frame.y1, log, linthresh)
    out += _axes(frame, sx, sy, x_label)
    rows = label_rows([sx(sp.start) for sp in spans])
    for sp, row in zip(spans, rows):
        xa = sx(sp.start)
        xb = sx(sp.end) if sp.end is not None and sp.end > sp.start else xa
        link_open = f'<a href="{attr(sp.href)}">' if sp.href else ""
        link_close = "</a>" if sp.href else ""
        ly = frame.y1 + 2 + 15 * row
        out.append(f'<g class="span">{link_open}<title>{attr(sp.title)}</title>')
        if xb - xa >= 1:
            out.append(f'<rect x="{xa:.1f}" y="{frame.y1}" width="{xb - xa:.1f}" height="{frame.y0 - frame.y1}" fill="{sp.color}" fill-opacity="0.12"/>')
        out.append(f'<line x1="{xa:.1f}" x2="{xa:.1f}" y1="{frame.y1}" y2="{frame.y0}" stroke="{sp.color}" stroke-width="1.5" stroke-dasharray="4 3"/>')
        out.append(f'<rect x="{xa - 8:.1f}" y="{ly}" width="16" height="13" rx="3" fill="{sp.color}"/>')
        out.append(f'<text x="{xa:.1f}" y="{ly + 10}" font-size="10" font-weight="700" text-anchor="middle" fill="#fff">{attr(sp.label)}</text>')
        out.append(f"{link_close}</g>")
    for ln in lines:
        c = ln.curve
        px = np.array([sx(v) for v in c.x])
        py = np.array([sy(v) if math.isfinite(v) and (not log or v > 0) else math.nan for v in c.y])
        for seg in _polyline_segments(px, py):
            out.append(f'<polyline points="{seg}" fill="none" stroke="{ln.color}" stroke-width="1.4" stroke-linejoin="round"><title>{attr(ln.label)}</title></polyline>')
        if px.size == 1 or (px.size and np.isfinite(py).sum() == 1):
            i = int(np.flatnonzero(np.isfinite(py))[0])
            out.append(f'<circle cx="{px[i]:.1f}" cy="{py[i]:.1f}" r="2.5" fill="{ln.color}"/>')
        for arr, y, what in ((c.nan_x, frame.y1 + 1, "NaN"), (c.posinf_x, frame.y1 + 1, "+Inf"), (c.neginf_x, frame.y0 - 5, "-Inf")):
            if arr.size:
                ticks = "".join(f'<rect x="{sx(v) - 1:.1f}" y="{y:.1f}" width="2.5" height="5"/>' for v in arr)
                out.append(f'<g class="nonfinite" fill="{NONFINITE_COLOR}"><title>{attr(ln.label)}: {what} from step {fmt_num(float(arr.min()))}</title>{ticks}</g>')
    out += _legend(frame, title, lines, log, "symlog" if linthresh else "")
    out.append("</svg>")
    return "".join(out)


def label_rows(xs: Sequence[float], min_gap: float = 18.0, max_rows: int = 4) -> list[int]:
    """A row per label so that labels closer than `min_gap` px stack instead of overlapping."""
    last: list[float] = []
    rows = [0] * len(xs)
    for i in sorted(range(len(xs)), key=lambda i: xs[i]):  # left to right: a row's last label is its rightmost
        x = xs[i]
        for r in range(max_rows):
            if r >= len(last) or x - last[r] >= min_gap:
                break
        else:
            r = max_rows - 1
        if r >= len(last):
            last.append(x)
        else:
            last[r] = x
        rows[i] = r
    return rows


# ---- heatmap -------------------------------------------------------------------------


def png_rgb(pixels: np.ndarray) -> bytes:
    """A PNG of an (h, w, 3) uint8 array, written with zlib (no imaging library)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[i].tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def colormap(t: np.ndarray) -> np.ndarray:
    """Viridis RGB (uint8) for t in [0, 1]."""
    stops = np.asarray(VIRIDIS, dtype=float)
    pos = np.clip(t, 0, 1) * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    f = (pos - i)[..., None]
    return np.rint(stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def heatmap(
    elem_id: str, title: str, row_labels: Sequence[str], col_edges: Sequence[float], matrix: np.ndarray,
    nonfinite: np.ndarray | None = None, *, value_label: str = "grad norm", spans: Sequence[Span] = (), width: int = 620,
    col_steps: Sequence[float] | None = None,
) -> str:
    """Rows x columns of values on a log10 colour scale; `nonfinite` cells magenta, NaN cells (nothing logged) grey.

    `col_edges` has one more entry than `matrix` has columns (the step range of each column).
    With `col_steps` (one step per column, e.g. the steps a probe ran at) the columns are
    equal-width and labelled by their step instead, and spans are placed between them.
    """
    matrix = np.asarray(matrix, dtype=float)
    bad = np.zeros(matrix.shape, bool) if nonfinite is None else np.asarray(nonfinite, bool)
    bad = bad | np.isinf(matrix)
    n_rows, n_cols = matrix.shape
    row_h = max(6, min(16, 300 // max(n_rows, 1)))
    left, right = 150, 14
    if col_steps is not None and len(col_steps):
        centers = left + (np.arange(len(col_steps)) + 0.5) * (width - right - left) / len(col_steps)
        steps_arr = np.asarray(col_steps, float)
        sx = lambda v: float(np.interp(v, steps_arr, centers))  # noqa: E731
    else:
        sx = Scale(float(col_edges[0]), float(col_edges[-1]), left, width - right) if len(col_edges) else None
    span_rows = label_rows([sx(sp.start) for sp in spans]) if sx else []
    top = 34 + 13 * max(span_rows, default=0)  # finding labels sit above the rows, stacked when close
    frame = Frame(width=width, height=top + row_h * n_rows + 58, left=left, right=right, top=top, bottom=58)
    out = [_svg_open(frame, elem_id, title)]
    out.append(f'<text x="{frame.x0}" y="13" font-size="12" font-weight="600" fill="#222">{attr(title)}</text>')
    if n_rows == 0 or n_cols == 0:
        out.append("</svg>")
        return "".join(out)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(np.isfinite(matrix) & (matrix > 0), np.log10(np.where(matrix > 0, matrix, 1)), np.nan)
    finite = logs[np.isfinite(logs)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    clipped_lo = clipped_hi = False
    if hi - lo > HEATMAP_CLIP_DECADES:
        # A blow-up to 1e18 in the last columns would flatten every earlier cell to one colour:
        # the colour scale spans the 2nd..98th percentile and the extremes saturate.
        p_lo, p_hi = (float(v) for v in np.percentile(finite, [2, 98]))
        clipped_lo, clipped_hi = p_lo > lo, p_hi < hi
        lo, hi = p_lo, p_hi
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    rgb = colormap((np.nan_to_num(logs, nan=lo) - lo) / (hi - lo))
    rgb[np.isnan(matrix)] = (225, 225, 225)  # not logged in this column
    rgb[matrix == 0] = colormap(np.zeros(1))[0]  # an exact zero gradient sits at the bottom of the scale
    rgb[bad] = (208, 28, 139)
    data = base64.b64encode(png_rgb(rgb)).decode()
    pw, ph = frame.x1 - frame.x0, row_h * n_rows
    out.append(
        f'<image x="{frame.x0}" y="{frame.y1}" width="{pw}" height="{ph}" preserveAspectRatio="none" '
        f'style="image-rendering:pixelated" href="data:image/png;base64,{data}"/>'
    )
    for i, label in enumerate(row_labels):
        y = frame.y1 + i * row_h
        short = label if len(label) <= 24 else "…" + label[-23:]
        row = matrix[i]
        fin = row[np.isfinite(row)]
        tip = f"{label}: " + (f"{fmt_num(float(fin.min()))} .. {fmt_num(float(fin.max()))}" if fin.size else "no finite value")
        if bad[i].any():
            tip += f" (non-finite from step {fmt_num(float(col_edges[int(np.argmax(bad[i]))]))})"
        out.append(f'<g><title>{attr(tip)}</title><rect x="0" y="{y}" width="{frame.x1}" height="{row_h}" fill="transparent"/>')
        if row_h >= 8 or i % max(1, 8 // row_h) == 0:
            out.append(f'<text x="{frame.x0 - 5}" y="{y + row_h / 2 + 3.5:.1f}" font-size="{min(10, row_h)}" text-anchor="end" fill="#333">{attr(short)}</text>')
        out.append("</g>")
    y_axis = frame.y1 + ph
    if col_steps is not None and len(col_steps):
        stride = max(1, math.ceil(len(col_steps) / 8))
        x_ticks = [float(v) for v in list(col_steps)[::stride]]
    else:
        x_ticks = [t for t in nice_ticks(float(col_edges[0]), float(col_edges[-1]), 6) if frame.x0 - 0.5 <= sx(t) <= frame.x1 + 0.5]
    for t, text in zip(x_ticks, tick_labels(x_ticks, fmt_step)):
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y_axis}" y2="{y_axis + 4}" stroke="#888"/>')
        out.append(f'<text x="{x:.1f}" y="{y_axis + 15}" font-size="10" text-anchor="middle" fill="#444">{text}</text>')
    for sp, row in zip(spans, span_rows):
        xa = sx(sp.start)
        ly = frame.y1 - 14 - 13 * row
        out.append(f'<g><title>{attr(sp.title)}</title><line x1="{xa:.1f}" x2="{xa:.1f}" y1="{ly + 12}" y2="{y_axis}" stroke="#fff" stroke-width="1.5" stroke-dasharray="3 3"/>'
                   f'<rect x="{xa - 8:.1f}" y="{ly}" width="16" height="12" rx="3" fill="{sp.color}"/>'
                   f'<text x="{xa:.1f}" y="{ly + 9.5}" font-size="9.5" font-weight="700" text-anchor="middle" fill="#fff">{attr(sp.label)}</text></g>')
    # colour bar
    bar_y = y_axis + 26
    bar = colormap(np.linspace(0, 1, 64))[None, :, :]
    bar_b64 = base64.b64encode(png_rgb(bar)).decode()
    out.append(f'<image x="{frame.x0}" y="{bar_y}" width="160" height="9" preserveAspectRatio="none" href="data:image/png;base64,{bar_b64}"/>')
    out.append(f'<text x="{frame.x0 - 5}" y="{bar_y + 8}" font-size="10" text-anchor="end" fill="#444">{attr(value_label)}</text>')
    out.append(f'<text x="{frame.x0}" y="{bar_y + 20}" font-size="9.5" fill="#444">{"≤" if clipped_lo else ""}{fmt_num(10 ** lo)}</text>')
    out.append(f'<text x="{frame.x0 + 160}" y="{bar_y + 20}" font-size="9.5" text-anchor="end" fill="#444">{"≥" if clipped_hi else ""}{fmt_num(10 ** hi)}</text>')
    out.append(f'<rect x="{frame.x0 + 180}" y="{bar_y}" width="9" height="9" fill="{NONFINITE_COLOR}"/><text x="{frame.x0 + 193}" y="{bar_y + 8}" font-size="10" fill="#444">NaN/Inf</text>')
    out.append(f'<rect x="{frame.x0 + 250}" y="{bar_y}" width="9" height="9" fill="#e1e1e1" stroke="#bbb"/><text x="{frame.x0 + 263}" y="{bar_y + 8}" font-size="10" fill="#444">not logged</text>')
    out.append(f'<text x="{frame.x1}" y="{bar_y + 8}" font-size="10" text-anchor="end" fill="#666">step</text>')
    out.append("</svg>")
    return "".join(out)


# ---- bars ----------------------------------------------------------------------------


@dataclass
class Bar:
    label: str
    value: float
    color: str = PALETTE[0]
    text: str = ""  # the value as shown; defaults to fmt_num(value)
    title: str = ""
    href: str = ""
    link_attrs: dict[str, str] = field(default_factory=dict)  # extra attributes of the link (e.g. data-filter-kind)


def bar_chart(
    elem_id: str, title: str, bars: Sequence[Bar], *, width: int = 620, max_value: float | None = None,
    limit: float | None = None, limit_label: str = "limit",
) -> str:
    """Horizontal bars, one per row, labelled on the left and valued on the right; `limit` a dashed line across them."""
    row_h = 20
    label_w = min(240, max([60] + [int(7.0 * min(len(b.label), 34)) + 12 for b in bars]))
    text_w = max([40] + [int(6.4 * len(b.text or fmt_num(b.value))) + 12 for b in bars])
    has_limit = limit is not None and math.isfinite(limit) and limit > 0
    frame = Frame(width=width, height=26 + row_h * max(len(bars), 1) + 8 + (14 if has_limit else 0), left=label_w,
                  right=min(text_w, width // 3), top=24, bottom=8)
    out = [_svg_open(frame, elem_id, title)]
    out.append(f'<text x="4" y="14" font-size="12" font-weight="600" fill="#222">{attr(title)}</text>')
    top = max_value if max_value is not None else max([b.value for b in bars if math.isfinite(b.value)] + [0.0])
    if has_limit:
        top = max(top, limit)
    for i, b in enumerate(bars):
        y = frame.y1 + i * row_h
        w = 0.0 if not top or not math.isfinite(b.value) else max(0.0, b.value) / top * (frame.x1 - frame.x0)
        label = b.label if len(b.label) <= 34 else "…" + b.label[-33:]
        extra = "".join(f' {k}="{attr(v)}"' for k, v in b.link_attrs.items())
        link_open = f'<a href="{attr(b.href)}"{extra}>' if b.href else ""
        out.append(f'<g class="bar">{link_open}<title>{attr(b.title or b.label)}</title>')
        out.append(f'<text x="{frame.x0 - 6}" y="{y + 14}" font-size="11" text-anchor="end" fill="#333">{attr(label)}</text>')
        out.append(f'<rect x="{frame.x0}" y="{y + 3}" width="{max(w, 1.5):.1f}" height="{row_h - 6}" rx="2" fill="{b.color}"/>')
        out.append(f'<text x="{frame.x0 + w + 5:.1f}" y="{y + 14}" font-size="11" fill="#333">{attr(b.text or fmt_num(b.value))}</text>')
        out.append("</a></g>" if b.href else "</g>")
    if has_limit:
        lx = frame.x0 + limit / top * (frame.x1 - frame.x0)
        y_end = frame.y1 + row_h * max(len(bars), 1)
        out.append(f'<g class="limit"><title>{attr(limit_label)}: {fmt_num(limit)}</title>'
                   f'<line x1="{lx:.1f}" x2="{lx:.1f}" y1="{frame.y1}" y2="{y_end + 2}" stroke="{SEVERITY_COLORS["critical"]}" stroke-width="1.5" stroke-dasharray="5 3"/>'
                   f'<text x="{lx:.1f}" y="{y_end + 13}" font-size="10" text-anchor="middle" fill="{SEVERITY_COLORS["critical"]}">{attr(limit_label)}</text></g>')
    out.append("</svg>")
    return "".join(out)


@dataclass
class Series:
    """One group member of a grouped column chart (e.g. one split): a value per category, None where absent."""

    label: str
    values: Sequence[float | None]
    color: str = PALETTE[0]
    tips: Sequence[str] = ()


def grouped_columns(
    elem_id: str, title: str, categories: Sequence[str], series: Sequence[Series], *, log: bool = False,
    y_label: str = "", width: int = 620, height: int = 230,
) -> str:
    """Vertical columns grouped by category, one colour per series; on a log axis a zero is a hollow marker at the floor."""
    frame = Frame(width=width, height=height, left=62, right=14, top=30, bottom=40)
    out = [_svg_open(frame, elem_id, title)]
    out += _legend(frame, title, [Line(s.label, Curve(np.empty(0), np.empty(0)), s.color) for s in series], log)
    vals = np.asarray([v for s in series for v in s.values if v is not None and math.isfinite(v)], float)
    positive = vals[vals > 0]
    if not categories or positive.size == 0:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12" fill="#888">no values</text></svg>')
        return "".join(out)
    if log:
        lo, hi = float(positive.min()) / 2, float(positive.max()) * 1.3
    else:
        lo, hi = 0.0, float(positive.max()) * 1.08
    sy = Scale(lo, hi, frame.y0, frame.y1, log)
    sx = Scale(0, len(categories), frame.x0, frame.x1)
    out += _axes(frame, sx, sy, "")[:1]  # the frame only: the x axis is categories, labelled below
    y_ticks = [t for t in sy.ticks() if frame.y1 - 0.5 <= sy(t) <= frame.y0 + 0.5]
    for t, text in zip(y_ticks, tick_labels(y_ticks)):
        y = sy(t)
        out.append(f'<line x1="{frame.x0}" x2="{frame.x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{frame.x0 - 5}" y="{y + 3.5:.1f}" font-size="10" text-anchor="end" fill="#444">{text}</text>')
    if y_label:
        out.append(f'<text x="12" y="{(frame.y0 + frame.y1) / 2:.1f}" font-size="10" fill="#666" text-anchor="middle" transform="rotate(-90 12 {(frame.y0 + frame.y1) / 2:.1f})">{attr(y_label)}</text>')
    slot = (frame.x1 - frame.x0) / len(categories)
    col_w = max(1.0, slot * 0.8 / max(len(series), 1))
    label_every = max(1, math.ceil(len(categories) * 34 / (frame.x1 - frame.x0)))
    for ci, cat in enumerate(categories):
        x_slot = frame.x0 + ci * slot + slot * 0.1
        for si, s in enumerate(series):
            v = s.values[ci] if ci < len(s.values) else None
            if v is None or not math.isfinite(v):
                continue
            tip = s.tips[ci] if ci < len(s.tips) else f"{cat}, {s.label}: {fmt_num(v)}"
            x = x_slot + si * col_w
            if v <= 0 and log:
                out.append(f'<rect x="{x + 0.5:.1f}" y="{frame.y0 - 4}" width="{max(col_w - 1, 1):.1f}" height="4" fill="none" stroke="{s.color}"><title>{attr(tip)}</title></rect>')
                continue
            y = sy(v) if v > 0 else frame.y0
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(col_w - 0.6, 0.8):.1f}" height="{max(frame.y0 - y, 0.8):.1f}" fill="{s.color}"><title>{attr(tip)}</title></rect>')
        if ci % label_every == 0:
            out.append(f'<text x="{x_slot + slot * 0.4:.1f}" y="{frame.y0 + 14}" font-size="10" text-anchor="middle" fill="#444">{attr(truncate(cat, 8))}</text>')
    return "".join(out) + "</svg>"


def matrix_heatmap(
    elem_id: str, title: str, row_labels: Sequence[str], col_labels: Sequence[str], counts: np.ndarray, *,
    row_title: str = "true", col_title: str = "predicted", width: int = 620, max_cell_text: int = 12,
) -> str:
    """A count matrix coloured by each row's share (0..1, viridis), as one PNG; counts written in the cells when few.

    Row shares make the colour read the same for a class of 10 and one of 10,000 examples:
    the diagonal cell of a row is that class's accuracy (recall).
    """
    counts = np.asarray(counts, dtype=float)
    n_rows, n_cols = counts.shape
    left, top = 74, 44
    size = min((width - left - 14) / max(n_cols, 1), 300 / max(n_rows, 1), 44.0)  # at most ~300 px tall
    frame = Frame(width=width, height=int(top + size * n_rows + 52), left=left, right=14, top=top, bottom=52)
    out = [_svg_open(frame, elem_id, title)]
    out.append(f'<text x="4" y="13" font-size="12" font-weight="600" fill="#222">{attr(title)}</text>')
    if n_rows == 0 or n_cols == 0:
        return "".join(out) + "</svg>"
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(totals > 0, counts / totals, np.nan)
    rgb = colormap(np.nan_to_num(share, nan=0.0))
    rgb[np.isnan(share)] = (225, 225, 225)
    data = base64.b64encode(png_rgb(rgb)).decode()
    pw, ph = size * n_cols, size * n_rows
    out.append(f'<image x="{frame.x0}" y="{frame.y1}" width="{pw:.1f}" height="{ph:.1f}" preserveAspectRatio="none" '
               f'style="image-rendering:pixelated" href="data:image/png;base64,{data}"/>')
    out.append(f'<text x="{frame.x0 + pw / 2:.1f}" y="{frame.y1 - 20}" font-size="10" text-anchor="middle" fill="#666">{attr(col_title)}</text>')
    out.append(f'<text x="10" y="{frame.y1 + ph / 2:.1f}" font-size="10" fill="#666" text-anchor="middle" transform="rotate(-90 10 {frame.y1 + ph / 2:.1f})">{attr(row_title)}</text>')
    text_cells = max(n_rows, n_cols) <= max_cell_text
    label_every = max(1, math.ceil(10 / size))
    for j, label in enumerate(col_labels):
        if j % label_every == 0:
            out.append(f'<text x="{frame.x0 + (j + 0.5) * size:.1f}" y="{frame.y1 - 5}" font-size="9.5" text-anchor="middle" fill="#333">{attr(truncate(label, max(2, int(size / 5.5))))}</text>')
    for i, label in enumerate(row_labels):
        y = frame.y1 + i * size
        row = counts[i]
        total = float(row.sum())
        diag = float(row[i]) if i < n_cols and row_labels[i] == col_labels[i] else math.nan
        tip = f"{row_title} {label}: {int(total):,} examples"
        if not math.isnan(diag) and total:
            tip += f", {int(diag):,} right ({fmt_num(100 * diag / total)}%)"
        off = [(row[j], col_labels[j]) for j in range(n_cols) if j != i and row[j] > 0]
        if off:
            n, lab = max(off)
            tip += f"; most often taken for {lab} ({int(n):,})"
        out.append(f'<g><title>{attr(tip)}</title><rect x="0" y="{y:.1f}" width="{frame.x0 + pw:.1f}" height="{size:.1f}" fill="transparent"/>')
        if i % label_every == 0:
            out.append(f'<text x="{frame.x0 - 5}" y="{y + size / 2 + 3.5:.1f}" font-size="{min(10, size):.0f}" text-anchor="end" fill="#333">{attr(truncate(label, 10))}</text>')
        out.append("</g>")
        if text_cells:
            for j in range(n_cols):
                text = fmt_count(row[j])
                if row[j] > 0 and 5.6 * len(text) + 3 <= size:
                    light = not np.isnan(share[i, j]) and share[i, j] < 0.6  # viridis is dark below ~0.6
                    out.append(f'<text x="{frame.x0 + (j + 0.5) * size:.1f}" y="{y + size / 2 + 3.5:.1f}" font-size="9.5" text-anchor="middle" '
                               f'fill="{"#fff" if light else "#111"}" pointer-events="none">{text}</text>')
    bar_y = frame.y1 + ph + 18
    bar = colormap(np.linspace(0, 1, 64))[None, :, :]
    out.append(f'<image x="{frame.x0}" y="{bar_y}" width="160" height="9" preserveAspectRatio="none" href="data:image/png;base64,{base64.b64encode(png_rgb(bar)).decode()}"/>')
    out.append(f'<text x="{frame.x0 - 5}" y="{bar_y + 8}" font-size="10" text-anchor="end" fill="#444">row share</text>')
    out.append(f'<text x="{frame.x0}" y="{bar_y + 20}" font-size="9.5" fill="#444">0</text><text x="{frame.x0 + 160}" y="{bar_y + 20}" font-size="9.5" text-anchor="end" fill="#444">1</text>')
    return "".join(out) + "</svg>"


# ---- hyperparameter vs outcome -------------------------------------------------------

# Two-sided 95% Student-t quantiles by degrees of freedom (df > 30 uses the normal 1.96).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def t95(df: int) -> float:
    if df <= 0:
        return math.nan
    if df > 30:
        return 1.96
    return T95.get(df) or T95[min(k for k in T95 if k >= df)]


@dataclass
class Group:
    """Runs sharing one hyperparameter value: their outcomes (finite) and how many failed."""

    x: float
    values: list[float]
    n_failed: int = 0
    tips: list[str] = field(default_factory=list)  # one per value: run id and outcome


def interval_plot(
    elem_id: str, title: str, groups: Sequence[Group], *, x_label: str, y_label: str,
    boundary: float | None = None, width: int = 620, height: int = 260,
) -> str:
    """Outcome per run against a hyperparameter: dots per run, min-max whisker (the seed spread),
    a 95% t-interval of the mean, the mean line; failed runs as crosses above the plot."""
    frame = Frame(width=width, height=height, left=62, right=14, top=50, bottom=34)
    out = [_svg_open(frame, elem_id, title)]
    out.append(f'<text x="{frame.x0}" y="13" font-size="12" font-weight="600" fill="#222"><title>{attr(title)}</title>{attr(truncate(title, int((frame.x1 - frame.x0) / 7)))}</text>')
    xs = np.asarray([g.x for g in groups], float)
    ys = np.asarray([v for g in groups for v in g.values], float)
    if xs.size == 0:
        out.append("</svg>")
        return "".join(out)
    x_log = wants_log(np.concatenate([xs, [boundary]]) if boundary else xs) or (xs.min() > 0 and xs.max() / xs.min() >= 100)
    x_lo, x_hi = (float(xs.min()), float(xs.max())) if boundary is None else (min(float(xs.min()), boundary), max(float(xs.max()), boundary))
    if x_log:
        x_lo, x_hi = x_lo / 2, x_hi * 2
    else:
        pad = (x_hi - x_lo) * 0.08 or abs(x_hi) * 0.1 or 1.0
        x_lo, x_hi = x_lo - pad, x_hi + pad
    sx = Scale(x_lo, x_hi, frame.x0 + 4, frame.x1 - 4, x_log)
    y_log = wants_log(ys)
    y_lo, y_hi = padded_range(ys, y_log) if ys.size else (0.0, 1.0)
    sy = Scale(y_lo, y_hi, frame.y0, frame.y1, y_log)
    out += _axes(frame, sx, sy, x_label)
    out.append(f'<text x="12" y="{(frame.y0 + frame.y1) / 2:.1f}" font-size="10" fill="#666" text-anchor="middle" transform="rotate(-90 12 {(frame.y0 + frame.y1) / 2:.1f})">{attr(y_label)}</text>')
    fail_y = frame.y1 - 9
    if any(g.n_failed for g in groups):
        out.append(f'<text x="{frame.x0 - 5}" y="{fail_y + 3.5}" font-size="10" text-anchor="end" fill="{SEVERITY_COLORS["critical"]}">failed</text>')
    if boundary is not None:
        bx = sx(boundary)
        out.append(f'<g><title>instability boundary {fmt_num(boundary)}</title><line x1="{bx:.1f}" x2="{bx:.1f}" y1="{frame.y1 - 14}" y2="{frame.y0}" stroke="{SEVERITY_COLORS["critical"]}" stroke-width="1.5" stroke-dasharray="5 3"/>'
                   f'<text x="{bx + 4:.1f}" y="{frame.y1 + 11}" font-size="10" fill="{SEVERITY_COLORS["critical"]}">boundary</text></g>')
    means = []
    for gi, g in enumerate(sorted(groups, key=lambda g: g.x)):
        x = sx(g.x)
        vals = np.asarray(g.values, float)
        if vals.size:
            mean = float(vals.mean())
            means.append((x, sy(mean)))
            if vals.size > 1:
                out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{sy(float(vals.min())):.1f}" y2="{sy(float(vals.max())):.1f}" stroke="#888" stroke-width="1"/>')
                sd = float(vals.std(ddof=1))
                half = t95(vals.size - 1) * sd / math.sqrt(vals.size)
                lo_ci, hi_ci = mean - half, mean + half
                if y_log:
                    lo_ci = max(lo_ci, y_lo)
                out.append(f'<g><title>{attr(f"{x_label} = {fmt_num(g.x)}: mean {fmt_num(mean)}, 95% CI [{fmt_num(mean - half)}, {fmt_num(mean + half)}], n={vals.size}, spread {fmt_num(float(vals.min()))}..{fmt_num(float(vals.max()))}")}</title>'
                           f'<rect x="{x - 4:.1f}" y="{sy(min(hi_ci, y_hi)):.1f}" width="8" height="{max(1.0, sy(max(lo_ci, y_lo)) - sy(min(hi_ci, y_hi))):.1f}" fill="{PALETTE[0]}" fill-opacity="0.25" stroke="{PALETTE[0]}"/></g>')
            out.append(f'<line x1="{x - 9:.1f}" x2="{x + 9:.1f}" y1="{sy(mean):.1f}" y2="{sy(mean):.1f}" stroke="{PALETTE[0]}" stroke-width="2.5"/>')
            for j, v in enumerate(vals):
                jitter = ((j * 7919 + gi * 31) % 11 - 5) * 0.9
                tip = g.tips[j] if j < len(g.tips) else fmt_num(float(v))
                out.append(f'<circle cx="{x + jitter:.1f}" cy="{sy(float(v)):.1f}" r="3" fill="{PALETTE[1]}" fill-opacity="0.85"><title>{attr(tip)}</title></circle>')
        if g.n_failed:
            out.append(f'<g><title>{g.n_failed} run(s) at {attr(fmt_num(g.x))} failed (NaN/diverged)</title><text x="{x:.1f}" y="{fail_y + 4}" font-size="12" font-weight="700" text-anchor="middle" fill="{SEVERITY_COLORS["critical"]}">✕{g.n_failed if g.n_failed > 1 else ""}</text></g>')
    if len(means) > 1:
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in means)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{PALETTE[0]}" stroke-width="1" stroke-opacity="0.6"/>')
    lx = frame.x1 - 250
    out.append(f'<g font-size="10" fill="#444"><circle cx="{lx}" cy="26" r="3" fill="{PALETTE[1]}"/><text x="{lx + 6}" y="29.5">run</text>'
               f'<line x1="{lx + 34}" x2="{lx + 50}" y1="26" y2="26" stroke="{PALETTE[0]}" stroke-width="2.5"/><text x="{lx + 54}" y="29.5">mean</text>'
               f'<rect x="{lx + 88}" y="21" width="8" height="10" fill="{PALETTE[0]}" fill-opacity="0.25" stroke="{PALETTE[0]}"/><text x="{lx + 100}" y="29.5">95% CI</text>'
               f'<line x1="{lx + 146}" x2="{lx + 146}" y1="20" y2="32" stroke="#888"/><text x="{lx + 151}" y="29.5">min–max (repeats)</text></g>')
    out.append("</svg>")
    return "".join(out)
