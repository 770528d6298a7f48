"""Fingerprints that decide whether a run's cached evidence can be reused (resume, issue 10).

A run's fingerprint hashes the names, sizes and modification times of its files (and of
the plain files in its parent folder, where readers may find its logs), the config that
shapes its evidence (probes and detectors), and the package's own source, so that a
code change recomputes everything. Contents are not hashed: reading every checkpoint
to decide whether to read it again would cost what the cache saves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

from mldebug_ray.readers.base import SKIP_DIRS

FINGERPRINT_DEPTH = 4  # checkpoint-N/model.safetensors, lightning_logs/version_0/... sit this deep at most


@lru_cache(maxsize=1)
def code_digest() -> str:
    """Hash of the installed package's Python sources."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def user_code_listing(probes) -> list[str]:
    """Names, sizes and mtimes of the Python files under `probes.code_paths` and of the
    modules the probe entry points name, so that a changed `model_fn` recomputes."""
    listing: list[str] = []
    for root in getattr(probes, "code_paths", None) or []:
        for path in sorted(Path(root).rglob("*.py")):
            try:
                st = path.stat()
            except OSError:
                continue
            listing.append(f"{path}\0{st.st_size}\0{st.st_mtime_ns}")
    for key in ("model_fn", "batch_fn", "loss_fn", "data_fn"):
        spec = getattr(probes, key, None)
        if not spec:
            continue
        try:
            found = importlib.util.find_spec(spec.partition(":")[0])
        except (ImportError, ValueError):
            found = None
        origin = getattr(found, "origin", None)
        if origin and os.path.isfile(origin):
            st = os.stat(origin)
            listing.append(f"{origin}\0{st.st_size}\0{st.st_mtime_ns}")
    return listing


def config_digest(probes, detectors, readers=None) -> str:
    """Hash of the config sections that change a run's evidence, and of the user's probe code."""
    sections = {"probes": dataclasses.asdict(probes), "detectors": dataclasses.asdict(detectors), "code": user_code_listing(probes)}
    if readers is not None:  # user log patterns change the metrics read
        sections["readers"] = dataclasses.asdict(readers)
    blob = json.dumps(sections, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _entries(directory: Path, depth: int, prefix: str, out: list[str]) -> None:
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        out.append(f"{prefix}!{type(exc).__name__}")
        return
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        name = prefix + entry.name
        if entry.is_dir(follow_symlinks=False):
            if depth > 0 and entry.name not in SKIP_DIRS:
                _entries(Path(entry.path), depth - 1, name + "/", out)
        else:
            out.append(f"{name}\0{st.st_size}\0{st.st_mtime_ns}")


def run_fingerprint(run_dir: Path, config: str) -> str:
    """The fingerprint of `run_dir` under config digest `config`."""
    listing: list[str] = []
    _entries(Path(run_dir), FINGERPRINT_DEPTH, "", listing)
    parent: list[str] = []
    try:
        with os.scandir(Path(run_dir).parent) as it:
            for entry in it:
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    parent.append(f"../{entry.name}\0{st.st_size}\0{st.st_mtime_ns}")
    except OSError:
        pass
    h = hashlib.sha256()
    h.update(f"{code_digest()}|{config}\n".encode())
    for line in listing + sorted(parent):
        h.update(line.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()[:24]
