"""Synthetic `events` frames (the text-log reader's schema) for the event-based detector tests."""

from __future__ import annotations

import polars as pl

from mldebug_ray import schema
from mldebug_ray.detectors.base import RunEvidence


def events_frame(rows: list[dict], run_id: str) -> pl.DataFrame:
    """rows: dicts with step, kind, text and optionally file/line (file defaults to train.log, line to the row number)."""
    full = [
        {"run_id": run_id, "step": r.get("step"), "kind": r["kind"], "text": r["text"], "file": r.get("file", "train.log"), "line": r.get("line", i + 1)}
        for i, r in enumerate(rows)
    ]
    if not full:
        return schema.empty("events")
    return schema.validate("events", pl.DataFrame(full, schema=schema.schema_of("events")))


def with_events(ev: RunEvidence, rows: list[dict]) -> RunEvidence:
    ev.events = events_frame(rows, ev.run_id)
    return ev


def with_table(ev: RunEvidence, table: str, rows: list[dict]) -> RunEvidence:
    """Attach a probe table (gradients, outputs, memory, precision) that RunEvidence may not declare."""
    frame = schema.validate(table, pl.DataFrame([{"run_id": ev.run_id, **r} for r in rows], schema=schema.schema_of(table)))
    setattr(ev, table, frame)
    return ev
