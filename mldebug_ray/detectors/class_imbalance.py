"""Class imbalance: a split's label distribution is strongly skewed, or a split lacks classes the others have."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import SEVERITY_RANK, EvidenceRef, Finding


@dataclass
class ClassImbalanceConfig:
    """Thresholds of the `class_imbalance` detector (keys `detectors.class_imbalance.*`)."""

    medium_ratio: float = 10.0
    """Largest / smallest class count from which a split is imbalanced: SageMaker Debugger's
    ClassImbalance rule threshold (FIELD-NOTES). At 10:1 a model that ignores the rare class still
    scores 91% accuracy."""
    high_ratio: float = 100.0
    """From this ratio the finding is `high`: at 100:1 a majority-class model scores 99%, and the rare
    class has too few examples for its accuracy to be measured within a few points in most splits."""
    min_labelled: int = 20
    """Splits with fewer labelled examples are not judged (a ratio of counts of 1 and 10 says little)."""

    def __post_init__(self) -> None:
        if self.medium_ratio <= 1.0:
            raise ConfigError(f"detectors.class_imbalance.medium_ratio must be > 1, got {self.medium_ratio}")
        if self.high_ratio < self.medium_ratio:
            raise ConfigError(f"detectors.class_imbalance.high_ratio must be >= medium_ratio, got {self.high_ratio}")
        if self.min_labelled < 1:
            raise ConfigError(f"detectors.class_imbalance.min_labelled must be >= 1, got {self.min_labelled}")


def _label_ref(rid: str, split: str, label: int, count: int, frac: float, what: str) -> EvidenceRef:
    return EvidenceRef("data_labels", {"run_id": rid, "split": split, "label": int(label)}, count, f"{split}: class {label} {what}: {count} examples ({fmt(100 * frac)}%)")


@detector("class_imbalance")
def class_imbalance(ev: RunEvidence, cfg: ClassImbalanceConfig) -> list[Finding]:
    """The label distribution is strongly skewed (SPEC §5 `class_imbalance`).

    Evidence: the data probe's `data_splits` (imbalance_ratio = largest / smallest count over the
    classes present) and `data_labels` (count per split and class, 0 where a class another split
    has is missing). Fires when a split's ratio reaches `medium_ratio` (10:1, SageMaker's
    ClassImbalance default), `high` from `high_ratio` (100:1); a class that is missing from a split
    while another split has it is reported too (`medium`): a class absent from train cannot be
    learnt, one absent from validation is never measured. When the per-class `confusion` of a
    checkpoint is available (probes/confusion.py), the rarest class's accuracy is cited.
    """
    labels = ev.data_labels
    splits = ev.data_splits
    if labels.height == 0 or splits.height == 0:
        return []
    rid = ev.run_id
    judged = splits.filter((pl.col("status") == "ok") & (pl.col("n_labelled") >= cfg.min_labelled))
    severity = None
    evidence: list[EvidenceRef] = []
    parts: list[str] = []
    worst: dict | None = None
    for row in judged.sort("imbalance_ratio", descending=True, nulls_last=True).iter_rows(named=True):
        ratio = row["imbalance_ratio"]
        if ratio is None or ratio < cfg.medium_ratio:
            continue
        level = "high" if ratio >= cfg.high_ratio else "medium"
        severity = level if severity is None or SEVERITY_RANK[level] < SEVERITY_RANK[severity] else severity
        present = labels.filter((pl.col("split") == row["split"]) & (pl.col("count") > 0)).sort("count", descending=True)
        big, small = present.row(0, named=True), present.row(present.height - 1, named=True)
        worst = worst or {**row, "small": small["label"]}
        parts.append(f"{row['split']} {fmt(ratio)}:1 (class {big['label']}: {big['count']}, class {small['label']}: {small['count']})")
        evidence.append(EvidenceRef("data_splits", {"run_id": rid, "split": row["split"]}, ratio,
                                    f"{row['split']}: largest/smallest class {fmt(ratio)}:1 over {row['n_classes']} classes"))
        evidence.append(_label_ref(rid, row["split"], big["label"], big["count"], big["frac"], "largest"))
        evidence.append(_label_ref(rid, row["split"], small["label"], small["count"], small["frac"], "smallest"))
    judged_names = set(judged["split"].to_list())
    missing = labels.filter((pl.col("count") == 0) & pl.col("split").is_in(list(judged_names))).sort("split", "label")
    if missing.height:
        severity = severity or "medium"
        by_split = missing.group_by("split", maintain_order=True).agg(pl.col("label"))
        for r in by_split.iter_rows(named=True):
            parts.append(f"{r['split']} has no example of class(es) {', '.join(map(str, r['label'][:10]))}")
        for r in missing.head(3).iter_rows(named=True):
            evidence.append(EvidenceRef("data_labels", {"run_id": rid, "split": r["split"], "label": int(r["label"])}, 0,
                                        f"{r['split']}: class {r['label']} missing (another split has it)"))
    if severity is None:
        return []
    evidence.extend(_rare_class_accuracy(ev, worst))
    return [
        Finding(
            kind="class_imbalance",
            severity=severity,  # type: ignore[arg-type]
            confidence=0.9,
            summary="skewed labels: " + "; ".join(parts),
            evidence=tuple(evidence),
            detector="class_imbalance",
            run_id=rid,
            finding_id=finding_id("class_imbalance", rid),
            fix=(
                "Report per-class recall/F1 and balanced accuracy instead of accuracy; reweight the loss by inverse class "
                "frequency or resample (oversample rare, undersample frequent classes), or use a focal loss; split "
                "stratified by label so every split holds every class."
            ),
            expected_impact="The rare classes' recall rises and balanced accuracy becomes the number that moves; overall accuracy may dip slightly.",
            verify_by="Rerun with the reweighted loss: per-class accuracy (confusion table) of the rarest class rises, and every split's data_labels row has count > 0.",
        )
    ]


def _rare_class_accuracy(ev: RunEvidence, worst: dict | None) -> list[EvidenceRef]:
    """The accuracy of the rarest class of the most skewed split, from the `confusion` table when present."""
    confusion = getattr(ev, "confusion", None)
    if worst is None or confusion is None or confusion.height == 0:
        return []
    label = worst["small"]
    rows = confusion.filter(pl.col("true_label") == label)
    if rows.height == 0:
        return []
    step = rows["step"].max()
    rows = rows.filter(pl.col("step") == step) if step is not None else rows
    split = rows["split"][0]
    total = int(rows["count"].sum())
    correct = int(rows.filter(pl.col("pred_label") == label)["count"].sum())
    acc = correct / total if total else 0.0
    where = {"run_id": ev.run_id, "split": split, "true_label": int(label), "pred_label": int(label)}
    if step is not None:
        where["step"] = int(step)
    return [EvidenceRef("confusion", where, correct, f"rarest class {label}: {correct} of {total} {split} examples right ({fmt(100 * acc)}% accuracy)")]
