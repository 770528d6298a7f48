"""Per-class accuracy (the `confusion` table) against a one-example-at-a-time oracle, and through the probe runner."""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from mldebug_ray import schema
from mldebug_ray.config import ProbesConfig
from mldebug_ray.gather import read_run_dir
from mldebug_ray.probes.confusion import ConfusionSkipped, confusion_counts, confusion_rows, per_class_accuracy
from mldebug_ray.probes.run_probes import probe_run


def oracle_counts(model: nn.Module, batches: list[dict]) -> Counter:
    """The slow, obvious version: one example at a time, Python's max over its scores."""
    counts: Counter = Counter()
    with torch.no_grad():
        for batch in batches:
            for x, y in zip(batch["x"], batch["y"]):
                scores = model(x[None])[0].tolist()
                counts[(int(y), max(range(len(scores)), key=scores.__getitem__))] += 1
    return counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_counts_match_the_example_by_example_oracle(seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    sizes = torch.randint(1, 40, (7,), generator=gen).tolist()
    batches = [{"x": torch.randn(n, 6, generator=gen), "y": torch.randint(4, (n,), generator=gen)} for n in sizes]
    counts = confusion_counts(model, batches, torch.device("cpu"))
    assert counts == oracle_counts(model, batches)
    assert sum(counts.values()) == sum(sizes)


def test_per_class_accuracy_is_correct_over_examples_per_class():
    gen = torch.Generator().manual_seed(5)
    true = torch.randint(5, (500,), generator=gen).tolist()
    pred = [t if torch.rand(1, generator=gen).item() < (0.2 + 0.15 * t) else (t + 1) % 5 for t in true]
    rows = confusion_rows(Counter(zip(true, pred)), "val")
    frame = schema.validate("confusion", pl.DataFrame(rows).with_columns(pl.lit("r").alias("run_id"), pl.lit(7, dtype=pl.Int64).alias("step")))
    acc = per_class_accuracy(frame)
    assert acc["true_label"].to_list() == sorted(set(true))
    for r in acc.iter_rows(named=True):
        members = [p for t, p in zip(true, pred) if t == r["true_label"]]
        assert r["n_examples"] == len(members)
        assert r["n_correct"] == sum(p == r["true_label"] for p in members)
        assert r["acc_frac"] == pytest.approx(r["n_correct"] / len(members))


def test_examples_with_non_finite_scores_have_no_prediction_and_count_as_wrong():
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[0, 0] = 1.0  # a NaN in x[:, 0] makes every score of its row NaN (0 * NaN too)
        model.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
    x = torch.tensor([[0.0, 0.0], [float("nan"), 0.0], [0.5, 1.0]])
    y = torch.tensor([1, 1, 2])
    counts = confusion_counts(model, [{"x": x, "y": y}], torch.device("cpu"))
    assert counts == Counter({(1, 1): 1, (1, -1): 1, (2, 1): 1})
    rows = confusion_rows(counts, "val")
    assert {(r["true_label"], r["pred_label"]) for r in rows} == {(1, 1), (1, None), (2, 1)}
    frame = schema.validate("confusion", pl.DataFrame(rows).with_columns(pl.lit("r").alias("run_id"), pl.lit(1, dtype=pl.Int64).alias("step")))
    acc = {r["true_label"]: r["acc_frac"] for r in per_class_accuracy(frame).iter_rows(named=True)}
    assert acc == {1: 0.5, 2: 0.0}


def test_a_split_without_labels_or_with_text_is_refused_with_the_reason():
    model = nn.Linear(3, 2)
    with pytest.raises(ConfusionSkipped, match="no labels"):
        confusion_counts(model, [{"x": torch.randn(4, 3), "y": None}], torch.device("cpu"))
    with pytest.raises(ConfusionSkipped, match="tokenizer"):
        confusion_counts(model, [{"x": ["a b", "c d"], "y": torch.tensor([0, 1])}], torch.device("cpu"))


# A run whose model answers class 0 unless feature 0 is large: the minority classes are
# mostly wrong, which only per-class accuracy shows.
ENTRY_POINTS = textwrap.dedent(
    """
    import torch
    from torch import nn

    def model_fn(params):
        return nn.Linear(2, 3)

    def batch_fn(params):
        gen = torch.Generator().manual_seed(0)
        return torch.randn(64, 2, generator=gen), torch.randint(3, (64,), generator=gen)

    def data_fn(params):
        n_val = params["data"]["n_val"]

        def val():
            gen = torch.Generator().manual_seed(1)
            for start in range(0, n_val, 32):
                n = min(32, n_val - start)
                x = torch.randn(n, 2, generator=gen)
                yield {"x": x, "y": (x[:, 0] > 1.5).long() * 2}

        def train():
            gen = torch.Generator().manual_seed(2)
            yield {"x": torch.randn(64, 2, generator=gen), "y": torch.zeros(64, dtype=torch.long)}

        return {"train": train, "val": val}

    def data_fn_unlabelled(params):
        return {"val": lambda: iter([{"x": torch.randn(8, 2)}])}
    """
)


def probed_run(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "confusion_entry.py").write_text(ENTRY_POINTS)
    run = tmp_path / "runs" / "r"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": {"n_val": 100}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train_loss": 1.0 / s}) + "\n" for s in (1, 2, 3)))
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))
        model.bias.copy_(torch.tensor([1.5, 0.0, 0.0]))  # class 2 only when x0 > 1.5
    (run / "checkpoints").mkdir()
    save_file(model.state_dict(), str(run / "checkpoints" / "step_3.safetensors"))
    return run


def config(tmp_path: Path, **overrides) -> ProbesConfig:
    base = dict(model_fn="confusion_entry:model_fn", batch_fn="confusion_entry:batch_fn", data_fn="confusion_entry:data_fn",
                code_paths=[str(tmp_path / "code")], model_probes=["outputs"], checkpoint_stats=False)
    return ProbesConfig(**{**base, **overrides})


def test_the_probe_runner_writes_the_newest_checkpoints_confusion_on_the_validation_split(tmp_path):
    run = probed_run(tmp_path)
    ev, _, _ = read_run_dir(run, "r")
    problems: list[str] = []
    table = probe_run(ev, run, config(tmp_path), problems)["confusion"]
    assert problems == []
    assert set(table["split"]) == {"val"} and set(table["step"]) == {3} and set(table["run_id"]) == {"r"}
    assert table["count"].sum() == 100
    # The checkpoint predicts 2 exactly when x0 > 1.5, which is how the labels were made.
    assert table.filter(pl.col("true_label") != pl.col("pred_label")).height == 0
    bounded = probe_run(ev, run, config(tmp_path, data_max_examples=40), [])["confusion"]
    assert bounded["count"].sum() == 40


def test_an_unlabelled_split_gives_no_rows_and_is_no_problem_of_the_run(tmp_path, caplog):
    run = probed_run(tmp_path)
    ev, _, _ = read_run_dir(run, "r")
    problems: list[str] = []
    with caplog.at_level("INFO", logger="mldebug_ray.probes.confusion"):
        table = probe_run(ev, run, config(tmp_path, data_fn="confusion_entry:data_fn_unlabelled"), problems)["confusion"]
    assert table.height == 0
    assert not [p for p in problems if "per-class" in p], problems
    assert "no labels" in caplog.text


def test_a_checkpoint_that_does_not_fit_the_model_is_one_problem_line(tmp_path):
    run = probed_run(tmp_path)
    save_file({"weight": torch.zeros(3, 5), "bias": torch.zeros(3)}, str(run / "checkpoints" / "step_4.safetensors"))
    ev, _, _ = read_run_dir(run, "r")
    problems: list[str] = []
    table = probe_run(ev, run, config(tmp_path), problems)["confusion"]
    assert table.height == 0
    assert [p for p in problems if "per-class accuracy failed" in p and "step_4" in p], problems
