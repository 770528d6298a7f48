"""Free-text training logs and stderr: one table of line patterns for metrics and events, read as a stream.

Files
-----
By name: `*.log`, `*.out`, `*.err`, `stdout*`, `stderr*` (`train.log`, `main.log`,
`slurm-<job>.out` included), and `*.txt` files that look like logs (a name saying
log/stdout/stderr/output/console/train, or a metric or traceback line in the last
16 KiB; only in folders with at most 16 `*.txt` files, more is a data folder).
detect() reads at most the first 512 bytes of a candidate (16 KiB of the tail for a
`*.txt`): a Git-LFS pointer (`version https://git-lfs.github.com/spec/v1`) or a
file with NUL bytes is not a log and is not returned; the `text_log_skipped` reader
(no metrics, so it never makes a folder a run) reports those as problems on a run
that exists for another reason. The console copies and debug logs that W&B keeps in
`<run>/files/` and `<run>/logs/`, the folders of an MLflow run, and Ray Tune's
`error.txt` (beside `result.json`/`params.json`) belong to those readers and are not
read here.

AlgoPerf v0.6 writes one absl log per tuning trial NEXT TO the `trial_N/` folders; only
the log says which trial it is (`Creating tuning directory at .../trial_1`). For a run
dir named `trial_N`, detect() also returns the `*.log` files of the folder above that
name this trial in their first 64 KiB (about 200 lines); the answer is cached per
(path, size, mtime), so each log is sniffed once per process. Of such a log only the
lines of this trial are read: those from its `Creating tuning directory` line to the
next one naming another trial (lines before the first such line belong to the first
trial named). The workload folder itself is no run: discovery keeps the deepest
folders, and the trials below it hold `measurements.csv`.

Reading
-------
Streamed in 1 MiB chunks, split on `\\n` and on `\\r` (progress bars redraw with `\\r`;
the `line` column counts `\\n` only). A line longer than 64 KiB is skipped (noted with
its line number): memory stays bounded whatever the file holds (rows are kept in
typed arrays with interned keys, at most 50,000 distinct keys). Bytes that are not
UTF-8 are replaced (noted); a log-named file that cannot be opened is still returned
by detect() so that the run's reason says why. Terminal colour codes are removed. A rank prefix (`[default7]:`,
`[rank3]:`, `[1,0]<stdout>:`, srun's `3: `) is removed before matching; metrics are
taken from one rank only (the first prefix seen on a metric line; lines without a
prefix always count), events from every rank.

A pasted training script is not log output (modded-nanogpt logs start with the whole
script source): if the first line is a `====...` separator, everything up to the next
separator line is skipped; if the first line looks like Python source (`import`,
`from x import`, `#!`, a docstring), everything up to the first line that a specific
metric pattern (not a generic one) matches is skipped. Skipped lines yield neither
metrics nor events.

Metrics
-------
`METRIC_PATTERNS` below is the library, tried in order, first match wins; each entry
says which lines it reads and carries a real example line (tests parse every
example). Keys are the names as logged, normalised: lower case, runs of spaces and
punctuation to `_`, a unit in parentheses or glued to the number appended
(`elapsed time per iteration (ms)` -> `elapsed_time_per_iteration_ms`,
`train_time:462086ms` -> `train_time_ms`), then renamed where a tool abbreviates
(llm.c `trl` -> `train_loss`, `tel` -> `val_loss`, `norm` -> `grad_norm`); validation
lines of Megatron get the prefix `val_` (`val_lm_loss`), so that a train and a
validation value of one iteration never share a (step, key). The split is the one the
line states (Megatron iteration lines: train, validation lines: val), else the key's
(`infer_split`). Lines without a step (generic `loss: X`) take the last step seen;
Keras' `Epoch 3/10` lines only set that step. Within this reader a (step, key) logged twice keeps the
first value (ranks and AlgoPerf's two eval lines repeat values; the first is the most
precise). Placeholders: a timing value that is NaN (modded-nanogpt's `step_avg:nanms`
before timing starts) and MLPerf's `final_loss: 0.0` are not values and are dropped;
Megatron's `grad norm: 0.000` (norm not computed) is kept as logged, under
`grad_norm`: the detectors know it. `N/M` step counters give the param
`log.total_steps` = M. Hugging Face console dicts carry no step: they take the last
progress-bar counter (`| 50/500 [`) seen, else their order (noted); they are not
read at all when the run has a `trainer_state.json`, the same numbers with real
steps. Their final summary dict (`train_runtime`) goes to params as `summary.<key>`.
Users add patterns in config, `readers.text_log.patterns` (regexes with named groups, see
`compile_patterns`); the driver, each Ray worker and `read_run` install them with
`user_patterns()` before reading.

Restarts
--------
When the step of a metric line goes below the highest step of the current segment
(a resumed run appending to the same log, `tee -a`), a `restart` event is emitted at
the new step and a new segment starts; at the end, rows of an earlier segment at or
beyond the step where a later segment started are dropped, so the curve is the one
the final run continued from, never two segments averaged. Several log files of one
run are read in (mtime, name) order as one stream: a later file whose steps go back
is a restart too, unless its first metric value equals the one already read for that
(step, key) (a copy of the same output, e.g. `stdout` next to `train.log`).

Events
------
`EVENT_PATTERNS` below (overflow skips, CUDA OOM, NCCL and Slurm errors, crashes,
restarts, warnings; one event per line, first match wins) plus Python tracebacks:
`Traceback (most recent call last):` through the exception line is ONE event of kind
`traceback` whose text is the exception line plus the first frame (and the innermost
one when they differ); the exception line is also matched against the event table
(a traceback ending in `torch.OutOfMemoryError` gives a `traceback` and an `oom`).
The step of an event is the last step seen before it (on a metric line, or on a line
that only names its step, like DeepSpeed's `[Rank 0] step=120, skipped=3, lr=[...]`),
except for overflow skips: DeepSpeed and apex print `OVERFLOW! ... Skipping step`
while the iteration runs and Megatron/DeepSpeed print that iteration's line after it,
so an overflow gets the step of the next line naming a step (at the end of the file:
the last step seen). Identical warning lines are kept once per file with a repeat
count; at most 10,000 events per file.
"""

from __future__ import annotations

import math
import os
import re
from array import array
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import polars as pl

from mldebug_ray.errors import ConfigError
from mldebug_ray.readers.base import EVENT_COLUMNS, METRIC_COLUMNS, SourceData, files_in, infer_split, reader

# ---------------------------------------------------------------------------- files

_LOG_NAME = re.compile(r"^(?:std(?:out|err).*|slurm-.*\.out|.*\.(?:log|out|err))$", re.IGNORECASE)
_TXT_LOG_NAME = re.compile(r"log|stdout|stderr|output|console|train", re.IGNORECASE)
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
_HEAD_BYTES = 512
_TXT_TAIL_BYTES = 16384
_MAX_TXT_SNIFFS = 16  # per folder: a folder of many .txt files is data, not logs
_TRIAL_SNIFF_BYTES = 65536
CHUNK_BYTES = 1 << 20
MAX_LINE_BYTES = 65536
MAX_EVENTS_PER_FILE = 10_000
MAX_KEYS = 50_000  # distinct metric keys per run: a bound on memory for logs that invent keys
MAX_EVENT_TEXT = 500
MAX_TRACEBACK_LINES = 500
_TRIAL_DIR = re.compile(r"^trial_\d+$")
_TRIAL_LINE = re.compile(r"Creating tuning directory at (?P<path>\S+?)\.?\s*$")
# Folders of other trackers whose files their own readers own.
_WANDB_RUN_DIR = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-\w+$")
_WANDB_SUBDIRS = frozenset({"files", "logs", "tmp"})
_MLFLOW_SUBDIRS = frozenset({"metrics", "params", "tags", "artifacts"})
_RUN_UUID = re.compile(r"^[0-9a-f]{32}$")

# ---------------------------------------------------------------------------- numbers and keys

NUMBER = r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[nN][aA][nN]|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)"
_UNITS = {"ms": "_ms", "s": "_s", "us": "_us", "%": "_pct"}


def normalise_key(raw: str) -> str:
    """A logged name as a metric key: `elapsed time per iteration (ms)` -> `elapsed_time_per_iteration_ms`."""
    key = _KEY_CACHE.get(raw)
    if key is None:
        k = raw.strip().lower().replace("%", " pct")
        k = re.sub(r"\(([^)]*)\)", r" \1", k)
        k = re.sub(r"[^\w/.]+", "_", k)
        key = re.sub(r"_+", "_", k).strip("_.")
        if len(_KEY_CACHE) < 100_000:
            _KEY_CACHE[raw] = key
    return key


_KEY_CACHE: dict[str, str] = {}

# A field is (raw key, raw value, raw unit). The splitters of the frequent line kinds use
# str methods (several times faster than a regex over the line); values that are not
# numbers are dropped later, when float() refuses them.
Field = tuple[str, str, str]

_DICT_FIELDS = re.compile(rf"'([^']+)':\s*({NUMBER})()(?=\s*[,}}]|\s*$)")
_SPACE_FIELDS = re.compile(rf"(?:^|,\s*)([a-z][a-z ]*?) ({NUMBER})(ms|%)?(?=,|\s*$)")
_GENERIC_FIELDS = re.compile(rf"([A-Za-z_][\w/.]*(?: [A-Za-z_][\w/.]*)?)\s*[:=]\s*({NUMBER})(ms|s|%)?(?![\w.])")
_GLUED_UNITS = ("ms", "us", "s", "%")


def _is_name(key: str) -> bool:
    return bool(key) and (key[0].isalpha() or key[0] == "_")


def pipe_fields(text: str) -> list[Field]:
    """`| name: value |` chunks (Megatron-LM / DeepSpeed iteration lines)."""
    out = []
    for chunk in text.split("|"):
        key, sep, value = chunk.partition(":")
        key = key.strip()
        if sep and _is_name(key):
            out.append((key, value.strip(), ""))
    return out


def colon_fields(text: str) -> list[Field]:
    """`name:value[unit]` tokens (modded-nanogpt, llm.c); a unit glued to the number is split off."""
    out = []
    for token in text.split():
        key, sep, value = token.partition(":")
        if not sep or not _is_name(key):
            continue
        unit = ""
        if value[-1:].isalpha() or value[-1:] == "%":
            for glued in _GLUED_UNITS:
                if value.endswith(glued) and len(value) > len(glued):
                    unit, value = glued, value[: -len(glued)]
                    break
        out.append((key, value, unit))
    return out


def kv_fields(text: str) -> list[Field]:
    """`name=value, name=value` (absl / AlgoPerf `logging_writer`)."""
    out = []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if sep and _is_name(key):
            out.append((key, value.strip(), ""))
    return out


def dict_fields(text: str) -> list[Field]:
    """`'name': value` items of a printed Python dict (HF console, AlgoPerf eval); non-numbers skipped."""
    return _DICT_FIELDS.findall(text)


def space_fields(text: str) -> list[Field]:
    """`name value[unit], name value` (karpathy/nanoGPT `iter 10: loss 2.3, time 12ms`)."""
    return _SPACE_FIELDS.findall(text)


def generic_fields(text: str) -> list[Field]:
    """`name: value` / `name=value` anywhere on a line (the generic fallbacks)."""
    return _GENERIC_FIELDS.findall(text)


# ---------------------------------------------------------------------------- the pattern library


@dataclass(frozen=True)
class MetricPattern:
    """One kind of metric line.

    `regex` is searched in the line (rank prefix removed); its named group `step` gives
    the step (absent: the last step seen, see `stepless`), `total` the planned number
    of steps, `fields` the text that `fields_of` splits into (key, value, unit).
    """

    name: str
    regex: re.Pattern[str]
    fields_of: Callable[[str], list[Field]]
    example: str
    needle: str | None = None  # a substring every matching line holds: a cheap pre-test
    any_of: tuple[str, ...] = ()  # else: one of these must be in the lower-cased line
    split: str | None = None  # split of every value of the line; None: from each key
    prefix: str = ""  # put before every key (after renaming)
    rename: Mapping[str, str] = field(default_factory=dict)
    drop: frozenset[str] = frozenset()  # keys that are not metrics (the step itself)
    # Generic fallbacks never end a skipped script preamble and need a loss-like key.
    specific: bool = True
    # Lines without a step group: "last" (the last step seen) or "progress" (the last
    # progress-bar counter, HF console dicts).
    stepless: str = "last"
    # A line holding one of these keys is a run summary: its values go to params.
    summary_keys: frozenset[str] = frozenset()
    skip_if: str | None = None  # a substring that disqualifies the line (Keras `ETA:` updates)
    marker: bool = False  # the line only sets the current step for later stepless lines (Keras `Epoch 3/10`)

    def __post_init__(self) -> None:
        groups = self.regex.groupindex
        object.__setattr__(self, "has_fields", "fields" in groups)
        object.__setattr__(self, "has_step", "step" in groups)
        object.__setattr__(self, "has_total", "total" in groups)


def _rx(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags)


METRIC_PATTERNS: tuple[MetricPattern, ...] = (
    MetricPattern(
        "megatron_iteration",
        _rx(r"\biteration\s+(?P<step>\d+)\s*/\s*(?P<total>\d+)\s*\|(?P<fields>.*)$"),
        pipe_fields,
        " iteration    29050/  311541 | consumed samples:     10728784 | elapsed time per iteration (ms): 22148.5 |"
        " learning rate: 9.849E-05 | global batch size:  1024 | lm loss: 7.343709E+00 | loss scale: 8192.0 |"
        " grad norm: 0.000 | num zeros: 0.0 | number of skipped iterations:   0 | number of nan iterations:   0 |",
        needle="iteration",
        split="train",
    ),
    MetricPattern(
        "megatron_validation",
        _rx(r"validation loss at iteration\s+(?P<step>\d+)\s*\|(?P<fields>.*)$"),
        pipe_fields,
        " validation loss at iteration 7000 | lm loss value: 7.174200E+00 | lm loss PPL: 1.305315E+03 |",
        needle="validation loss at iteration",
        split="val",
        prefix="val_",
        rename={"lm_loss_value": "lm_loss"},
    ),
    MetricPattern(
        "megatron_final_validation",
        _rx(r"validation loss at the end of training for val data\s*\|(?P<fields>.*)$"),
        pipe_fields,
        " validation loss at the end of training for val data | lm loss value: 2.421873E+00 | lm loss PPL: 1.126617E+01 |",
        needle="end of training for val data",
        split="val",
        prefix="val_",
        rename={"lm_loss_value": "lm_loss"},
    ),
    MetricPattern(
        "megatron_final_test",
        _rx(r"validation loss at the end of training for test data\s*\|(?P<fields>.*)$"),
        pipe_fields,
        " validation loss at the end of training for test data | lm loss value: 2.398721E+00 | lm loss PPL: 1.100845E+01 |",
        needle="end of training for test data",
        split="test",
        prefix="test_",
        rename={"lm_loss_value": "lm_loss"},
    ),
    MetricPattern(
        "modded_nanogpt",
        _rx(r"^step:(?P<step>\d+)/(?P<total>\d+)\s+(?P<fields>.*)$"),
        colon_fields,
        "step:919/3200 train_loss:4.9638 train_time:132544ms step_avg:145.65ms",
        needle="step:",
    ),
    MetricPattern(
        "llmc_train",
        _rx(r"^s:(?P<step>\d+)\s+(?P<fields>trl:.*)$"),
        colon_fields,
        "s:9025 trl:3.4312 lr:0.000390 norm:2.02",
        needle="s:",
        split="train",
        rename={"trl": "train_loss", "norm": "grad_norm"},
    ),
    MetricPattern(
        "llmc_val",
        _rx(r"^s:(?P<step>\d+)\s+(?P<fields>tel:.*)$"),
        colon_fields,
        "s:19560 tel:3.2722",
        needle="s:",
        split="val",
        rename={"tel": "val_loss"},
    ),
    MetricPattern(
        "nanogpt_iter",
        _rx(r"^iter (?P<step>\d+): (?P<fields>loss .*)$"),
        space_fields,
        "iter 100: loss 4.6843, time 82.34ms, mfu 37.52%",
        needle="iter ",
        split="train",
    ),
    MetricPattern(
        "nanogpt_eval",
        _rx(r"^step (?P<step>\d+): (?P<fields>train loss .*)$"),
        space_fields,
        "step 2000: train loss 1.7626, val loss 1.8830",
        needle="step ",
    ),
    MetricPattern(
        "absl_scalars",
        _rx(r"\]\s\[(?P<step>\d+)\]\s+(?P<fields>[A-Za-z_][\w/.]*=\S.*)$"),
        kv_fields,
        "I0306 12:27:24.858577 140290434246400 logging_writer.py:48] [100] global_step=100,"
        " grad_norm=1.140674352645874, loss=0.17313146591186523",
        needle="] [",
        drop=frozenset({"global_step"}),
    ),
    MetricPattern(
        "algoperf_eval",
        _rx(r"\bStep:\s*(?P<step>\d+),\s*\{(?P<fields>.*)\}\s*$"),
        dict_fields,
        "I0306 12:25:54.786484 140443094713536 submission_runner.py:469] Time since start: 1154.49s, \tStep: 1, "
        "\t{'train/loss': 1.9899115333767057, 'validation/loss': 1.9879902472961246, 'validation/num_examples': 83274637}",
        needle="Step:",
    ),
    MetricPattern(
        "hf_console",
        _rx(r"^\s*\{(?P<fields>'[^']+':\s*.*)\}\s*$"),
        dict_fields,
        "{'loss': 2.3012, 'grad_norm': 1.482, 'learning_rate': 4.9e-05, 'epoch': 0.02}",
        needle="{'",
        stepless="progress",
        summary_keys=frozenset({"train_runtime"}),
    ),
    MetricPattern(
        "keras_epoch",
        _rx(r"^Epoch (?P<step>\d+)/(?P<total>\d+)\s*$"),
        generic_fields,
        "Epoch 3/10",
        needle="Epoch ",
        marker=True,
    ),
    MetricPattern(
        "generic_step",
        _rx(r"(?i)\b(?:global[_ ]step|step|iter(?:ation)?)\b\s*[:=#]?\s*\[?\s*(?P<step>\d+)(?:\s*/\s*(?P<total>\d+))?\]?(?![\w.])"),
        generic_fields,
        "Epoch 2 | step 1200 | loss=2.4312 | lr=3.0e-04 | grad_norm: 0.91",
        any_of=("step", "iter"),
        drop=frozenset({"step", "global_step", "global step", "iter", "iteration"}),
        specific=False,
    ),
    MetricPattern(
        "generic_loss",
        _rx(rf"(?i)(?:^|[\s|,;-])[\w/]*loss\s*[:=]\s*{NUMBER}"),
        generic_fields,
        "1875/1875 [==============================] - 5s 2ms/step - loss: 0.2345 - accuracy: 0.9100",
        any_of=("loss",),
        specific=False,
        skip_if="ETA:",
    ),
)
"""The metric line library, tried in this order; the first pattern that matches a line reads it."""

# A generic line must name one of these (after normalisation) to count as metrics.
_GENERIC_NEEDS = re.compile(r"loss|acc|ppl|perplexity")
# (key, value) pairs a logger prints when the quantity was not computed (FIELD-NOTES
# "Formats: traps": MLPerf BERT logs `final_loss: 0.0`).
PLACEHOLDERS: frozenset[tuple[str, float]] = frozenset({("final_loss", 0.0)})
_TIMING_KEY = re.compile(r"(?:_ms|_s|_us|time|step_avg|elapsed|duration)")


@dataclass(frozen=True)
class EventPattern:
    """One kind of event line: `regex` searched in the line (rank prefix removed)."""

    name: str
    kind: str
    regex: re.Pattern[str]
    example: str
    step: str = "last"  # "last": the last step seen; "next": the step of the next metric line


EVENT_PATTERNS: tuple[EventPattern, ...] = (
    EventPattern(
        "deepspeed_overflow",
        "overflow_skip",
        _rx(r"OVERFLOW! Rank \d+ Skipping step"),
        "[2022-01-19 13:09:13,305] [INFO] [stage_1_and_2.py:1644:step] [deepscale] OVERFLOW! Rank 0 Skipping step."
        " Attempted loss scale: 1048576.0, reducing to 1048576.0",
        step="next",
    ),
    EventPattern(
        "apex_overflow",
        "overflow_skip",
        _rx(r"Gradient overflow\.\s+Skipping step|overflow detected, setting loss scale to"),
        "Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 32768.0",
        step="next",
    ),
    EventPattern(
        "cuda_oom",
        "oom",
        _rx(r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory|RESOURCE_EXHAUSTED: Out of memory"
            r"|Out of memory while trying to allocate|oom-kill event"),
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB",
    ),
    EventPattern(
        "nccl",
        "error",
        _rx(r"Watchdog caught collective operation timeout|ProcessGroupNCCL.*(?:[Tt]imeout|[Ww]atchdog|[Ee]rror)"
            r"|NCCL (?:error|WARN|timeout)|nccl(?:Internal|System|UnhandledCuda|Remote|InvalidUsage)Error"
            r"|NCCL communicator was aborted"),
        "[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=41, OpType=ALLREDUCE, Timeout(ms)=600000)"
        " ran for 600012 milliseconds before timing out.",
    ),
    EventPattern(
        "slurm_cancel",
        "error",
        _rx(r"slurmstepd: error: \*\*\* (?:JOB|STEP) .*CANCELLED|DUE TO TIME LIMIT|DUE TO NODE FAILURE"),
        "slurmstepd: error: *** JOB 123456 ON node017 CANCELLED AT 2024-03-01T12:00:00 DUE TO TIME LIMIT ***",
    ),
    EventPattern(
        "crash",
        "error",
        _rx(r"Segmentation fault|core dumped|Fatal Python error|Bus error"),
        "Fatal Python error: Segmentation fault",
    ),
    EventPattern(
        "restart",
        "restart",
        _rx(r"(?i:resum(?:ing|ed|e) (?:training )?from (?:a |the |latest )?(?:checkpoint|ckpt)|\brestarting\b)"
            r"|successfully loaded checkpoint from .* at iteration\s+[1-9]"),
        "Resuming from checkpoint /ckpt/step_4000 (global step 4000)",
    ),
    EventPattern(
        "python_warning",
        "warning",
        _rx(r"\b[A-Z]\w*Warning: "),
        "/usr/lib/python3/site-packages/torch/nn/modules/module.py:1511: UserWarning: Using a target size that is"
        " different to the input size.",
    ),
    EventPattern(
        "log_warning",
        "warning",
        _rx(r"^(?:WARNING[:\s]|W\d{4} \d\d:\d\d:\d\d|\[W[ \d][^\]]*\])|\[WARNING\]| - WARNING - "),
        "W0306 12:06:29.961825 140443094713536 xla_bridge.py:884] Platform 'rocm' is experimental",
    ),
)
"""The event line library, tried in this order; one event per line."""

# Most lines are no event: a line is only searched when its lower-cased text holds one of
# these words (every event pattern needs one; absl warnings start with `W`).
_EVENT_WORDS = (
    "overflow", "out of memory", "outofmemory", "oom-kill", "nccl", "watchdog", "slurmstepd", "due to",
    "segmentation fault", "core dumped", "fatal python", "bus error", "resum", "restarting",
    "loaded checkpoint", "warning", "[w",
)

_TRACEBACK_START = "Traceback (most recent call last):"
_FRAME = re.compile(r'^\s+File "')
_RANK_PREFIX = re.compile(r"^(?:\[(?:default|rank|Rank)\s?(\d+)\]:\s?|\[(\d+),\d+\]<std(?:out|err)>:\s?|(\d{1,4}): )")
_SEPARATOR = re.compile(r"^={20,}\s*$")
_PY_SOURCE_START = re.compile(r"^(?:#!|import \w|from [\w.]+ import |\"\"\"|'''|# -\*- coding)")
_PROGRESS = re.compile(r"\|\s*(\d+)/(\d+)\s*\[")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # terminal colours (Ray, rich, coloured loggers)

# ---------------------------------------------------------------------------- user patterns

_USER_PATTERNS: list[MetricPattern] = []


def compile_patterns(patterns: Sequence[str]) -> list[MetricPattern]:
    """User metric patterns (config `readers.text_log.patterns`) compiled; ConfigError names the entry at fault.

    Each is a regex with named groups: `step` (optional: the last step seen) and one
    group per value, named by its metric key (`(?P<train_loss>...)`); a value that does
    not parse as a number is skipped.
    """
    compiled = []
    for index, text in enumerate(patterns):
        where = f"readers.text_log.patterns[{index}]"
        if not isinstance(text, str):
            raise ConfigError(f"{where}: must be a regex string, got {type(text).__name__}")
        try:
            regex = re.compile(text)
        except re.error as exc:
            raise ConfigError(f"{where}: not a valid regex ({exc})") from None
        values = [g for g in regex.groupindex if g not in ("step", "total")]
        if not values:
            raise ConfigError(f"{where}: needs a named group per value, e.g. (?P<loss>[0-9.eE+-]+)")
        compiled.append(MetricPattern(f"user_{index}", regex, _named_group_fields(regex), example=""))
    return compiled


def configure(patterns: Sequence[str]) -> None:
    """Install user metric patterns for this process, tried before the library (see compile_patterns).

    Process-wide: the driver and each Ray worker call it (through `user_patterns`) with
    the config that travels in the task.
    """
    _USER_PATTERNS[:] = compile_patterns(patterns)


@contextmanager
def user_patterns(patterns: Sequence[str]) -> Iterator[None]:
    """`patterns` in effect inside the block, the previous ones restored after it."""
    previous = list(_USER_PATTERNS)
    configure(patterns)
    try:
        yield
    finally:
        _USER_PATTERNS[:] = previous


def _named_group_fields(regex: re.Pattern[str]) -> Callable[[str], list[Field]]:
    def fields_of(text: str) -> list[Field]:
        m = regex.search(text)
        if not m:
            return []
        return [
            (name, value.strip(), "")
            for name, value in m.groupdict().items()
            if name not in ("step", "total", "fields") and value is not None
        ]

    return fields_of


# ---------------------------------------------------------------------------- detect


def _head(path: Path, n: int = _HEAD_BYTES) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(n)
    except OSError:
        return None


def _tail(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - n))
            return handle.read(n)
    except OSError:
        return b""


def is_lfs_pointer(head: bytes) -> bool:
    """True for a Git-LFS pointer file (the bytes of its beginning)."""
    return head.startswith(LFS_POINTER_PREFIX)


def _is_log_name(name: str) -> bool:
    return bool(_LOG_NAME.match(name)) or name.lower().endswith(".txt")


def _txt_is_log(path: Path) -> bool:
    if _TXT_LOG_NAME.search(path.stem):
        return True
    text = _tail(path, _TXT_TAIL_BYTES).decode("utf-8", "replace")
    if _TRACEBACK_START in text:
        return True
    patterns = tuple(_USER_PATTERNS) + METRIC_PATTERNS  # the user's own line format counts too
    for line in text.splitlines()[1:]:  # the first may be cut
        line = _strip_rank(line)[1]
        for pattern in patterns:
            if pattern.specific and (pattern.needle is None or pattern.needle in line) and pattern.regex.search(line):
                return True
    return False


def _owned_by_tracker(run_dir: Path) -> bool:
    """`run_dir` is a W&B run's `files/`/`logs/` or an MLflow run's `metrics/`/`artifacts/`... folder."""
    name = run_dir.name
    parent = run_dir.parent
    if name in _WANDB_SUBDIRS and (_WANDB_RUN_DIR.match(parent.name) or any(parent.glob("*.wandb"))):
        return True
    return name in _MLFLOW_SUBDIRS and ((parent / "meta.yaml").is_file() or bool(_RUN_UUID.match(parent.name)))


def _classify(path: Path) -> str:
    """'log', 'lfs' (a Git-LFS pointer), 'binary' (NUL bytes), or 'other'."""
    if not _is_log_name(path.name):
        return "other"
    head = _head(path)
    if head is None:
        # Named like a log but unreadable (permissions): read() reports why.
        return "other" if path.suffix.lower() == ".txt" else "log"
    if is_lfs_pointer(head):
        return "lfs"
    if b"\0" in head:
        return "binary"
    if path.suffix.lower() == ".txt" and not _txt_is_log(path):
        return "other"
    return "log"


_TRIAL_CACHE: dict[tuple[str, int, int], tuple[str, ...]] = {}


def trials_named(path: Path) -> tuple[str, ...]:
    """The `trial_N` folder names that the first 64 KiB of an AlgoPerf log create, in order (cached)."""
    try:
        st = path.stat()
    except OSError:
        return ()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _TRIAL_CACHE:
        head = _head(path, _TRIAL_SNIFF_BYTES) or b""
        names: list[str] = []
        if not is_lfs_pointer(head) and b"\0" not in head:
            for line in head.decode("utf-8", "replace").splitlines():
                m = _TRIAL_LINE.search(line)
                if m:
                    name = m["path"].rstrip("/").rsplit("/", 1)[-1]
                    if name not in names:
                        names.append(name)
        if len(_TRIAL_CACHE) > 10_000:
            _TRIAL_CACHE.clear()
        _TRIAL_CACHE[key] = tuple(names)
    return _TRIAL_CACHE[key]


def _trial_logs(run_dir: Path) -> list[Path]:
    if not _TRIAL_DIR.match(run_dir.name):
        return []
    return [
        p
        for p in files_in(run_dir.parent)
        if p.suffix.lower() == ".log" and run_dir.name in trials_named(p)
    ]


def _candidates(run_dir: Path) -> list[tuple[Path, str]]:
    """(file, class) of the log-named files of `run_dir`; `*.txt` content is sniffed for few files only."""
    files = [p for p in files_in(run_dir) if _is_log_name(p.name)]
    sniff_txt = sum(p.suffix.lower() == ".txt" for p in files) <= _MAX_TXT_SNIFFS
    out = []
    for path in files:
        if path.suffix.lower() == ".txt" and not sniff_txt and not _TXT_LOG_NAME.search(path.stem):
            continue
        out.append((path, _classify(path)))
    return out


def detect(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    if _owned_by_tracker(run_dir):
        return []
    own = [p for p, kind in _candidates(run_dir) if kind == "log" and not _tune_error(p)]
    return own + _trial_logs(run_dir)


def _tune_error(path: Path) -> bool:
    """Ray Tune's `error.txt` in a trial folder: the ray_tune reader owns it."""
    return path.name == "error.txt" and any((path.parent / n).is_file() for n in ("result.json", "params.json"))


def detect_skipped(run_dir: Path) -> list[Path]:
    """Log-named files of `run_dir` that are Git-LFS pointers or binary: reported, never parsed."""
    run_dir = Path(run_dir)
    if _owned_by_tracker(run_dir):
        return []
    return [p for p, kind in _candidates(run_dir) if kind in ("lfs", "binary")]


# ---------------------------------------------------------------------------- the parser


def _strip_rank(line: str) -> tuple[str, str]:
    """(rank prefix id or '', line without it)."""
    if line and (line[0] == "[" or line[0].isdigit()):
        m = _RANK_PREFIX.match(line)
        if m:
            return next(g for g in m.groups() if g is not None), line[m.end():]
    return "", line


_MISSING = object()


@dataclass(frozen=True)
class _Key:
    """A resolved metric key: its name, interned id, and what kind of placeholder it may hold."""

    key: str
    kid: int
    timing: bool
    placeholders: frozenset[float]
    loss_like: bool


class _Collector:
    """Rows, events and params of one run's logs, kept compact (arrays, interned keys)."""

    def __init__(self) -> None:
        self.steps = array("q")
        self.values = array("d")
        self.key_ids = array("i")
        self.segments = array("i")
        self.keys: dict[tuple[str, str | None], int] = {}
        self.resolved: dict[str, dict[str, _Key | None]] = {}  # pattern name -> raw key[+unit] -> key
        self.keys_capped = False
        self.segment = 0
        self.segment_max: int | None = None
        self.segment_starts: list[int] = []
        self.events: list[list[Any]] = []
        self.params: dict[str, Any] = {}
        self.problems: list[str] = []

    def key_id(self, key: str, split: str | None) -> int | None:
        """The interned id of (key, split); None once MAX_KEYS distinct keys exist (noted once)."""
        kid = self.keys.get((key, split))
        if kid is None:
            if len(self.keys) >= MAX_KEYS:
                if not self.keys_capped:
                    self.keys_capped = True
                    self.problems.append(f"more than {MAX_KEYS} distinct metric keys; values of further keys dropped")
                return None
            kid = self.keys[(key, split)] = len(self.keys)
        return kid

    def find(self, step: int, kid: int) -> float | None:
        """The value already read for (step, key id), if any (a linear scan: called once per file)."""
        if not len(self.steps):
            return None
        steps = np.frombuffer(self.steps, dtype=np.int64)
        kids = np.frombuffer(self.key_ids, dtype=np.int32)
        hit = np.flatnonzero((steps == step) & (kids == kid))
        return float(self.values[hit[0]]) if len(hit) else None

    def new_segment(self, step: int) -> None:
        self.segment += 1
        self.segment_starts.append(step)
        self.segment_max = step

    def frame(self) -> pl.DataFrame:
        if not len(self.steps):
            return pl.DataFrame(schema=METRIC_COLUMNS)
        steps = np.frombuffer(self.steps, dtype=np.int64)
        segments = np.frombuffer(self.segments, dtype=np.int32)
        if self.segment:
            # Segment k keeps its rows below the smallest start of the segments after it;
            # segment_starts[j] is where segment j + 1 starts.
            starts = np.array(self.segment_starts + [np.iinfo(np.int64).max], dtype=np.int64)
            cutoff = np.minimum.accumulate(starts[::-1])[::-1]
            keep = steps < cutoff[segments]
        else:
            keep = np.ones(len(steps), dtype=bool)
        by_id = sorted(self.keys.items(), key=lambda item: item[1])
        key_names = pl.Series([k for (k, _), _ in by_id], dtype=pl.String)
        splits = pl.Series([s for (_, s), _ in by_id], dtype=pl.String)
        kids = np.frombuffer(self.key_ids, dtype=np.int32)[keep]
        frame = pl.DataFrame(
            {
                "step": steps[keep],
                "key": key_names.gather(kids),
                "value": np.frombuffer(self.values, dtype=np.float64)[keep],
                "split": splits.gather(kids),
            }
        )
        return (
            frame.unique(subset=["step", "key"], keep="first", maintain_order=True)
            .with_columns(pl.lit(None, dtype=pl.Float64).alias("wall_time_s"))
            .select(list(METRIC_COLUMNS))
            .cast(METRIC_COLUMNS)
        )


class LogParser:
    """Reads the lines of one log file into a _Collector (see the module docstring for the rules)."""

    def __init__(
        self,
        collector: _Collector,
        label: str,
        *,
        metrics: bool = True,
        trial: str | None = None,
        first_trial: str | None = None,
        progress_steps: bool = True,
    ) -> None:
        self.c = collector
        self.label = label
        self.metrics = metrics
        self.want_trial = trial
        self.current_trial = first_trial
        self.hf_dicts = progress_steps
        self.first_row = True
        self.copy_of_earlier = False
        self.state = "start"  # start / source_sep / source_py / log
        self.primary: str | None = None
        self.last_step: int | None = None
        self.progress: int | None = None
        self.hf_ordinal = 0
        self.hf_without_step = 0
        self.pending: list[list[Any]] = []  # events waiting for the next metric line's step
        self.tracebacks: dict[str, dict[str, Any]] = {}
        self.warnings_seen: dict[str, int] = {}
        self.n_events = 0
        self.events_dropped = 0
        self.patterns = tuple(_USER_PATTERNS) + METRIC_PATTERNS

    # -- events
    def _event(self, kind: str, text: str, line_no: int | None, step: int | None, *, when: str = "last") -> None:
        if self.n_events >= MAX_EVENTS_PER_FILE:
            self.events_dropped += 1
            return
        text = text.strip()
        if kind == "warning":
            index = self.warnings_seen.get(text)
            if index is not None:
                self.c.events[index][5] += 1
                return
            self.warnings_seen[text] = len(self.c.events)
        event = [step, kind, text[:MAX_EVENT_TEXT], self.label, line_no, 1]
        self.c.events.append(event)
        self.n_events += 1
        if when == "next":
            self.pending.append(event)

    def _line_events(self, text: str, line_no: int | None, lowered: str | None = None) -> None:
        if text[:1] != "W":
            lowered = text.lower() if lowered is None else lowered
            if not any(word in lowered for word in _EVENT_WORDS):
                return
        for pattern in EVENT_PATTERNS:
            if pattern.regex.search(text):
                self._event(pattern.kind, text, line_no, self.last_step, when=pattern.step)
                return

    def _traceback_line(self, rank: str, text: str, line_no: int | None) -> bool:
        """Feed `text` to an open traceback of `rank`; True when the line belonged to it."""
        tb = self.tracebacks.get(rank)
        if tb is None:
            return False
        if text.startswith((" ", "\t")) or not text.strip():
            if _FRAME.match(text):
                frame = text.strip()
                tb["first"] = tb["first"] or frame
                tb["last"] = frame
            tb["n"] += 1
            if tb["n"] > MAX_TRACEBACK_LINES:
                self._close_traceback(rank, "(traceback without an exception line)")
            return True
        self._close_traceback(rank, text.strip())
        self._line_events(text, line_no)
        return True

    def _close_traceback(self, rank: str, exception: str) -> None:
        tb = self.tracebacks.pop(rank)
        parts = [exception]
        if tb["first"]:
            parts.append(tb["first"])
        if tb["last"] and tb["last"] != tb["first"]:
            parts.append(tb["last"])
        self._event("traceback", " | ".join(parts), tb["line"], tb["step"])

    # -- metrics
    def _match_metrics(
        self, text: str, specific_only: bool = False, lowered: str | None = None
    ) -> tuple[MetricPattern, re.Match[str]] | None:
        for pattern in self.patterns:
            if specific_only and not pattern.specific:
                continue
            if pattern.needle is not None and pattern.needle not in text:
                continue
            if pattern.any_of:
                if lowered is None:
                    lowered = text.lower()
                if not any(word in lowered for word in pattern.any_of):
                    continue
            if pattern.skip_if is not None and pattern.skip_if in text:
                continue
            m = pattern.regex.search(text)
            if m:
                return pattern, m
        return None

    def _resolve(self, pattern: MetricPattern, raw_key: str, unit: str) -> _Key | None:
        """The key a logged (name, unit) of `pattern` becomes, or None when it is no metric."""
        base = normalise_key(raw_key)
        resolved = None
        if base and base not in pattern.drop:
            key = base + _UNITS.get(unit, "")
            key = pattern.prefix + pattern.rename.get(key, key)
            split = pattern.split if pattern.split is not None else infer_split(key)
            kid = self.c.key_id(key, split)
            if kid is None:
                return None
            resolved = _Key(
                key=key,
                kid=kid,
                timing=bool(_TIMING_KEY.search(key)),
                placeholders=frozenset(v for k, v in PLACEHOLDERS if k == key),
                loss_like=bool(_GENERIC_NEEDS.search(key)),
            )
        return resolved

    def _metric_line(self, pattern: MetricPattern, m: re.Match[str], rank: str, text: str, line_no: int | None) -> bool:
        """Record the values of a matched line; False when the line held none."""
        fields_text = m.group("fields") if pattern.has_fields else text
        values: list[tuple[_Key, float]] = []
        cache = self.c.resolved.get(pattern.name)
        if cache is None:
            cache = self.c.resolved[pattern.name] = {}
        for raw_key, raw_value, unit in pattern.fields_of(fields_text):
            cache_key = raw_key + "\x00" + unit if unit else raw_key
            resolved = cache.get(cache_key, _MISSING)
            if resolved is _MISSING:
                resolved = self._resolve(pattern, raw_key, unit)
                if len(cache) < 10_000:
                    cache[cache_key] = resolved
            if resolved is None:
                continue
            try:
                value = float(raw_value)
            except ValueError:
                continue
            if value != value and resolved.timing:
                continue  # a timing placeholder (`step_avg:nanms`), not a value
            if resolved.placeholders and value in resolved.placeholders:
                continue
            values.append((resolved, value))
        if not pattern.specific and not any(k.loss_like for k, _ in values):
            if pattern.has_step and m.group("step"):
                self._step_marker(int(m.group("step")))  # `[Rank 0] step=120, skipped=3, lr=[...]`
            return False
        if pattern.marker:
            self._step_marker(int(m.group("step")))
            return True
        if not values:
            return False
        if pattern.summary_keys and any(k.key in pattern.summary_keys for k, _ in values):
            for resolved, value in values:
                self.c.params[f"summary.{resolved.key}"] = value
            return True
        step_text = m.group("step") if pattern.has_step else None
        if step_text is not None:
            step = int(step_text)
        elif pattern.stepless == "progress":
            if not self.hf_dicts:
                return True
            if self.progress is not None:
                step = self.progress
            else:
                self.hf_ordinal += 1
                self.hf_without_step += 1
                step = self.hf_ordinal
        elif self.last_step is not None:
            step = self.last_step
        else:
            return False
        if rank:
            if self.primary is None:
                self.primary = rank
            elif rank != self.primary:
                return True  # another rank repeats (or shards) the numbers of the rank kept
        if not self.metrics:
            self._step_marker(step)  # events-only reading: metric lines still date the events
            return True
        if pattern.has_total and m.group("total"):
            self.c.params["log.total_steps"] = int(m.group("total"))
        self._add_rows(step, values, line_no)
        return True

    def _add_rows(self, step: int, values: list[tuple[_Key, float]], line_no: int | None) -> None:
        c = self.c
        if c.segment_max is not None and step < c.segment_max:
            if self.first_row:
                first, value = values[0]
                earlier = c.find(step, first.kid)
                if earlier is not None and (earlier == value or (math.isnan(earlier) and math.isnan(value))):
                    self.copy_of_earlier = True
                else:
                    why = f"{self.label} starts at step {step}, below step {c.segment_max} of the log read before it"
                    self._restart(step, line_no, why)
            elif not self.copy_of_earlier:
                self._restart(step, line_no, f"steps went back from {c.segment_max} to {step}")
        self.first_row = False
        n = len(values)
        c.steps.extend([step] * n)
        c.segments.extend([c.segment] * n)
        for resolved, value in values:
            c.values.append(value)
            c.key_ids.append(resolved.kid)
        if c.segment_max is None or step > c.segment_max:
            c.segment_max = step
        self.last_step = step
        if self.pending:
            for event in self.pending:
                event[0] = step
            self.pending.clear()

    def _step_marker(self, step: int) -> None:
        """A line that names the current step without metrics: the step of later (and pending) events."""
        self.last_step = step
        if self.pending:
            for event in self.pending:
                event[0] = step
            self.pending.clear()

    def _restart(self, step: int, line_no: int | None, why: str) -> None:
        self.c.new_segment(step)
        self._event(
            "restart",
            f"{why}: a resumed run; rows logged before the resume at steps >= {step} are dropped",
            line_no,
            step,
        )

    # -- lines
    def feed(self, raw: str, line_no: int | None) -> None:
        """One line (terminator removed)."""
        if "\x1b" in raw:
            raw = _ANSI.sub("", raw)
        rank, text = _strip_rank(raw) if raw[:1] == "[" or raw[:1].isdigit() else ("", raw)
        if self.state != "log":
            if self.state == "start":
                if not text.strip():
                    return
                if _SEPARATOR.match(text):
                    self.state = "source_sep"
                    return
                self.state = "source_py" if _PY_SOURCE_START.match(text) else "log"
            elif self.state == "source_sep" and _SEPARATOR.match(text):
                self.state = "log"
                return
            if self.state != "log":
                if self._match_metrics(text, specific_only=True) is None:
                    return
                self.state = "log"
        if self.want_trial is not None:
            m = _TRIAL_LINE.search(text) if "tuning directory" in text else None
            if m:
                self.current_trial = m["path"].rstrip("/").rsplit("/", 1)[-1]
            if self.current_trial != self.want_trial:
                return
        if self._traceback_line(rank, text, line_no):
            return
        if text.startswith(_TRACEBACK_START):
            self.tracebacks[rank] = {"line": line_no, "step": self.last_step, "first": None, "last": None, "n": 0}
            return
        if self.hf_dicts and "/" in text and "[" in text:
            pm = _PROGRESS.search(text)
            if pm:
                self.progress = int(pm.group(1))
        lowered = text.lower()
        hit = self._match_metrics(text, lowered=lowered)
        if hit is not None and self._metric_line(hit[0], hit[1], rank, text, line_no):
            return
        self._line_events(text, line_no, lowered)

    def close(self) -> None:
        for rank in list(self.tracebacks):
            self._close_traceback(rank, "(log ends inside a traceback)")
        for event in self.pending:
            event[0] = self.last_step
        self.pending.clear()
        if self.events_dropped:
            self.c.problems.append(f"{self.label}: more than {MAX_EVENTS_PER_FILE} events; {self.events_dropped} not kept")
        if self.hf_without_step:
            self.c.problems.append(
                f"{self.label}: {self.hf_without_step} console dict(s) without a progress-bar step; used their order as step"
            )


def _segments(path: Path, problems: list[str], label: str, max_line_bytes: int) -> Iterator[tuple[str, int]]:
    """(line text, 1-based line number) of `path`, split on \\n and \\r, in bounded memory."""
    line_no = 0
    long_lines = 0
    first_long = 0
    bad_utf8 = 0
    carry = b""
    skipping = False
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(CHUNK_BYTES)
            if not chunk:
                break
            parts = (carry + chunk).splitlines(keepends=True)
            carry = b""
            if parts and not parts[-1].endswith((b"\n", b"\r")):
                carry = parts.pop()
            for part in parts:
                ends_line = part.endswith(b"\n")
                if skipping:
                    skipping = False
                else:
                    body = part.rstrip(b"\r\n")
                    if len(body) > max_line_bytes:
                        long_lines += 1
                        first_long = first_long or line_no + 1
                    elif body:
                        text = body.decode("utf-8", "replace")
                        if "\ufffd" in text:
                            bad_utf8 += 1
                        yield text, line_no + 1
                if ends_line:
                    line_no += 1
            if len(carry) > max_line_bytes:
                if not skipping:
                    long_lines += 1
                    first_long = first_long or line_no + 1
                skipping = True
                carry = b""
    if carry and not skipping:
        text = carry.decode("utf-8", "replace")
        if "\ufffd" in text:
            bad_utf8 += 1
        yield text, line_no + 1
    if long_lines:
        problems.append(
            f"{label}: {long_lines} line(s) longer than {max_line_bytes} bytes skipped (first: line {first_long})"
        )
    if bad_utf8:
        problems.append(f"{label}: {bad_utf8} line(s) not valid UTF-8, read with replacement characters")


def _events_frame(collector: _Collector) -> pl.DataFrame:
    rows = [
        (step, kind, text if repeats == 1 else f"{text} (repeated {repeats} times)", label, line)
        for step, kind, text, label, line, repeats in collector.events
    ]
    return pl.DataFrame(rows or None, schema=EVENT_COLUMNS, orient="row")


def _label(run_dir: Path, path: Path) -> str:
    try:
        return path.relative_to(run_dir).as_posix()
    except ValueError:
        return os.path.relpath(path, run_dir).replace(os.sep, "/")


def _order(path: Path) -> tuple[int, str]:
    try:
        return path.stat().st_mtime_ns, path.name
    except OSError:
        return 0, path.name


def _has_trainer_state(run_dir: Path) -> bool:
    if (run_dir / "trainer_state.json").is_file():
        return True
    return any(run_dir.glob("checkpoint-*/trainer_state.json"))


def parse_logs(
    run_dir: Path,
    files: Sequence[Path],
    *,
    metrics: bool = True,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> SourceData:
    """Metrics, events and params of the log `files` of `run_dir`, read as one stream in (mtime, name) order.

    `metrics=False` reads events only (other readers use it for console copies); metric
    lines then still give the events their steps.
    Unreadable files become problems; never raises for bad content.
    """
    run_dir = Path(run_dir)
    collector = _Collector()
    hf_dicts = not _has_trainer_state(run_dir)
    for path in sorted(files, key=_order):
        label = _label(run_dir, path)
        trial = first_trial = None
        if path.parent != run_dir and _TRIAL_DIR.match(run_dir.name):
            trial = run_dir.name
            named = trials_named(path)
            first_trial = named[0] if named else None
        parser = LogParser(
            collector, label, metrics=metrics, trial=trial, first_trial=first_trial, progress_steps=hf_dicts
        )
        try:
            for text, line_no in _segments(path, collector.problems, label, max_line_bytes):
                parser.feed(text, line_no)
        except OSError as exc:
            collector.problems.append(f"{label}: {exc.strerror or exc}")
        parser.close()
    events = _events_frame(collector)
    return SourceData(
        metrics=collector.frame() if metrics else None,
        params=collector.params,
        events=events,
        problems=collector.problems,
    )


def parse_lines(lines: Iterable[str], label: str) -> pl.DataFrame:
    """The events (EVENT_COLUMNS, `line` null) of console lines that are not in a file (W&B's console records)."""
    collector = _Collector()
    parser = LogParser(collector, label, metrics=False)
    for text in lines:
        parser.feed(text.rstrip("\r\n"), None)
    parser.close()
    return _events_frame(collector)


@reader("text_log", detect=detect, provides_metrics=True, priority=60)
def read(run_dir: Path, files: list[Path]) -> SourceData:
    """Metrics, events and params of the text logs in `files` (structured sources win dedup: priority 60)."""
    return parse_logs(run_dir, files)


@reader("text_log_skipped", detect=detect_skipped, provides_metrics=False, priority=95)
def read_skipped(run_dir: Path, files: list[Path]) -> SourceData:
    """A problem per log-named file that is a Git-LFS pointer or binary data: recognised, never parsed."""
    problems = []
    for path in files:
        label = _label(Path(run_dir), path)
        head = _head(path) or b""
        if is_lfs_pointer(head):
            problems.append(f"{label} is a Git-LFS pointer, not a log (fetch it with `git lfs pull`)")
        else:
            problems.append(f"{label} holds binary data (NUL bytes), not a text log")
    return SourceData(problems=problems)
