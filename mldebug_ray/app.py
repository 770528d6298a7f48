"""The Hydra app: `python -m mldebug_ray +sweep=NAME [key=value ...]`, exit codes per SPEC §2."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mldebug_ray.config import one_line, register_configs, to_config
from mldebug_ray.errors import ConfigError, OutputError
from mldebug_ray.errors import EXIT_BAD_INVOCATION, EXIT_INTERRUPTED

log = logging.getLogger("mldebug_ray")

_exit_code = 0


def config_dir() -> Path:
    """The `conf/` folder: beside the package in a checkout, inside it when installed."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError(f"cannot find the config folder (conf/config.yaml) near {here}")


def error_exit(message: str) -> None:
    print(f"mldebug_ray: error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_INVOCATION)


def precheck(conf: Path, overrides: list[str]) -> None:
    """Compose once without running, so a bad key or path is one line and exit 2.

    Hydra itself reports composition errors over several lines with exit 1.
    """
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        to_config(cfg)
    except ConfigError as exc:
        error_exit(str(exc))
    except Exception as exc:  # Hydra/OmegaConf composition and override errors
        error_exit(one_line(exc))
    finally:
        GlobalHydra.instance().clear()


def task(cfg: DictConfig) -> None:
    """The task Hydra runs; the exit status is kept for `main`."""
    global _exit_code
    from mldebug_ray.pipeline import run_pipeline  # heavy (ray, polars): not needed to check arguments

    try:
        config = to_config(cfg)
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        result = run_pipeline(config, out_dir)
        _exit_code = result.exit_code
    except ConfigError as exc:
        log.error("%s", exc)
        print(f"mldebug_ray: error: {exc}", file=sys.stderr)
        _exit_code = EXIT_BAD_INVOCATION
    except (OutputError, OSError) as exc:
        # Nothing half-written is visible (atomic parts); free space and rerun to resume.
        message = str(exc) if isinstance(exc, OutputError) else f"cannot write outputs: {exc}"
        log.error("%s", message)
        print(f"mldebug_ray: error: {message}", file=sys.stderr)
        _exit_code = EXIT_BAD_INVOCATION
    except KeyboardInterrupt:
        # Parts already written are complete (atomic); a rerun with the same out_dir resumes.
        print("mldebug_ray: interrupted; rerun with the same out_dir to resume", file=sys.stderr)
        _exit_code = EXIT_INTERRUPTED


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # unwinds through ray_cluster's finally: Ray is shut down, not orphaned


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    register_configs()
    try:
        conf = config_dir()
    except ConfigError as exc:
        error_exit(str(exc))
    args = sys.argv[1:]
    if not any(a.startswith("-") for a in args):  # flags (--help, --cfg, -m) go to Hydra as they are
        precheck(conf, args)
    hydra.main(config_path=str(conf), config_name="config", version_base="1.3")(task)()
    sys.exit(_exit_code)
