"""`python -m mldebug_ray.render OUT_DIR`: re-render without recomputing evidence; a 10,000-run sweep stays small."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from render_fixtures import build_big_out_dir, build_rich_out_dir

from mldebug_ray import paths
from mldebug_ray.render.__main__ import main, sweep_name_of

MAX_HTML_BYTES_10K = 5 * 1024 * 1024
MAX_RENDER_S_10K = 60.0  # measured ~5 s on a 2-core runner; generous for loaded CI machines


def render_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mldebug_ray.render", *args], capture_output=True, text=True, timeout=600)


def evidence_state(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.stat().st_size) for p in (out / paths.EVIDENCE_DIR).rglob("*") if p.is_file()}


def test_rerender_rewrites_both_reports_and_leaves_the_evidence_alone(tmp_path):
    out = tmp_path / "out"
    build_rich_out_dir(out)
    before = evidence_state(out)
    diagnosis_before = json.loads((out / paths.DIAGNOSIS_FILE).read_text())
    proc = render_cli(str(out), "--sweep-name", "my sweep")
    assert proc.returncode == 0, proc.stderr
    assert "report.html" in proc.stdout
    assert evidence_state(out) == before
    html = (out / paths.REPORT_HTML).read_text()
    md = (out / paths.REPORT_MD).read_text()
    assert "my sweep" in html and md.startswith("# mldebug_ray report: sweep `my sweep`")
    diagnosis_after = json.loads((out / paths.DIAGNOSIS_FILE).read_text())
    assert diagnosis_after["analysis_artifacts"]["report"] == paths.REPORT_HTML
    diagnosis_after["analysis_artifacts"]["report"] = diagnosis_before["analysis_artifacts"]["report"]
    assert diagnosis_after == diagnosis_before, "only the report pointer may change"


def test_the_sweep_name_comes_from_hydra_then_report_md_then_the_folder(tmp_path):
    out = tmp_path / "the_out"
    out.mkdir()
    assert sweep_name_of(out) == "the_out"
    (out / paths.REPORT_MD).write_text("# mldebug_ray report: sweep `from_md`\n")
    assert sweep_name_of(out) == "from_md"
    (out / ".hydra").mkdir()
    (out / ".hydra" / "config.yaml").write_text("sweep:\n  name: demo\n")
    assert sweep_name_of(out) == "demo"


def test_limits_from_the_command_line_apply(tmp_path):
    out = tmp_path / "out"
    build_rich_out_dir(out)
    assert main([str(out), "--max-run-panels", "2", "--open-run-panels", "0"]) == 0
    html = (out / paths.REPORT_HTML).read_text()
    assert html.count("<details class=run ") == 2 and " open>" not in html


def test_a_missing_diagnosis_is_a_one_line_error_with_exit_2(tmp_path):
    proc = render_cli(str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "diagnosis.json" in proc.stderr and "Traceback" not in proc.stderr


def test_a_bad_limit_is_a_one_line_error_with_exit_2(tmp_path):
    out = tmp_path / "out"
    build_rich_out_dir(out)
    proc = render_cli(str(out), "--max-run-panels", "0")
    assert proc.returncode == 2 and "--max-run-panels" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_10000_run_sweep_renders_a_bounded_page_in_reasonable_time(tmp_path):
    out = tmp_path / "big"
    diagnosis = build_big_out_dir(out, 10_000)
    assert len(diagnosis["runs"]) == 10_000
    t0 = time.perf_counter()
    proc = render_cli(str(out))
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    html = (out / paths.REPORT_HTML).read_bytes()
    print(f"10k-run report.html: {len(html) / 1024:.0f} KB in {elapsed:.1f}s")
    assert len(html) < MAX_HTML_BYTES_10K
    assert elapsed < MAX_RENDER_S_10K
    text = html.decode()
    assert text.count("<details class=run ") == 24, "full panels only for the worst runs"
    data = json.loads(re.search(r'id="runs-data">(.*?)</script>', text, re.S).group(1))
    assert len(data["runs"]) == 10_000 and data["page_size"] == 50


def test_rendering_twice_gives_the_same_page(tmp_path):
    out = tmp_path / "out"
    build_rich_out_dir(out)
    assert main([str(out)]) == 0
    first = (out / paths.REPORT_HTML).read_bytes()
    os.utime(out / paths.DIAGNOSIS_FILE)
    assert main([str(out)]) == 0
    assert (out / paths.REPORT_HTML).read_bytes() == first
