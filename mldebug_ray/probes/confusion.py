"""Per-class accuracy of a checkpoint on the run's validation split (the `confusion` table).

When `probes.model_fn` and `probes.data_fn` are both set, the newest probed checkpoint
(the model the run ends with) is run in eval mode over the validation split of
`data_fn(params)` (the first of `val`, `validation`, `valid`, `dev`, `test` it has),
streamed batch by batch through probes/data.py's `iter_split`, at most
`probes.data_max_examples` examples (0: all). Each batch's `x` goes to the model as its
one argument; the prediction is the argmax of the scores over the last dimension, none
(a null `pred_label`) where a score is NaN/Inf (argmax over NaN would name a class the
model did not choose). Rows: one per (true label, predicted label) pair seen, with its
count; `per_class_accuracy` turns them into one row per class.

Why: a skewed label distribution (`class_imbalance`) matters when the model neglects the
rare classes; the overall accuracy hides that (a 50:1 split gives 98% accuracy to a model
that always answers the majority class), per-class accuracy shows it.

Skipped (logged, not a problem of the run: there is nothing to score): a split without
labels, text inputs (`x` a list of strings: the model needs the user's tokenizer, which
`data_fn` does not give), outputs that are not one score vector per example. A failure
(the user's code, a checkpoint that does not fit the model) is one line in the run's
problems.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

import polars as pl

from mldebug_ray import schema
from mldebug_ray.errors import MldebugError

log = logging.getLogger(__name__)

VALIDATION_SPLITS = ("val", "validation", "valid", "dev", "test")
NO_PREDICTION = -1  # in the counts; a null pred_label in the table


class ConfusionSkipped(Exception):
    """The split or model does not allow per-class accuracy; the message says why."""


def validation_split(splits: Mapping[str, Any]) -> str | None:
    """The name of the split evaluated: the first of VALIDATION_SPLITS that `splits` has."""
    return next((name for name in VALIDATION_SPLITS if name in splits), None)


def confusion_counts(model: Any, batches: Iterable[Mapping[str, Any]], device: Any) -> Counter:
    """Counter of (true label, predicted label) over `batches` (mappings with `x` and `y`, as
    probes/data.py's `iter_split` yields them)."""
    import torch

    from mldebug_ray.probes.model_loop import logits_of, to_device

    counts: Counter = Counter()
    model.eval()
    with torch.no_grad():
        for batch in batches:
            x, y = batch.get("x"), batch.get("y")
            if y is None:
                raise ConfusionSkipped("the split has no labels ('y')")
            if not isinstance(x, torch.Tensor):
                raise ConfusionSkipped("the split's inputs are not a tensor (text needs the model's tokenizer)")
            y = torch.as_tensor(y).reshape(-1).long()
            logits = logits_of(model(to_device(x, device)))
            if logits is None or logits.dim() != 2 or logits.shape[0] != y.shape[0]:
                raise ConfusionSkipped("the model's output is not one score vector per example")
            scores = logits.float()
            predicted = torch.where(torch.isfinite(scores).all(dim=1), scores.argmax(dim=1), NO_PREDICTION).cpu()
            counts.update(zip(y.tolist(), predicted.tolist()))
    return counts


def confusion_rows(counts: Counter, split: str) -> list[dict[str, Any]]:
    """`confusion` rows (without run_id/step), sorted by true then predicted label."""
    return [
        {"split": split, "true_label": t, "pred_label": None if p == NO_PREDICTION else p, "count": n}
        for (t, p), n in sorted(counts.items())
    ]


def per_class_accuracy(confusion: pl.DataFrame) -> pl.DataFrame:
    """One row per (run_id, step, split, true_label): n_examples, n_correct and acc_frac (= n_correct / n_examples).

    The per-class accuracy `class_imbalance` can cite: the rows of `confusion` with
    `true_label` = c hold every example of class c, the one with `pred_label` = c too the
    correct ones.
    """
    keys = ["run_id", "step", "split", "true_label"]
    return (
        confusion.group_by(keys)
        .agg(
            pl.col("count").sum().alias("n_examples"),
            pl.col("count").filter(pl.col("pred_label") == pl.col("true_label")).sum().alias("n_correct"),
        )
        .with_columns((pl.col("n_correct") / pl.col("n_examples")).alias("acc_frac"))
        .sort(keys, nulls_last=True)
    )


def confusion_table(ev: Any, run_dir: Path, row: Mapping[str, Any], device: Any, probes: Any, problems: list[str]) -> pl.DataFrame:
    """The `confusion` rows of checkpoint `row` on the run's validation split; empty when there is nothing
    to score (logged) or it fails (a line in `problems`)."""
    from mldebug_ray.probes.data import iter_split, load_splits
    from mldebug_ray.probes.model_loop import EntryPoints, build_model, import_entry_point, run_params
    from mldebug_ray.probes.weights import load_state_dict

    try:
        model_fn = import_entry_point(probes.model_fn, probes.code_paths, run_dir)
        params = run_params(ev.params)
        splits = load_splits(probes, params, run_dir)
        split = validation_split(splits)
        if split is None:
            raise ConfusionSkipped(f"data_fn gave no validation split (one of {', '.join(VALIDATION_SPLITS)}), only {sorted(splits)}")
        state = load_state_dict(run_dir, row["path"], row["format"])
        # Only model_fn is needed to rebuild the model; batch_fn plays no part here.
        model = build_model(EntryPoints(model_fn=model_fn, batch_fn=None), params, state, device)
        del state
        counts = confusion_counts(model, iter_split(splits[split], split, probes.data_max_examples), device)
    except ConfusionSkipped as exc:  # nothing to score (no labels, text): not a fault of the run
        log.info("%s: no per-class accuracy: %s", row["path"], exc)
        return schema.empty("confusion")
    except Exception as exc:  # the user's code or data, a mismatched checkpoint: this table only
        why = str(exc) if isinstance(exc, MldebugError) else f"{type(exc).__name__}: {exc}"
        problems.append(f"{row['path']}: per-class accuracy failed: {' '.join(why.split())[:300]}")
        log.debug("per-class accuracy failed on %s", row["path"], exc_info=True)
        return schema.empty("confusion")
    rows = confusion_rows(counts, split)
    if not rows:
        return schema.empty("confusion")
    frame = pl.DataFrame(rows, schema={k: schema.schema_of("confusion")[k] for k in rows[0]})
    frame = frame.with_columns(pl.lit(ev.run_id).alias("run_id"), pl.lit(row["step"], dtype=pl.Int64).alias("step"))
    return schema.validate("confusion", frame)
