"""The agent's tools enforce their own bounds: read-only SQL, bounded series, code reads confined to the roots."""

from __future__ import annotations

import json
import math
import os

import polars as pl
import pytest

from agent_loopback import GRAD_SPIKE, GRAD_SPIKE_STEP, build_evidence
from mldebug_ray import paths
from mldebug_ray.agent.tools import SQL_MAX_ROWS, Toolbox, ToolError, _downsample, check_select
from mldebug_ray.evidence.io import write_table


@pytest.fixture
def box(evidence):
    tb = Toolbox(evidence, [str(evidence.parent / "code")])
    yield tb
    tb.close()


def call(box, name, **args):
    result = box.call(name, args)
    return result.is_error, (result.text if result.is_error else json.loads(result.text))


@pytest.mark.parametrize(
    "query, why",
    [
        ("INSERT INTO metrics VALUES ('r9', 1, 'x', 1.0)", "SELECT"),
        ("DROP TABLE metrics", "SELECT"),
        ("CREATE TABLE t AS SELECT * FROM metrics", "SELECT"),
        ("DELETE FROM metrics WHERE run_id = 'r1'", "SELECT"),
        ("SELECT 1 AS a; SELECT 2 AS b", "one statement"),
        ("SELECT 1 AS a; DROP TABLE metrics", "one statement"),
        ("SELECT * FROM read_parquet('/etc/passwd')", "table functions"),
        ("SELECT * FROM \"read_csv\"('/etc/passwd')", "table functions"),
        ("SELECT * FROM `READ_NDJSON`('/etc/passwd')", "table functions"),
        ("SELECT * FROM metrics WHERE run_id IN (SELECT a FROM read_ipc('/tmp/x'))", "table functions"),
        ("SELECT * FROM metrics -- read everything", "comments"),
        ("WITH x AS (SELECT 1 AS a) SELECT * FROM x; SHOW TABLES", "one statement"),
        ("SHOW TABLES", "SELECT"),
        ("EXPLAIN SELECT * FROM metrics", "SELECT"),
        ("", "empty"),
    ],
)
def test_sql_refuses_anything_but_one_read_only_select(box, query, why):
    is_error, text = call(box, "query_sql", query=query)
    assert is_error and why in text


def test_sql_refuses_a_result_over_the_row_limit(box):
    is_error, text = call(box, "query_sql", query="SELECT * FROM metrics")  # 600 rows
    assert is_error and f"more than {SQL_MAX_ROWS} rows" in text
    ok, rows = call(box, "query_sql", query=f"SELECT * FROM metrics LIMIT {SQL_MAX_ROWS}")
    assert not ok and rows["n_rows"] == SQL_MAX_ROWS


def test_sql_answers_a_select_with_a_semicolon_in_a_literal_and_column_names_that_look_like_functions(box):
    is_error, out = call(box, "query_sql", query="SELECT run_id, read_time_s FROM runs WHERE reason IS NULL OR reason = 'a;b' ORDER BY run_id;")
    assert not is_error and out["columns"] == ["run_id", "read_time_s"] and [r[0] for r in out["rows"]] == ["r1", "r2"]
    is_error, out = call(box, "query_sql", query="SELECT step, value FROM metrics WHERE run_id = 'r1' AND key = 'grad_norm' ORDER BY value DESC LIMIT 1")
    assert not is_error and out["rows"] == [[GRAD_SPIKE_STEP, GRAD_SPIKE]]


def test_sql_sees_only_the_evidence_tables_and_nothing_persists(box):
    is_error, text = call(box, "query_sql", query="SELECT * FROM agent_calls")
    assert is_error and "agent_calls" in text
    assert check_select("select 1 as one") == "select 1 as one"
    with pytest.raises(ToolError):
        check_select("SELECT 1 /* x */")


def test_metric_series_downsamples_but_keeps_endpoints_extremes_and_the_first_nonfinite_points(tmp_path):
    values = [1.0 + math.sin(i / 50) for i in range(5000)]
    values[1234] = float("nan")
    values[4321] = 99.0
    rows = [{"run_id": "r", "step": i, "key": "loss", "value": v} for i, v in enumerate(values)]
    write_table(tmp_path, "metrics", pl.DataFrame(rows), paths.part_key("r"))
    tb = Toolbox(tmp_path)
    is_error, out = call(tb, "metric_series", run_id="r", key="loss", max_points=100)
    assert not is_error and out["n_points"] == 5000 and out["returned"] <= 100
    assert {0, 1234, 4321, 4999} <= set(out["steps"]) and out["first_nonfinite_step"] == 1234
    assert out["values"][out["steps"].index(1234)] == "NaN"
    is_error, out = call(tb, "metric_series", run_id="r", key="loss", step_min=10, step_max=20)
    assert out["steps"] == list(range(10, 21))
    is_error, text = call(tb, "metric_series", run_id="r", key="nope")
    assert is_error and "loss" in text  # names the keys the run has


def test_downsample_oracle_keeps_every_point_when_under_the_limit():
    assert _downsample(list(range(50)), [float(i) for i in range(50)], 100) == list(range(50))


def test_compare_runs_reports_stats_and_the_params_that_differ(box):
    is_error, out = call(box, "compare_runs", run_ids=["r1", "r2"])
    assert not is_error and out["keys"] == ["train_loss"]
    assert out["metrics"]["r1"]["train_loss"]["last"] > out["metrics"]["r2"]["train_loss"]["last"]
    assert out["params_differing"] == {"seed": {"r1": "1", "r2": "2"}}
    assert call(box, "compare_runs", run_ids=["r1"])[0]


def test_list_runs_and_findings(box):
    _, runs = call(box, "list_runs", with_findings_only=True)
    assert [r["run_id"] for r in runs["runs"]] == ["r1"] and runs["runs"][0]["findings"] == {"critical": 1, "medium": 1}
    _, findings = call(box, "list_findings", run_id="r1", kind="grad_norm_spike")
    assert findings["findings"][0]["evidence"][0]["where"] == {"run_id": "r1", "step": GRAD_SPIKE_STEP, "key": "grad_norm"}


def test_code_reads_stay_inside_the_code_roots(box, evidence, tmp_path):
    code = tmp_path / "code"
    (tmp_path / "outside.py").write_text("SECRET = 1\n")
    (code / "out_link.py").symlink_to(tmp_path / "outside.py")
    (code / "dir_link").symlink_to(tmp_path)
    (code / "big.py").write_text("x = 1\n" * 400_000)
    (code / "blob.bin").write_bytes(b"\x00\x01binary")
    os.mkfifo(code / "fifo")
    for path in ("/etc/passwd", "../outside.py", "out_link.py", "dir_link/outside.py", "pkg/../../outside.py",
                 str(tmp_path / "outside.py"), "/dev/zero", "big.py", "blob.bin", "fifo", "nope.py", "a\x00b"):
        is_error, text = call(box, "read_code", path=path)
        assert is_error, (path, text)
        assert "SECRET" not in text
    is_error, out = call(box, "read_code", path="pkg/model.py")
    assert not is_error and "1: class Net:" in out["text"]
    is_error, out = call(box, "read_code", path=str(code / "train.py"), start_line=3, max_lines=1)
    assert not is_error and out["text"] == "3: LR_AFTER_EPOCH_7 = 0.1  # curriculum switch"
    is_error, listing = call(box, "read_code", path=".")
    assert not is_error and "pkg/" in listing["entries"] and "out_link.py" not in listing["entries"] and "dir_link/" not in listing["entries"]


def test_grep_finds_lines_in_the_roots_and_skips_symlinks_out(box, tmp_path):
    (tmp_path / "outside.py").write_text("clip_grad_norm_ outside\n")
    (tmp_path / "code" / "out_link.py").symlink_to(tmp_path / "outside.py")
    is_error, out = call(box, "grep_code", text="MAX_NORM", glob="*.py")
    assert not is_error and out["matches"] == ["train.py:4: max_norm = None  # no clipping"]
    _, out = call(box, "grep_code", text="outside")
    assert out["matches"] == []


def test_code_tools_without_roots_say_to_ask_for_the_code(tmp_path):
    tb = Toolbox(build_evidence(tmp_path / "o"), [])
    is_error, text = call(tb, "read_code", path="train.py")
    assert is_error and "requests" in text


def test_unknown_tools_and_bad_inputs_are_errors_not_exceptions(box):
    assert box.call("rm_rf", {}).is_error
    assert box.call("query_sql", "SELECT 1").is_error
    assert call(box, "metric_series", run_id="r1", key="train_loss", max_points="many")[0]
