import polars as pl
import pytest

from mldebug_ray.errors import SchemaError
from mldebug_ray.evidence.io import read_table, write_table


def test_write_then_read_round_trips_and_leaves_no_temp_files(tmp_path):
    frame = pl.DataFrame({"run_id": ["a", "a"], "step": [1, 2], "key": ["loss", "loss"], "value": [1.0, float("inf")]})
    write_table(tmp_path, "metrics", frame, "k1")
    write_table(tmp_path, "metrics", frame.with_columns(pl.lit("b").alias("run_id")), "k2")
    out = read_table(tmp_path, "metrics")
    assert out.height == 4
    assert sorted(set(out["run_id"])) == ["a", "b"]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_read_of_a_table_never_written_is_empty_with_schema(tmp_path):
    out = read_table(tmp_path, "layers")
    assert out.height == 0 and "module_type" in out.columns


def test_invalid_frame_is_not_written(tmp_path):
    with pytest.raises(SchemaError):
        write_table(tmp_path, "metrics", pl.DataFrame({"run_id": ["a"]}), "k")
    assert not list(tmp_path.rglob("*.parquet"))


def test_rewrite_replaces_part_whole(tmp_path):
    frame = pl.DataFrame({"run_id": ["a"], "step": [1], "key": ["loss"], "value": [1.0]})
    write_table(tmp_path, "metrics", frame, "k")
    write_table(tmp_path, "metrics", frame.with_columns(pl.lit(2.0).alias("value")), "k")
    assert read_table(tmp_path, "metrics")["value"].to_list() == [2.0]
