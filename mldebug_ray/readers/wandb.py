"""W&B run folders read offline: the `.wandb` transaction log (history, config, console), summary, config, metadata.

Which folder is a run: the W&B run folder itself (`wandb/offline-run-<date>_<time>-<id>/`
or `wandb/run-...`), recognised by its name, a `run-<id>.wandb` file, or
`files/wandb-summary.json` / `files/wandb-metadata.json`. Its `files/` and `logs/`
subfolders belong to it (the text-log reader leaves them alone). W&B run folders under
`wandb/` of a Hydra output folder (one with `.hydra/`: a job whose working directory
was its output folder) belong to that Hydra run: detect() on the Hydra folder returns
their files, discovery does not descend into that `wandb/`, and read() reads each W&B
folder and merges them (several are a resumed job: for a (step, key) in more than one,
the newest folder by name, i.e. by start time, wins). Elsewhere a nested W&B folder is
its own run (discovery keeps the deepest folder with a metrics source).

The `.wandb` file (no network, no `wandb` package): a 7-byte header `:W&B`, magic
0xBEE1, version 0, then LevelDB-log framing in 32 KiB blocks: each record is
`u32 crc, u16 length, u8 type (FULL/FIRST/MIDDLE/LAST)`, data; a block tail shorter
than a header is zero padding. The CRC is zlib's CRC-32 of the data seeded with the
CRC-32 of the type byte (wandb/sdk/internal/datastore.py); it is always checked, a
mismatch or a record cut short (a run still writing) ends the read there, keeping the
records before it (noted). Each record is a `wandb_internal.Record` protobuf, decoded
here for the few fields needed: `history` (2: items `key`/`nested_key`/`value_json`,
step `num`), `summary` (3), `output` (4) and `output_raw` (13) console lines,
`config` (5), `run` (17: `resumed`, `starting_step`, config), `exit` (18: exit code).

What lands where:
- metrics: every numeric history value (`value_json` parsed as JSON, `NaN`/`Infinity`
  kept) at the record's step (`_step`), `_timestamp` as wall_time_s; `_`-keys and
  media/histogram objects are skipped; nested keys joined with `/`. A (step, key)
  logged twice keeps the last. Without a readable `.wandb`, `files/wandb-summary.json`
  becomes a single metrics row at its `_step` and a problem says only the summary was
  read.
- params: `files/config.yaml` with W&B's `{value: ...}` wrapping removed (`_wandb` and
  `wandb_version` skipped), else the config records of the `.wandb`; a few fields of
  `files/wandb-metadata.json` as `wandb.<field>`.
- events: from `files/output.log` (else the console records of the `.wandb`), the
  text-log event library (tracebacks, OOM, NCCL, warnings; no metrics: the history is
  the structured source); a `restart` event when the run record says `resumed`; an
  `error` event for a non-zero exit code.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from mldebug_ray.errors import ReadError
from mldebug_ray.readers.base import (
    EVENT_COLUMNS,
    MAX_JSON_DOCUMENT_BYTES,
    SourceData,
    check_size,
    files_in,
    infer_split,
    metrics_frame,
    reader,
)
from mldebug_ray.readers.hydra_config import flatten_params, load_yaml
from mldebug_ray.readers.text_log import parse_lines, parse_logs

RUN_DIR_NAME = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-\w+$")
SUMMARY = "files/wandb-summary.json"
CONFIG = "files/config.yaml"
METADATA = "files/wandb-metadata.json"
OUTPUT = "files/output.log"
HEADER = b":W&B"
MAGIC = 0xBEE1
BLOCK = 32768
RECORD_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_TYPE_CRC = {t: zlib.crc32(bytes([t])) & 0xFFFFFFFF for t in (FULL, FIRST, MIDDLE, LAST)}
_METADATA_FIELDS = ("program", "host", "gpu", "gpu_count", "cpu_count", "python", "os", "args", "startedAt")


class WandbFormatError(ReadError):
    """The bytes are not a (complete) W&B transaction log."""


# --------------------------------------------------------------------------- framing


def iter_records(buf: bytes | mmap.mmap, name: str, problems: list[str]) -> Iterator[bytes]:
    """The record payloads of a `.wandb` file, in order; stops (with a problem) at damage or a cut tail."""
    n = len(buf)
    if n < RECORD_HEADER or bytes(buf[:4]) != HEADER:
        raise WandbFormatError(f"{name}: not a W&B transaction log (no ':W&B' header)")
    magic, version = struct.unpack_from("<HB", buf, 4)
    if magic != MAGIC or version != 0:
        raise WandbFormatError(f"{name}: unknown W&B log header (magic {magic:#x}, version {version})")
    pos = RECORD_HEADER
    pending: list[bytes] | None = None
    index = 0
    while pos < n:
        space = BLOCK - pos % BLOCK
        if space < RECORD_HEADER:
            pos += space
            continue
        if pos + RECORD_HEADER > n:
            problems.append(f"{name}: file ends inside a record header at byte {pos}; kept {index} records")
            return
        crc, length, kind = struct.unpack_from("<IHB", buf, pos)
        if kind == 0 and length == 0 and crc == 0:
            pos += space  # zero padding / preallocated tail of a block
            continue
        start = pos + RECORD_HEADER
        if kind not in _TYPE_CRC or length > space - RECORD_HEADER:
            problems.append(f"{name}: damaged record header at byte {pos}; kept {index} records")
            return
        if start + length > n:
            problems.append(f"{name}: last record cut short at byte {pos} (run still writing?); kept {index} records")
            return
        data = bytes(buf[start : start + length])
        if zlib.crc32(data, _TYPE_CRC[kind]) & 0xFFFFFFFF != crc:
            problems.append(f"{name}: CRC mismatch in the record at byte {pos}; kept {index} records")
            return
        pos = start + length
        if kind == FULL:
            pending = None
            index += 1
            yield data
        elif kind == FIRST:
            pending = [data]
        elif pending is None:
            problems.append(f"{name}: record fragment without its start at byte {pos - length - RECORD_HEADER}; skipped")
        elif kind == MIDDLE:
            pending.append(data)
        else:
            index += 1
            yield b"".join(pending + [data])
            pending = None
    if pending is not None:
        problems.append(f"{name}: last record incomplete (run still writing?); kept {index} records")


# --------------------------------------------------------------------------- protobuf


class _ProtoError(ValueError):
    pass


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _ProtoError("bad varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message; length-delimited values are (start, end)."""
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            value, pos = (pos, pos + 8), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + length), pos + length
        elif wire == 5:
            value, pos = (pos, pos + 4), pos + 4
        else:
            raise _ProtoError(f"wire type {wire}")
        if pos > end or number == 0:
            raise _ProtoError("field runs past its message")
        yield number, wire, value


def _text(buf: bytes, span: tuple[int, int]) -> str:
    return buf[span[0] : span[1]].decode("utf-8", "replace")


def _item(buf: bytes, span: tuple[int, int]) -> tuple[str, Any]:
    """A History/Summary/Config item: (key joined with '/', parsed value_json)."""
    key = ""
    nested: list[str] = []
    raw = None
    for number, wire, value in fields(buf, *span):
        if wire != 2:
            continue
        if number == 1:
            key = _text(buf, value)
        elif number == 2:
            nested.append(_text(buf, value))
        elif number == 16:
            raw = _text(buf, value)
    name = "/".join(nested) if nested else key
    try:
        parsed = json.loads(raw) if raw is not None else None
    except ValueError:
        parsed = raw
    return name, parsed


# --------------------------------------------------------------------------- reading


class _History:
    def __init__(self) -> None:
        self.columns: dict[str, list] = {"step": [], "key": [], "value": [], "wall_time_s": [], "split": []}
        self.splits: dict[str, str | None] = {}
        self.config: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        self.console: list[str] = []
        self.events: list[tuple] = []
        self.records = 0
        self.bad_records = 0
        self.last_step: int | None = None

    def history(self, buf: bytes, span: tuple[int, int]) -> None:
        items: dict[str, Any] = {}
        step = None
        for number, wire, value in fields(buf, *span):
            if number == 1 and wire == 2:
                key, parsed = _item(buf, value)
                items[key] = parsed
            elif number == 2 and wire == 2:
                for n2, w2, v2 in fields(buf, *value):
                    if n2 == 1 and w2 == 0:
                        step = v2 - (1 << 64) if v2 >= 1 << 63 else v2
        if step is None:
            raw_step = items.get("_step")
            if isinstance(raw_step, (int, float)) and not isinstance(raw_step, bool) and math.isfinite(raw_step):
                step = int(raw_step)
        if step is None:
            self.bad_records += 1
            return
        wall = items.get("_timestamp")
        wall = float(wall) if isinstance(wall, (int, float)) and not isinstance(wall, bool) else None
        for key, value in items.items():
            if key.startswith("_") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            split = self.splits.get(key, "?")
            if split == "?":
                split = self.splits[key] = infer_split(key)
            self.columns["step"].append(step)
            self.columns["key"].append(key)
            self.columns["value"].append(float(value))
            self.columns["wall_time_s"].append(wall)
            self.columns["split"].append(split)
        self.last_step = step

    def items_into(self, buf: bytes, span: tuple[int, int], target: dict[str, Any]) -> None:
        for number, wire, value in fields(buf, *span):
            if number == 1 and wire == 2:  # update
                key, parsed = _item(buf, value)
                target[key] = parsed
            elif number == 2 and wire == 2:  # remove
                key, _ = _item(buf, value)
                target.pop(key, None)

    def record(self, data: bytes, label: str) -> None:
        for number, wire, value in fields(data):
            if wire != 2:
                continue
            if number == 2:
                self.history(data, value)
            elif number == 3:
                self.items_into(data, value, self.summary)
            elif number == 5:
                self.items_into(data, value, self.config)
            elif number in (4, 13):
                for n2, w2, v2 in fields(data, *value):
                    if n2 == 3 and w2 == 2:
                        self.console.append(_text(data, v2))
            elif number == 17:
                for n2, w2, v2 in fields(data, *value):
                    if n2 == 4 and w2 == 2:
                        self.items_into(data, v2, self.config)
                    elif n2 == 18 and w2 == 0 and v2:
                        self.events.append((self.last_step, "restart", "W&B run resumed (run record `resumed`)", label, None))
            elif number == 18:
                code = 0
                for n2, w2, v2 in fields(data, *value):
                    if n2 == 1 and w2 == 0:
                        code = v2 - (1 << 64) if v2 >= 1 << 63 else v2
                if code:
                    self.events.append((self.last_step, "error", f"W&B run exited with code {code}", label, None))


def read_transaction_log(path: Path, problems: list[str]) -> _History:
    """Everything this reader uses from one `.wandb` file; WandbFormatError if it is not one."""
    out = _History()
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            if size == 0:
                raise WandbFormatError(f"{path.name}: empty file")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                for data in iter_records(buf, path.name, problems):
                    out.records += 1
                    try:
                        out.record(data, path.name)
                    except (_ProtoError, IndexError, RecursionError):
                        out.bad_records += 1
    except OSError as exc:
        raise ReadError(f"{path.name}: {exc.strerror or exc}") from None
    if out.bad_records:
        problems.append(f"{path.name}: {out.bad_records} record(s) not understood, skipped")
    return out


def _unwrap(config: Any) -> dict[str, Any]:
    """W&B config as plain values: `{key: {value: v, desc: ...}}` -> `{key: v}`; W&B's own keys dropped."""
    if not isinstance(config, dict):
        return {}
    out = {}
    for key, value in config.items():
        if key in ("_wandb", "wandb_version"):
            continue
        if isinstance(value, dict) and "value" in value and set(value) <= {"value", "desc"}:
            value = value["value"]
        out[key] = value
    return out


def _numbers(obj: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            if "_type" not in value:
                yield from _numbers(value, name)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name, float(value)


def _load_json(path: Path) -> Any:
    check_size(path, MAX_JSON_DOCUMENT_BYTES, "JSON document")
    return json.loads(path.read_text(encoding="utf-8"))


def _summary_metrics(path: Path, problems: list[str]) -> dict[str, list] | None:
    try:
        summary = _load_json(path)
    except ReadError as exc:
        problems.append(str(exc))
        return None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        problems.append(f"{SUMMARY}: not parsed ({type(exc).__name__})")
        return None
    if not isinstance(summary, dict):
        return None
    step = summary.get("_step")
    if not isinstance(step, (int, float)) or isinstance(step, bool) or not math.isfinite(step):
        problems.append(f"{SUMMARY}: no `_step`; summary not used as metrics")
        return None
    wall = summary.get("_timestamp") if isinstance(summary.get("_timestamp"), (int, float)) else None
    columns: dict[str, list] = {"step": [], "key": [], "value": [], "wall_time_s": [], "split": []}
    for key, value in _numbers({k: v for k, v in summary.items() if not str(k).startswith("_")}):
        columns["step"].append(int(step))
        columns["key"].append(key)
        columns["value"].append(value)
        columns["wall_time_s"].append(wall)
        columns["split"].append(infer_split(key.replace(".", "/")))
    return columns


def _metadata_params(path: Path, params: dict[str, Any], problems: list[str]) -> None:
    try:
        meta = _load_json(path)
    except ReadError as exc:
        problems.append(str(exc))
        return
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        problems.append(f"{METADATA}: not parsed ({type(exc).__name__})")
        return
    if isinstance(meta, dict):
        for key in _METADATA_FIELDS:
            if key in meta:
                value = meta[key]
                params[f"wandb.{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else value
        commit = meta.get("git", {}).get("commit") if isinstance(meta.get("git"), dict) else None
        if commit:
            params["wandb.git.commit"] = commit


WANDB_DIR = "wandb"


def nested_run_folders(run_dir: Path) -> list[Path]:
    """The W&B run folders in `wandb/` of a Hydra output folder (they belong to its run), by name."""
    run_dir = Path(run_dir)
    if not (run_dir / ".hydra").is_dir():
        return []
    try:
        with os.scandir(run_dir / WANDB_DIR) as entries:
            return sorted(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False) and RUN_DIR_NAME.match(e.name))
    except OSError:
        return []


def detect(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    found = _detect_folder(run_dir)
    for folder in nested_run_folders(run_dir):
        found += _detect_folder(folder)
    return found


def _detect_folder(run_dir: Path) -> list[Path]:
    logs = [p for p in files_in(run_dir) if p.suffix == ".wandb"]
    extra = [run_dir / rel for rel in (SUMMARY, CONFIG, METADATA, OUTPUT)]
    extra = [p for p in extra if p.is_file() and not p.is_symlink()]
    if logs or any(p.name in ("wandb-summary.json", "wandb-metadata.json") for p in extra):
        return logs + extra
    if RUN_DIR_NAME.match(run_dir.name) and extra:
        return extra
    return []


def _folder_of(path: Path, run_dir: Path) -> Path:
    parts = path.relative_to(run_dir).parts
    if len(parts) >= 3 and parts[0] == WANDB_DIR and RUN_DIR_NAME.match(parts[1]):
        return run_dir / WANDB_DIR / parts[1]
    return run_dir


@reader("wandb", detect=detect, provides_metrics=True, priority=15)
def read(run_dir: Path, files: list[Path]) -> SourceData:
    """History, config, summary and console events of a W&B run folder, or of the W&B folders of a Hydra run."""
    run_dir = Path(run_dir)
    groups: dict[Path, list[Path]] = {}
    for path in files:
        groups.setdefault(_folder_of(path, run_dir), []).append(path)
    if len(groups) == 1:
        ((folder, group),) = groups.items()
        return read_folder(folder, group)
    parts: list[SourceData] = []
    errors: list[str] = []
    for folder in sorted(groups, key=lambda f: f.name):  # oldest first: later params override
        try:
            parts.append(read_folder(folder, groups[folder]))
        except ReadError as exc:
            errors.append(f"{folder.name}: {exc}")
    if not parts:
        raise ReadError("; ".join(errors))
    params: dict[str, Any] = {}
    for part in parts:
        params.update(part.params)
    metrics = [p.metrics for p in reversed(parts) if p.metrics is not None and p.metrics.height]
    merged = pl.concat(metrics, how="vertical").unique(["step", "key"], keep="first", maintain_order=True) if metrics else metrics_frame([])
    events = [p.events for p in parts if p.events is not None]
    return SourceData(
        metrics=merged,
        params=params,
        events=pl.concat(events, how="vertical_relaxed") if events else None,
        problems=errors + [problem for part in parts for problem in part.problems],
    )


def read_folder(run_dir: Path, files: list[Path]) -> SourceData:
    """History, config, summary and console events of one W&B run folder."""
    problems: list[str] = []
    errors: list[str] = []
    params: dict[str, Any] = {}
    by_name = {p.relative_to(run_dir).as_posix(): p for p in files}
    histories = []
    for path in sorted(p for p in files if p.suffix == ".wandb"):
        try:
            histories.append(read_transaction_log(path, problems))
        except ReadError as exc:
            errors.append(str(exc))
    columns: dict[str, list] = {"step": [], "key": [], "value": [], "wall_time_s": [], "split": []}
    config: dict[str, Any] = {}
    console: list[str] = []
    events: list[tuple] = []
    for history in histories:
        for key, values in history.columns.items():
            columns[key].extend(values)
        config.update(history.config)
        console.extend(history.console)
        events.extend(history.events)
    if not columns["step"] and SUMMARY in by_name:
        summary = _summary_metrics(by_name[SUMMARY], problems)
        if summary and summary["step"]:
            columns = summary
            why = "no .wandb file" if not histories else "the .wandb file holds no history"
            problems.append(f"{SUMMARY}: only the run summary was read ({why}): one row per key at the last step")
    if CONFIG in by_name:
        try:
            check_size(by_name[CONFIG], MAX_JSON_DOCUMENT_BYTES, "YAML document")
            params.update(flatten_params(_unwrap(load_yaml(by_name[CONFIG].read_text(encoding="utf-8")))))
        except Exception as exc:  # a broken config never stops the metrics
            problems.append(f"{CONFIG}: not parsed ({type(exc).__name__})")
    elif config:
        params.update(flatten_params(_unwrap(config)))
    if METADATA in by_name:
        _metadata_params(by_name[METADATA], params, problems)
    if OUTPUT in by_name:
        logged = parse_logs(run_dir, [by_name[OUTPUT]], metrics=False)
        log_events = logged.events
        problems.extend(logged.problems)
    else:
        log_events = parse_lines((line for chunk in console for line in chunk.splitlines()), "console (.wandb)")
    event_frame = pl.DataFrame(events or None, schema=EVENT_COLUMNS, orient="row")
    if log_events.height:
        event_frame = pl.concat([event_frame, log_events], how="vertical_relaxed")
    if not columns["step"] and not histories and errors:
        raise ReadError("; ".join(errors))
    metrics = metrics_frame(columns)
    if metrics.height:
        metrics = metrics.unique(["step", "key"], keep="last", maintain_order=True)
    return SourceData(metrics=metrics, params=params, events=event_frame, problems=errors + problems)
