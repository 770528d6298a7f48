"""Does an evidence reference select real rows? Used by tests, the report and agents' answers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import polars as pl

from mldebug_ray import schema
from mldebug_ray.evidence.io import scan_table

VALUE_RTOL = 1e-6


def select(out_dir: Path, table: str, where: Mapping[str, Any]) -> pl.DataFrame:
    """The rows of `table` whose key columns equal `where`'s values."""
    if table not in schema.TABLES:
        return schema.empty("runs").clear()
    columns = schema.TABLES[table]
    lazy = scan_table(out_dir, table)
    for column, value in where.items():
        if column not in columns:
            return schema.empty(table)
        lazy = lazy.filter(pl.col(column).is_null() if value is None else pl.col(column) == pl.lit(value, dtype=columns[column]))
    return lazy.collect()


def holds_value(seen_values, wanted: float) -> bool:
    """Whether any of `seen_values` equals `wanted` (relative tolerance VALUE_RTOL; NaN matches NaN)."""
    for seen in seen_values:
        if seen is None:
            continue
        if math.isnan(wanted) and math.isnan(seen):
            return True
        if seen == wanted or (math.isfinite(seen) and abs(seen - wanted) <= VALUE_RTOL * max(abs(seen), abs(wanted))):
            return True
    return False


def reference_holds(out_dir: Path, ref: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a reference ({table, where, value}) selects at least one row, and why not.

    When the reference carries a value and the table has a `value` column, one of
    the selected rows must hold it (relative tolerance VALUE_RTOL; NaN matches NaN).
    """
    rows = select(out_dir, ref["table"], ref["where"])
    if rows.height == 0:
        return False, f"no row of {ref['table']} matches {dict(ref['where'])}"
    value = ref.get("value")
    if value is None or "value" not in rows.columns or rows.schema["value"] != pl.Float64:
        return True, ""
    try:
        wanted = float(value)
    except (TypeError, ValueError):
        return True, ""
    if holds_value(rows["value"].to_list(), wanted):
        return True, ""
    return False, f"rows of {ref['table']} matching {dict(ref['where'])} do not hold value {value}"
