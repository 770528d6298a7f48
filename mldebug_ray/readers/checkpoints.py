"""Checkpoints of a run: what there is, how many parameters, and whether it can be read, never by unpickling.

Looked for in the run directory and its subfolders down to two levels:
- `*.safetensors`: the header is parsed here (u64 length, JSON header) and checked
  (length at most 100 MB and inside the file, every tensor's byte range inside the
  data and matching its dtype and shape); n_params from the shapes, no data read;
- `*.safetensors.index.json` / `*.bin.index.json`: one sharded checkpoint; its shards
  are not listed again; n_params and bytes summed over the shards;
- `*.pt`, `*.pth`, `*.ckpt`, and `*.bin` files that are torch archives:
  `torch.load(path, map_location="cpu", weights_only=True, mmap=True)` (mmap only for
  zip archives; the legacy format is loaded weights-only without it). A file the
  weights-only unpickler refuses (a pickled class, e.g. Lightning's hyper-parameter
  objects) or a corrupt archive is status 'unreadable' with a one-line reason; there
  is no fall back to full unpickling (FIELD-NOTES "Formats: traps");
- `torch.distributed.checkpoint` folders (a `.metadata` file): format 'dcp', bytes of
  the whole folder; n_params from the tensor sizes in `.metadata`, which is a pickle:
  it is disassembled with `pickletools` (no object is built, nothing imported or
  called); a layout not understood gives status 'unreadable'.
Optimizer, scheduler, RNG and `training_args.bin` files are not model checkpoints and
are skipped, as are `.bin` files that are not torch archives (token dumps, ...).
A git-lfs pointer in place of a checkpoint is 'unreadable' with that reason.

The step comes from the file or folder names (`step_100`, `checkpoint-100`,
`epoch=3-step=300`, `iter_0000100`, `global_step100`, else the last number of the
file or its folder name that is not an epoch, rank or shard number), else null.
"""

from __future__ import annotations

import json
import math
import os
import pickletools
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from mldebug_ray.errors import ReadError
from mldebug_ray.readers.base import CHECKPOINT_COLUMNS, SourceData, files_in, reader

MAX_DEPTH = 2
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SAFETENSORS_INDEX = ".safetensors.index.json"
TORCH_INDEX = ".bin.index.json"
DCP_METADATA = ".metadata"
MAX_HEADER_BYTES = 100 * 1024 * 1024
# Not model weights: optimizer / scheduler / RNG state and the Trainer's pickled arguments.
_AUXILIARY = re.compile(r"optim|scheduler|rng_state|scaler|training_args|trainer_state", re.IGNORECASE)
_SHARD = re.compile(r"-\d+-of-\d+$")
_LFS_MAGIC = b"version https://git-lfs"
_ZIP_MAGIC = b"PK\x03\x04"
# torch's legacy (pre-1.6) serialization starts with a pickled magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "F8_E8M0": 1, "C64": 8, "C128": 16,
}  # fmt: skip

_STEP_PATTERNS = (
    re.compile(r"(?:^|[^a-z])step[_=\-]?(\d+)"),
    re.compile(r"checkpoint[_=\-]?(\d+)"),
    re.compile(r"ckpt[_=\-]?(\d+)"),
    re.compile(r"iter(?:ation)?[_=\-]?(\d+)"),
)
_NOT_A_STEP = re.compile(r"\d+-of-\d+|rank[_\-]?\d+|epoch[_=\-]?\d+|v\d+(?=\D|$)")


# ---------------------------------------------------------------- names

def _stem(name: str) -> str:
    lowered = name.lower()
    for suffix in (SAFETENSORS_INDEX, TORCH_INDEX, ".safetensors", *TORCH_SUFFIXES):
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def step_from_path(rel_path: str) -> int | None:
    """The training step a checkpoint path names (see the module docstring), else None."""
    parts = [p for p in rel_path.split("/") if p and p != "."]
    if not parts:
        return None
    parts[-1] = _stem(parts[-1])
    lowered = [p.lower() for p in parts]
    for part in reversed(lowered):
        for pattern in _STEP_PATTERNS:
            found = pattern.findall(part)
            if found:
                return int(found[-1])
    for part in reversed(lowered[-2:]):
        digits = re.findall(r"\d+", _NOT_A_STEP.sub(" ", part))
        if digits:
            return int(digits[-1])
    return None


def _head(path: Path, n: int = 32) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(n)
    except OSError:
        return b""


def _is_torch_archive(path: Path) -> bool:
    head = _head(path, len(_LEGACY_TORCH_MAGIC))
    return head.startswith(_ZIP_MAGIC) or head.startswith(_LEGACY_TORCH_MAGIC) or head.startswith(_LFS_MAGIC)


def detect(run_dir: Path) -> list[Path]:
    files = files_in(run_dir, max_depth=MAX_DEPTH)
    indexed_dirs = {p.parent for p in files if p.name.endswith((SAFETENSORS_INDEX, TORCH_INDEX))}
    found = []
    for path in files:
        name = path.name
        lowered = name.lower()
        if name == DCP_METADATA or lowered.endswith((SAFETENSORS_INDEX, TORCH_INDEX)):
            found.append(path)
            continue
        if _AUXILIARY.search(name):
            continue
        if not lowered.endswith((".safetensors", *TORCH_SUFFIXES)):
            continue
        if path.parent in indexed_dirs and _SHARD.search(_stem(name)):
            continue  # read through its index
        if lowered.endswith(".bin") and not _is_torch_archive(path):
            continue
        found.append(path)
    return found


# ---------------------------------------------------------------- safetensors

def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def safetensors_header(path: Path) -> dict[str, Any]:
    """The checked JSON header of a safetensors file (tensor name -> {dtype, shape, data_offsets}).

    Raises ValueError with a one-line reason when the file is not a sound safetensors file.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        first = handle.read(8)
        if first.startswith(_LFS_MAGIC[:8]) and handle.read(len(_LFS_MAGIC) - 8) == _LFS_MAGIC[8:]:
            raise ValueError("git-lfs pointer file, not the checkpoint")
        if len(first) < 8:
            raise ValueError(f"file too short for a header ({size} bytes)")
        (header_len,) = struct.unpack("<Q", first)
        if header_len > MAX_HEADER_BYTES:
            raise ValueError(f"header length {header_len} bytes is absurd (limit {MAX_HEADER_BYTES})")
        if 8 + header_len > size:
            raise ValueError(f"header length {header_len} runs past the end of the file ({size} bytes)")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    data_bytes = size - 8 - header_len
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"tensor {name!r}: entry is not an object")
        shape, offsets, dtype = entry.get("shape"), entry.get("data_offsets"), entry.get("dtype")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"tensor {name!r}: bad shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes
        ):
            raise ValueError(f"tensor {name!r}: data offsets {offsets!r} outside the {data_bytes} data bytes")
        itemsize = SAFETENSORS_DTYPE_BYTES.get(dtype) if isinstance(dtype, str) else None
        if itemsize is not None and offsets[1] - offsets[0] != math.prod(shape) * itemsize:
            raise ValueError(f"tensor {name!r}: {offsets[1] - offsets[0]} bytes do not hold {dtype} {shape}")
    return header


def safetensors_n_params(header: dict[str, Any]) -> int:
    return sum(math.prod(e["shape"]) for k, e in header.items() if k != "__metadata__")


# ---------------------------------------------------------------- torch files

_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "model_state", "net", "network")


def load_torch(path: Path) -> Any:
    """`torch.load` weights-only (mmap for zip archives); raises ValueError with a one-line reason."""
    if _head(path, len(_LFS_MAGIC)) == _LFS_MAGIC:
        raise ValueError("git-lfs pointer file, not the checkpoint")
    head = _head(path, len(_LEGACY_TORCH_MAGIC))
    is_zip = head.startswith(_ZIP_MAGIC) and zipfile.is_zipfile(path)
    if head.startswith(_ZIP_MAGIC) and not is_zip:
        raise ValueError("damaged zip archive (no central directory: truncated?)")
    if not is_zip and not head.startswith(_LEGACY_TORCH_MAGIC):
        raise ValueError("not a torch.save file (no zip or legacy torch header)")
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as exc:  # weights-only refusal, corrupt archive, truncated file, ...
        return _raise_reason(exc)


def _raise_reason(exc: Exception):
    text = str(exc)
    refused = re.search(r"Unsupported global: GLOBAL \S+|Unsupported operand \S+|Unsupported class \S+", text)
    if refused:
        raise ValueError(f"weights-only load refused: {refused.group(0)}") from None
    first = next((line for line in text.splitlines() if line.strip()), type(exc).__name__)
    first = first.split(". ")[0]  # torch's messages go on with advice after the first sentence
    raise ValueError(f"torch.load failed: {type(exc).__name__}: {_one_line(first)}") from None


def named_tensors(obj: Any) -> Iterator[tuple[str, Any]]:
    """(dotted name, tensor) pairs of a loaded checkpoint's model weights.

    Looks into the usual wrapper keys (`state_dict`, `model`, `module`, ...) when the
    top level holds one; otherwise walks every nested dict/list and yields all tensors.
    """
    import torch

    def walk(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
        if isinstance(node, torch.Tensor):
            yield prefix, node
        elif isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                yield from walk(value, f"{prefix}.{i}" if prefix else str(i))

    node = obj
    while isinstance(node, dict):
        inner = next((node[k] for k in _STATE_DICT_KEYS if isinstance(node.get(k), dict)), None)
        if inner is None:
            break
        node = inner
    yield from walk(node, "")


def torch_n_params(obj: Any) -> int:
    return sum(int(t.numel()) for _, t in named_tensors(obj))


# ---------------------------------------------------------------- torch.distributed.checkpoint

# Pickle opcodes that push the literal value pickletools hands over as `arg`.
_VALUE_OPCODES = frozenset(
    {
        "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
        "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
        "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "BYTEARRAY8",
    }
)  # fmt: skip


def dcp_n_params(metadata_path: Path) -> int:
    """Parameters listed in a DCP `.metadata` pickle, read by disassembly only.

    Follows the pickle's stack with symbolic values: a GLOBAL is just its name, a
    REDUCE/NEWOBJ a (callable, args) pair, BUILD attaches the state dict. Every
    `TensorStorageMetadata` object's `size` (a `torch.Size` of ints) is counted.
    Raises ValueError when the layout is not the expected one.
    """
    data = metadata_path.read_bytes()
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    total = 0
    found = 0

    class Obj:
        __slots__ = ("cls", "args", "state")

        def __init__(self, cls: Any, args: Any) -> None:
            self.cls, self.args, self.state = cls, args, None

    def numel_of(size: Any) -> int | None:
        if isinstance(size, Obj) and size.cls == ("torch", "Size") and size.args:
            dims = size.args[0]
            if isinstance(dims, (list, tuple)) and all(isinstance(d, int) for d in dims):
                return math.prod(dims)
        return None

    def pop_mark() -> list[Any]:
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in ("PROTO", "FRAME", "STOP"):
                continue
            if name == "MARK":
                marks.append(len(stack))
            elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE"):
                stack.append({} if name == "EMPTY_DICT" else ([] if name == "EMPTY_LIST" else ()))
            elif name in ("GLOBAL",):
                module, _, attr = arg.partition(" ")
                stack.append((module, attr))
            elif name == "STACK_GLOBAL":
                attr = stack.pop()
                module = stack.pop()
                stack.append((module, attr))
            elif name in ("MEMOIZE",):
                memo[len(memo)] = stack[-1]
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = tuple(stack[-n:])
                del stack[-n:]
                stack.append(items)
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name == "LIST":
                stack.append(list(pop_mark()))
            elif name == "DICT":
                items = pop_mark()
                stack.append({_hashable(items[i]): items[i + 1] for i in range(0, len(items), 2)})
            elif name == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif name == "APPENDS":
                items = pop_mark()
                stack[-1].extend(items)
            elif name == "SETITEM":
                value = stack.pop()
                key = stack.pop()
                stack[-1][_hashable(key)] = value
            elif name == "SETITEMS":
                items = pop_mark()
                for i in range(0, len(items), 2):
                    stack[-1][_hashable(items[i])] = items[i + 1]
            elif name in ("REDUCE", "NEWOBJ"):
                args = stack.pop()
                cls = stack.pop()
                stack.append(Obj(cls, args))
            elif name == "NEWOBJ_EX":
                stack.pop()  # kwargs
                args = stack.pop()
                cls = stack.pop()
                stack.append(Obj(cls, args))
            elif name == "BUILD":
                state = stack.pop()
                target = stack[-1]
                if isinstance(target, Obj):
                    target.state = state
                    if isinstance(target.cls, tuple) and target.cls[1] == "TensorStorageMetadata":
                        fields = state[1] if isinstance(state, tuple) and len(state) == 2 else state
                        if isinstance(fields, dict):
                            numel = numel_of(fields.get("size"))
                            if numel is not None:
                                total += numel
                                found += 1
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in ("NONE",):
                stack.append(None)
            elif name in ("NEWTRUE", "NEWFALSE"):
                stack.append(name == "NEWTRUE")
            elif name == "EMPTY_SET":
                stack.append([])
            elif name == "ADDITEMS":
                items = pop_mark()
                stack[-1].extend(items)
            elif name in _VALUE_OPCODES:
                stack.append(arg)
            else:
                raise ValueError(f"opcode {name}")
    except (IndexError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f".metadata not understood ({type(exc).__name__} while disassembling)") from None
    if not found:
        raise ValueError(".metadata lists no tensor sizes")
    return total


def _hashable(key: Any) -> Any:
    try:
        hash(key)
        return key
    except TypeError:
        return repr(key)


# ---------------------------------------------------------------- rows

def _rel(run_dir: Path, path: Path) -> str:
    rel = path.relative_to(run_dir).as_posix()
    return rel or "."


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in files_in(folder, max_depth=8))


def _row(run_dir: Path, path: Path) -> dict[str, Any]:
    """One checkpoint row for a file found by detect."""
    name = path.name.lower()
    if path.name == DCP_METADATA:
        target, fmt = path.parent, "dcp"
        size = _folder_bytes(target)
        try:
            n_params, reason = dcp_n_params(path), None
        except (OSError, ValueError) as exc:
            n_params, reason = None, _one_line(str(exc))
    elif name.endswith((SAFETENSORS_INDEX, TORCH_INDEX)):
        target = path
        fmt = "safetensors" if name.endswith(SAFETENSORS_INDEX) else "torch"
        n_params, size, reason = _sharded(path, fmt)
    elif name.endswith(".safetensors"):
        target, fmt, size = path, "safetensors", path.stat().st_size
        try:
            n_params, reason = safetensors_n_params(safetensors_header(path)), None
        except (OSError, ValueError) as exc:
            n_params, reason = None, _one_line(str(exc))
    else:
        target, fmt, size = path, "torch", path.stat().st_size
        try:
            n_params, reason = torch_n_params(load_torch(path)), None
        except (OSError, ValueError) as exc:
            n_params, reason = None, _one_line(str(exc))
    rel = _rel(run_dir, target)
    return {
        "step": step_from_path(rel),
        "path": rel,
        "format": fmt,
        "n_params": n_params,
        "bytes": size,
        "status": "ok" if reason is None else "unreadable",
        "reason": reason,
    }


def shard_files(index_path: Path) -> list[Path]:
    """The shard files a `*.index.json` names, in order of first mention; ValueError if unreadable."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"index not readable ({type(exc).__name__})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError("index has no weight_map")
    names = list(dict.fromkeys(str(v) for v in weight_map.values()))
    return [index_path.parent / n for n in names]


def _sharded(index_path: Path, fmt: str) -> tuple[int | None, int, str | None]:
    """(n_params, bytes, reason) of a sharded checkpoint, summed over its shards."""
    size = index_path.stat().st_size
    try:
        shards = shard_files(index_path)
    except ValueError as exc:
        return None, size, str(exc)
    n_params = 0
    problems = []
    for shard in shards:
        if not shard.is_file():
            problems.append(f"shard {shard.name} missing")
            continue
        size += shard.stat().st_size
        try:
            if fmt == "safetensors":
                n_params += safetensors_n_params(safetensors_header(shard))
            else:
                n_params += torch_n_params(load_torch(shard))
        except (OSError, ValueError) as exc:
            problems.append(f"shard {shard.name}: {exc}")
    if problems:
        return None, size, _one_line("; ".join(problems))
    return n_params, size, None


@reader("checkpoints", detect=detect, provides_metrics=False, priority=90)
def read(run_dir: Path, files: list[Path]) -> SourceData:
    """One row per checkpoint in `files`; an unreadable checkpoint is a row, not an error."""
    run_dir = Path(run_dir)
    rows = []
    problems = []
    listed = set()
    for path in files:
        if path.name.lower().endswith((SAFETENSORS_INDEX, TORCH_INDEX)):
            try:
                listed.update(shard_files(path))
            except ValueError:
                pass
    for path in files:
        if path in listed:
            continue
        try:
            rows.append(_row(run_dir, path))
        except OSError as exc:
            problems.append(f"{_rel(run_dir, path)}: {exc.strerror or exc}")
    if not rows:
        raise ReadError("; ".join(problems) if problems else "no checkpoint found")
    frame = pl.DataFrame(rows, schema=CHECKPOINT_COLUMNS).sort("step", "path", nulls_last=True)
    return SourceData(checkpoints=frame, problems=problems)
