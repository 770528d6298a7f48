"""The Python API of SPEC §8: `read_run` and `analyze`, the same work without the command line."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from mldebug_ray.config import ReadersConfig, register_configs, to_config


@dataclass
class RunRead:
    """One run as read: SPEC §4 frames plus its status."""

    run_id: str
    path: str
    status: str
    reason: str | None
    source_format: str | None
    metrics: pl.DataFrame
    params: pl.DataFrame
    events: pl.DataFrame
    checkpoints: pl.DataFrame


def read_run(path: str | Path, readers: ReadersConfig | None = None) -> RunRead:
    """One run directory read with the pipeline's readers; `readers` as the config's `readers` section.

    `ReadersConfig(text_log=TextLogConfig(patterns=[...]))` adds log line patterns, as
    `readers.text_log.patterns` does on the command line (default: none).
    """
    from mldebug_ray.gather import read_run_dir
    from mldebug_ray.readers.text_log import user_patterns

    readers = readers or ReadersConfig()
    run_dir = Path(path)
    with user_patterns(readers.text_log.patterns):
        ev, _, _ = read_run_dir(run_dir, run_dir.name)
    row = ev.runs.row(0, named=True)
    return RunRead(
        run_id=ev.run_id,
        path=str(run_dir),
        status=row["status"],
        reason=row["reason"],
        source_format=row["source_format"],
        metrics=ev.metrics,
        params=ev.params,
        events=ev.events,
        checkpoints=ev.checkpoints,
    )


def _override(key: str, value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"{key}=[{','.join(_quote(v) for v in value)}]"
    if value is None:
        return f"{key}=null"
    return f"{key}={_quote(value)}"


def _quote(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    # Hydra's quoted strings: a backslash escapes only a quote or backslashes before a quote,
    # so a regex's `\d` passes as is; only backslash runs before a quote (or the closing one) double.
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", str(value))
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return f"'{text}'"


def compose_config(roots: str | Path | list, out_dir: str | Path | None = None, **overrides: Any):
    """The validated MainConfig for `roots`, composed exactly as the command line would."""
    from mldebug_ray.app import config_dir

    register_configs()
    if isinstance(roots, (str, Path)):
        roots = [roots]
    extra = dict(overrides.pop("overrides", {}) or {})
    extra.update({k.replace("__", "."): v for k, v in overrides.items()})
    if out_dir is None:
        out_dir = Path("outputs") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    args = ["+sweep=paths", _override("sweep.roots", [str(r) for r in roots]), _override("out_dir", str(out_dir))]
    groups = {k: v for k, v in extra.items() if k in ("cluster", "agent", "probes")}
    args += [f"{k}={v}" for k, v in groups.items()]
    args += [_override(k, v) for k, v in extra.items() if k not in groups]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=args)
    finally:
        GlobalHydra.instance().clear()
    return to_config(OmegaConf.to_container(cfg, resolve=True))


def analyze(roots: str | Path | list, out_dir: str | Path | None = None, **overrides: Any) -> dict[str, Path]:
    """Run the pipeline over `roots`; overrides use the command line's dotted keys.

    Dotted keys are passed with `__` in place of dots (``cluster__num_cpus=2``) or
    as a dict under ``overrides={"cluster.num_cpus": 2}``.
    """
    from mldebug_ray.pipeline import run_pipeline
    from mldebug_ray.readers.text_log import user_patterns

    config = compose_config(roots, out_dir, **overrides)
    logging.getLogger("mldebug_ray").setLevel(logging.INFO)
    with user_patterns(config.readers.text_log.patterns):  # this process's patterns restored after
        result = run_pipeline(config, Path(config.out_dir), print_summary=False)
    return result.paths
