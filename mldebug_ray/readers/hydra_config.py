"""Hydra run folders: `.hydra/config.yaml` flattened to dotted params, `.hydra/overrides.yaml` as one param.

`config.yaml` is read with a YAML loader that builds plain data only (unknown tags such
as `!!python/object` become plain mappings/strings, nothing is imported). Interpolations
(`${optim.lr}`) are resolved with OmegaConf where they resolve; one that fails
(a missing key, a resolver only the training code registers) stays as its literal text.
Lists become JSON strings, so every param is a scalar. `overrides.yaml` (a list of
`key=value` strings) becomes the param `hydra.overrides`, a JSON list string.
This reader provides no metrics.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import yaml

from mldebug_ray.errors import ReadError
from mldebug_ray.readers.base import SourceData, reader

HYDRA_DIR = ".hydra"
CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.yaml"


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader that reads unknown tags as the plain data under them instead of failing."""


def _construct_unknown(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


_PlainLoader.add_multi_constructor("", _construct_unknown)


def load_yaml(text: str) -> Any:
    """Parse YAML into plain Python data; never constructs objects or imports anything."""
    return yaml.load(text, Loader=_PlainLoader)  # noqa: S506 - a SafeLoader subclass


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    return _scalar(value)


def flatten_params(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {dotted key: scalar}; lists (and empty mappings) become JSON strings."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        if not data and prefix:
            out[prefix] = "{}"
        for key, value in data.items():
            out.update(flatten_params(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, (list, tuple, set)):
        out[prefix or "value"] = json.dumps(_jsonable(list(data)), allow_nan=True)
    else:
        out[prefix or "value"] = _scalar(data)
    return out


def _resolve_interpolations(config: Any, flat: dict[str, Any], problems: list[str], label: str) -> None:
    """Replace `${...}` values in `flat` by their OmegaConf resolution where it succeeds."""
    pending = [k for k, v in flat.items() if isinstance(v, str) and "${" in v]
    if not pending or not isinstance(config, dict):
        return
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(config)
    except Exception as exc:  # a config OmegaConf itself refuses: keep the literal text
        problems.append(f"{label}: interpolations left unresolved ({type(exc).__name__})")
        return
    unresolved = 0
    for key in pending:
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
        except Exception:
            unresolved += 1
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(_jsonable(value), allow_nan=True)
        flat[key] = _scalar(value)
    if unresolved:
        problems.append(f"{label}: {unresolved} interpolation(s) could not be resolved, kept as written")


def detect(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / HYDRA_DIR
    return [p for p in (folder / CONFIG_FILE, folder / OVERRIDES_FILE) if p.is_file() and not p.is_symlink()]


@reader("hydra", detect=detect, provides_metrics=False, priority=5)
def read(run_dir: Path, files: list[Path]) -> SourceData:
    """Params from the `.hydra/` files in `files`; ReadError when none parses."""
    params: dict[str, Any] = {}
    problems: list[str] = []
    errors: list[str] = []
    for path in files:
        label = f"{HYDRA_DIR}/{path.name}"
        try:
            data = load_yaml(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            errors.append(f"{label}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        if path.name == OVERRIDES_FILE:
            overrides = data if isinstance(data, list) else ([] if data is None else [data])
            params["hydra.overrides"] = json.dumps([str(v) for v in overrides])
        elif data is None:
            continue
        else:
            flat = flatten_params(data)
            _resolve_interpolations(data, flat, problems, label)
            params.update(flat)
    if errors and not params:
        raise ReadError("; ".join(errors))
    return SourceData(params=params, problems=errors + problems)
