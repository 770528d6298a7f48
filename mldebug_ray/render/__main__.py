"""`python -m mldebug_ray.render OUT_DIR`: rewrite report.md and report.html from diagnosis.json and the evidence tables.

Nothing is re-read from the run directories and no detector runs: this only renders
what an earlier invocation wrote (after a renderer change, or with other limits).
Exit status: 0 written, 2 bad invocation (a one-line error naming the path or option).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

from mldebug_ray import paths
from mldebug_ray.errors import EXIT_BAD_INVOCATION, EXIT_OK
from mldebug_ray.evidence.io import atomic_write_bytes
from mldebug_ray.render.report_data import HtmlConfig
from mldebug_ray.render.report_html import render_html
from mldebug_ray.render.report_md import render_markdown

_MD_TITLE = re.compile(r"^# mldebug_ray report: sweep `([^`]*)`")


def sweep_name_of(out_dir: Path) -> str:
    """The sweep's name: from Hydra's saved config, else report.md's title, else the folder name."""
    hydra_cfg = out_dir / ".hydra" / "config.yaml"
    if hydra_cfg.is_file():
        try:
            import yaml

            name = (yaml.safe_load(hydra_cfg.read_text()) or {}).get("sweep", {}).get("name")
            if name:
                return str(name)
        except Exception:  # a damaged Hydra file only costs the title
            pass
    md = out_dir / paths.REPORT_MD
    if md.is_file():
        with open(md, encoding="utf-8", errors="replace") as fh:
            m = _MD_TITLE.match(fh.readline())
        if m:
            return m.group(1)
    return out_dir.resolve().name


def parse_args(argv: list[str]) -> argparse.Namespace:
    defaults = HtmlConfig()
    p = argparse.ArgumentParser(prog="python -m mldebug_ray.render", description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path, help="an output directory of `python -m mldebug_ray` (holds diagnosis.json and evidence/)")
    p.add_argument("--sweep-name", help="title of the report (default: the name the invocation used)")
    p.add_argument("--max-run-panels", type=int, default=defaults.max_run_panels, help="runs with full panels, worst first (default %(default)s)")
    p.add_argument("--max-points", type=int, default=defaults.max_points, help="most points per curve (default %(default)s)")
    p.add_argument("--open-run-panels", type=int, default=defaults.open_run_panels, help="run panels expanded when the page opens (default %(default)s)")
    p.add_argument("--page-size", type=int, default=defaults.page_size, help="rows per page of the all-runs table (default %(default)s)")
    return p.parse_args(argv)


def fail(message: str) -> int:
    print(f"mldebug_ray.render: error: {message}", file=sys.stderr)
    return EXIT_BAD_INVOCATION


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out_dir: Path = args.out_dir
    diagnosis_path = out_dir / paths.DIAGNOSIS_FILE
    if not diagnosis_path.is_file():
        return fail(f"{diagnosis_path}: no diagnosis.json (is {out_dir} an mldebug_ray output directory?)")
    try:
        cfg = HtmlConfig(
            max_run_panels=args.max_run_panels, max_points=args.max_points, page_size=args.page_size, open_run_panels=args.open_run_panels
        )
    except ValueError as exc:
        return fail(str(exc).replace("render.", "--").replace("_", "-"))
    try:
        diagnosis = json.loads(diagnosis_path.read_text(encoding="utf-8"))
        diagnosis["runs"]
    except (ValueError, KeyError, TypeError) as exc:
        return fail(f"{diagnosis_path}: not a diagnosis (SPEC §5): {type(exc).__name__}: {exc}")
    name = args.sweep_name or sweep_name_of(out_dir)
    t0 = time.perf_counter()
    atomic_write_bytes(out_dir / paths.REPORT_MD, render_markdown(diagnosis, name).encode("utf-8"))
    page = render_html(out_dir, diagnosis, name, cfg)
    atomic_write_bytes(out_dir / paths.REPORT_HTML, page.encode("utf-8"))
    artifacts = diagnosis.get("analysis_artifacts")
    if isinstance(artifacts, dict) and artifacts.get("report") != paths.REPORT_HTML:
        artifacts["report"] = paths.REPORT_HTML  # the pointer only; every other byte of the diagnosis stays
        atomic_write_bytes(diagnosis_path, json.dumps(diagnosis, indent=2, allow_nan=False, default=str).encode("utf-8"))
    elapsed = time.perf_counter() - t0
    print(f"wrote {out_dir / paths.REPORT_MD} and {out_dir / paths.REPORT_HTML} ({len(page) / 1024:.0f} KB) in {elapsed:.2f}s")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
