"""Property-based tests: random and mutated bytes fed to the binary decoders (issue 3).

The only exception that may escape a decoder is the reader's own ReadError; anything
else would stop a run's other readers with a crash instead of a reason.
"""

from __future__ import annotations

import struct

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mldebug_ray.errors import ReadError  # noqa: E402
from mldebug_ray.readers import checkpoints, tensorboard, wandb  # noqa: E402

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_event_file() -> bytes:
    """A small real event file: records framed with correct masked CRCs, one scalar each."""
    out = bytearray()
    for step in range(1, 6):
        value = b"\x0a\x04loss" + b"\x15" + struct.pack("<f", 1.0 / step)  # Value{tag=1, simple_value=2}
        summary = b"\x0a" + bytes([len(value)]) + value  # Summary{value=1}
        event = b"\x09" + struct.pack("<d", 1.0 + step) + b"\x10" + bytes([step]) + b"\x2a" + bytes([len(summary)]) + summary
        header = struct.pack("<Q", len(event))
        out += header + struct.pack("<I", tensorboard.masked_crc32c(header)) + event + struct.pack("<I", tensorboard.masked_crc32c(event))
    return bytes(out)


VALID = _valid_event_file()


def test_the_valid_seed_file_decodes_to_five_points():
    frame, problems, _ = tensorboard.decode_event_bytes(VALID, "seed", check_crc=True)
    assert frame.height == 5 and not problems


@SETTINGS
@given(st.binary(max_size=4096), st.booleans())
def test_event_decoder_random_bytes_only_raise_read_error(data, crc):
    try:
        tensorboard.decode_event_bytes(data, "fuzz", check_crc=crc)
    except ReadError:
        pass


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8), st.booleans())
def test_event_decoder_mutated_file_only_raises_read_error(flips, crc):
    data = bytearray(VALID)
    for pos, byte in flips:
        data[pos] = byte
    try:
        tensorboard.decode_event_bytes(bytes(data), "mutated", check_crc=crc)
    except ReadError:
        pass


@SETTINGS
@given(st.integers(0, len(VALID)))
def test_event_decoder_truncated_file_keeps_complete_records(cut):
    frame, _, _ = tensorboard.decode_event_bytes(VALID[:cut], "cut", check_crc=True)
    record = len(VALID) // 5
    assert frame.height == cut // record


@SETTINGS
@given(st.binary(max_size=2048))
def test_safetensors_header_random_bytes_only_raise_read_error_or_value_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    path.write_bytes(data)
    try:
        checkpoints.safetensors_header(path)
    except (ReadError, ValueError):
        pass  # ValueError is how the checkpoint reader marks a damaged header (row status 'unreadable')


@SETTINGS
@given(st.binary(max_size=4096))
def test_wandb_log_random_bytes_only_raise_read_error(data):
    problems: list[str] = []
    try:
        for _ in wandb.iter_records(data, "fuzz", problems):
            pass
    except ReadError:
        pass
