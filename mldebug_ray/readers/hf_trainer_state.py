"""Hugging Face Trainer `trainer_state.json`: its `log_history` as metrics, its counters as params.

Where: the run directory's own `trainer_state.json`, else the one in the newest
`checkpoint-<step>/` folder (the Trainer only writes it at save time).

`log_history` mixes three kinds of rows (FIELD-NOTES "Formats: traps"):
- train rows (`loss` present): every numeric key as logged (`loss`, `grad_norm`,
  `learning_rate`, ...) with split 'train'; `epoch` is kept as key `epoch`, split null;
- eval rows (keys starting `eval_`, or `test_` from predict): split 'val' (or 'test'),
  keys kept as logged (`eval_loss`);
- the final summary row (`train_runtime` present): not a step-level metric; its
  numeric values go to params as `summary.<key>` (`summary.train_loss`).
Any other row falls back to the key's conventional split (`infer_split`).
Python's json reads the `NaN`/`Infinity` the Trainer writes. Scalar top-level fields
(`global_step`, `max_steps`, `num_train_epochs`, ...) go to params as `trainer.<key>`.
`training_args.bin` is a pickle and is never opened.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from mldebug_ray.errors import ReadError
from mldebug_ray.readers.base import MAX_JSON_DOCUMENT_BYTES, SourceData, check_size, infer_split, metrics_frame, reader

STATE_FILE = "trainer_state.json"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def _checkpoint_states(run_dir: Path) -> list[Path]:
    """`checkpoint-*/trainer_state.json` files, newest (highest step) first."""
    found = []
    try:
        entries = list(Path(run_dir).iterdir())
    except OSError:
        return []
    for entry in entries:
        match = _CHECKPOINT_DIR.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            state = entry / STATE_FILE
            if state.is_file():
                found.append((int(match.group(1)), state))
    return [state for _, state in sorted(found, reverse=True)]


def detect(run_dir: Path) -> list[Path]:
    top = Path(run_dir) / STATE_FILE
    if top.is_file() and not top.is_symlink():
        return [top]
    return _checkpoint_states(run_dir)[:1]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _row_kind(row: dict[str, Any]) -> str:
    if "train_runtime" in row:
        return "summary"
    if "loss" in row:
        return "train"
    if any(k.startswith("eval_") for k in row):
        return "val"
    if any(k.startswith("test_") for k in row):
        return "test"
    return "other"


def _split_for(kind: str, key: str) -> str | None:
    if key == "epoch":
        return None
    if kind in ("train", "val", "test"):
        return kind
    return infer_split(key)


def parse_state(state: dict[str, Any], name: str) -> SourceData:
    """Metrics and params of one parsed trainer_state.json (see the module docstring)."""
    history = state.get("log_history")
    if not isinstance(history, list):
        raise ReadError(f"{name}: no log_history list")
    rows: dict[str, list] = {"step": [], "key": [], "value": [], "split": []}
    params: dict[str, Any] = {}
    problems: list[str] = []
    skipped = 0
    epoch_seen: set[int] = set()
    for index, row in enumerate(history):
        if not isinstance(row, dict):
            skipped += 1
            continue
        kind = _row_kind(row)
        if kind == "summary":
            for key, value in row.items():
                number = _number(value)
                if number is not None and key != "step":
                    params[f"summary.{key}"] = number
            continue
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
            skipped += 1
            continue
        step = int(step)
        for key, value in row.items():
            if key == "step":
                continue
            number = _number(value)
            if number is None:
                continue
            # Train and eval rows of one step both carry `epoch`: keep it once.
            if key == "epoch":
                if step in epoch_seen:
                    continue
                epoch_seen.add(step)
            rows["step"].append(step)
            rows["key"].append(key)
            rows["value"].append(number)
            rows["split"].append(_split_for(kind, key))
    if skipped:
        problems.append(f"{name}: {skipped} log_history row(s) without a numeric step skipped")
    for key, value in state.items():
        if key == "log_history":
            continue
        if value is None or isinstance(value, (str, int, float, bool)):
            params[f"trainer.{key}"] = value
    return SourceData(metrics=metrics_frame(rows), params=params, problems=problems)


def _load(path: Path, label: str) -> dict[str, Any]:
    try:
        check_size(path, MAX_JSON_DOCUMENT_BYTES, "JSON document")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReadError(f"{label}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ReadError(f"{label}: not UTF-8 text") from None
    try:
        state = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReadError(f"{label}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise ReadError(f"{label}: JSON nested too deeply to read") from None
    if not isinstance(state, dict):
        raise ReadError(f"{label}: top level is not a JSON object")
    return state


def _label(run_dir: Path, path: Path) -> str:
    try:
        return path.relative_to(run_dir).as_posix()
    except ValueError:
        return path.name


@reader("hf_trainer_state", detect=detect, provides_metrics=True, priority=20)
def read(run_dir: Path, files: list[Path]) -> SourceData:
    """The first readable trainer_state.json of `files`, falling back to older checkpoints' copies."""
    run_dir = Path(run_dir)
    candidates = list(files) + [p for p in _checkpoint_states(run_dir) if p not in files]
    errors: list[str] = []
    for path in candidates:
        label = _label(run_dir, path)
        try:
            data = parse_state(_load(path, label), label)
        except ReadError as exc:
            errors.append(str(exc))
            continue
        data.problems[:0] = errors
        if errors:
            data.problems.append(f"{label}: used instead of the unreadable file(s) above")
        return data
    raise ReadError("; ".join(errors) if errors else f"{STATE_FILE}: not found")
