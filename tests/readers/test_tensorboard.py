"""The TensorBoard reader against event files written by torch's SummaryWriter and TensorBoard's own writer."""

from __future__ import annotations

import glob
import math
import random
import struct
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mldebug_ray.errors import ReadError
from mldebug_ray.readers import READERS
from mldebug_ray.readers import tensorboard as tb

CORPUS_TRIAL = Path("/work/shared/corpus/algoperf/shampoo_submission/study_0/criteo1tb_pytorch/trial_3")
N_SCALARS = 25_000  # above EventAccumulator's 10,000-point reservoir


def _event_file(directory: Path) -> Path:
    (path,) = glob.glob(str(directory / "events.out.tfevents.*"))
    return Path(path)


@pytest.fixture(scope="module")
def summary_run(tmp_path_factory):
    """A run dir written by SummaryWriter: 25,000 old-style scalars, new-style scalars, histograms."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir = tmp_path_factory.mktemp("tb_run")
    rng = np.random.default_rng(0)
    losses = rng.normal(2.0, 0.5, N_SCALARS)
    losses[100] = math.nan
    losses[200] = math.inf
    histograms = {step: rng.normal(0.5, 2.0, 1000) for step in (0, 10_000, 20_000)}
    writer = SummaryWriter(str(run_dir), max_queue=N_SCALARS + 100, flush_secs=3600)
    for step, loss in enumerate(losses):
        writer.add_scalar("train/loss", float(loss), step)
    for step in range(0, N_SCALARS, 5000):
        writer.add_scalar("val/accuracy", step / N_SCALARS, step, new_style=True)
    for step, values in histograms.items():
        writer.add_histogram("weights/fc", values, step)
    writer.close()
    return run_dir, losses, histograms


def test_every_scalar_written_by_summarywriter_is_decoded(summary_run):
    run_dir, losses, _ = summary_run
    reader = READERS["tensorboard"]
    files = reader.detect(run_dir)
    assert [p.name for p in files] == [_event_file(run_dir).name]
    data = reader.read(run_dir, files)
    assert data.problems == []
    loss = data.metrics.filter(pl.col("key") == "train/loss").sort("step")
    assert loss.height == N_SCALARS
    assert loss["step"].to_list() == list(range(N_SCALARS))
    expected = losses.astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(loss["value"].to_numpy(), expected)  # NaN and Inf kept in place
    assert set(loss["split"].to_list()) == {"train"}
    assert loss["wall_time_s"].null_count() == 0
    assert data.metrics.schema == pl.Schema(tb.metrics_frame([]).schema)


def test_new_style_tensor_scalars_become_metric_rows(summary_run):
    run_dir, _, _ = summary_run
    data = READERS["tensorboard"].read(run_dir, READERS["tensorboard"].detect(run_dir))
    acc = data.metrics.filter(pl.col("key") == "val/accuracy").sort("step")
    assert acc["step"].to_list() == list(range(0, N_SCALARS, 5000))
    np.testing.assert_allclose(acc["value"].to_numpy(), [s / N_SCALARS for s in range(0, N_SCALARS, 5000)], rtol=1e-6)
    assert set(acc["split"].to_list()) == {"val"}


def test_histogram_reduces_to_mean_std_min_max(summary_run):
    run_dir, _, histograms = summary_run
    data = READERS["tensorboard"].read(run_dir, READERS["tensorboard"].detect(run_dir))
    for step, values in histograms.items():
        rows = dict(data.metrics.filter(pl.col("step") == step, pl.col("key").str.starts_with("weights/fc/")).select("key", "value").iter_rows())
        assert rows["weights/fc/hist_mean"] == pytest.approx(values.mean(), rel=1e-9)
        assert rows["weights/fc/hist_std"] == pytest.approx(values.std(), rel=1e-6)
        assert rows["weights/fc/hist_min"] == pytest.approx(values.min())
        assert rows["weights/fc/hist_max"] == pytest.approx(values.max())


def test_fast_path_agrees_with_general_parser(summary_run):
    run_dir, _, _ = summary_run
    for path in [_event_file(run_dir), *CORPUS_TRIAL.glob("events.out.tfevents.*")]:
        buf = path.read_bytes()
        fast = tb.decode_event_bytes(buf)[0]
        slow = tb.decode_event_bytes(buf, _fast=False)[0]
        assert fast.height and fast.equals(slow, null_equal=True)


def _write_crafted_events(run_dir: Path) -> None:
    """Events built from TensorBoard's own protos: tensor scalars of several dtypes, a text summary."""
    from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    def value(tag, tensor, plugin="scalars"):
        meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))
        return summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=meta)

    scalar_shape = tensor_shape_pb2.TensorShapeProto()
    values = [
        value("eval/loss", tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, tensor_shape=scalar_shape, tensor_content=struct.pack("<d", 0.123456789012345))),
        value("lr", tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, tensor_shape=scalar_shape, double_val=[3e-4])),
        value("tokens", tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, tensor_shape=scalar_shape, int64_val=[-7])),
        value("scale", tensor_pb2.TensorProto(dtype=types_pb2.DT_HALF, tensor_shape=scalar_shape, half_val=[0x3C00])),  # 1.0
        value("note", tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=scalar_shape, string_val=[b"hello"]), "text"),
    ]
    writer = EventFileWriter(str(run_dir))
    writer.add_event(event_pb2.Event(wall_time=1234.5, step=42, summary=summary_pb2.Summary(value=values)))
    writer.add_event(event_pb2.Event(wall_time=1235.5, step=-1, summary=summary_pb2.Summary(value=[values[1]])))
    writer.close()


def test_tensor_scalars_of_every_dtype_are_decoded_and_text_is_skipped(tmp_path):
    _write_crafted_events(tmp_path)
    data = READERS["tensorboard"].read(tmp_path, READERS["tensorboard"].detect(tmp_path))
    rows = {(r["step"], r["key"]): r for r in data.metrics.iter_rows(named=True)}
    assert set(rows) == {(42, "eval/loss"), (42, "lr"), (42, "tokens"), (42, "scale"), (-1, "lr")}
    assert rows[(42, "eval/loss")]["value"] == 0.123456789012345
    assert rows[(42, "eval/loss")]["split"] == "val"
    assert rows[(42, "lr")]["value"] == 3e-4
    assert rows[(42, "tokens")]["value"] == -7.0
    assert rows[(42, "scale")]["value"] == 1.0
    assert rows[(42, "lr")]["wall_time_s"] == 1234.5


def _write_scalars(run_dir: Path, n: int, suffix: str = "") -> Path:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir), filename_suffix=suffix)
    for step in range(n):
        writer.add_scalar("loss", step * 0.25, step)
    writer.close()
    return max(run_dir.glob(f"events.out.tfevents.*{suffix}"))


def test_truncated_event_file_keeps_complete_records(tmp_path):
    path = _write_scalars(tmp_path, 100)
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # the writer died inside the last record
    result = READERS["tensorboard"].read(tmp_path, [path])
    assert result.metrics.sort("step")["value"].to_list() == [s * 0.25 for s in range(99)]
    assert len(result.problems) == 1
    assert path.name in result.problems[0] and "incomplete" in result.problems[0]


def test_crc_mode_detects_a_flipped_byte(tmp_path):
    path = _write_scalars(tmp_path, 50)
    buf = bytearray(path.read_bytes())
    starts, lengths, _ = tb._frame_records(bytes(buf))
    # Flip a bit in the float of record 30 (step 29): still a valid Event, so only the CRC can tell.
    buf[starts[30] + lengths[30] - 2] ^= 0x01
    path.write_bytes(bytes(buf))
    unchecked, problems, _ = tb.read_event_file(path)
    assert unchecked.height == 50 and problems == []
    checked, problems, n_records = tb.read_event_file(path, check_crc=True)
    assert n_records == 30
    assert checked.sort("step")["step"].to_list() == list(range(29))
    assert len(problems) == 1 and "CRC mismatch in record 30" in problems[0]
    assert READERS["tensorboard"].read(tmp_path, [path], check_crc=True).metrics.height == 29


def test_crc32c_matches_tensorboards_implementation():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference

    rng = random.Random(1)
    blobs = [bytes(rng.getrandbits(8) for _ in range(n)) for n in (0, 1, 7, 8, 9, 63, 100, 257, 1000, 5000)]
    blobs += [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))) for _ in range(200)]
    assert tb.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    for blob in blobs[:10]:
        assert tb.masked_crc32c(blob) == reference(blob)
    joined = b"".join(blobs)
    lengths = np.array([len(b) for b in blobs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    got = tb._masked_crc32c_many(np.frombuffer(joined, dtype=np.uint8), starts, lengths)
    assert got.tolist() == [reference(b) for b in blobs]


def test_all_event_files_in_a_run_dir_are_read(tmp_path):
    _write_scalars(tmp_path, 10, suffix=".a")
    _write_scalars(tmp_path, 10, suffix=".b")
    files = READERS["tensorboard"].detect(tmp_path)
    assert len(files) == 2
    data = READERS["tensorboard"].read(tmp_path, files)
    assert data.metrics.height == 20


def test_corpus_event_file_keeps_the_nan_loss_of_the_diverged_trial():
    files = READERS["tensorboard"].detect(CORPUS_TRIAL)
    data = READERS["tensorboard"].read(CORPUS_TRIAL, files)
    loss = data.metrics.filter(pl.col("key") == "loss").sort("step")
    values = dict(zip(loss["step"].to_list(), loss["value"].to_list()))
    assert values[62] == pytest.approx(239.86265563964844)
    assert values[64] == pytest.approx(1.0121265667689676e18)
    assert all(math.isnan(values[s]) for s in range(65, 99))
    assert data.problems == []


def test_a_file_without_any_complete_record_is_a_read_error(tmp_path):
    path = tmp_path / "events.out.tfevents.1.host"
    path.write_bytes(b"\x05\x00\x00")
    with pytest.raises(ReadError, match="events.out.tfevents.1.host"):
        READERS["tensorboard"].read(tmp_path, [path])


def _plain_framing(buf: bytes) -> tuple[list[int], list[int], int]:
    """The obvious record-by-record framing loop (the oracle for the guessing one)."""
    starts, lengths, pos = [], [], 0
    while pos + 16 <= len(buf):
        length = struct.unpack_from("<Q", buf, pos)[0]
        if pos + 16 + length > len(buf):
            break
        starts.append(pos + 12)
        lengths.append(length)
        pos += 16 + length
    return starts, lengths, pos


@pytest.mark.parametrize("seed", range(12))
def test_record_framing_matches_the_plain_loop_on_runs_and_mixes_of_sizes(seed):
    rng = random.Random(seed)
    records = []
    while len(records) < 3000:
        size = rng.choice([0, 1, 30, 31, 40, 300])
        records += [size] * rng.choice([1, 2, 5, 15, 16, 17, 200, 5000])
    buf = b"".join(struct.pack("<Q", n) + b"\x00" * 4 + bytes(rng.getrandbits(8) for _ in range(min(n, 3))) + b"\x07" * max(0, n - 3) + b"\x00" * 4 for n in records)
    tail = rng.choice([b"", b"\x05", struct.pack("<Q", 1 << 40) + b"\x00" * 8, struct.pack("<Q", 30) + b"\x00" * 20])
    buf += tail
    assert tb._frame_records(buf) == _plain_framing(buf)


def _simple_event(step: int, tag: bytes, value: float) -> bytes:
    """One framed Event record holding a simple_value, encoded by hand (field numbers as in event.proto)."""
    val = b"\x0a" + bytes([len(tag)]) + tag + b"\x15" + struct.pack("<f", value)
    summary = b"\x0a" + bytes([len(val)]) + val
    varint = bytearray()
    n = step
    while True:
        varint.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    event = b"\x09" + struct.pack("<d", 1.7e9 + step) + b"\x10" + bytes(varint) + b"\x2a" + bytes([len(summary)]) + summary
    header = struct.pack("<Q", len(event))
    return header + struct.pack("<I", tb.masked_crc32c(header)) + event + struct.pack("<I", tb.masked_crc32c(event))


def test_many_long_tags_differing_only_in_the_middle_decode_like_the_general_parser():
    rng = random.Random(5)
    tags = [f"model/layer_{i:03d}/attention/grad_norm".encode() for i in range(120)] + [b"a", b"x" * 8, b"y" * 9, b"bad\xff\xfeutf8"]
    buf = b"".join(_simple_event(step, rng.choice(tags), rng.random()) for step in range(5000))
    fast, problems, _ = tb.decode_event_bytes(buf, "many_tags")
    slow, _, _ = tb.decode_event_bytes(buf, "many_tags", _fast=False)
    assert problems == [] and fast.height == 5000
    assert fast.equals(slow)
    assert fast["key"].n_unique() == len(tags)


def test_batched_crc_of_equal_runs_and_mixed_ranges_matches_the_oracle():
    rng = random.Random(7)
    blobs = [bytes(rng.getrandbits(8) for _ in range(37)) for _ in range(300)]  # a run: equal length, equal spacing
    blobs += [bytes(rng.getrandbits(8) for _ in range(rng.choice([5, 37, 38]))) for _ in range(200)]
    blobs += [bytes(rng.getrandbits(8) for _ in range(8)) for _ in range(100)]
    joined = b"".join(blobs)
    lengths = np.array([len(b) for b in blobs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    got = tb._masked_crc32c_many(np.frombuffer(joined, dtype=np.uint8), starts, lengths)
    assert got.tolist() == [tb.masked_crc32c(b) for b in blobs]
    # the same ranges with a 16-byte gap between records (the record framing around each Event)
    framed = b"".join(b"\xaa" * 12 + b + b"\xbb" * 4 for b in blobs)
    starts = np.concatenate([[12], 12 + np.cumsum(lengths + 16)[:-1]]).astype(np.int64)
    got = tb._masked_crc32c_many(np.frombuffer(framed, dtype=np.uint8), starts, lengths)
    assert got.tolist() == [tb.masked_crc32c(b) for b in blobs]


def test_grouping_rows_tells_apart_rows_that_differ_in_any_column():
    first = np.array([1, 1, 2, 1, 2, 1], dtype=np.uint64)
    second = np.array([5, 6, 5, 5, 5, 6], dtype=np.uint64)
    codes, firsts = tb._group_codes([first, second])
    assert codes.tolist() == [0, 1, 2, 0, 2, 1] and firsts == [0, 1, 2]
    many = np.arange(100, dtype=np.uint64) % 40  # more groups than are peeled off one by one
    codes, firsts = tb._group_codes([many])
    assert np.array_equal(many[np.asarray(firsts)[codes]], many) and len(firsts) == 40
