"""TensorBoard event files (`events.out.tfevents.*`), decoded by our own record and protobuf parser.

Why our own: TensorBoard's loader spends its time in a pure-Python CRC and its
`EventAccumulator` silently reservoir-samples scalars to 10,000 points
(FIELD-NOTES "Formats: traps"; tensorflow/tensorboard#4354, #5488). This module
keeps every point, needs neither tensorflow nor tensorboard, and checks CRCs only
when asked (`check_crc=True`), vectorised over records with numpy.

File layout: a sequence of records, each
    u64 length | u32 masked crc32c(length bytes) | data[length] | u32 masked crc32c(data)
where data is a serialized `Event`. The fields read (protobuf field numbers):

    Event          wall_time=1 (double), step=2 (int64), summary=5 (Summary)
    Summary        value=1 (repeated Value)
    Value          tag=1, simple_value=2 (float), histo=5 (HistogramProto), tensor=8
                   (TensorProto), metadata=9 (SummaryMetadata), node_name=7 (TF1 tag)
    SummaryMetadata plugin_data=1 {plugin_name=1}
    TensorProto    dtype=1, tensor_shape=2 {dim=2 {size=1}}, tensor_content=4,
                   float_val=5, double_val=6, int_val=7, int64_val=10, bool_val=11,
                   half_val=13, uint32_val=16, uint64_val=17
    HistogramProto min=1, max=2, num=3, sum=4, sum_squares=5, bucket_limit=6, bucket=7

Rows produced: old-style `simple_value` and new-style rank-0 numeric tensors become
one metric row each (NaN/Inf kept); a histogram becomes `<tag>/hist_mean`,
`<tag>/hist_std`, `<tag>/hist_min`, `<tag>/hist_max` (exact from HistogramProto's
sums; for new-style `histograms` plugin tensors of shape [k, 3] they are estimated
from bucket centres). Images, audio, text and graphs are skipped. In a Ray Tune trial
folder the `ray/tune/...` tags are dropped: Tune's logger copies result.json there, and
the ray_tune reader reads those numbers under the keys as reported.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import polars as pl

from mldebug_ray.errors import ReadError
from mldebug_ray.readers.base import SourceData, files_in, infer_split, metrics_frame, read_bytes_limited, reader

EVENT_FILE_PREFIX = "events.out.tfevents."

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_F32 = struct.Struct("<f")
_HEADER = 12  # u64 length + u32 crc of the length
_FOOTER = 4  # u32 crc of the data


class _ProtoError(ValueError):
    """A malformed protobuf message."""


# ---------------------------------------------------------------- crc32c (Castagnoli)

def _make_crc_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _make_crc_table()
_CRC_TABLE_NP = np.array(_CRC_TABLE, dtype=np.uint32)
# Records longer than this are checksummed one at a time in Python rather than
# as lanes of a numpy batch (a lane costs one numpy step per byte of the longest record).
_LANE_MAX_BYTES = 4096
_LANES_PER_BATCH = 1 << 16
# Bytes of one batch's padded byte matrix (its int64 offsets are 8x this): bounds memory.
_MAX_BATCH_CELLS = 1 << 22


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, table-driven, pure Python (the slow, obvious oracle)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC TFRecord framing stores: rotate right by 15, add 0xa282ead8."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _zero_run_terms(n: int) -> np.ndarray:
    """terms[L] = the raw CRC register after L zero bytes from the initial 0xFFFFFFFF (L = 0..n)."""
    while len(_ZERO_TERMS) <= n:
        crc = _ZERO_TERMS[-1]
        _ZERO_TERMS.append(_CRC_TABLE[crc & 0xFF] ^ (crc >> 8))
    return np.asarray(_ZERO_TERMS[: n + 1], dtype=np.uint32)


_ZERO_TERMS: list[int] = [0xFFFFFFFF]


_RUN_MIN_RECORDS = 64
_RUN_CHUNK_LANES = 16384


def _crc_equal_runs(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Masked CRCs, into `out`, of the ranges that lie in runs of equal length and equal spacing; returns which.

    A writer logging scalars emits long runs of same-sized records back to back: such a
    run is a strided 2-D view of the buffer (a row per record), copied transposed a
    chunk at a time, then one table step per byte column; no index arrays are built.
    """
    n = len(starts)
    done = np.zeros(n, dtype=bool)
    if n < _RUN_MIN_RECORDS:
        return done
    gap = np.diff(starts)
    joins = np.zeros(n, dtype=bool)  # record k continues the run of record k - 1
    joins[1:] = lengths[1:] == lengths[:-1]
    joins[2:] &= gap[1:] == gap[:-1]
    heads = np.flatnonzero(~joins)
    tails = np.append(heads[1:], n)
    for head, tail in zip(heads.tolist(), tails.tolist()):
        if tail - head < _RUN_MIN_RECORDS:
            continue
        width = int(lengths[head])
        if width > _LANE_MAX_BYTES:
            continue
        stride = int(starts[head + 1] - starts[head])
        rows = np.lib.stride_tricks.as_strided(buf[int(starts[head]) :], shape=(tail - head, width), strides=(stride, 1), writeable=False)
        for lo in range(0, tail - head, _RUN_CHUNK_LANES):
            columns = np.ascontiguousarray(rows[lo : lo + _RUN_CHUNK_LANES].T)
            crc = np.full(columns.shape[1], 0xFFFFFFFF, dtype=np.uint32)
            for column in columns:
                crc = _CRC_TABLE_NP.take((crc ^ column) & 0xFF) ^ (crc >> 8)
            crc ^= np.uint32(0xFFFFFFFF)
            out[head + lo : head + lo + len(crc)] = ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(0xA282EAD8)
        done[head:tail] = True
    return done


def _masked_crc32c_many(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Masked CRC-32C of many byte ranges of `buf` at once (uint32 array, same order).

    The ranges are sorted by length and processed as lanes of one numpy batch, one
    table step per byte column. The register update is linear over GF(2), so
    crc(init, data) = crc(0, data) ^ crc(init, zeros(len(data))), and leading zero
    bytes leave a zero register at zero: every lane is left-padded with zeros to
    the batch width, run from 0, then XORed with the zero-run term of its own
    length. Long ranges fall back to the Python loop.
    """
    out = np.zeros(len(starts), dtype=np.uint32)
    if len(starts) == 0:
        return out
    done = _crc_equal_runs(buf, starts, lengths, out)
    left = np.flatnonzero(~done)
    order = left[np.argsort(lengths[left], kind="stable")]
    i = 0
    n = len(order)
    while i < n:
        first_len = int(lengths[order[i]])
        if first_len > _LANE_MAX_BYTES:
            for k in order[i:]:
                s, ln = int(starts[k]), int(lengths[k])
                out[k] = masked_crc32c(buf[s : s + ln].tobytes())
            break
        # Lanes of similar length share a batch so the zero padding costs little.
        limit = min(_LANE_MAX_BYTES, 2 * first_len + 64)
        j = min(n, i + min(_LANES_PER_BATCH, max(1, _MAX_BATCH_CELLS // limit)))
        j = i + int(np.searchsorted(lengths[order[i:j]], limit, side="right"))
        idx = order[i:j]
        lane_len = lengths[idx].astype(np.int64)
        width = int(lane_len.max())
        # Byte matrix, one row per column of the batch (contiguous per step), zeros before each lane.
        offset = np.arange(width, dtype=np.int64)[:, None] - (width - lane_len)[None, :]
        pos = starts[idx].astype(np.int64)[None, :] + offset
        matrix = buf[np.maximum(pos, 0)]
        matrix[offset < 0] = 0
        del offset, pos
        crc = np.zeros(len(idx), dtype=np.uint32)
        for row in matrix:
            crc = _CRC_TABLE_NP[(crc ^ row) & 0xFF] ^ (crc >> 8)
        crc ^= _zero_run_terms(width)[lane_len]
        crc ^= np.uint32(0xFFFFFFFF)
        out[idx] = ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(0xA282EAD8)
        i = j
    return out


# ---------------------------------------------------------------- protobuf wire format

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    byte = buf[pos]
    if byte < 0x80:
        return byte, pos + 1
    result = byte & 0x7F
    shift = 7
    pos += 1
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _ProtoError("varint longer than 10 bytes")


def _fields(buf: bytes, pos: int, end: int):
    """Yield (field_number, wire_type, value) of the message in buf[pos:end].

    value: the integer for varints; the start offset for fixed64/fixed32; a
    (start, stop) pair for length-delimited fields.
    """
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value = (pos, pos + length)
            pos += length
        elif wire == 5:
            value = pos
            pos += 4
        elif wire == 1:
            value = pos
            pos += 8
        else:
            raise _ProtoError(f"unsupported wire type {wire}")
        if pos > end:
            raise _ProtoError("field runs past the end of its message")
        yield field, wire, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


# TensorFlow DataType enum -> (struct format of one element, element bytes) for numeric types.
_DTYPES = {
    1: ("f", 4),  # DT_FLOAT
    2: ("d", 8),  # DT_DOUBLE
    3: ("i", 4),  # DT_INT32
    4: ("B", 1),  # DT_UINT8
    5: ("h", 2),  # DT_INT16
    6: ("b", 1),  # DT_INT8
    9: ("q", 8),  # DT_INT64
    10: ("?", 1),  # DT_BOOL
    14: ("bf16", 2),  # DT_BFLOAT16
    17: ("H", 2),  # DT_UINT16
    19: ("e", 2),  # DT_HALF
    22: ("I", 4),  # DT_UINT32
    23: ("Q", 8),  # DT_UINT64
}


_SIGNED = frozenset({3, 5, 6, 9})


def _bf16_to_float(bits: int) -> float:
    return _F32.unpack(_U32.pack((bits & 0xFFFF) << 16))[0]


def _half_bits_to_float(bits: int) -> float:
    return struct.unpack("<e", struct.pack("<H", bits & 0xFFFF))[0]


def _packed_or_single(buf: bytes, wire: int, value, fmt: str, size: int) -> list[float]:
    if wire == 2:
        start, stop = value
        count = (stop - start) // size
        return list(struct.unpack_from(f"<{count}{fmt}", buf, start))
    return [struct.unpack_from("<" + fmt, buf, value)[0]]


def _varints(buf: bytes, wire: int, value) -> list[int]:
    if wire == 0:
        return [value]
    out = []
    pos, stop = value
    while pos < stop:
        v, pos = _varint(buf, pos)
        out.append(v)
    return out


def _tensor_values(buf: bytes, start: int, end: int) -> tuple[list[float] | None, list[int]]:
    """(flat numeric values or None when not numeric, shape) of a TensorProto."""
    dtype = 0
    shape: list[int] = []
    content = None
    values: list[float] = []
    for field, wire, value in _fields(buf, start, end):
        if field == 1 and wire == 0:
            dtype = value
        elif field == 2 and wire == 2:
            for f2, w2, v2 in _fields(buf, value[0], value[1]):
                if f2 == 2 and w2 == 2:  # Dim
                    size = 0
                    for f3, w3, v3 in _fields(buf, v2[0], v2[1]):
                        if f3 == 1 and w3 == 0:
                            size = _signed64(v3)
                    shape.append(size)
        elif field == 4 and wire == 2:
            content = value
        elif field == 5 and wire in (2, 5):
            values.extend(_packed_or_single(buf, wire, value, "f", 4))
        elif field == 6 and wire in (2, 1):
            values.extend(_packed_or_single(buf, wire, value, "d", 8))
        elif field in (7, 10, 11, 13, 16, 17) and wire in (0, 2):
            ints = _varints(buf, wire, value)
            if field in (7, 10):  # negative int32/int64 are sign-extended 10-byte varints
                values.extend(_signed64(v) if dtype in _SIGNED else v for v in ints)
            elif field == 13:
                convert = _bf16_to_float if dtype == 14 else _half_bits_to_float
                values.extend(convert(v) for v in ints)
            else:
                values.extend(float(v) for v in ints)
    spec = _DTYPES.get(dtype)
    if spec is None:
        return None, shape
    if content is not None:
        fmt, size = spec
        start, stop = content
        count = (stop - start) // size
        if fmt == "bf16":
            return [_bf16_to_float(b) for b in struct.unpack_from(f"<{count}H", buf, start)], shape
        return [float(v) for v in struct.unpack_from(f"<{count}{fmt}", buf, start)], shape
    return [float(v) for v in values], shape


def _histogram_proto(buf: bytes, start: int, end: int) -> tuple[float, float, float, float]:
    """(mean, std, min, max) of a HistogramProto from its exact sums."""
    mins = maxs = num = total = squares = 0.0
    for field, wire, value in _fields(buf, start, end):
        if wire != 1:
            continue
        if field == 1:
            mins = _F64.unpack_from(buf, value)[0]
        elif field == 2:
            maxs = _F64.unpack_from(buf, value)[0]
        elif field == 3:
            num = _F64.unpack_from(buf, value)[0]
        elif field == 4:
            total = _F64.unpack_from(buf, value)[0]
        elif field == 5:
            squares = _F64.unpack_from(buf, value)[0]
    if not num > 0:
        nan = math.nan
        return nan, nan, nan, nan
    mean = total / num
    variance = squares / num - mean * mean
    # Rounding can make the variance of a constant tensor a tiny negative number.
    std = math.sqrt(max(variance, 0.0)) if not math.isnan(variance) else math.nan
    return mean, std, mins, maxs


def _histogram_tensor(values: list[float], shape: list[int]) -> tuple[float, float, float, float] | None:
    """(mean, std, min, max) estimated from a [k, 3] (left, right, count) bucket tensor."""
    if len(shape) != 2 or shape[1] != 3 or len(values) != shape[0] * 3:
        return None
    nan = math.nan
    total = weighted = weighted_sq = 0.0
    lo = hi = None
    for i in range(0, len(values), 3):
        left, right, count = values[i], values[i + 1], values[i + 2]
        if count <= 0:
            continue
        centre = (left + right) / 2.0
        total += count
        weighted += count * centre
        weighted_sq += count * centre * centre
        lo = left if lo is None else lo
        hi = right
    if total <= 0:
        return nan, nan, nan, nan
    mean = weighted / total
    return mean, math.sqrt(max(weighted_sq / total - mean * mean, 0.0)), lo, hi


_HIST_SUFFIXES = ("/hist_mean", "/hist_std", "/hist_min", "/hist_max")


class _Columns:
    """Column lists the decoder appends to (faster than one dict per row)."""

    def __init__(self) -> None:
        self.step: list[int] = []
        self.key: list[str] = []
        self.value: list[float] = []
        self.wall: list[float | None] = []

    def add(self, step: int, key: str, value: float, wall: float | None) -> None:
        self.step.append(step)
        self.key.append(key)
        self.value.append(value)
        self.wall.append(wall)

    def __len__(self) -> int:
        return len(self.step)


def _decode_value(buf: bytes, start: int, end: int, step: int, wall: float | None, out: _Columns) -> None:
    tag = None
    node_name = None
    simple = None
    histo = None
    tensor = None
    plugin = None
    for field, wire, value in _fields(buf, start, end):
        if field == 1 and wire == 2:
            tag = buf[value[0] : value[1]].decode("utf-8", "replace")
        elif field == 2 and wire == 5:
            simple = _F32.unpack_from(buf, value)[0]
        elif field == 5 and wire == 2:
            histo = value
        elif field == 8 and wire == 2:
            tensor = value
        elif field == 9 and wire == 2:
            for f2, w2, v2 in _fields(buf, value[0], value[1]):
                if f2 == 1 and w2 == 2:
                    for f3, w3, v3 in _fields(buf, v2[0], v2[1]):
                        if f3 == 1 and w3 == 2:
                            plugin = buf[v3[0] : v3[1]].decode("utf-8", "replace")
        elif field == 7 and wire == 2:
            node_name = buf[value[0] : value[1]].decode("utf-8", "replace")
    tag = tag or node_name
    if not tag:
        return
    if simple is not None:
        out.add(step, tag, simple, wall)
    elif histo is not None:
        for suffix, v in zip(_HIST_SUFFIXES, _histogram_proto(buf, histo[0], histo[1])):
            out.add(step, tag + suffix, v, wall)
    elif tensor is not None:
        values, shape = _tensor_values(buf, tensor[0], tensor[1])
        if values is None:
            return
        if plugin == "histograms":
            stats = _histogram_tensor(values, shape)
            if stats is not None:
                for suffix, v in zip(_HIST_SUFFIXES, stats):
                    out.add(step, tag + suffix, v, wall)
            return
        # A scalar is a rank-0 tensor; the scalars plugin also accepts any one-element shape.
        if len(values) == 1 and (not shape or (plugin == "scalars" and all(d == 1 for d in shape))):
            out.add(step, tag, values[0], wall)


# SummaryMetadata naming the scalars plugin, exactly as TensorBoard writers serialize it.
_SCALARS_META = b"\x4a\x0b\x0a\x09\x0a\x07scalars"
_SCALARS_META_NP = np.frombuffer(_SCALARS_META, dtype=np.uint8).astype(np.int64)


def _unaligned(buf: bytes, pos: np.ndarray, dtype: str) -> np.ndarray:
    """Values of `dtype` at arbitrary byte offsets `pos` of `buf` (each must leave room for one value).

    A view of `buf` with a stride of one byte has a value starting at every offset, so
    one fancy index reads them all (numpy copies unaligned items byte-wise).
    """
    size = np.dtype(dtype).itemsize
    every_offset = np.ndarray((max(0, len(buf) - size + 1),), dtype=dtype, buffer=buf, strides=(1,))
    return every_offset[pos]


def _vector_scalars(buf: bytes, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, pl.DataFrame]:
    """Decode, all records at once with numpy, the Events that hold exactly one scalar.

    Recognised shapes (single-byte lengths, as real writers produce for scalars):
        09 <wall f64> [10 <step varint>] 2a L1 0a L2 0a T <tag> 15 <f32>           (simple_value)
        09 <wall f64> [10 <step varint>] 2a L1 0a L2 0a T <tag> 42 LT 08 <dtype>
            [12 00] (22|2a|32) N <f32|f64> 4a 0b 0a 09 0a 07 "scalars"            (rank-0 tensor)
    Returns (mask of the records decoded here, their rows with a `record` column);
    every other record is left to the general parser (_decode_event).
    """
    arr = np.frombuffer(buf, dtype=np.uint8)
    start = starts
    end = starts + lengths

    def at(pos: np.ndarray) -> np.ndarray:
        return arr.take(pos, mode="clip").astype(np.int64)  # a position past the end reads the last byte: checks fail

    ok = (lengths >= 21) & (at(start) == 0x09)
    has_step = at(start + 9) == 0x10
    step = np.zeros(len(start), dtype=np.uint64)
    step_len = np.zeros(len(start), dtype=np.int64)
    going = has_step.copy()
    for k in range(10):
        if not going.any():
            break
        byte = at(start + 10 + k)
        step |= np.where(going, (byte & 0x7F).astype(np.uint64) << np.uint64(7 * k), np.uint64(0))
        step_len += going
        going &= byte >= 0x80
    ok &= ~going
    p = start + 9 + np.where(has_step, 1 + step_len, 0)
    size = at(p + 1)
    ok &= (at(p) == 0x2A) & (size < 0x80) & (p + 2 + size == end)
    ok &= (at(p + 2) == 0x0A) & (at(p + 3) == size - 2) & (at(p + 4) == 0x0A)
    tag_len = at(p + 5)
    ok &= (tag_len > 0) & (tag_len < 0x80)
    q = p + 6 + tag_len  # first byte after the tag
    head = at(q)
    simple = ok & (q + 5 == end) & (head == 0x15)
    # New-style: tensor field, then the scalars-plugin metadata up to the end (checked on candidates only).
    tensor = np.zeros(len(start), dtype=bool)
    is_f64 = np.zeros(len(start), dtype=bool)
    t = np.zeros(len(start), dtype=np.int64)
    cand = np.flatnonzero(ok & ~simple & (head == 0x42))
    if len(cand):
        qc, endc = q[cand], end[cand]
        tensor_end = qc + 2 + at(qc + 1)
        good = (at(qc + 1) < 0x80) & (tensor_end + len(_SCALARS_META) == endc) & (at(qc + 2) == 0x08)
        dtype = at(qc + 3)
        tc = qc + 4 + np.where((at(qc + 4) == 0x12) & (at(qc + 5) == 0x00), 2, 0)
        field, nbytes = at(tc), at(tc + 1)
        f32c = (dtype == 1) & (nbytes == 4) & ((field == 0x22) | (field == 0x2A))
        f64c = (dtype == 2) & (nbytes == 8) & ((field == 0x22) | (field == 0x32))
        good &= (f32c | f64c) & (tc + 2 + nbytes == tensor_end)
        for i, byte in enumerate(_SCALARS_META_NP):
            good &= at(tensor_end + i) == byte
        tensor[cand] = good
        is_f64[cand] = f64c
        t[cand] = tc
    handled = simple | tensor
    idx = np.flatnonzero(handled)
    if not len(idx):
        return handled, pl.DataFrame()

    wall = _unaligned(buf, start[idx] + 1, "<f8")
    value_pos = np.where(simple, q + 1, t + 2)[idx]
    as_f64 = is_f64[idx] & tensor[idx]
    values = np.empty(len(idx), dtype=np.float64)
    f32 = ~as_f64
    values[f32] = _unaligned(buf, value_pos[f32], "<f4")
    values[as_f64] = _unaligned(buf, value_pos[as_f64], "<f8")
    frame = pl.DataFrame(
        {
            "record": idx.astype(np.int64),
            "step": step[idx].view(np.int64),
            "key": _strings_at(buf, (p + 6)[idx], tag_len[idx]),
            "value": values,
            "wall_time_s": wall,
        }
    )
    return handled, frame


# Distinct tags found by repeated whole-array comparison before grouping the rest with polars.
_SCANNED_TAGS = 32


def _strings_at(buf: bytes, starts: np.ndarray, lengths: np.ndarray) -> pl.Series:
    """The tags at byte ranges of `buf` as one `key` Series; each distinct tag is decoded once.

    A tag is identified exactly by its length and its bytes read as little-endian u64
    words (the bytes past its end masked off), all loaded with numpy. Writers log a few
    tags over and over: records are grouped on one 64-bit mix of those words, distinct
    values peeled off by comparing whole arrays (`_SCANNED_TAGS` times at most, any
    remainder grouped by polars); the grouping is then checked against every word, and
    redone on the words themselves should two tags share a mix. Reading a
    word may run up to 7 bytes past a tag: a one-scalar event always has at least 9
    more bytes (the value and the record's CRC) after its tag.
    """
    n = len(starts)
    if n == 0:
        return pl.Series("key", [], dtype=pl.String)
    columns = [lengths.astype(np.int64)]
    for j in range((int(lengths.max()) + 7) // 8):
        remaining = lengths - 8 * j
        word = _unaligned(buf, np.where(remaining > 0, starts + 8 * j, starts), "<u8")
        kept_bits = (np.clip(remaining, 0, 8) * 8).astype(np.uint64)
        mask = np.where(kept_bits >= 64, ~np.uint64(0), (np.uint64(1) << np.minimum(kept_bits, 63)) - np.uint64(1))
        columns.append(word & mask)
    # First on one 64-bit mix of the columns; exact if every record then equals its representative.
    mix = np.zeros(n, dtype=np.uint64)
    for k, column in enumerate(columns):
        mix = (mix ^ column.astype(np.uint64)) * np.uint64(0x9E3779B97F4A7C15 + 2 * k)
        mix ^= mix >> np.uint64(29)
    codes, firsts = _group_codes([mix])
    representative = np.asarray(firsts, dtype=np.int64)[codes]
    if not all(np.array_equal(column, column[representative]) for column in columns):
        codes, firsts = _group_codes(columns)  # a collision of the mix: group on the columns themselves
    names = [bytes(buf[starts[i] : starts[i] + lengths[i]]).decode("utf-8", "replace") for i in firsts]
    return pl.Series("key", names, dtype=pl.String).gather(pl.Series(codes))


def _group_codes(columns: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """(group code of each row, first row of each group) for rows equal in every column, groups in order of appearance."""
    n = len(columns[0])
    codes = np.empty(n, dtype=np.uint32)
    firsts: list[int] = []
    rest = np.arange(n)
    current = columns
    while len(rest) and len(firsts) < _SCANNED_TAGS:
        same = np.ones(len(rest), dtype=bool)
        for column in current:
            same &= column == column[0]
        codes[rest[same]] = len(firsts)
        firsts.append(int(rest[0]))
        rest = rest[~same]
        current = [column[~same] for column in current]
    if len(rest):  # many distinct tags
        frame = pl.DataFrame({f"c{k}": column for k, column in enumerate(current)}).with_row_index("i")
        for members in frame.group_by([f"c{k}" for k in range(len(current))], maintain_order=True).agg("i")["i"]:
            members = rest[members.to_numpy()]
            codes[members] = len(firsts)
            firsts.append(int(members[0]))
    return codes, firsts


def _decode_event(buf: bytes, start: int, end: int, out: _Columns) -> None:
    wall = None
    step = 0
    summaries = []
    for field, wire, value in _fields(buf, start, end):
        if field == 1 and wire == 1:
            wall = _F64.unpack_from(buf, value)[0]
        elif field == 2 and wire == 0:
            step = _signed64(value)
        elif field == 5 and wire == 2:
            summaries.append(value)
    for s_start, s_end in summaries:
        for field, wire, value in _fields(buf, s_start, s_end):
            if field == 1 and wire == 2:
                _decode_value(buf, value[0], value[1], step, wall, out)


# ---------------------------------------------------------------- records

# Records checked at once when guessing that the next ones have the current record's length.
_SPECULATE_RECORDS = 4096
# After a guess that held for fewer records than this, step record by record for a while.
_SPECULATE_MIN_RUN = 16
_PLAIN_STEPS_AFTER_MISS = 64


def _frame_records(buf: bytes) -> tuple[list[int], list[int], int]:
    """Start offsets and lengths of the complete records' data, and where the complete part ends.

    The one sequential part of decoding: each record's offset depends on the previous
    length. Writers log runs of same-sized records (one scalar per event), so from a
    record of length L the next `_SPECULATE_RECORDS` are guessed at multiples of L+16
    and their length fields checked at once with numpy; the run is accepted up to the
    first record whose length differs. Where guesses keep failing (interleaved sizes)
    it steps one record at a time for `_PLAIN_STEPS_AFTER_MISS` records before guessing
    again, so mixed files cost about what the plain loop costs.
    """
    arr = np.frombuffer(buf, dtype=np.uint8)
    size = len(buf)
    pieces: list[np.ndarray] = []  # offsets just past each complete record, in order
    ends: list[int] = []
    pos = 0
    limit = size - _HEADER - _FOOTER
    unpack = _U64.unpack_from
    plain_steps = 0
    eight = np.arange(8, dtype=np.int64)
    while pos <= limit:
        stride = _HEADER + _FOOTER + unpack(buf, pos)[0]
        if pos + stride > size:
            break
        if plain_steps == 0:
            k = min(_SPECULATE_RECORDS, (size - pos) // stride)
            if k >= _SPECULATE_MIN_RUN:
                heads = pos + stride * np.arange(k, dtype=np.int64)
                same = arr[heads[:, None] + eight].copy().view("<u8").ravel() == stride - _HEADER - _FOOTER
                run = k if same.all() else int(np.argmin(same))
                if ends:
                    pieces.append(np.asarray(ends, dtype=np.int64))
                    ends = []
                pieces.append(heads[:run] + stride)
                pos += run * stride
                if run < _SPECULATE_MIN_RUN:
                    plain_steps = _PLAIN_STEPS_AFTER_MISS
                continue
        else:
            plain_steps -= 1
        pos += stride
        ends.append(pos)
    if ends:
        pieces.append(np.asarray(ends, dtype=np.int64))
    if not pieces:
        return [], [], 0
    ends_np = np.concatenate(pieces)
    begins = np.empty_like(ends_np)
    begins[0] = 0
    begins[1:] = ends_np[:-1]
    return (begins + _HEADER).tolist(), (ends_np - begins - _HEADER - _FOOTER).tolist(), pos


def _first_bad_crc(buf: bytes, starts: list[int], lengths: list[int]) -> int | None:
    """Index of the first record whose length or data CRC does not match, else None."""
    if not starts:
        return None
    arr = np.frombuffer(buf, dtype=np.uint8)
    data_start = np.asarray(starts, dtype=np.int64)
    data_len = np.asarray(lengths, dtype=np.int64)
    header_start = data_start - _HEADER
    four = np.arange(4, dtype=np.int64)
    stored_len_crc = arr[(header_start + 8)[:, None] + four].copy().view("<u4").ravel()
    stored_data_crc = arr[(data_start + data_len)[:, None] + four].copy().view("<u4").ravel()
    len_ok = _masked_crc32c_many(arr, header_start, np.full(len(starts), 8, dtype=np.int64)) == stored_len_crc
    data_ok = _masked_crc32c_many(arr, data_start, data_len) == stored_data_crc
    bad = np.flatnonzero(~(len_ok & data_ok))
    return int(bad[0]) if len(bad) else None


def decode_event_bytes(
    buf: bytes, name: str = "<bytes>", *, check_crc: bool = False, _fast: bool = True
) -> tuple[pl.DataFrame, list[str], int]:
    """Decode an event file's bytes into a metrics frame (METRIC_COLUMNS), rows in file order.

    Returns (frame, problems, number of records used). A partial last record (file
    still being written) ends the decode at the last complete record; with
    `check_crc` a record whose CRC does not match ends it there too. A record that is
    not a valid Event is skipped and counted in one problem line. One-scalar events
    are decoded in bulk by _vector_scalars, the rest one by one; `_fast=False` sends
    every record through the general parser (tests compare both).
    """
    problems: list[str] = []
    starts, lengths, complete_end = _frame_records(buf)
    if complete_end < len(buf):
        problems.append(
            f"{name}: last record incomplete ({len(buf) - complete_end} trailing bytes), kept {len(starts)} complete records"
        )
    if check_crc:
        bad = _first_bad_crc(buf, starts, lengths)
        if bad is not None:
            problems.append(
                f"{name}: CRC mismatch in record {bad} at byte {starts[bad] - _HEADER}, kept the {bad} records before it"
            )
            starts, lengths = starts[:bad], lengths[:bad]
    parts = []
    rest = range(len(starts))
    if _fast and starts:
        handled, bulk = _vector_scalars(buf, np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64))
        if bulk.height:
            parts.append(bulk)
        rest = np.flatnonzero(~handled).tolist()
    out = _Columns()
    records: list[int] = []
    malformed = 0
    first_malformed = None
    for i in rest:
        start = starts[i]
        mark = len(out)
        try:
            _decode_event(buf, start, start + lengths[i], out)
        except (_ProtoError, IndexError, struct.error, UnicodeDecodeError):
            # Roll back rows of the half-decoded event so none is partial.
            for column in (out.step, out.key, out.value, out.wall):
                del column[mark:]
            malformed += 1
            first_malformed = start - _HEADER if first_malformed is None else first_malformed
            continue
        records.extend([i] * (len(out) - mark))
    if malformed:
        problems.append(f"{name}: {malformed} malformed event record(s) skipped, first at byte {first_malformed}")
    if len(out):
        parts.append(
            pl.DataFrame(
                {"record": records, "step": out.step, "key": out.key, "value": out.value, "wall_time_s": out.wall},
                schema={"record": pl.Int64, "step": pl.Int64, "key": pl.String, "value": pl.Float64, "wall_time_s": pl.Float64},
            )
        )
    return _with_splits(parts), problems, len(starts)


def _with_splits(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Concatenate decoded parts in record order and add the split of each key."""
    if not parts:
        return metrics_frame([])
    frame = pl.concat(parts, how="vertical") if len(parts) > 1 else parts[0]
    if len(parts) > 1:
        frame = frame.sort("record", maintain_order=True)
    splits = {key: infer_split(key) for key in frame["key"].unique().to_list()}
    return frame.select(
        pl.col("step").cast(pl.Int64),
        pl.col("key"),
        pl.col("value").cast(pl.Float64),
        pl.col("wall_time_s").cast(pl.Float64),
        pl.col("key").replace_strict(splits, default=None, return_dtype=pl.String).alias("split"),
    )


def read_event_file(path: Path, *, check_crc: bool = False) -> tuple[pl.DataFrame, list[str], int]:
    """One event file as (metrics frame, problems, records used); see decode_event_bytes."""
    buf = read_bytes_limited(Path(path))
    return decode_event_bytes(buf, Path(path).name, check_crc=check_crc)


def detect(run_dir: Path) -> list[Path]:
    return [p for p in files_in(run_dir) if p.name.startswith(EVENT_FILE_PREFIX)]


@reader("tensorboard", detect=detect, provides_metrics=True, priority=10)
def read(run_dir: Path, files: list[Path], *, check_crc: bool = False) -> SourceData:
    """Every event file in `files`, all points kept; raises ReadError if none yields a record."""
    frames = []
    problems: list[str] = []
    failures: list[str] = []
    used_records = 0
    for path in files:
        try:
            frame, notes, n_records = read_event_file(path, check_crc=check_crc)
        except OSError as exc:
            failures.append(f"{path.name}: {exc.strerror or exc}")
            continue
        problems.extend(notes)
        used_records += n_records
        if n_records == 0:
            failures.append(f"{path.name}: no complete record")
        frames.append(frame)
    if used_records == 0:
        raise ReadError("; ".join(failures) if failures else "no event file to read")
    problems.extend(failures)
    metrics = pl.concat(frames, how="vertical") if frames else metrics_frame([])
    if metrics.height and _is_tune_trial(run_dir):
        # Tune's TBX logger copies every result.json number under `ray/tune/<key>`: the
        # ray_tune reader has them already, under their own names.
        metrics = metrics.filter(~pl.col("key").str.starts_with(TUNE_TAG_PREFIX))
    return SourceData(metrics=metrics, problems=problems)


TUNE_TAG_PREFIX = "ray/tune/"


def _is_tune_trial(run_dir: Path) -> bool:
    from mldebug_ray.readers.ray_tune import RESULT, claimed_names

    return RESULT in claimed_names(Path(run_dir))
