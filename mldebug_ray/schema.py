"""Every evidence table's schema, declared once; writers validate against it (SPEC §4)."""

from __future__ import annotations

import polars as pl

from mldebug_ray.errors import SchemaError

EVIDENCE_REF = pl.Struct(
    {
        "table": pl.String,
        # The key columns that select the cited rows, as a JSON object (keys differ per table).
        "where": pl.String,
        "value": pl.Float64,
        "text": pl.String,
    }
)

# Column order is the order written. Columns marked optional may be absent from a
# writer's frame and are then filled with nulls; every other column is required.
TABLES: dict[str, dict[str, pl.DataType]] = {
    "runs": {
        "run_id": pl.String,
        "path": pl.String,
        "source_format": pl.String,  # '+'-joined reader names, e.g. "tensorboard+hydra"
        "status": pl.String,  # ok / partial / unreadable
        "reason": pl.String,
        "n_steps": pl.Int64,
        "last_step": pl.Int64,
        "n_metrics": pl.Int64,
        "n_checkpoints": pl.Int64,
        "read_time_s": pl.Float64,
        # Hash of the run's files (names, sizes, mtimes) and the config that shapes its
        # evidence; a rerun on the same out_dir skips runs whose fingerprint is unchanged.
        "fingerprint": pl.String,
    },
    "params": {
        "run_id": pl.String,
        "key": pl.String,
        "value": pl.String,
        "value_num": pl.Float64,
        "source": pl.String,
    },
    "metrics": {
        "run_id": pl.String,
        "step": pl.Int64,
        "key": pl.String,
        "value": pl.Float64,
        "wall_time_s": pl.Float64,
        "split": pl.String,
        "source": pl.String,
    },
    "events": {
        "run_id": pl.String,
        "step": pl.Int64,
        "kind": pl.String,
        "text": pl.String,
        "file": pl.String,
        "line": pl.Int64,
    },
    "checkpoints": {
        "run_id": pl.String,
        "step": pl.Int64,
        "path": pl.String,
        "format": pl.String,
        "n_params": pl.Int64,
        "bytes": pl.Int64,
        "status": pl.String,  # ok / unreadable
        "reason": pl.String,
    },
    "layers": {
        "run_id": pl.String,
        "step": pl.Int64,
        "layer": pl.String,
        "module_type": pl.String,
        "n_params": pl.Int64,
        "dtype": pl.String,
        "norm_l2": pl.Float64,
        "mean": pl.Float64,
        "std": pl.Float64,
        "max_abs": pl.Float64,
        "zero_frac": pl.Float64,
        "nonfinite_frac": pl.Float64,
        # Shares of the tensor that a cast to fp16 / bf16 turns into Inf (overflow) or 0
        # (underflow), and ||w_t - w_s|| / ||w_s|| against the previous scanned checkpoint
        # at step update_from_step (probes/weights.py).
        "fp16_overflow_frac": pl.Float64,
        "fp16_underflow_frac": pl.Float64,
        "bf16_overflow_frac": pl.Float64,
        "bf16_underflow_frac": pl.Float64,
        "update_ratio": pl.Float64,
        "update_from_step": pl.Int64,
    },
    "gradients": {
        "run_id": pl.String,
        "step": pl.Int64,
        "layer": pl.String,
        "grad_norm_l2": pl.Float64,
        "grad_max_abs": pl.Float64,
        "zero_frac": pl.Float64,
        "nonfinite_frac": pl.Float64,
        "update_ratio": pl.Float64,
    },
    "activations": {
        "run_id": pl.String,
        "step": pl.Int64,
        "layer": pl.String,
        "dead_frac": pl.Float64,
        "saturated_frac": pl.Float64,
        "mean": pl.Float64,
        "std": pl.Float64,
    },
    "memory": {
        "run_id": pl.String,
        "step": pl.Int64,
        "phase": pl.String,
        "device": pl.String,
        "peak_allocated_bytes": pl.Int64,
        "reserved_bytes": pl.Int64,
        "device_total_bytes": pl.Int64,  # the device's memory, the limit peaks compare with
    },
    "precision": {
        "run_id": pl.String,
        "step": pl.Int64,
        "dtype": pl.String,
        "layer": pl.String,
        "rel_err_vs_fp32": pl.Float64,
        "overflow_frac": pl.Float64,
        "underflow_frac": pl.Float64,
        "loss_scale": pl.Float64,  # the scale the low-precision backward ran at
        "recommended_loss_scale": pl.Float64,  # fp16 total row: largest clean power of two
    },
    "outputs": {
        "run_id": pl.String,
        "step": pl.Int64,
        "distinct_frac": pl.Float64,
        "top1_frac": pl.Float64,
        "entropy_bits": pl.Float64,
    },
    # Accuracy on the probe batch clean and under an FGSM / PGD attack (probes/adversarial.py).
    "robustness": {
        "run_id": pl.String,
        "step": pl.Int64,
        "attack": pl.String,  # fgsm / pgd
        "epsilon": pl.Float64,  # L-inf budget relative to the perturbed tensor's std
        "epsilon_abs": pl.Float64,  # the same budget in the tensor's own units
        "site": pl.String,  # input:<key> or embedding:<module> (token inputs)
        "attack_steps": pl.Int64,
        "clean_acc_frac": pl.Float64,
        "adv_acc_frac": pl.Float64,
        "n_examples": pl.Int64,
        "n_classes": pl.Int64,
    },
    # The newest probed checkpoint's predictions on a split of probes.data_fn (probes/confusion.py).
    "confusion": {
        "run_id": pl.String,
        "step": pl.Int64,
        "split": pl.String,
        "true_label": pl.Int64,
        "pred_label": pl.Int64,
        "count": pl.Int64,
    },
    # Deployment checks of a probed checkpoint (probes/deploy.py): inference latency at the
    # probe batch size, model size, and the probes.deploy limits in force when measured.
    "deployment": {
        "run_id": pl.String,
        "step": pl.Int64,
        "device": pl.String,
        "batch_size": pl.Int64,
        "n_repeats": pl.Int64,
        "latency_ms_median": pl.Float64,
        "latency_ms_p90": pl.Float64,
        "latency_ms_min": pl.Float64,
        "n_params": pl.Int64,
        "param_bytes": pl.Int64,
        "buffer_bytes": pl.Int64,
        "params_by_dtype": pl.String,  # JSON: {"float32": {"n_params": .., "bytes": ..}, ...}
        "peak_inference_bytes": pl.Int64,
        "num_threads": pl.Int64,  # torch intra-op threads on the CPU; null on CUDA
        "max_latency_ms": pl.Float64,
        "max_params": pl.Int64,
        "max_param_bytes": pl.Int64,
        "trace_path": pl.String,  # torch.profiler Chrome trace, relative to the output directory
    },
    "gpu": {
        "run_id": pl.String,
        "t_s": pl.Float64,
        "device_uuid": pl.String,
        "util_frac": pl.Float64,
        "mem_used_bytes": pl.Int64,
        "power_w": pl.Float64,
        "temp_c": pl.Float64,
        "throttle_reasons": pl.Int64,  # NVML clocks-event reasons bit mask, 0 = not throttled
    },
    # The data probe (probes/data.py, `probes.data_fn`): once per run, not per checkpoint.
    # One row per split of the run's data: size, labels, and a content fingerprint that
    # changes when any example or label changes (order-independent).
    "data_splits": {
        "run_id": pl.String,
        "split": pl.String,
        "role": pl.String,  # train (the reference) / held_out
        "status": pl.String,  # ok / error (reason says why; the split's other columns are null)
        "reason": pl.String,
        "kind": pl.String,  # numeric / tokens / text
        "x_shape": pl.String,  # per-example shape of x, e.g. "[16]"; "text"; "varying" for padded tokens
        "n_examples": pl.Int64,
        "n_duplicate_examples": pl.Int64,  # examples whose content repeats an earlier one of the same split
        "n_labelled": pl.Int64,
        "n_classes": pl.Int64,
        "max_class_count": pl.Int64,
        "min_class_count": pl.Int64,
        "imbalance_ratio": pl.Float64,  # max_class_count / min_class_count over the classes present
        "n_features": pl.Int64,
        "fingerprint": pl.String,
        "read_time_s": pl.Float64,
    },
    # Label counts per split (every class seen in any split has a row in each labelled split, count 0 if absent).
    "data_labels": {
        "run_id": pl.String,
        "split": pl.String,
        "label": pl.Int64,
        "count": pl.Int64,
        "frac": pl.Float64,
    },
    # Examples of split_b that also occur in split_a (train): exact content or near duplicates.
    "data_overlap": {
        "run_id": pl.String,
        "split_a": pl.String,
        "split_b": pl.String,
        "kind": pl.String,  # exact / near
        "method": pl.String,
        "threshold": pl.Float64,  # the similarity a near pair reaches at least (1.0 for exact)
        "n_pairs": pl.Int64,  # (a, b) example pairs
        "n_examples_b": pl.Int64,  # examples of split_b with at least one partner in split_a
        "n_b": pl.Int64,  # examples of split_b
        "overlap_frac": pl.Float64,  # n_examples_b / n_b
        "example_ids_a": pl.List(pl.String),  # the best partner of each listed example of b
        "example_ids_b": pl.List(pl.String),  # first probes.data.max_ids matched examples of b
        "similarities": pl.List(pl.Float64),  # estimated similarity of each listed pair
        "similarity_min": pl.Float64,
    },
    # Per held-out split and feature: how far it moved from train (PSI, two-sample KS, category shares).
    "data_features": {
        "run_id": pl.String,
        "split": pl.String,
        "reference_split": pl.String,
        "feature": pl.String,
        "feature_kind": pl.String,  # numeric / categorical
        "n_ref": pl.Int64,
        "n": pl.Int64,
        "psi": pl.Float64,
        "ks_stat": pl.Float64,  # numeric only: sup |F_train - F_split| on the samples
        "ks_p": pl.Float64,
        "ks_p_adjusted": pl.Float64,  # Bonferroni over every KS test of the run
        "mean_ref": pl.Float64,
        "mean": pl.Float64,
        "top_category": pl.String,  # categorical only: the category whose share moved most
        "top_category_ref_frac": pl.Float64,
        "top_category_frac": pl.Float64,
    },
    "findings": {
        "finding_id": pl.String,
        "scope": pl.String,
        "run_id": pl.String,
        "run_ids": pl.List(pl.String),
        "kind": pl.String,
        "severity": pl.String,
        "confidence": pl.Float64,
        "onset_step": pl.Int64,
        "end_step": pl.Int64,
        "summary": pl.String,
        "evidence": pl.List(EVIDENCE_REF),
        "fix": pl.String,
        "expected_impact": pl.String,
        "verify_by": pl.String,
        "detector": pl.String,
    },
    # One row per request of the LLM agent (mldebug_ray/agent/); written by the agent only.
    "agent_calls": {
        "run_id": pl.String,  # null for the sweep-level call
        "call_id": pl.String,
        "scope": pl.String,  # run / sweep
        "turn": pl.Int64,
        "model": pl.String,
        "status": pl.String,  # ok / error / cached
        "stop_reason": pl.String,
        "input_tokens": pl.Int64,
        "output_tokens": pl.Int64,
        "cache_creation_input_tokens": pl.Int64,
        "cache_read_input_tokens": pl.Int64,
        "cost_usd": pl.Float64,
        "latency_s": pl.Float64,
        "evidence_hash": pl.String,  # what the call saw; a re-run with the same hash reuses result_json
        "error": pl.String,
        "result_json": pl.String,  # the model's final answer, on the call's last row
    },
}

OPTIONAL: dict[str, frozenset[str]] = {
    "runs": frozenset({"n_metrics", "n_checkpoints", "read_time_s", "fingerprint"}),
    "params": frozenset({"source"}),
    "metrics": frozenset({"wall_time_s", "split", "source"}),
    "events": frozenset({"step", "file", "line"}),
    "checkpoints": frozenset({"n_params", "bytes", "status", "reason"}),
    "layers": frozenset(
        {"fp16_overflow_frac", "fp16_underflow_frac", "bf16_overflow_frac", "bf16_underflow_frac", "update_ratio", "update_from_step"}
    ),
    "gradients": frozenset({"update_ratio"}),
    "activations": frozenset(),
    "memory": frozenset({"reserved_bytes", "device_total_bytes"}),
    "precision": frozenset({"loss_scale", "recommended_loss_scale"}),
    "outputs": frozenset(),
    "robustness": frozenset({"epsilon_abs", "site", "attack_steps", "n_classes"}),
    "confusion": frozenset(),
    "deployment": frozenset(
        {"batch_size", "n_repeats", "latency_ms_p90", "latency_ms_min", "buffer_bytes", "params_by_dtype", "peak_inference_bytes",
         "num_threads", "max_latency_ms", "max_params", "max_param_bytes", "trace_path"}
    ),
    "gpu": frozenset({"power_w", "temp_c", "throttle_reasons"}),
    "data_splits": frozenset(
        {"reason", "kind", "x_shape", "n_examples", "n_duplicate_examples", "n_labelled", "n_classes", "max_class_count",
         "min_class_count", "imbalance_ratio", "n_features", "fingerprint", "read_time_s"}
    ),
    "data_labels": frozenset(),
    "data_overlap": frozenset({"method", "threshold", "example_ids_a", "example_ids_b", "similarities", "similarity_min"}),
    "data_features": frozenset(
        {"n_ref", "n", "psi", "ks_stat", "ks_p", "ks_p_adjusted", "mean_ref", "mean", "top_category", "top_category_ref_frac", "top_category_frac"}
    ),
    "findings": frozenset({"run_id", "run_ids", "onset_step", "end_step"}),
    "agent_calls": frozenset({"run_id", "stop_reason", "cost_usd", "latency_s", "evidence_hash", "error", "result_json"}),
}

# Columns that never hold nulls once validated.
NOT_NULL: dict[str, tuple[str, ...]] = {
    "runs": ("run_id", "path", "status"),
    "params": ("run_id", "key"),
    "metrics": ("run_id", "step", "key"),
    "events": ("run_id", "kind", "text"),
    "checkpoints": ("run_id", "path", "format"),
    "layers": ("run_id", "layer"),
    "deployment": ("run_id", "device"),
    "data_splits": ("run_id", "split", "role", "status"),
    "data_labels": ("run_id", "split", "label", "count"),
    "data_overlap": ("run_id", "split_a", "split_b", "kind", "n_pairs", "n_examples_b"),
    "data_features": ("run_id", "split", "reference_split", "feature", "feature_kind"),
    "findings": ("finding_id", "scope", "kind", "severity", "confidence", "detector"),
    "agent_calls": ("call_id", "scope", "turn", "model", "status"),
}

RUN_STATUSES = ("ok", "partial", "unreadable")


def schema_of(table: str) -> pl.Schema:
    """The declared polars schema of `table`."""
    try:
        return pl.Schema(TABLES[table])
    except KeyError:
        raise SchemaError(f"unknown evidence table {table!r}; known: {', '.join(TABLES)}") from None


def empty(table: str) -> pl.DataFrame:
    """An empty frame with `table`'s schema."""
    return pl.DataFrame(schema=schema_of(table))


def validate(table: str, frame: pl.DataFrame) -> pl.DataFrame:
    """Return `frame` cast to `table`'s schema in declared column order.

    Raises SchemaError naming the table and column when a required column is
    missing, an unknown column is present, a value cannot be cast, or a
    not-null column holds nulls.
    """
    schema = schema_of(table)
    unknown = [c for c in frame.columns if c not in schema]
    if unknown:
        raise SchemaError(f"table {table!r}: unknown column(s) {unknown}")
    missing = [c for c in schema if c not in frame.columns and c not in OPTIONAL[table]]
    if missing:
        raise SchemaError(f"table {table!r}: missing required column(s) {missing}")
    columns = []
    for name, dtype in schema.items():
        if name not in frame.columns:
            columns.append(pl.lit(None, dtype=dtype).alias(name))
            continue
        if frame.schema[name] == dtype:
            columns.append(pl.col(name))
        else:
            columns.append(pl.col(name).cast(dtype, strict=True))
    try:
        out = frame.select(columns)
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        raise SchemaError(f"table {table!r}: {str(exc).splitlines()[0]}") from None
    for name in NOT_NULL.get(table, ()):
        if out.height and out[name].null_count():
            raise SchemaError(f"table {table!r}: column {name!r} holds nulls")
    if table == "runs" and out.height:
        bad = set(out["status"].to_list()) - set(RUN_STATUSES)
        if bad:
            raise SchemaError(f"table 'runs': status must be one of {RUN_STATUSES}, got {sorted(bad)}")
    return out
