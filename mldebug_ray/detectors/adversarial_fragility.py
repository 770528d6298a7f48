"""Adversarial fragility: accuracy on the probe batch collapses under a small FGSM / PGD perturbation."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding


@dataclass
class AdversarialFragilityConfig:
    """Thresholds of the `adversarial_fragility` detector (keys `detectors.adversarial_fragility.*`)."""

    min_relative_drop: float = 0.5
    """Fires when the attacked accuracy is at most (1 - this) x the clean accuracy: half of what
    the model gets right is lost to a change no person would see."""
    max_epsilon: float = 0.05
    """Only rows whose budget (relative to the input's std) is at most this are judged: 0.05 is
    about 3/255 on [0, 1] images. At 8/255 (about 0.125 std) even an adversarially trained
    CIFAR-10 model loses half its accuracy (87% -> 46% under PGD, Madry et al. 2018), so a
    large drop there says nothing unusual about the model."""
    min_clean_above_chance: float = 0.1
    """Clean accuracy must exceed chance (1 / classes) by this much: a model at chance has
    nothing to lose, and its drop is noise."""
    min_examples: int = 50
    """Fewest labelled examples in the probe batch; with 50 a 50% relative drop from an accuracy
    of 0.6 is more than four standard errors."""
    confident_examples: int = 200
    """From this many examples on, the confidence is 0.85, below it 0.7."""

    def __post_init__(self) -> None:
        if not 0.0 < self.min_relative_drop <= 1.0:
            raise ConfigError(f"detectors.adversarial_fragility.min_relative_drop must be in (0, 1], got {self.min_relative_drop}")
        if not self.max_epsilon > 0.0:
            raise ConfigError(f"detectors.adversarial_fragility.max_epsilon must be > 0, got {self.max_epsilon}")
        if not 0.0 <= self.min_clean_above_chance < 1.0:
            raise ConfigError(
                f"detectors.adversarial_fragility.min_clean_above_chance must be in [0, 1), got {self.min_clean_above_chance}"
            )
        if self.min_examples < 1 or self.confident_examples < 1:
            raise ConfigError("detectors.adversarial_fragility.min_examples and confident_examples must be >= 1")


def fragile_rows(robustness: pl.DataFrame, cfg: AdversarialFragilityConfig) -> pl.DataFrame:
    """The `robustness` rows that show fragility under `cfg`, worst (lowest attacked/clean ratio) first."""
    chance = 1.0 / pl.col("n_classes").cast(pl.Float64)
    return (
        robustness.filter(
            pl.col("step").is_not_null()
            & pl.col("clean_acc_frac").is_finite()
            & pl.col("adv_acc_frac").is_finite()
            & (pl.col("epsilon") <= cfg.max_epsilon)
            & (pl.col("n_examples") >= cfg.min_examples)
            & (pl.col("n_classes").is_null() | (pl.col("clean_acc_frac") >= chance + cfg.min_clean_above_chance))
            & (pl.col("clean_acc_frac") > 0)
            & (pl.col("adv_acc_frac") <= (1.0 - cfg.min_relative_drop) * pl.col("clean_acc_frac"))
        )
        .with_columns((pl.col("adv_acc_frac") / pl.col("clean_acc_frac")).alias("_kept"))
        .sort(["_kept", "epsilon"])
    )


@detector("adversarial_fragility")
def adversarial_fragility(ev: RunEvidence, cfg: AdversarialFragilityConfig) -> list[Finding]:
    """Accuracy collapses under a small input perturbation (SPEC §5 `adversarial_fragility`).

    Evidence: the `robustness` probe table (probes/adversarial.py): accuracy on the probe
    batch clean and under FGSM (Goodfellow et al., ICLR 2015) and PGD (Madry et al., ICLR
    2018) within an L-infinity ball of `epsilon` x the input's std (default 0.016, 1/255 on
    images). Judged at the newest probed checkpoint, the model the run ends with.

    Fires when, at a budget of at most `max_epsilon` (0.05 std, about 3/255 on images), the
    attacked accuracy is at most half the clean accuracy (`min_relative_drop` 0.5), the
    clean accuracy is at least 0.1 above chance and the batch has at least 50 labelled
    examples. Why half at such budgets: Goodfellow et al. show a linear model's logits move
    by epsilon x ||w||_1 under FGSM, so a model whose decisions hinge on many tiny-margin
    directions loses most of its accuracy at budgets where a robust model loses a few points
    (Madry et al.'s adversarially trained CIFAR-10 model keeps 46 of 87 points even at 8/255);
    losing half the correct answers to an imperceptible change is a brittle model, not
    measurement noise. Severity: `high` when the attacked accuracy is at or below chance (the
    attack erases all that was learned), else `medium`. Onset: the first probed step at
    which the rows already showed it.
    """
    rob = ev.robustness
    if rob.height == 0:
        return []
    fragile = fragile_rows(rob, cfg)
    if fragile.height == 0:
        return []
    newest = rob["step"].drop_nulls().max()
    now = fragile.filter(pl.col("step") == newest)
    if now.height == 0:
        return []
    rid = ev.run_id
    worst = now.row(0, named=True)
    onset = int(fragile["step"].min())
    chance = 1.0 / worst["n_classes"] if worst["n_classes"] else None
    collapsed = chance is not None and worst["adv_acc_frac"] <= chance
    severity = "high" if collapsed else "medium"
    confidence = 0.85 if worst["n_examples"] >= cfg.confident_examples else 0.7

    def ref(r: dict) -> EvidenceRef:
        return EvidenceRef(
            "robustness",
            {"run_id": rid, "step": int(r["step"]), "attack": r["attack"]},
            r["adv_acc_frac"],
            f"{r['attack'].upper()} at epsilon {fmt(r['epsilon'])} x input std ({r['site'] or 'input'}): accuracy "
            f"{fmt(r['clean_acc_frac'])} -> {fmt(r['adv_acc_frac'])} on {r['n_examples']} examples at step {int(r['step'])}",
        )

    evidence = [ref(worst)]
    others = rob.filter((pl.col("step") == newest) & (pl.col("attack") != worst["attack"]))
    evidence += [ref(r) for r in others.rows(named=True)]
    if onset != newest:
        first = fragile.filter(pl.col("step") == onset).row(0, named=True)
        evidence.append(ref(first))
    drop = 1.0 - worst["_kept"]
    summary = (
        f"accuracy collapses under a small perturbation: {worst['attack'].upper()} within {fmt(worst['epsilon'])} x the "
        f"input's std takes accuracy on the probe batch from {fmt(worst['clean_acc_frac'])} to {fmt(worst['adv_acc_frac'])} "
        f"({fmt(100 * drop)}% of it lost{', down to chance' if collapsed else ''}) at step {int(newest)}"
    )
    return [
        Finding(
            kind="adversarial_fragility",
            severity=severity,
            confidence=confidence,
            summary=summary,
            evidence=tuple(evidence),
            detector="adversarial_fragility",
            run_id=rid,
            onset_step=onset,
            fix=(
                "train with adversarial examples (PGD at this epsilon, Madry et al. 2018) or at least noise/augmentation of "
                "that size; check the input normalisation (features with a tiny spread make small absolute changes large "
                "to the model); add weight decay or label smoothing, which shrink the large-norm directions FGSM exploits"
            ),
            expected_impact=(
                f"accuracy under the same {worst['attack'].upper()} attack stays above half the clean accuracy; adversarial "
                "training may cost a few points of clean accuracy"
            ),
            verify_by=(
                "retrain, then rerun with `robustness` in probes.model_probes at the same probes.adversarial.epsilon: "
                "adv_acc_frac / clean_acc_frac in the `robustness` table above 0.5 at the newest checkpoint"
            ),
            finding_id=finding_id("adversarial_fragility", rid, int(newest)),
        )
    ]
