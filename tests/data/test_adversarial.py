"""The robustness probe (FGSM / PGD) on models whose attacked accuracy is known by hand, and the adversarial_fragility detector."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from torch import nn

from mldebug_ray import schema
from mldebug_ray.detectors.adversarial_fragility import AdversarialFragilityConfig, adversarial_fragility
from mldebug_ray.detectors.base import RunEvidence
from mldebug_ray.errors import ConfigError
from mldebug_ray.probes.adversarial import AdversarialConfig, RobustnessSkipped, attack_rows, robustness_rows


class Linear2(nn.Module):
    """Two classes with logits [w.x + b, 0]: the class-1 logit is a constant."""

    def __init__(self, w: torch.Tensor, b: float = 0.0):
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x @ self.w + self.b
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def by_attack(rows: list[dict]) -> dict[str, dict]:
    return {r["attack"]: r for r in rows}


def hand_fgsm_accuracy(w: torch.Tensor, b: float, x: torch.Tensor, y: torch.Tensor, eps_abs: float) -> float:
    """Goodfellow et al.'s linear argument, exactly: FGSM moves the margin (w.x+b for class 0, its
    negative for class 1) by -eps * ||w||_1, so an example stays correct iff margin > eps * ||w||_1."""
    score = x.double() @ w.double() + b
    margin = torch.where(y == 0, score, -score)
    return float((margin > eps_abs * w.double().abs().sum()).double().mean())


def test_fgsm_on_a_linear_model_loses_exactly_the_examples_within_eps_l1_of_the_boundary():
    gen = torch.Generator().manual_seed(0)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    x = torch.randn(400, 4, generator=gen)
    y = torch.randint(2, (400,), generator=gen)  # random labels: about half wrong on clean inputs too
    model = Linear2(w, b=0.1)
    rows = by_attack(attack_rows(model, (x, y), AdversarialConfig(epsilon=0.2, pgd_steps=10)))
    eps_abs = 0.2 * float(x.std())
    assert rows["fgsm"]["epsilon_abs"] == pytest.approx(eps_abs, rel=1e-6)
    assert rows["fgsm"]["clean_acc_frac"] == pytest.approx(hand_fgsm_accuracy(w, 0.1, x, y, 0.0), abs=1e-12)
    assert rows["fgsm"]["adv_acc_frac"] == pytest.approx(hand_fgsm_accuracy(w, 0.1, x, y, eps_abs), abs=1e-12)
    assert rows["fgsm"]["adv_acc_frac"] < rows["fgsm"]["clean_acc_frac"]
    # On a linear model the worst point of the L-inf ball is FGSM's corner; PGD's steps
    # (2.5 * eps in total, all in the gradient's sign) reach it from any random start.
    assert rows["pgd"]["adv_acc_frac"] == rows["fgsm"]["adv_acc_frac"]
    assert rows["pgd"]["attack_steps"] == 10 and rows["fgsm"]["site"] == "input:0"
    assert {r["n_examples"] for r in rows.values()} == {400} and {r["n_classes"] for r in rows.values()} == {2}


def test_the_attack_leaves_parameter_gradients_and_the_batch_untouched():
    x, y = torch.randn(64, 4), torch.randint(2, (64,))
    before = x.clone()
    model = Linear2(torch.ones(4))
    attack_rows(model, (x, y), AdversarialConfig(epsilon=0.1, pgd_steps=3))
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, before)


def test_a_model_that_ignores_its_input_keeps_its_accuracy_and_the_detector_stays_silent():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([2.0, 0.0, 0.0]))

        def forward(self, x):
            return self.bias.expand(x.shape[0], 3) + 0.0 * x.sum(dim=1, keepdim=True)

    x = torch.randn(300, 8)
    y = torch.zeros(300, dtype=torch.long)
    y[:100] = 1  # class 0 two thirds: clean accuracy 2/3
    rows = attack_rows(Constant(), (x, y), AdversarialConfig(epsilon=0.5, pgd_steps=5))
    assert all(r["adv_acc_frac"] == r["clean_acc_frac"] == pytest.approx(2 / 3) for r in rows)
    assert adversarial_fragility(evidence("r", rows), AdversarialFragilityConfig()) == []


def linear_teacher(dim: int, n: int, seed: int) -> tuple[Linear2, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=gen)
    x = torch.randn(n, dim, generator=gen)
    y = (x @ w < 0).long()  # the teacher itself: clean accuracy 1
    return Linear2(w), x, y


def evidence(run_id: str, rows: list[dict], step: int = 100) -> RunEvidence:
    frame = pl.DataFrame(rows).with_columns(pl.lit(run_id).alias("run_id"), pl.lit(step, dtype=pl.Int64).alias("step"))
    return RunEvidence(run_id, robustness=schema.validate("robustness", frame))


def test_a_high_dimensional_linear_model_is_fragile_at_one_255th_and_a_low_dimensional_one_is_not():
    # Goodfellow et al. (2015): FGSM moves a linear score by eps * ||w||_1, which grows with the
    # input dimension while the typical margin grows only with ||w||_2. At CIFAR's 3072 inputs
    # and 1/255 (0.016 std) that takes about half the examples across the boundary.
    cfg = AdversarialConfig()  # epsilon 0.016
    model, x, y = linear_teacher(3072, 256, seed=1)
    rows = by_attack(attack_rows(model, (x, y), cfg))
    expected = hand_fgsm_accuracy(model.w.detach(), 0.0, x, y, rows["pgd"]["epsilon_abs"])
    assert rows["pgd"]["clean_acc_frac"] == 1.0
    # PGD's margin loss reaches the ball's worst corner exactly; FGSM's cross-entropy gradient
    # saturates (exactly 0) for the most confident examples, so it can only do less.
    assert rows["pgd"]["adv_acc_frac"] == pytest.approx(expected, abs=1e-12)
    assert expected <= rows["fgsm"]["adv_acc_frac"] and expected <= 0.5
    found = adversarial_fragility(evidence("wide", list(rows.values())), AdversarialFragilityConfig())
    assert [f.kind for f in found] == ["adversarial_fragility"]
    assert found[0].evidence[0].table == "robustness" and found[0].evidence[0].where["run_id"] == "wide"
    assert found[0].evidence[0].value == pytest.approx(min(r["adv_acc_frac"] for r in rows.values()))

    small, xs, ys = linear_teacher(4, 256, seed=2)
    rows = attack_rows(small, (xs, ys), cfg)
    assert min(r["adv_acc_frac"] for r in rows) > 0.9
    assert adversarial_fragility(evidence("narrow", rows), AdversarialFragilityConfig()) == []


def row(attack="pgd", epsilon=0.016, clean=0.9, adv=0.1, n=256, classes=10) -> dict:
    return {"attack": attack, "epsilon": epsilon, "epsilon_abs": epsilon, "site": "input:0", "attack_steps": 10,
            "clean_acc_frac": clean, "adv_acc_frac": adv, "n_examples": n, "n_classes": classes}


@pytest.mark.parametrize(
    "rows, fires, severity",
    [
        ([row(adv=0.05), row("fgsm", adv=0.3)], True, "high"),  # at chance (0.1) or below: high
        ([row(adv=0.4)], True, "medium"),  # 0.9 -> 0.4: more than half lost
        ([row(adv=0.5)], False, None),  # 0.9 -> 0.5: less than half lost
        ([row(epsilon=0.2, adv=0.0)], False, None),  # a large budget: collapse expected, not judged
        ([row(clean=0.15, adv=0.0)], False, None),  # clean accuracy 0.05 above chance: nothing to lose
        ([row(n=20, adv=0.0)], False, None),  # too few examples
    ],
)
def test_detector_fires_only_on_a_large_drop_at_a_small_budget(rows, fires, severity):
    found = adversarial_fragility(evidence("r", rows), AdversarialFragilityConfig())
    assert bool(found) == fires
    if fires:
        assert found[0].severity == severity and found[0].onset_step == 100


def test_detector_judges_the_newest_checkpoint_and_dates_the_onset_to_the_first_fragile_one():
    frames = [evidence("r", [row(adv=a)], step=s).robustness for s, a in ((100, 0.85), (200, 0.2), (300, 0.3))]
    ev = RunEvidence("r", robustness=pl.concat(frames))
    (found,) = adversarial_fragility(ev, AdversarialFragilityConfig())
    assert found.onset_step == 200 and "step 300" in found.summary
    assert {e.where["step"] for e in found.evidence} == {200, 300}
    recovered = RunEvidence("r", robustness=pl.concat(frames[:2] + [evidence("r", [row(adv=0.8)], step=300).robustness]))
    assert adversarial_fragility(recovered, AdversarialFragilityConfig()) == []


def test_token_inputs_are_perturbed_at_the_first_embedding_output():
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.head = nn.Linear(16, 5)

        def forward(self, tokens, labels=None):  # a dict batch is passed as keyword arguments, labels included
            return self.head(self.emb(tokens).mean(dim=1))

    torch.manual_seed(0)
    model = Bag()
    tokens = torch.randint(50, (128, 6))
    with torch.no_grad():
        y = model(tokens).argmax(dim=1)  # the model's own predictions: clean accuracy 1
    rows = by_attack(attack_rows(model, (tokens, y), AdversarialConfig(epsilon=0.5, pgd_steps=10)))
    assert rows["fgsm"]["site"] == "embedding:emb"
    assert rows["fgsm"]["epsilon_abs"] == pytest.approx(0.5 * float(model.emb.weight.detach()[tokens].std()), rel=1e-5)
    assert rows["pgd"]["clean_acc_frac"] == 1.0
    assert rows["pgd"]["adv_acc_frac"] < 1.0 and rows["pgd"]["adv_acc_frac"] <= rows["fgsm"]["adv_acc_frac"] + 0.05
    # A dict batch (Hugging Face style) with integer token ids takes the same path.
    hf = attack_rows(model, {"tokens": tokens, "labels": y}, AdversarialConfig(epsilon=0.5, pgd_steps=10))
    assert by_attack(hf)["fgsm"]["adv_acc_frac"] == rows["fgsm"]["adv_acc_frac"]


def test_batches_the_attack_cannot_use_are_skipped_with_the_reason():
    notes: list[str] = []
    assert robustness_rows(nn.Linear(4, 1), (torch.randn(8, 4), torch.randn(8, 1)), AdversarialConfig(), notes.append) == []
    assert "no integer targets" in notes[-1]
    # A model that breaks under the attack costs only its own rows.
    assert robustness_rows(nn.Linear(5, 3), (torch.randn(8, 4), torch.randint(3, (8,))), AdversarialConfig(), notes.append) == []
    with pytest.raises(RobustnessSkipped, match="no nn.Embedding"):
        attack_rows(nn.Sequential(), (torch.randint(5, (8, 3)), torch.randint(2, (8,))), AdversarialConfig())
    with pytest.raises(RobustnessSkipped, match="no spread"):
        attack_rows(nn.Linear(4, 3), (torch.ones(8, 4), torch.randint(3, (8,))), AdversarialConfig())


@pytest.mark.parametrize("key, value", [("epsilon", 0.0), ("epsilon", float("nan")), ("pgd_steps", 0)])
def test_impossible_attack_settings_are_config_errors_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"probes.adversarial.{key}"):
        AdversarialConfig(**{key: value})


def test_the_probe_runner_fills_the_robustness_table_for_every_probed_checkpoint(tmp_path):
    import json

    import yaml
    from safetensors.torch import save_file

    from mldebug_ray.config import ProbesConfig
    from mldebug_ray.gather import read_run_dir
    from mldebug_ray.probes.run_probes import probe_run

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "robust_entry.py").write_text(
        "import torch\n"
        "def model_fn(params):\n"
        "    return torch.nn.Linear(4, 3)\n"
        "def batch_fn(params):\n"
        "    gen = torch.Generator().manual_seed(0)\n"
        "    return torch.randn(128, 4, generator=gen), torch.randint(3, (128,), generator=gen)\n"
    )
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 0}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train_loss": 1.0}) + "\n" for s in (10, 20)))
    for step in (10, 20):
        save_file(nn.Linear(4, 3).state_dict(), str(run / "checkpoints" / f"step_{step}.safetensors"))
    ev, _, _ = read_run_dir(run, "run")
    probes = ProbesConfig(model_fn="robust_entry:model_fn", batch_fn="robust_entry:batch_fn", code_paths=[str(tmp_path / "code")],
                          model_probes=["robustness"], checkpoint_stats=False, adversarial=AdversarialConfig(epsilon=0.1, pgd_steps=4))
    problems: list[str] = []
    table = probe_run(ev, run, probes, problems)["robustness"]
    assert problems == []
    assert sorted(table.select("step", "attack").rows()) == [(10, "fgsm"), (10, "pgd"), (20, "fgsm"), (20, "pgd")]
    assert set(table["run_id"]) == {"run"} and set(table["epsilon"]) == {0.1} and set(table["n_examples"]) == {128}
    assert (table["adv_acc_frac"] <= table["clean_acc_frac"]).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_the_attack_on_the_gpu_matches_the_cpu():
    model, x, y = linear_teacher(3072, 256, seed=1)
    cpu = by_attack(attack_rows(model, (x, y), AdversarialConfig()))
    gpu = by_attack(attack_rows(model.cuda(), (x.cuda(), y.cuda()), AdversarialConfig()))
    for attack in ("fgsm", "pgd"):
        assert gpu[attack]["clean_acc_frac"] == cpu[attack]["clean_acc_frac"]
        # Float sums in another order may flip an example sitting exactly on the ball's edge.
        assert abs(gpu[attack]["adv_acc_frac"] - cpu[attack]["adv_acc_frac"]) <= 2 / 256
