"""report.html in a real browser: headless Chromium loads it without console errors, the panels are there, a screenshot is saved.

Chromium is Debian's `chromium` package, installed by scripts/install_chromium.sh (called
by the fixture). Without it the tests skip, except under CI=true, where they must run.
Console messages are read from Chromium's own log (--enable-logging=stderr --v=0 prints
every console message of the page as `INFO:CONSOLE... "<text>", source: <url>`); the
page's script sets data-report-ready on <html> as its last statement, so a script that
threw part-way is caught even if the log format changes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from render_fixtures import PROBE_RUN

from mldebug_ray import paths
from mldebug_ray.render.probe_panels import PROBE_PANEL_IDS
from mldebug_ray.render.report_data import HtmlConfig, anchor, rank_runs
from mldebug_ray.render.report_html import PANEL_IDS, write_report_html

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
    "--virtual-time-budget=5000",  # let the page's script run before the DOM is dumped
)
CONSOLE_LINE = re.compile(r'CONSOLE[^\]]*\]\s*"(?P<text>.*)",\s*source:\s*(?P<source>\S+)')

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser's path, installing Debian's chromium if it is missing (a hard failure under CI=true)."""
    script = REPO / "scripts" / "install_chromium.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1200)
    path = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else ""
    if not path or not shutil.which(path):
        message = f"no headless Chromium: {script.name} exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_chromium(browser: str, url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True, text=True, timeout=180,
    )


def console_errors(stderr: str, page: Path) -> list[str]:
    """Console messages the page produced (it logs nothing when healthy) and any uncaught exception."""
    found = []
    for line in stderr.splitlines():
        m = CONSOLE_LINE.search(line)
        if m and (page.name in m.group("source") or "Uncaught" in m.group("text")):
            found.append(m.group("text"))
        elif "Uncaught" in line or "ERROR:CONSOLE" in line:
            found.append(line)
    return found


def check_page(browser: str, html: Path, tmp: Path, screenshot: Path) -> str:
    """Load `html`, fail on console errors, return the DOM after the script ran; save a screenshot."""
    url = html.resolve().as_uri()
    dom = run_chromium(browser, url, tmp, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_errors(dom.stderr, html) == []
    assert 'data-report-ready="1"' in dom.stdout, "the page's script did not run to its end"
    shot = run_chromium(browser, url, tmp, f"--screenshot={screenshot}", "--window-size=1400,2000")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert console_errors(shot.stderr, html) == []
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
    print(f"screenshot: {screenshot}", file=sys.stderr)
    return dom.stdout


def test_the_synthetic_report_opens_without_console_errors_and_shows_every_panel(chromium, rich_out, tmp_path):
    out, diagnosis = rich_out
    html = tmp_path / paths.REPORT_HTML
    assert write_report_html(out, diagnosis, "synthetic")
    shutil.copy(out / paths.REPORT_HTML, html)  # the page needs nothing beside it
    dom = check_page(chromium, html, tmp_path, tmp_path / "report.png")
    for section in PANEL_IDS:
        assert f'id="{section}"' in dom
    a = anchor("probed/fp16")
    for panel in ("loss", "heatmap", "params", "memory", "precision"):
        assert f'id="{a}-{panel}"' in dom
    for panel in PROBE_PANEL_IDS:
        assert f'id="{anchor(PROBE_RUN)}-{panel}"' in dom
    assert 'id="sweep-hp-0"' in dom
    body = re.search(r'<tbody id="all-runs-body">(.*?)</tbody>', dom, re.S).group(1)
    assert body.count("<tr>") == len(diagnosis["runs"]), "the script filled the paged table"
    assert re.search(r'id="page-info"[^>]*>page 1 of 1', dom)


def test_a_link_to_a_collapsed_run_opens_its_panel(chromium, rich_out, tmp_path):
    out, diagnosis = rich_out
    html = tmp_path / paths.REPORT_HTML
    assert write_report_html(out, diagnosis, "synthetic", HtmlConfig(open_run_panels=0))
    shutil.copy(out / paths.REPORT_HTML, html)
    target = anchor(rank_runs(diagnosis)[-1])
    dom = run_chromium(chromium, html.resolve().as_uri() + f"#{target}", tmp_path, "--dump-dom")
    assert console_errors(dom.stderr, html) == []
    tag = re.search(rf'<details class="run" id="{target}"[^>]*>', dom.stdout).group(0)
    assert " open" in tag, tag


def test_a_paged_10000_run_report_opens_without_console_errors(chromium, tmp_path):
    from render_fixtures import build_big_out_dir

    out = tmp_path / "big"
    diagnosis = build_big_out_dir(out, 10_000)
    assert write_report_html(out, diagnosis, "big")
    dom = check_page(chromium, out / paths.REPORT_HTML, tmp_path, tmp_path / "report_10k.png")
    body = re.search(r'<tbody id="all-runs-body">(.*?)</tbody>', dom, re.S).group(1)
    assert body.count("<tr>") == HtmlConfig().page_size, "one page of rows in the DOM, not 10,000"
    assert re.search(r'id="page-info"[^>]*>page 1 of 200 \(10000 runs\)', dom)


def test_the_demo_report_opens_without_console_errors(chromium, demo_root, tmp_path):
    out = tmp_path / "demo_out"
    proc = subprocess.run(
        [sys.executable, "-m", "mldebug_ray", "+sweep=demo", f"sweep.roots=[{demo_root}]", f"out_dir={out}", "cluster.num_cpus=2"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    dom = check_page(chromium, out / paths.REPORT_HTML, tmp_path, tmp_path / "demo_report.png")
    for rid in ("lr_change_divergence", "vanishing_gradients", "embedding_heavy"):
        assert f'id="{anchor(rid)}"' in dom
    assert f'id="{anchor("vanishing_gradients")}-heatmap"' in dom
    assert f'id="{anchor("embedding_heavy")}-params"' in dom
    for rid, panel in (("data_leakage", "overlap"), ("class_imbalance", "labels"), ("adversarial_fragility", "robustness"), ("class_imbalance", "confusion")):
        assert f'id="{anchor(rid)}-{panel}"' in dom, (rid, panel)


def test_the_console_check_catches_a_throwing_script(chromium, tmp_path):
    """The detector of the tests above, on a page that does throw: it must not pass silently."""
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><html><body><p>x</p><script>undefinedFunction();</script></body></html>")
    dom = run_chromium(chromium, page.resolve().as_uri(), tmp_path, "--dump-dom")
    errors = console_errors(dom.stderr, page)
    assert errors and "undefinedFunction" in errors[0]
