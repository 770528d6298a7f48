"""The checkpoints reader: safetensors headers, weights-only torch loads, sharded indexes, DCP folders."""

from __future__ import annotations

import json
import pickletools
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mldebug_ray.readers import READERS
from mldebug_ray.readers.checkpoints import safetensors_header, step_from_path

STATE = {"embed.weight": torch.randn(10, 4), "head.weight": torch.randn(3, 4), "head.bias": torch.zeros(3)}
N_PARAMS = 40 + 12 + 3


def make_marker(path: str) -> None:
    """What unpickling the payload below would do: create a file."""
    Path(path).write_text("code ran")


class Payload:
    """A pickled object whose unpickling calls make_marker (a pickle global)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (make_marker, (str(self.marker),))


def _rows(run_dir: Path) -> dict[str, dict]:
    reader = READERS["checkpoints"]
    data = reader.read(run_dir, reader.detect(run_dir))
    return {row["path"]: row for row in data.checkpoints.iter_rows(named=True)}


def test_safetensors_header_gives_n_params_without_loading(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    save_file(STATE, str(tmp_path / "checkpoints" / "step_100.safetensors"))
    save_file({"w": torch.ones(2, 2, dtype=torch.bfloat16)}, str(tmp_path / "checkpoints" / "epoch=3-step=300.safetensors"))
    rows = _rows(tmp_path)
    row = rows["checkpoints/step_100.safetensors"]
    assert row["format"] == "safetensors" and row["status"] == "ok" and row["reason"] is None
    assert row["n_params"] == N_PARAMS
    assert row["step"] == 100
    assert row["bytes"] == (tmp_path / "checkpoints" / "step_100.safetensors").stat().st_size
    assert rows["checkpoints/epoch=3-step=300.safetensors"]["step"] == 300
    assert rows["checkpoints/epoch=3-step=300.safetensors"]["n_params"] == 4


def test_truncated_or_corrupt_safetensors_is_unreadable_with_a_reason(tmp_path):
    save_file(STATE, str(tmp_path / "good.safetensors"))
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "step_1.safetensors").write_bytes(data[: len(data) - 20])  # cut inside the tensor data
    (tmp_path / "step_2.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")  # absurd header length
    (tmp_path / "step_3.safetensors").write_bytes(struct.pack("<Q", 4) + b"{x}!")  # not JSON
    (tmp_path / "step_4.safetensors").write_bytes(b"abc")
    (tmp_path / "step_5.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")
    rows = _rows(tmp_path)
    assert rows["good.safetensors"]["status"] == "ok"
    expected = {
        "step_1.safetensors": "outside the",
        "step_2.safetensors": "absurd",
        "step_3.safetensors": "not valid JSON",
        "step_4.safetensors": "too short",
        "step_5.safetensors": "git-lfs pointer",
    }
    for name, reason in expected.items():
        row = rows[name]
        assert row["status"] == "unreadable" and row["n_params"] is None, name
        assert reason in row["reason"] and "\n" not in row["reason"], (name, row["reason"])


def test_header_offsets_must_match_dtype_and_shape(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(ValueError, match="do not hold F32"):
        safetensors_header(path)


def test_torch_state_dict_is_loaded_weights_only(tmp_path):
    torch.save(STATE, tmp_path / "model_step_500.pt")
    torch.save({"state_dict": STATE, "epoch": 3, "hyper_parameters": {"lr": 0.1}}, tmp_path / "last.ckpt")
    torch.save(STATE, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    rows = _rows(tmp_path)
    assert rows["model_step_500.pt"] | {"bytes": None} == {
        "step": 500, "path": "model_step_500.pt", "format": "torch", "n_params": N_PARAMS,
        "bytes": None, "status": "ok", "reason": None,
    }  # fmt: skip
    assert rows["last.ckpt"]["n_params"] == N_PARAMS and rows["last.ckpt"]["step"] is None
    assert rows["legacy.pth"]["status"] == "ok" and rows["legacy.pth"]["n_params"] == N_PARAMS


def test_pickled_class_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"state_dict": STATE, "hyper_parameters": Payload(marker)}, tmp_path / "epoch=1-step=20.ckpt")
    row = _rows(tmp_path)["epoch=1-step=20.ckpt"]
    assert row["status"] == "unreadable" and row["step"] == 20
    assert "weights-only load refused" in row["reason"] and "make_marker" in row["reason"]
    assert "\n" not in row["reason"]
    assert not marker.exists()
    # Control, without unpickling: the archive's pickle really calls make_marker on load.
    with zipfile.ZipFile(tmp_path / "epoch=1-step=20.ckpt") as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pickled)]
    call = ops.index(("GLOBAL", f"{__name__} make_marker"))
    window = [op for op in ops[call : call + 8] if op[0] not in ("BINPUT", "MEMOIZE")]
    assert window[:4] == [("GLOBAL", f"{__name__} make_marker"), ("BINUNICODE", str(marker)), ("TUPLE1", None), ("REDUCE", None)]


def test_corrupt_torch_files_are_unreadable(tmp_path):
    torch.save(STATE, tmp_path / "step_7.pt")
    data = (tmp_path / "step_7.pt").read_bytes()
    (tmp_path / "step_7.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "step_8.pt").write_bytes(b"random bytes, not a pickle")
    # A zip whose tensor data is gone: the archive opens, the load fails.
    torch.save(STATE, tmp_path / "step_9.pt")
    with zipfile.ZipFile(tmp_path / "step_9.pt") as src, zipfile.ZipFile(tmp_path / "step_10.pt", "w") as dst:
        for item in src.infolist():
            if "/data/" not in item.filename:
                dst.writestr(item, src.read(item))
    (tmp_path / "step_9.pt").unlink()
    rows = _rows(tmp_path)
    assert rows["step_7.pt"]["reason"] == "damaged zip archive (no central directory: truncated?)"
    assert rows["step_8.pt"]["reason"] == "not a torch.save file (no zip or legacy torch header)"
    assert rows["step_10.pt"]["reason"].startswith("torch.load failed: ")
    assert {r["status"] for r in rows.values()} == {"unreadable"}


def test_sharded_safetensors_is_one_checkpoint(tmp_path):
    folder = tmp_path / "checkpoint-200"
    folder.mkdir()
    save_file({"embed.weight": STATE["embed.weight"]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({"head.weight": STATE["head.weight"], "head.bias": STATE["head.bias"]}, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {"embed.weight": "model-00001-of-00002.safetensors", "head.weight": "model-00002-of-00002.safetensors", "head.bias": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 220}, "weight_map": weight_map}))
    torch.save({"exp_avg": torch.zeros(3)}, folder / "optimizer.pt")
    (folder / "training_args.bin").write_bytes(b"\x80\x04 pickle")
    (tmp_path / "train.bin").write_bytes(b"\x01\x02\x03\x04" * 10)  # token dump, not a checkpoint
    rows = _rows(tmp_path)
    assert list(rows) == ["checkpoint-200/model.safetensors.index.json"]
    row = rows["checkpoint-200/model.safetensors.index.json"]
    assert row["n_params"] == N_PARAMS and row["step"] == 200 and row["status"] == "ok"
    (folder / "model-00002-of-00002.safetensors").unlink()
    row = _rows(tmp_path)["checkpoint-200/model.safetensors.index.json"]
    assert row["status"] == "unreadable" and "model-00002-of-00002.safetensors missing" in row["reason"]


def test_dcp_folder_counts_params_from_metadata(tmp_path):
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": STATE, "step": 3}, checkpoint_id=str(tmp_path / "checkpoints" / "step-1000"))
    row = _rows(tmp_path)["checkpoints/step-1000"]
    assert row["format"] == "dcp" and row["status"] == "ok"
    assert row["n_params"] == N_PARAMS and row["step"] == 1000
    assert row["bytes"] == sum(p.stat().st_size for p in (tmp_path / "checkpoints" / "step-1000").iterdir())


def test_unparsable_dcp_metadata_is_unreadable(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / ".metadata").write_bytes(b"\x80\x04garbage")
    row = _rows(tmp_path)["ckpt"]
    assert row["format"] == "dcp" and row["status"] == "unreadable" and ".metadata" in row["reason"]


def test_checkpoints_deeper_than_two_levels_are_not_listed(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    save_file(STATE, str(deep / "model.safetensors"))
    save_file(STATE, str(tmp_path / "a" / "b" / "model.safetensors"))
    assert list(_rows(tmp_path)) == ["a/b/model.safetensors"]


@pytest.mark.parametrize(
    ("path", "step"),
    [
        ("step_100.safetensors", 100),
        ("checkpoint-100/model.safetensors", 100),
        ("checkpoints/epoch=3-step=300.ckpt", 300),
        ("iter_0000100/model.pt", 100),
        ("global_step100/mp_rank_00_model_states.pt", 100),
        ("checkpoints/model_1500.pth", 1500),
        ("ckpt/1200/model.safetensors", 1200),
        ("epoch=3.ckpt", None),
        ("last.ckpt", None),
        ("model.safetensors", None),
        ("model-00001-of-00002.safetensors", None),
    ],
)
def test_step_is_taken_from_file_or_folder_names(path, step):
    assert step_from_path(path) == step
