"""Helpers for detectors that read the `events` table (log warnings, errors, tracebacks)."""

from __future__ import annotations

import re
from typing import Any, Mapping

import polars as pl

from mldebug_ray.findings import EvidenceRef

MAX_TEXT_CHARS = 200


def matching(events: pl.DataFrame, pattern: str, kinds: tuple[str, ...] = ()) -> pl.DataFrame:
    """Events whose text matches `pattern` (a case-insensitive regex) or whose kind is in `kinds`,
    in log order (step, then file and line), with the matched line as `match`."""
    if events.height == 0:
        return events.with_columns(pl.lit(None, dtype=pl.String).alias("match"))
    regex = f"(?i){pattern}"
    hit = pl.col("text").fill_null("").str.contains(regex)
    if kinds:
        hit = hit | pl.col("kind").is_in(list(kinds))
    return (
        events.filter(hit)
        # The matching line: the text reader joins a traceback's lines with " | ".
        .with_columns(pl.col("text").fill_null("").str.extract(f"(?i)([^\\n|]*(?:{pattern})[^\\n|]*)", 1).str.strip_chars().alias("match"))
        .sort(["step", "file", "line"], nulls_last=True)
    )


def one_line(text: str | None) -> str:
    """The text on one line, cut to MAX_TEXT_CHARS."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= MAX_TEXT_CHARS else flat[: MAX_TEXT_CHARS - 3] + "..."


def event_ref(run_id: str, row: Mapping[str, Any], text: str) -> EvidenceRef:
    """A reference selecting one `events` row: by file and line when known, else by kind, step and text."""
    where: dict[str, Any] = {"run_id": run_id}
    if row.get("file") is not None and row.get("line") is not None:
        where["file"] = row["file"]
        where["line"] = int(row["line"])
    else:
        if row.get("kind") is not None:
            where["kind"] = row["kind"]
        if row.get("step") is not None:
            where["step"] = int(row["step"])
        if row.get("text") is not None:
            where["text"] = row["text"]
    return EvidenceRef("events", where, None, text)


def where_text(row: Mapping[str, Any]) -> str:
    """`train.log:42` or `step 120` for a summary line."""
    if row.get("file") is not None and row.get("line") is not None:
        return f"{row['file']}:{row['line']}"
    if row.get("step") is not None:
        return f"step {row['step']}"
    return "the log"


def first_number(pattern: re.Pattern, text: str) -> float | None:
    m = pattern.search(text or "")
    if not m:
        return None
    try:
        return float(m.group(1))
    except (TypeError, ValueError):
        return None
