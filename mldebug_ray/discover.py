"""Find the runs of a sweep: every directory under a root holding a metrics source (SPEC §2)."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from mldebug_ray.errors import ConfigError
from mldebug_ray.readers import READERS

# Folders that belong to the run above them and are never runs themselves: HF keeps a
# copy of trainer_state.json in each checkpoint-N/, Hydra writes .hydra/ beside the run.
NOT_RUN_DIRS = ("checkpoint-*", "checkpoints", "global_step*", ".hydra", "__pycache__", ".git", "node_modules")


@dataclass(frozen=True)
class RunRef:
    """One run directory to analyse."""

    run_id: str
    path: str
    root: str


def has_metrics_source(directory: Path) -> bool:
    """Whether any metrics reader claims files in `directory`."""
    for reader in READERS.values():
        if reader.provides_metrics and reader.detect(directory):
            return True
    return False


def _skip(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in NOT_RUN_DIRS)


def _owned_by_run(directory: Path, name: str) -> bool:
    """Whether subfolder `name` of `directory` is part of the run `directory` is, never a run of its own.

    - `artifacts/` of an MLflow run (file store, or a database run's artifact folder):
      what the run logged as files (a CSV, event files) is not another run.
    - `wandb/` of a Hydra output folder: the job's own W&B run folders, which the
      W&B reader reads as part of the Hydra run (readers/wandb.py).
    - `checkpoint_*` folders of a Ray Tune trial: the trial's checkpoints (listed by
      the checkpoints reader, which looks two levels down), never trials.
    """
    if name == "artifacts":
        return bool(READERS["mlflow"].detect(directory))
    if name == "wandb":
        return (directory / ".hydra").is_dir()
    if name.startswith("checkpoint_"):
        return bool(READERS["ray_tune"].detect(directory))
    return False


def _walk(root: Path, max_depth: int, exclude_dirs: set[Path]) -> list[Path]:
    """Run directories under `root`: those with a metrics source and no run below them."""
    runs: list[Path] = []

    def visit(directory: Path, depth: int) -> bool:
        """Visit `directory`; return whether it or a descendant is a run."""
        below = False
        if depth < max_depth:
            try:
                with os.scandir(directory) as entries:
                    subdirs = sorted(
                        Path(e.path)
                        for e in entries
                        if e.is_dir(follow_symlinks=False) and not _skip(e.name)
                    )
            except OSError:
                subdirs = []
            subdirs = [sub for sub in subdirs if not _owned_by_run(directory, sub.name)]
            for sub in subdirs:
                if sub.resolve() in exclude_dirs:
                    continue
                below = visit(sub, depth + 1) or below
        if below:
            return True
        if has_metrics_source(directory):
            runs.append(directory)
            return True
        return False

    visit(root, 0)
    return sorted(runs)


def run_id_for(run_dir: Path, root: Path, prefix: str | None) -> str:
    """The run id: path relative to the root; bytes of a name that are not UTF-8 appear as \\xNN."""
    rel = run_dir.relative_to(root).as_posix()
    rel = "" if rel == "." else rel
    if prefix:
        run_id = f"{prefix}/{rel}" if rel else prefix
    else:
        run_id = rel or root.name
    return run_id.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def discover(
    roots: list[str],
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    max_depth: int = 16,
    exclude_dirs: list[Path] = (),
) -> list[RunRef]:
    """Runs under `roots`, sorted by run_id.

    run_id is the run directory relative to its root, '/'-separated; with several
    roots it is prefixed by the root's folder name (SPEC §2). `exclude_dirs` keeps
    the tool's own output folder out when it sits under a root.
    """
    root_paths = [Path(r).expanduser() for r in roots]
    for root in root_paths:
        if not root.is_dir():
            raise ConfigError(f"sweep.roots: {root} is not a directory")
    if len(root_paths) > 1:
        names = [p.resolve().name for p in root_paths]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ConfigError(f"sweep.roots: several roots share the folder name(s) {sorted(duplicates)}; run ids would collide")
    skip = {Path(p).resolve() for p in exclude_dirs}
    found: dict[str, RunRef] = {}
    for root in root_paths:
        prefix = root.resolve().name if len(root_paths) > 1 else None
        for run_dir in _walk(root, max_depth, skip):
            run_id = run_id_for(run_dir, root, prefix)
            if include and not any(fnmatch.fnmatchcase(run_id, g) for g in include):
                continue
            if exclude and any(fnmatch.fnmatchcase(run_id, g) for g in exclude):
                continue
            found[run_id] = RunRef(run_id=run_id, path=str(run_dir), root=str(root))
    return [found[k] for k in sorted(found)]
