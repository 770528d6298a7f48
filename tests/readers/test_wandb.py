"""The W&B reader: a real offline run (tests/data/wandb, written by wandb 0.31.0) and folders written here by hand.

The hand-made `.wandb` files are written exactly as wandb/sdk/internal/datastore.py does: a `:W&B` header (magic 0xBEE1,
version 0), LevelDB-log records in 32 KiB blocks (FULL/FIRST/MIDDLE/LAST, zero padding, CRC-32 seeded with the
type byte), each a `wandb_internal.Record` protobuf encoded here field by field (wandb/proto/wandb_internal.proto).
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import zlib
from pathlib import Path

import polars as pl
import pytest
import yaml

from mldebug_ray.discover import discover
from mldebug_ray.errors import ReadError
from mldebug_ray.gather import read_run_dir
from mldebug_ray.readers import READERS
from mldebug_ray.readers.wandb import read_transaction_log

BLOCK = 32768
REAL = Path(__file__).resolve().parents[1] / "data" / "wandb" / "offline-run-20261124_233518-r1dwlrk5"


# ---- protobuf and framing, written independently of the reader


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _item(key: str, value, nested: list[str] | None = None) -> bytes:
    body = _len_field(1, key.encode()) if key else b""
    for part in nested or []:
        body += _len_field(2, part.encode())
    return body + _len_field(16, json.dumps(value).encode())


def history(step: int, values: dict) -> bytes:
    items = b"".join(_len_field(1, _item(k, v)) for k, v in values.items())
    items += _len_field(1, _item("_step", step)) + _len_field(1, _item("_timestamp", 1700000000.0 + step))
    return _int_field(1, step + 10) + _len_field(2, items + _len_field(2, _int_field(1, step)))


def config(values: dict) -> bytes:
    return _len_field(5, b"".join(_len_field(1, _item(k, v)) for k, v in values.items()))


def output(line: str) -> bytes:
    return _len_field(4, _int_field(1, 1) + _len_field(3, line.encode()))


def run_record(resumed: bool) -> bytes:
    return _len_field(17, _len_field(1, b"abc123") + (_int_field(18, 1) if resumed else b""))


def exit_record(code: int) -> bytes:
    return _len_field(18, _int_field(1, code))


def write_wandb(path: Path, records: list[bytes]) -> None:
    """The transaction log framing of wandb's DataStore._write_data."""
    out = bytearray(struct.pack("<4sHB", b":W&B", 0xBEE1, 0))

    def write_record(data: bytes, kind: int) -> None:
        crc = zlib.crc32(data, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF
        out.extend(struct.pack("<IHB", crc, len(data), kind) + data)

    for data in records:
        space = BLOCK - len(out) % BLOCK
        if space < 7:
            out.extend(b"\x00" * space)
            space = BLOCK
        if len(data) + 7 <= space:
            write_record(data, 1)
            continue
        room = space - 7
        write_record(data[:room], 2)
        used = room
        while len(data) - used > BLOCK - 7:
            write_record(data[used : used + BLOCK - 7], 3)
            used += BLOCK - 7
        write_record(data[used:], 4)
    path.write_bytes(bytes(out))


def offline_run(root: Path, *, with_log: bool = True, n_steps: int = 400) -> Path:
    run = root / "wandb" / "offline-run-20240101_120000-abc123"
    (run / "files").mkdir(parents=True)
    (run / "logs").mkdir()
    (run / "logs" / "debug.log").write_text("2024-01-01 12:00:00,000 INFO loss: 3\n")
    records = [run_record(False), config({"lr": 0.001, "model": {"depth": 4}})]
    for step in range(n_steps):
        values = {"train/loss": 3.0 - step * 0.001, "lr": 0.001}
        if step == 5:
            values["train/loss"] = float("nan")
            values["hist"] = {"_type": "histogram", "values": [1, 2], "bins": [0, 1, 2]}
        if step == 7:
            values["note"] = "x" * 70_000  # a record longer than two blocks: FIRST, MIDDLE, LAST
        if step % 100 == 0:
            values["val/loss"] = 3.1 - step * 0.001
        records.append(history(step, values))
    records += [output("Traceback (most recent call last):\n"), output('  File "train.py", line 3, in <module>\n'),
                output("ValueError: boom\n"), exit_record(1)]
    if with_log:
        write_wandb(run / "run-abc123.wandb", records)
    (run / "files" / "config.yaml").write_text(
        yaml.safe_dump({"wandb_version": 1, "_wandb": {"desc": None, "value": {"cli_version": "0.16.0"}},
                        "lr": {"desc": None, "value": 0.001}, "model": {"value": {"depth": 4}}, "seed": {"value": 7}})
    )
    (run / "files" / "wandb-summary.json").write_text(
        json.dumps({"train/loss": 2.6, "_step": n_steps - 1, "_runtime": 12.5, "_timestamp": 1700000399.0, "_wandb": {"runtime": 12}})
    )
    (run / "files" / "wandb-metadata.json").write_text(
        json.dumps({"program": "train.py", "host": "node1", "args": ["--lr", "0.001"], "gpu": "NVIDIA H100", "git": {"commit": "abc"}})
    )
    (run / "files" / "output.log").write_text("UserWarning: something odd\ntorch.OutOfMemoryError: CUDA out of memory.\n")
    (run / "files" / "requirements.txt").write_text("torch==2.1\n")
    return run


def test_an_offline_run_folder_reads_history_config_and_console(tmp_path):
    run = offline_run(tmp_path)
    os.symlink(run, tmp_path / "wandb" / "latest-run")
    assert [r.run_id for r in discover([str(tmp_path)])] == ["wandb/offline-run-20240101_120000-abc123"]
    ev, used, problems = read_run_dir(run, run.name)
    assert used == ["wandb"] and problems == [] and ev.runs["status"][0] == "ok"
    m = ev.metrics
    loss = m.filter(pl.col("key") == "train/loss").sort("step")
    assert loss.height == 400 and loss["split"].unique().to_list() == ["train"]
    assert math.isnan(loss.filter(pl.col("step") == 5)["value"][0])
    assert loss.filter(pl.col("step") == 399)["value"][0] == pytest.approx(2.601)
    assert loss["wall_time_s"][10] == 1700000010.0
    assert m.filter(pl.col("key") == "val/loss")["step"].to_list() == [0, 100, 200, 300]
    assert set(m["key"].unique()) == {"train/loss", "val/loss", "lr"}  # `_`-keys, histograms and strings skipped
    params = dict(ev.params.select("key", "value").iter_rows())
    assert params["lr"] == "0.001" and params["model.depth"] == "4" and params["seed"] == "7"
    assert "_wandb.cli_version" not in params and params["wandb.program"] == "train.py"
    assert params["wandb.git.commit"] == "abc"
    kinds = ev.events.select("kind", "text").rows()
    assert ("error", "W&B run exited with code 1") in kinds
    assert ("warning", "UserWarning: something odd") in kinds and ("oom", "torch.OutOfMemoryError: CUDA out of memory.") in kinds


def test_console_records_give_events_when_output_log_is_missing(tmp_path):
    run = offline_run(tmp_path, n_steps=3)
    (run / "files" / "output.log").unlink()
    data = READERS["wandb"].read(run, READERS["wandb"].detect(run))
    assert ("traceback", 'ValueError: boom | File "train.py", line 3, in <module>') in data.events.select("kind", "text").rows()


def test_a_run_still_writing_keeps_every_complete_record(tmp_path):
    run = offline_run(tmp_path)
    path = run / "run-abc123.wandb"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 40])  # cut inside the last records
    problems: list[str] = []
    out = read_transaction_log(path, problems)
    assert len([s for s, k in zip(out.columns["step"], out.columns["key"]) if k == "train/loss"]) == 400
    assert len(problems) == 1 and "kept" in problems[0]


def test_a_crc_mismatch_ends_the_read_at_the_damaged_record(tmp_path):
    run = offline_run(tmp_path)
    path = run / "run-abc123.wandb"
    raw = bytearray(path.read_bytes())
    raw[BLOCK * 3 + 100] ^= 0xFF
    path.write_bytes(bytes(raw))
    ev, _, problems = read_run_dir(run, run.name)
    steps = ev.metrics.filter(pl.col("key") == "train/loss")["step"]
    assert 0 < steps.len() < 400 and steps.max() == steps.len() - 1
    assert ev.runs["status"][0] == "partial" and any("CRC mismatch" in p for p in problems)


def test_without_a_wandb_file_the_summary_is_one_row_and_says_so(tmp_path):
    run = offline_run(tmp_path, with_log=False)
    ev, used, problems = read_run_dir(run, run.name)
    assert ev.metrics.select("step", "key", "value").rows() == [(399, "train/loss", 2.6)]
    assert problems == [
        "files/wandb-summary.json: only the run summary was read (no .wandb file): one row per key at the last step"
    ]
    assert ev.runs["status"][0] == "partial"


def test_random_and_mutated_bytes_raise_only_the_readers_error(tmp_path):
    run = offline_run(tmp_path, n_steps=30)
    good = (run / "run-abc123.wandb").read_bytes()
    target = tmp_path / "fuzz.wandb"
    rng = random.Random(1234)
    for i in range(300):
        if i % 3 == 0:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 400)))
            if i % 2:
                data = good[:7] + data
        else:
            data = bytearray(good)
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            data = bytes(data[: rng.randrange(1, len(data) + 1)])
        target.write_bytes(data)
        try:
            read_transaction_log(target, [])
        except ReadError:
            pass


def test_a_resumed_run_gives_a_restart_event(tmp_path):
    run = tmp_path / "run-20240101_120000-xyz"
    run.mkdir()
    write_wandb(run / "run-xyz.wandb", [run_record(True), history(10, {"loss": 1.0})])
    data = READERS["wandb"].read(run, READERS["wandb"].detect(run))
    assert data.events.select("kind").to_series().to_list() == ["restart"]
    assert data.metrics.select("step", "key", "value").rows() == [(10, "loss", 1.0)]


def test_a_real_offline_run_of_wandb_0_31_reads_from_its_transaction_log():
    """wandb 0.31.0 offline writes no summary/config/metadata files: everything comes from run-<id>.wandb."""
    assert [r.run_id for r in discover([str(REAL.parent)])] == [REAL.name]
    ev, used, problems = read_run_dir(REAL, REAL.name)
    assert used == ["wandb"] and problems == [] and ev.runs["status"][0] == "ok"
    m = ev.metrics
    loss = m.filter(pl.col("key") == "train/loss").sort("step")
    assert loss["step"].to_list() == list(range(300))
    assert math.isnan(loss["value"][5]) and loss["value"][7] == pytest.approx(2.965)  # step 7: a 3-block record
    assert loss["value"][299] == pytest.approx(1.505) and loss["wall_time_s"][0] == pytest.approx(1795563319.965018)
    assert dict(m.filter(pl.col("key") == "val/loss").select("step", "value").iter_rows()) == pytest.approx({0: 3.1, 100: 2.6, 200: 2.1})
    assert set(m["key"]) == {"train/loss", "val/loss", "lr"}
    params = dict(ev.params.select("key", "value").iter_rows())
    assert params == {"lr": "0.001", "model.depth": "4", "seed": "7"}
    assert ev.events.select("step", "kind", "text").rows() == [
        (299, "error", "W&B run exited with code 1"),
        (None, "warning", "UserWarning: printed to the console"),
    ]
