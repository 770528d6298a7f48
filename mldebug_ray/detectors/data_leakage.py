"""Data leakage: held-out examples (validation, test, production) also occur in the training split, exactly or nearly."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mldebug_ray.detectors.base import RunEvidence, detector
from mldebug_ray.detectors.series import finding_id, fmt
from mldebug_ray.errors import ConfigError
from mldebug_ray.findings import EvidenceRef, Finding


@dataclass
class DataLeakageConfig:
    """Thresholds of the `data_leakage` detector (keys `detectors.data_leakage.*`)."""

    min_examples: int = 1
    """Held-out examples with a train duplicate (exact or near) that make a finding: one is already a
    fault of the split (a hash collision of 64-bit content hashes has probability about n^2 / 2^65)."""
    high_frac: float = 0.01
    """Share of a held-out split found in train from which the finding is `high`: a memorised example
    scores right, so a leaked share f can inflate accuracy by up to f, and a 1-point gain is the size
    of the differences sweeps are usually read for. Below it the finding is `medium`."""
    eval_on_train_frac: float = 1.0
    """Share of a held-out split exactly in train (with as many examples as train, or the same
    fingerprint) at which the split IS the training split: kind `eval_on_train`."""

    def __post_init__(self) -> None:
        if self.min_examples < 1:
            raise ConfigError(f"detectors.data_leakage.min_examples must be >= 1, got {self.min_examples}")
        if not 0.0 < self.high_frac <= 1.0:
            raise ConfigError(f"detectors.data_leakage.high_frac must be in (0, 1], got {self.high_frac}")
        if not 0.5 <= self.eval_on_train_frac <= 1.0:
            raise ConfigError(f"detectors.data_leakage.eval_on_train_frac must be in [0.5, 1], got {self.eval_on_train_frac}")


def _overlap_ref(row: dict, text: str) -> EvidenceRef:
    where = {"run_id": row["run_id"], "split_a": row["split_a"], "split_b": row["split_b"], "kind": row["kind"]}
    return EvidenceRef("data_overlap", where, row["n_examples_b"], text)


def _split_ref(row: dict, text: str) -> EvidenceRef:
    return EvidenceRef("data_splits", {"run_id": row["run_id"], "split": row["split"]}, row["n_examples"], text)


def _ids(row: dict, n: int = 5) -> str:
    pairs = list(zip(row["example_ids_b"] or [], row["example_ids_a"] or []))[:n]
    return ", ".join(f"{b} ~ {a}" for b, a in pairs)


@detector("data_leakage")
def data_leakage(ev: RunEvidence, cfg: DataLeakageConfig) -> list[Finding]:
    """Held-out examples that are duplicates of training examples (SPEC §5 `data_leakage`).

    Evidence: the data probe's `data_overlap` rows (probes/data.py): per held-out split, the
    examples whose normalised content hashes equal a train example's (exact), and those whose
    estimated similarity to one reaches the probe's threshold (near: MinHash Jaccard >= 0.8 for
    text and tokens, SimHash cosine >= 0.999 for numeric tensors; see DataProbeConfig), with
    their ids. Fires from `min_examples` such examples; `high` from `high_frac` of the split.
    When the held-out split is the training split itself (same fingerprint: the same examples and
    labels in any order; or every example found in train and as many of them), the finding is
    kind `eval_on_train` instead: no held-out evaluation takes place at all.
    """
    overlap = ev.data_overlap
    if overlap.height == 0:
        return []
    splits = {r["split"]: r for r in ev.data_splits.filter(pl.col("status") == "ok").iter_rows(named=True)}
    rid = ev.run_id
    out = []
    for split_b in overlap["split_b"].unique(maintain_order=True).to_list():
        rows = {r["kind"]: r for r in overlap.filter(pl.col("split_b") == split_b).iter_rows(named=True)}
        exact, near = rows.get("exact"), rows.get("near")
        train_row, held_row = splits.get((exact or near)["split_a"]), splits.get(split_b)
        if exact and train_row and held_row and _is_train(exact, train_row, held_row, cfg):
            out.append(_eval_on_train(rid, exact, train_row, held_row))
            continue
        found = [r for r in (exact, near) if r and r["n_examples_b"] >= cfg.min_examples]
        if not found:
            continue
        n_b = found[0]["n_b"] or 0
        n_exact = exact["n_examples_b"] if exact else 0
        n_near = near["n_examples_b"] if near else 0
        frac = (n_exact + n_near) / n_b if n_b else 0.0
        severity = "high" if frac >= cfg.high_frac else "medium"
        parts = []
        if exact and n_exact:
            parts.append(f"{n_exact} exact duplicate(s) of train examples (e.g. {_ids(exact, 3)})")
        if near and n_near:
            parts.append(
                f"{n_near} near duplicate(s) ({near['method']}, similarity >= {fmt(near['threshold'])}; e.g. {_ids(near, 3)})"
            )
        evidence = [
            _overlap_ref(r, f"{r['n_examples_b']} of {r['n_b']} {split_b} examples have {'an exact' if r['kind'] == 'exact' else 'a near'} duplicate in {r['split_a']}: {_ids(r)}")
            for r in found
        ]
        if held_row:
            evidence.append(_split_ref(held_row, f"{split_b}: {held_row['n_examples']} examples"))
        train_name = found[0]["split_a"]
        out.append(
            Finding(
                kind="data_leakage",
                severity=severity,  # type: ignore[arg-type]
                confidence=0.95 if n_exact else 0.8,
                summary=(
                    f"{fmt(100 * frac)}% of the {split_b} split ({n_exact + n_near} of {n_b} examples) also occurs in "
                    f"{train_name}: " + "; ".join(parts)
                ),
                evidence=tuple(evidence),
                detector="data_leakage",
                run_id=rid,
                finding_id=finding_id("data_leakage", rid, split_b),
                fix=(
                    f"Deduplicate {split_b} against {train_name} (drop the listed examples, exact and near), and split by a "
                    "grouping key (user, document, patient, source) rather than by row so copies land in the same split."
                ),
                expected_impact=(
                    f"{split_b} scores measure unseen data; expect them to drop by up to {fmt(100 * frac)} points where the "
                    "model had memorised the leaked examples, and model selection on them to be unbiased."
                ),
                verify_by=f"Rerun the data probe: data_overlap for {train_name} vs {split_b} has n_examples_b = 0 for exact and near.",
            )
        )
    return out


def _is_train(exact: dict, train_row: dict, held_row: dict, cfg: DataLeakageConfig) -> bool:
    if held_row["fingerprint"] and held_row["fingerprint"] == train_row["fingerprint"]:
        return True
    n_b = exact["n_b"] or 0
    return bool(n_b) and n_b == train_row["n_examples"] and exact["n_examples_b"] >= cfg.eval_on_train_frac * n_b


def _eval_on_train(rid: str, exact: dict, train_row: dict, held_row: dict) -> Finding:
    split_a, split_b = train_row["split"], held_row["split"]
    same = held_row["fingerprint"] == train_row["fingerprint"]
    how = (
        f"the same fingerprint {held_row['fingerprint']} (the same {held_row['n_examples']} examples and labels)"
        if same
        else f"all {held_row['n_examples']} of its examples found in {split_a}, which has as many"
    )
    return Finding(
        kind="eval_on_train",
        severity="high",
        confidence=0.97 if same else 0.9,
        summary=f"the {split_b} split is the {split_a} split: {how}; its scores are training scores",
        evidence=(
            _split_ref(held_row, f"{split_b}: fingerprint {held_row['fingerprint']}, {held_row['n_examples']} examples"),
            _split_ref(train_row, f"{split_a}: fingerprint {train_row['fingerprint']}, {train_row['n_examples']} examples"),
            _overlap_ref(exact, f"{exact['n_examples_b']} of {exact['n_b']} {split_b} examples are exact copies of {split_a} examples"),
        ),
        detector="data_leakage",
        run_id=rid,
        finding_id=finding_id("data_leakage", rid, split_b, "eval_on_train"),
        fix=f"Point data_fn's (and the training script's) {split_b} split at the held-out data, not at the {split_a} files or loader.",
        expected_impact=f"{split_b} metrics measure held-out data and show the generalisation gap.",
        verify_by=f"Rerun the data probe: {split_b} and {split_a} fingerprints differ and data_overlap exact n_examples_b is near 0.",
    )
