"""Build the demo sweep (SPEC §6) on the CPU once, and reuse the cached runs afterwards."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

from mldebug_ray.demo.scenarios import RunSpec, demo_runs

# Bump whenever a change to the demo would change what is on disk: old caches rebuild.
DEMO_VERSION = "demo-3"
MARKER_FILE = ".demo_complete"
MANIFEST_FILE = "manifest.json"
STAGING_INFIX = ".building-"  # staging folder: .<root name>.building-<pid>, next to root
# Findings about groups of runs rather than one run.
SWEEP_EXPECTED_FINDINGS = {"lr_grid": ["hp_effect"]}
# Two worker processes match the 2-core budget; each run is single-threaded.
DEFAULT_PROCESSES = 2


def read_marker(root: Path) -> dict | None:
    """The completion marker of a built sweep, or None when absent or unreadable."""
    try:
        return json.loads((Path(root) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_complete(root: Path) -> bool:
    """True when `root` holds a finished build of this DEMO_VERSION with all its run folders."""
    marker = read_marker(root)
    if marker is None or marker.get("version") != DEMO_VERSION:
        return False
    return all((Path(root) / run_id).is_dir() for run_id in marker.get("runs", []))


def _build_one(job: tuple[RunSpec, str]) -> tuple[str, float]:
    from mldebug_ray.demo.train import train_run

    spec, staging = job
    result = train_run(spec.run_id, spec.config(), spec.overrides, Path(staging) / spec.run_id)
    return result.run_id, result.elapsed_s


def _manifest(specs: list[RunSpec]) -> dict:
    runs = []
    for spec in specs:
        config = spec.config()
        runs.append(
            {
                "run_id": spec.run_id,
                "scenario": spec.scenario,
                "format": config["logger"]["format"],
                "checkpoint_format": config["checkpoint"]["format"],
                "expected_findings": list(spec.expected_findings),
            }
        )
    return {"version": DEMO_VERSION, "runs": runs, "sweep_expected_findings": SWEEP_EXPECTED_FINDINGS}


def _looks_like_demo(root: Path, specs: list[RunSpec]) -> bool:
    """True when every top-level entry is one the demo writes, so deleting `root` loses nothing of the user's."""
    own = {MARKER_FILE, MANIFEST_FILE} | {spec.run_id.split("/")[0] for spec in specs}
    return all(entry.name in own for entry in root.iterdir())


def _clear_stale(root: Path, specs: list[RunSpec]) -> None:
    """Remove an outdated or half-built sweep at `root`; anything else there is left alone."""
    if not root.exists():
        return
    if not root.is_dir() or not _looks_like_demo(root, specs):
        raise FileExistsError(f"{root} exists and is not a demo sweep; refusing to replace it")
    shutil.rmtree(root)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_abandoned_staging(root: Path) -> None:
    """Delete staging folders left by builders that were killed (their process is gone)."""
    for staging in root.parent.glob(f".{root.name}{STAGING_INFIX}*"):
        pid = staging.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def build_demo_sweep(root: str | Path, *, force: bool = False, processes: int = DEFAULT_PROCESSES) -> Path:
    """Train the demo runs into `root` unless a complete build of this DEMO_VERSION is already there.

    The runs are built in a hidden sibling folder and renamed into place only once
    complete, with the marker written last, so an interrupted build never leaves a
    cache that looks complete.
    """
    root = Path(root).absolute()
    if not force and is_complete(root):
        return root
    specs = demo_runs()
    if root.exists() and not (root.is_dir() and _looks_like_demo(root, specs)):
        raise FileExistsError(f"{root} exists and is not a demo sweep; refusing to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(root)
    staging = root.parent / f".{root.name}{STAGING_INFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        jobs = [(spec, str(staging)) for spec in specs]
        if processes > 1:
            # spawn, not fork: a forked torch with live OpenMP threads can deadlock.
            with multiprocessing.get_context("spawn").Pool(processes) as pool:
                list(pool.imap_unordered(_build_one, jobs))
        else:
            for job in jobs:
                _build_one(job)
        (staging / MANIFEST_FILE).write_text(json.dumps(_manifest(specs), indent=2) + "\n")
        marker = {"version": DEMO_VERSION, "runs": [spec.run_id for spec in specs]}
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        if is_complete(root) and not force:
            return root  # another builder finished first; its runs are as good as ours
        _clear_stale(root, specs)
        os.replace(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mldebug_ray.demo.build", description=__doc__)
    parser.add_argument("root", type=Path, help="folder to build the demo sweep into")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete build is cached")
    parser.add_argument("--processes", type=int, default=DEFAULT_PROCESSES, help="worker processes (1: in-process)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    root = build_demo_sweep(args.root, force=args.force, processes=args.processes)
    print(f"demo sweep at {root}: {len(demo_runs())} runs, {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
