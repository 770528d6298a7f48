"""User log patterns (`readers.text_log.patterns`) reach the driver, the Ray workers and `read_run`."""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest

import mldebug_ray
from mldebug_ray.config import ReadersConfig, TextLogConfig
from mldebug_ray.errors import ConfigError
from mldebug_ray.evidence.io import read_table
from mldebug_ray.readers import text_log

# A house format no library pattern reads: no `:`/`=` between names and numbers.
PATTERN = r"^tick (?P<step>\d+) cost (?P<train_loss>\S+)$"
LOSSES = [2.5, 2.1, 1.8, 1.6, float("nan"), float("nan")]


def _house_run(run_dir):
    run_dir.mkdir(parents=True)
    lines = [f"tick {step} cost {loss}" for step, loss in enumerate(LOSSES, start=1)]
    (run_dir / "train.log").write_text("starting\n" + "\n".join(lines) + "\n")
    return run_dir


def test_read_run_reads_a_house_format_only_with_the_users_pattern(tmp_path):
    run_dir = _house_run(tmp_path / "house")
    assert mldebug_ray.read_run(run_dir).status == "unreadable"
    run = mldebug_ray.read_run(run_dir, ReadersConfig(text_log=TextLogConfig(patterns=[PATTERN])))
    assert run.status == "ok", run.reason
    rows = run.metrics.filter(pl.col("key") == "train_loss").sort("step")
    assert rows["step"].to_list() == list(range(1, 7))
    assert rows["value"].to_list()[:4] == LOSSES[:4] and rows["value"].is_nan().sum() == 2
    assert text_log._USER_PATTERNS == []  # read_run leaves this process's patterns as it found them


def test_analyze_applies_the_pattern_in_ray_workers(tmp_path, ray_local):
    root = tmp_path / "sweep"
    _house_run(root / "house")
    (root / "plain").mkdir(parents=True)
    (root / "plain" / "train.log").write_text("step 1 | loss: 2.0\nstep 2 | loss: 1.5\n")
    out = tmp_path / "out"
    mldebug_ray.analyze([root], out_dir=out, progress="off", overrides={"readers.text_log.patterns": [PATTERN]})
    runs = read_table(out, "runs")
    assert dict(zip(runs["run_id"], runs["status"])) == {"house": "ok", "plain": "ok"}
    metrics = read_table(out, "metrics").filter(pl.col("run_id") == "house")
    assert metrics.filter(pl.col("key") == "train_loss").height == len(LOSSES)
    findings = read_table(out, "findings").filter(pl.col("run_id") == "house")
    assert "nan_inf" in findings["kind"].to_list()  # the pattern's values reach the detectors
    assert text_log._USER_PATTERNS == []


def test_a_bad_regex_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"readers\.text_log\.patterns\[1\]: not a valid regex"):
        TextLogConfig(patterns=[PATTERN, "(?P<loss>unclosed"])
    with pytest.raises(ConfigError, match=r"readers\.text_log\.patterns\[0\]: needs a named group"):
        TextLogConfig(patterns=[r"loss (\d+)"])


def test_cli_exits_2_with_one_line_on_a_bad_regex(tmp_path):
    _house_run(tmp_path / "sweep" / "house")
    proc = subprocess.run(
        [sys.executable, "-m", "mldebug_ray", "+sweep=paths", f"sweep.roots=[{tmp_path / 'sweep'}]",
         f"out_dir={tmp_path / 'out'}", "readers.text_log.patterns=['(?P<loss>[0-9']"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and "readers.text_log.patterns[0]" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_txt_file_in_the_users_format_is_recognised_as_a_log_once_the_pattern_is_set(tmp_path):
    run_dir = tmp_path / "house"
    run_dir.mkdir()
    (run_dir / "run42.txt").write_text("".join(f"tick {step} cost {2.0 / step}\n" for step in range(1, 9)))
    assert mldebug_ray.read_run(run_dir).status == "unreadable"  # a .txt of unknown lines is data, not a log
    run = mldebug_ray.read_run(run_dir, ReadersConfig(text_log=TextLogConfig(patterns=[PATTERN])))
    assert run.status == "ok" and run.metrics["step"].to_list() == list(range(1, 9))
