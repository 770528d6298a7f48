"""Shared fixtures: one local Ray instance per session, the demo sweep built once, tiny run dirs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance (address="local": never attaches to a cluster it finds)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The demo sweep, built once per session (or reused from $MLDEBUG_DEMO_DIR)."""
    from mldebug_ray.demo.build import build_demo_sweep

    root = Path(os.environ["MLDEBUG_DEMO_DIR"]) if os.environ.get("MLDEBUG_DEMO_DIR") else tmp_path_factory.mktemp("demo") / "sweep"
    build_demo_sweep(root)
    return root


def write_jsonl_run(run_dir: Path, losses: list[float], params: dict | None = None) -> Path:
    """A tiny run dir: metrics.jsonl with train_loss per step and a .hydra/config.yaml."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "w") as fh:
        for step, loss in enumerate(losses, start=1):
            fh.write(json.dumps({"step": step, "train_loss": loss}) + "\n")
    if params is not None:
        (run_dir / ".hydra").mkdir(exist_ok=True)
        import yaml

        (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(params))
    return run_dir


@pytest.fixture
def jsonl_run():
    return write_jsonl_run
