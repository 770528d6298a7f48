import polars as pl
import pytest

from mldebug_ray import schema
from mldebug_ray.errors import SchemaError


def test_validate_fills_optional_columns_and_orders_them():
    frame = pl.DataFrame({"key": ["loss"], "run_id": ["r"], "step": [3], "value": [float("nan")]})
    out = schema.validate("metrics", frame)
    assert out.columns == list(schema.TABLES["metrics"])
    assert out["split"].to_list() == [None]
    assert out["value"].is_nan().to_list() == [True]  # NaN kept as such


def test_validate_rejects_missing_required_column_naming_it():
    with pytest.raises(SchemaError, match="'metrics'.*step"):
        schema.validate("metrics", pl.DataFrame({"run_id": ["r"], "key": ["loss"], "value": [1.0]}))


def test_validate_rejects_unknown_column():
    frame = pl.DataFrame({"run_id": ["r"], "step": [1], "key": ["k"], "value": [1.0], "bogus": [1]})
    with pytest.raises(SchemaError, match="bogus"):
        schema.validate("metrics", frame)


def test_validate_rejects_bad_status_and_nulls():
    row = {"run_id": ["r"], "path": ["/x"], "source_format": ["csv"], "status": ["weird"], "reason": [None], "n_steps": [1], "last_step": [1]}
    with pytest.raises(SchemaError, match="status"):
        schema.validate("runs", pl.DataFrame(row))
    with pytest.raises(SchemaError, match="run_id"):
        schema.validate("metrics", pl.DataFrame({"run_id": [None], "step": [1], "key": ["k"], "value": [1.0]}, schema_overrides={"run_id": pl.String}))


def test_every_table_has_run_id_and_an_empty_frame():
    for table in schema.TABLES:
        assert "run_id" in schema.TABLES[table]
        assert schema.empty(table).height == 0
