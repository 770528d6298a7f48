"""Per-tensor checkpoint statistics against a numpy oracle, module types, and module shares."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import save_file

from mldebug_ray.errors import ReadError
from mldebug_ray.probes import checkpoint_scan
from mldebug_ray.probes.checkpoint_scan import module_shares, module_type, scan_checkpoint
from mldebug_ray.schema import OPTIONAL, TABLES


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    with_bad = torch.randn(50, 20, generator=gen) * 3 + 1
    with_bad[0, :5] = float("nan")
    with_bad[3, 7] = float("inf")
    with_bad[4, 1] = -float("inf")
    with_bad[10, :] = 0.0
    return {
        "model.embed_tokens.weight": torch.randn(100, 16, generator=gen),
        "model.layers.0.self_attn.q_proj.weight": with_bad,
        "model.layers.0.mlp.up_proj.weight": (torch.randn(32, 16, generator=gen) * 1e-2).to(torch.bfloat16),
        "model.layers.0.input_layernorm.weight": torch.ones(16, dtype=torch.float16),
        "lm_head.weight": torch.randn(100, 16, generator=gen).to(torch.float64),
        "model.step_count": torch.tensor([7, 0, 3], dtype=torch.int64),
        "all_nan": torch.full((4,), float("nan")),
        "empty": torch.zeros(0),
    }


def _oracle(tensor: torch.Tensor) -> dict[str, float]:
    """The obvious computation in numpy float64 (bf16 goes through float32, which is exact)."""
    x = tensor.to(torch.float32).numpy().astype(np.float64).ravel() if tensor.dtype == torch.bfloat16 else tensor.numpy().astype(np.float64).ravel()
    n = x.size
    finite = x[np.isfinite(x)]
    nan = math.nan
    if n == 0:
        return dict(norm_l2=nan, mean=nan, std=nan, max_abs=nan, zero_frac=nan, nonfinite_frac=nan)
    return dict(
        norm_l2=float(np.linalg.norm(finite)) if finite.size else nan,
        mean=float(finite.mean()) if finite.size else nan,
        std=float(finite.std()) if finite.size else nan,
        max_abs=float(np.abs(finite).max()) if finite.size else nan,
        zero_frac=float((x == 0).sum() / n),
        nonfinite_frac=float((~np.isfinite(x)).sum() / n),
    )


def _check(frame: pl.DataFrame, tensors: dict[str, torch.Tensor]) -> None:
    rows = {r["layer"]: r for r in frame.iter_rows(named=True)}
    assert set(rows) == set(tensors)
    for name, tensor in tensors.items():
        row = rows[name]
        assert row["n_params"] == tensor.numel()
        assert row["dtype"] == str(tensor.dtype).removeprefix("torch.")
        assert row["module_type"] == module_type(name)
        for key, want in _oracle(tensor).items():
            got = row[key]
            if math.isnan(want):
                assert math.isnan(got), (name, key, got)
            else:
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (name, key)


def test_safetensors_stats_match_numpy_including_nonfinite_and_bf16(tmp_path):
    tensors = _tensors()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    frame = scan_checkpoint(tmp_path, "model.safetensors", "safetensors")
    # The optional columns (cast shares, update ratios) come from probes/weights.py.
    expected_columns = [c for c in TABLES["layers"] if c not in ("run_id", "step") and c not in OPTIONAL["layers"]]
    assert frame.columns == expected_columns
    assert dict(frame.schema) == {c: TABLES["layers"][c] for c in expected_columns}
    _check(frame, tensors)
    row = frame.filter(pl.col("layer") == "model.layers.0.self_attn.q_proj.weight").row(0, named=True)
    assert row["nonfinite_frac"] == pytest.approx(7 / 1000)
    assert row["zero_frac"] == pytest.approx(20 / 1000)


def test_torch_checkpoint_gives_the_same_stats(tmp_path):
    tensors = _tensors()
    torch.save({"state_dict": tensors, "epoch": 2}, tmp_path / "last.ckpt")
    frame = scan_checkpoint(tmp_path, "last.ckpt", "torch")
    _check(frame, tensors)


def test_chunked_moments_equal_the_one_pass_oracle(tmp_path, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    big = torch.randn(1000, generator=gen) * 5 + 1e4  # a large mean: naive sum-of-squares std would lose digits
    big[::97] = float("nan")
    tensors = {"mlp.fc1.weight": big}
    save_file(tensors, str(tmp_path / "a.safetensors"))
    monkeypatch.setattr(checkpoint_scan, "CHUNK_ELEMENTS", 37)
    _check(scan_checkpoint(tmp_path, "a.safetensors", "safetensors"), tensors)


def test_sharded_index_is_scanned_shard_by_shard(tmp_path):
    import json

    tensors = _tensors()
    names = list(tensors)
    save_file({k: tensors[k] for k in names[:3]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in names[3:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {k: f"model-0000{1 if i < 3 else 2}-of-00002.safetensors" for i, k in enumerate(names)}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _check(scan_checkpoint(tmp_path, "model.safetensors.index.json", "safetensors"), tensors)


def test_unreadable_checkpoints_raise_read_error(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ReadError, match="bad.safetensors"):
        scan_checkpoint(tmp_path, "bad.safetensors", "safetensors")
    with pytest.raises(ReadError, match="dcp"):
        scan_checkpoint(tmp_path, "ckpt", "dcp")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("transformer.wte.weight", "embedding"),
        ("bert.embeddings.position_embeddings.weight", "embedding"),
        ("transformer.h.0.attn.c_attn.weight", "attention"),
        ("model.layers.3.self_attn.o_proj.weight", "attention"),
        ("transformer.h.0.mlp.c_fc.weight", "mlp"),
        ("gpt_neox.layers.0.mlp.dense_h_to_4h.weight", "mlp"),
        ("layers.0.feed_forward.w1.weight", "mlp"),
        ("transformer.h.0.ln_1.weight", "norm"),
        ("model.layers.0.post_attention_layernorm.weight", "norm"),
        ("layer1.0.bn1.running_var", "norm"),
        ("lm_head.weight", "head"),
        ("output.weight", "head"),
        ("classifier.bias", "head"),
        ("conv1.weight", "other"),
    ],
)
def test_module_type_reads_the_parameter_name(name, kind):
    assert module_type(name) == kind


def test_module_shares_use_the_newest_step():
    layers = pl.DataFrame(
        {
            "run_id": ["r"] * 5,
            "step": [100, 100, 200, 200, 200],
            "layer": ["embed.weight", "head.weight", "embed.weight", "head.weight", "mlp.fc1.weight"],
            "module_type": ["embedding", "head", "embedding", "head", "mlp"],
            "n_params": [10, 10, 790, 110, 100],
        }
    )
    shares = module_shares(layers)
    assert shares.columns == ["run_id", "module_type", "n_params", "share_frac"]
    assert shares["module_type"].to_list() == ["embedding", "head", "mlp"]
    assert shares["share_frac"].to_list() == pytest.approx([0.79, 0.11, 0.10])
    single = module_shares(layers.drop("run_id"))
    assert single.columns == ["module_type", "n_params", "share_frac"]
    assert single["n_params"].sum() == 1000
