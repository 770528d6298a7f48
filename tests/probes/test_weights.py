"""The fast weight scan against slow oracles: checkpoint_scan.tensor_stats, whole-tensor casts, plain update ratios."""

from __future__ import annotations

import math
import pickle

import polars as pl
import pytest
import torch
from safetensors.torch import save_file

from mldebug_ray import schema
from mldebug_ray.errors import ReadError
from mldebug_ray.probes import weights
from mldebug_ray.probes.checkpoint_scan import tensor_stats
from mldebug_ray.probes.weights import PRECISION_COLUMNS, load_state_dict, scan_weights, update_ratio, weight_stats


def _random_tensors(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    wide = torch.randn(300, 7, generator=gen, dtype=torch.float64) * torch.logspace(-12, 6, 7, dtype=torch.float64)
    wide[0, 0] = 1e6  # beyond fp16 (65504)
    wide[1, 1] = -7e4
    wide[2, 2] = 2.0**-25  # flushes to 0 in fp16 (ties to even)
    wide[3, 3] = 1e-300  # flushes to 0 in bf16 too
    wide[4, 4] = float("nan")
    noisy = torch.randn(64, 33, generator=gen) * 3 + 2
    noisy[5, :4] = float("inf")
    noisy[6, :] = 0.0
    return {
        "mlp.fc1.weight": noisy,
        "head.weight": wide,
        "embed.weight": (torch.randn(50, 8, generator=gen) * 1e-3).to(torch.bfloat16),
        "norm.weight": torch.ones(8, dtype=torch.float16),
        "counter": torch.tensor([3, 0, 1], dtype=torch.int64),
        "empty": torch.zeros(0),
    }


def _cast_oracle(tensor: torch.Tensor) -> dict[str, float | None]:
    """Whole-tensor casts, no chunking, no float64 detour."""
    if not tensor.is_floating_point():
        return {c: None for c in PRECISION_COLUMNS}
    n = tensor.numel()
    if n == 0:
        return {c: math.nan for c in PRECISION_COLUMNS}
    finite = torch.isfinite(tensor)
    out = {}
    for prefix, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        low = tensor.to(dtype)
        out[f"{prefix}_overflow_frac"] = float((torch.isinf(low) & finite).sum()) / n
        out[f"{prefix}_underflow_frac"] = float(((low == 0) & (tensor != 0) & finite).sum()) / n
    return out


def _assert_row_matches(row: dict, name: str, tensor: torch.Tensor) -> None:
    """Counts and max exact; moments to float32 accumulation (the fast path's documented error)."""
    slow = tensor_stats(name, tensor) | _cast_oracle(tensor)
    scale = slow["max_abs"] if isinstance(slow["max_abs"], float) and math.isfinite(slow["max_abs"]) else 1.0
    tolerance = {"norm_l2": dict(rel=2e-6), "std": dict(rel=2e-5, abs=1e-6 * scale), "mean": dict(rel=2e-5, abs=1e-6 * scale)}
    for key, want in slow.items():
        got = row[key]
        if isinstance(want, float) and math.isnan(want):
            assert got is not None and math.isnan(got), (name, key, got)
        elif isinstance(want, float):
            assert got == pytest.approx(want, **tolerance.get(key, dict(rel=1e-12, abs=1e-300))), (name, key, got, want)
        else:
            assert got == want, (name, key, got, want)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_weight_stats_equal_the_slow_oracle_on_random_tensors(seed):
    for name, tensor in _random_tensors(seed).items():
        _assert_row_matches(weight_stats(name, tensor), name, tensor)


def test_chunks_the_fast_path_cannot_do_take_the_exact_float64_path():
    gen = torch.Generator().manual_seed(7)
    near_constant = torch.ones(5000) + 1e-4 * torch.randn(5000, generator=gen)  # variance << mean^2 (a norm weight)
    with_nan = torch.randn(5000, generator=gen)
    with_nan[3] = float("nan")
    huge = torch.randn(5000, generator=gen)
    huge[7] = 1e6
    for tensor in (near_constant, with_nan, huge):
        row, slow = weight_stats("w", tensor), tensor_stats("w", tensor)
        for key in ("norm_l2", "mean", "std", "max_abs"):
            assert row[key] == pytest.approx(slow[key], rel=1e-9), key


def test_fp16_thresholds_are_the_ones_the_cast_applies():
    x = torch.tensor([65504.0, 65519.0, 65520.0, -1e5, 2.0**-24, 2.0**-25, 2.0**-25 * 1.01, 0.0], dtype=torch.float32)
    row = weight_stats("w", x)
    assert row["fp16_overflow_frac"] == pytest.approx(2 / 8)  # 65520 and -1e5 become Inf; 65519 rounds down
    assert row["fp16_underflow_frac"] == pytest.approx(1 / 8)  # only 2^-25 (a tie) rounds to 0; exact 0 is no underflow
    assert row["bf16_overflow_frac"] == 0.0 and row["bf16_underflow_frac"] == 0.0


def test_chunked_scan_merges_like_one_pass(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    big = torch.randn(2000, generator=gen) * 5 + 1e4
    big[::97] = float("nan")
    big[::89] = 1e5
    monkeypatch.setattr(weights, "CHUNK_ELEMENTS", 37)
    _assert_row_matches(weight_stats("mlp.fc1.weight", big), "mlp.fc1.weight", big)


def test_update_ratio_is_the_relative_change_and_undefined_where_it_should_be(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(40, 30, generator=gen)
    b = a + 0.01 * torch.randn(40, 30, generator=gen)
    want = float(torch.linalg.vector_norm(b.double() - a.double()) / torch.linalg.vector_norm(a.double()))
    assert update_ratio(a, b) == pytest.approx(want, rel=1e-6)
    assert update_ratio(a.double(), b.double()) == pytest.approx(want, rel=1e-12)
    monkeypatch.setattr(weights, "CHUNK_ELEMENTS", 7)
    assert update_ratio(a, b) == pytest.approx(want, rel=1e-6)
    assert update_ratio(torch.zeros(3), torch.ones(3)) is None  # zero-initialised bias
    assert update_ratio(a, b[:10]) is None
    nan = b.clone()
    nan[0, 0] = float("nan")
    assert update_ratio(a, nan) is None
    assert update_ratio(torch.tensor([1, 2]), torch.tensor([1, 3])) is None


def test_safetensors_and_torch_checkpoints_give_the_same_rows_with_update_ratios(tmp_path):
    first = _random_tensors(5)
    second = {k: (v + 0.5 if v.is_floating_point() else v) for k, v in first.items()}
    save_file(first, str(tmp_path / "step_10.safetensors"))
    torch.save({"state_dict": second}, tmp_path / "step_20.pt")
    frame = scan_weights(tmp_path, "step_20.pt", "torch", previous=("step_10.safetensors", "safetensors", 10))
    rows = {r["layer"]: r for r in frame.iter_rows(named=True)}
    assert set(rows) == set(second)
    for name, tensor in second.items():
        _assert_row_matches(rows[name], name, tensor)
    assert rows["mlp.fc1.weight"]["update_ratio"] is None  # both hold Inf
    emb = rows["embed.weight"]
    want = float(torch.linalg.vector_norm(second["embed.weight"].double() - first["embed.weight"].double()) / torch.linalg.vector_norm(first["embed.weight"].double()))
    assert emb["update_ratio"] == pytest.approx(want) and emb["update_from_step"] == 10
    assert rows["counter"]["update_ratio"] is None
    # the frame fits the layers table once run_id and step are added
    schema.validate("layers", frame.with_columns(pl.lit("r").alias("run_id"), pl.lit(20).alias("step")))


def test_load_state_dict_reads_sharded_safetensors(tmp_path):
    import json

    tensors = {"a.weight": torch.randn(3, 2), "b.weight": torch.randn(4)}
    save_file({"a.weight": tensors["a.weight"]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b.weight": tensors["b.weight"]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}})
    )
    state = load_state_dict(tmp_path, "model.safetensors.index.json", "safetensors")
    assert set(state) == set(tensors) and all(torch.equal(state[k], tensors[k]) for k in tensors)


class _Sneaky:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_pickle_checkpoint_with_a_code_running_global_is_refused(tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hook": _Sneaky()}, path)
    with pytest.raises(ReadError, match="weights-only load refused"):
        scan_weights(tmp_path, "model.pt", "torch")
    with pytest.raises(ReadError, match="weights-only load refused"):
        load_state_dict(tmp_path, "model.pt", "torch")
    # a plain pickle (not a torch archive) is refused before any unpickling
    (tmp_path / "plain.pt").write_bytes(pickle.dumps(_Sneaky()))
    with pytest.raises(ReadError, match="not a torch.save file"):
        scan_weights(tmp_path, "plain.pt", "torch")
    assert "code ran" not in capsys.readouterr().out


def test_dcp_and_corrupt_files_raise_read_error_naming_the_file(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ReadError, match="bad.safetensors"):
        scan_weights(tmp_path, "bad.safetensors", "safetensors")
    with pytest.raises(ReadError, match="dcp"):
        scan_weights(tmp_path, "ckpt", "dcp")


@pytest.mark.gpu
def test_weight_stats_on_the_gpu_equal_the_cpu_ones(cuda):
    for name, tensor in _random_tensors(6).items():
        cpu = weight_stats(name, tensor)
        gpu = weight_stats(name, tensor, cuda)
        for key, want in cpu.items():
            if isinstance(want, float) and math.isnan(want):
                assert math.isnan(gpu[key])
            elif isinstance(want, float):
                assert gpu[key] == pytest.approx(want, rel=1e-9, abs=1e-300), (name, key)
            else:
                assert gpu[key] == want
    a, b = torch.randn(100, 10), torch.randn(100, 10)
    assert update_ratio(a, b, cuda) == pytest.approx(update_ratio(a, b), rel=1e-6)
