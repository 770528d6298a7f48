"""All probes of one run, in the order they run: checkpoint weights, then the model on each checkpoint.

`probe_run` is what `analyze_run` calls after reading a run. It picks the checkpoints
(the newest `probes.max_checkpoints_per_run` readable ones, the same for every probe),
resolves the device (`probes.device`), samples GPU telemetry while it works there, and
fills the run's evidence tables:

- `layers` (when `probes.checkpoint_stats`): per-tensor statistics, fp16/bf16 cast
  shares and update ratios between consecutive selected checkpoints (probes/weights.py);
- `gradients`, `activations`, `outputs`, `memory`, `precision` (the names in
  `probes.model_probes`, when `probes.model_fn` and `probes.batch_fn` are set): per
  checkpoint, the run's model from `model_fn(params)` with the checkpoint's weights, one
  probe batch from `batch_fn(params)`, then
  1. train mode: one no-grad forward with activation hooks, then `probes.model_steps`
     forward/backward passes on the batch (loss divided by the count, as gradient
     accumulation does) with memory measured per phase and no hooks; gradient
     statistics of the accumulated gradients;
  2. the optimizer phase: an AdamW step at lr=0 (its state is the largest of the common
     optimizers: two moments per parameter; lr=0 leaves the weights as they were, and
     non-finite gradients are zeroed first so they cannot turn the weights into NaN);
  3. eval mode: output diversity over the batch, then the deployment checks (inference
     latency, model size, inference memory; on the newest `probes.deploy.max_checkpoints`
     only; probes/deploy.py, with the optional profiler trace under
     `<out_dir>/profiles/`), then the fp32/fp16/bf16 comparison;
  4. `robustness`: accuracy on the batch clean and under FGSM / PGD perturbations
     (probes/adversarial.py; `probes.adversarial`).
- `confusion` (when `probes.model_fn` and `probes.data_fn` are set): the newest probed
  checkpoint's predictions on the validation split, at most `probes.data_max_examples`
  examples, counted per (true, predicted) label (probes/confusion.py);
- `gpu`: NVML samples while the probes ran on a CUDA device (probes/telemetry.py);
- `data_splits`, `data_labels`, `data_overlap`, `data_features` (when `probes.data_fn`
  is set): the run's data splits streamed once, with or without checkpoints and model
  (probes/data.py).

A checkpoint or probe that fails adds one line to `problems` (the run's reason) and the
others go on; nothing here raises for a run's own faults.
"""

from __future__ import annotations

import logging
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import polars as pl

from mldebug_ray import schema
from mldebug_ray.probes.data import DATA_TABLES
from mldebug_ray.probes.device import resolve_device, wants_model_probes

log = logging.getLogger(__name__)

MODEL_PROBES = ("gradients", "activations", "outputs", "memory", "precision", "deployment", "robustness")
PROBE_TABLES = ("layers", *MODEL_PROBES, "confusion", "gpu", *DATA_TABLES)
_LOSS_SCALE_KEY = re.compile(r"(^|[/_.\s])loss[_ ]?scale$", re.IGNORECASE)


def select_checkpoints(checkpoints: pl.DataFrame, max_per_run: int) -> list[dict[str, Any]]:
    """The checkpoints to probe: readable ones, newest `max_per_run` (0: all), returned oldest first."""
    if checkpoints.height == 0:
        return []
    ok = checkpoints.filter(pl.col("status").is_null() | (pl.col("status") == "ok"))
    ok = ok.sort("step", nulls_last=False, descending=True)
    if max_per_run:
        ok = ok.head(max_per_run)
    return list(reversed(ok.rows(named=True)))


def run_loss_scale(metrics: pl.DataFrame, step: int | None) -> float | None:
    """The run's last logged loss scale at or before `step` (any `loss_scale`-like key), else None."""
    if metrics.height == 0:
        return None
    keys = [k for k in metrics["key"].unique().to_list() if _LOSS_SCALE_KEY.search(k.strip())]
    if not keys:
        return None
    rows = metrics.filter(pl.col("key").is_in(keys) & pl.col("value").is_finite() & (pl.col("value") > 0))
    if step is not None:
        rows = rows.filter(pl.col("step") <= step)
    if rows.height == 0:
        return None
    return float(rows.sort("step")["value"][-1])


def _frame(table: str, rows: list[dict[str, Any]], run_id: str, step: int | None) -> pl.DataFrame:
    if not rows:
        return schema.empty(table)
    columns = schema.schema_of(table)
    keys = dict.fromkeys(k for r in rows for k in r)
    frame = pl.DataFrame(rows, schema={k: columns[k] for k in keys}, strict=False)
    frame = frame.with_columns(pl.lit(run_id).alias("run_id"))
    if "step" in columns:
        frame = frame.with_columns(pl.lit(step, dtype=pl.Int64).alias("step"))
    return schema.validate(table, frame)


def _concat(table: str, parts: list[pl.DataFrame]) -> pl.DataFrame:
    parts = [p for p in parts if p.height]
    return schema.validate(table, pl.concat(parts, how="vertical_relaxed")) if parts else schema.empty(table)


def weight_layers(ev: Any, run_dir: Path, selected: list[dict[str, Any]], device: Any, problems: list[str]) -> pl.DataFrame:
    """`layers` rows of the selected checkpoints, with update ratios against the one before."""
    from mldebug_ray.probes.weights import scan_weights

    parts = []
    previous = None
    for row in selected:
        try:
            frame = scan_weights(run_dir, row["path"], row["format"], device, previous)
        except Exception as exc:  # a bad checkpoint is a problem of the run, not of the sweep
            problems.append(f"{row['path']}: tensor statistics failed: {' '.join(str(exc).split())[:200]}")
            continue
        if row["step"] is not None:
            previous = (row["path"], row["format"], row["step"])
        if frame.height:
            parts.append(frame.with_columns(pl.lit(ev.run_id).alias("run_id"), pl.lit(row["step"], dtype=pl.Int64).alias("step")))
    return _concat("layers", parts)


def probe_checkpoint(
    entry: Any, params: dict, run_dir: Path, row: dict[str, Any], device: Any, probes: Any, loss_scale: float | None,
    *, deploy: bool = True, trace_path: Path | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The model probes' rows (without run_id/step) for one checkpoint.

    `deploy` False skips the deployment checks on this checkpoint; `trace_path` is where
    the profiler trace goes when probes.deploy.profile_trace is on.
    """
    import torch

    from mldebug_ray.probes.activations import ActivationRecorder
    from mldebug_ray.probes.gradients import gradient_rows
    from mldebug_ray.probes.memory import PhaseMemory
    from mldebug_ray.probes.model_loop import build_model, compute_loss, logits_of, make_batch
    from mldebug_ray.probes.outputs import output_diversity
    from mldebug_ray.probes.precision import precision_rows
    from mldebug_ray.probes.weights import load_state_dict

    wanted = set(probes.model_probes)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in MODEL_PROBES}
    memory = PhaseMemory(device) if "memory" in wanted else None
    phase = memory.phase if memory is not None else (lambda _name, *_roots: nullcontext())
    state = load_state_dict(run_dir, row["path"], row["format"])
    model = build_model(entry, params, state, device)
    del state
    batch = make_batch(entry, params, device)
    if "activations" in wanted:
        # A forward of its own: the hooks' statistics would otherwise count in the memory peaks.
        model.train()
        torch.manual_seed(0)  # dropout masks: the same probe twice gives the same rows
        with ActivationRecorder(model) as recorder, torch.no_grad():
            compute_loss(model, batch, entry.loss_fn)
        out["activations"] = recorder.rows()
    if wanted & {"gradients", "memory"}:
        model.train()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        steps = max(1, probes.model_steps)
        for _ in range(steps):
            with phase("forward", model, batch):
                loss, _ = compute_loss(model, batch, entry.loss_fn)
                if steps > 1:
                    loss = loss / steps
            with phase("backward"):
                loss.backward()
            del loss
        if "gradients" in wanted:
            out["gradients"] = gradient_rows(model)
        if memory is not None:
            trainable = [p for p in model.parameters() if p.requires_grad]
            for p in trainable:
                if p.grad is not None:
                    p.grad.nan_to_num_(0.0, 0.0, 0.0)
            optimizer = torch.optim.AdamW(trainable, lr=0.0)
            with phase("optimizer", model, batch):
                optimizer.step()
            del optimizer
            out["memory"] = memory.rows()
        model.zero_grad(set_to_none=True)
    if "outputs" in wanted:
        model.eval()
        with torch.no_grad():
            _, output = compute_loss(model, batch, entry.loss_fn)
        diversity = output_diversity(logits_of(output))
        if diversity is not None:
            out["outputs"] = [diversity]
        else:
            log.debug("%s: the model's output is not class scores: no outputs row", row["path"])
    if "deployment" in wanted and deploy:
        from mldebug_ray.probes.deploy import deployment_row, save_profile_trace

        out["deployment"] = [deployment_row(model, batch, device, probes.deploy)]
        if trace_path is not None:
            save_profile_trace(model, batch, entry.loss_fn, device, trace_path)
    if "precision" in wanted:
        out["precision"] = precision_rows(model, batch, entry.loss_fn, device, loss_scale)
    if "robustness" in wanted:
        from mldebug_ray.probes.adversarial import robustness_rows

        out["robustness"] = robustness_rows(model, batch, probes.adversarial, lambda why: log.info("%s: %s", row["path"], why))
    return out


def model_tables(
    ev: Any, run_dir: Path, selected: list[dict[str, Any]], device: Any, probes: Any, problems: list[str], out_dir: Path | None = None
) -> dict[str, pl.DataFrame]:
    """The model-in-the-loop tables for the selected checkpoints (profiler traces under `out_dir`)."""
    from mldebug_ray.paths import profile_trace_path
    from mldebug_ray.probes.model_loop import ProbeError, load_entry_points, run_params

    tables = {name: schema.empty(name) for name in MODEL_PROBES}
    try:
        entry = load_entry_points(probes, run_dir)
    except ProbeError as exc:
        problems.append(f"model probes: {exc}")
        return tables
    params = run_params(ev.params)
    parts: dict[str, list[pl.DataFrame]] = {name: [] for name in MODEL_PROBES}
    n_deploy = probes.deploy.max_checkpoints
    deployed = {id(r) for r in (selected[-n_deploy:] if n_deploy else selected)}
    tracing = "deployment" in probes.model_probes and probes.deploy.profile_trace
    if tracing and out_dir is None:
        problems.append("probes.deploy.profile_trace: no output directory to save traces in; none saved")
        tracing = False
    for row in selected:
        deploy = id(row) in deployed
        if not deploy and set(probes.model_probes) <= {"deployment"}:
            continue  # nothing else to run on this checkpoint: do not load it
        trace = profile_trace_path(out_dir, ev.run_id, row["step"]) if tracing and deploy else None
        try:
            rows = probe_checkpoint(
                entry, params, run_dir, row, device, probes, run_loss_scale(ev.metrics, row["step"]), deploy=deploy, trace_path=trace
            )
        except Exception as exc:  # the user's model code, a mismatched checkpoint, an OOM: this checkpoint only
            problems.append(f"{row['path']}: model probes failed: {' '.join(f'{type(exc).__name__}: {exc}'.split())[:300]}")
            log.debug("model probes failed on %s", row["path"], exc_info=True)
            continue
        if trace is not None and rows["deployment"]:
            rows["deployment"][0]["trace_path"] = trace.relative_to(out_dir).as_posix()
        for name in MODEL_PROBES:
            parts[name].append(_frame(name, rows[name], ev.run_id, row["step"]))
    for name in MODEL_PROBES:
        tables[name] = _concat(name, parts[name])
    return tables


def _join_update_ratios(gradients: pl.DataFrame, layers: pl.DataFrame) -> pl.DataFrame:
    """gradients.update_ratio from the weights scan's update ratio of the same step and tensor."""
    if gradients.height == 0 or layers.height == 0:
        return gradients
    ratios = layers.select("step", "layer", pl.col("update_ratio").alias("_ratio")).unique(subset=["step", "layer"], keep="first")
    joined = gradients.join(ratios, on=["step", "layer"], how="left", nulls_equal=True)
    return joined.with_columns(pl.coalesce("update_ratio", "_ratio").alias("update_ratio")).drop("_ratio").select(gradients.columns)


def probe_run(ev: Any, run_dir: Path, probes: Any, problems: list[str], out_dir: Path | None = None) -> dict[str, pl.DataFrame]:
    """Every probe table of one run (PROBE_TABLES), empty where a probe is off or found nothing.

    `out_dir` is the invocation's output directory, where profiler traces go (probes.deploy.profile_trace).
    """
    from mldebug_ray.probes.telemetry import GpuSampler

    tables = {name: schema.empty(name) for name in PROBE_TABLES}
    if probes.data_fn:  # once per run: needs neither checkpoints nor the model
        from mldebug_ray.probes.data import probe_data
        from mldebug_ray.probes.model_loop import run_params

        tables.update(probe_data(ev.run_id, run_params(ev.params), probes, Path(run_dir), problems))
    selected = select_checkpoints(ev.checkpoints, probes.max_checkpoints_per_run)
    run_model = wants_model_probes(probes)
    if not selected or not (probes.checkpoint_stats or run_model):
        return tables
    device = resolve_device(probes.device, problems)
    with GpuSampler(device, probes.telemetry_interval_s) as sampler:
        if probes.checkpoint_stats:
            tables["layers"] = weight_layers(ev, Path(run_dir), selected, device, problems)
        if run_model:
            tables.update(model_tables(ev, Path(run_dir), selected, device, probes, problems, out_dir))
        if probes.model_fn and probes.data_fn:
            from mldebug_ray.probes.confusion import confusion_table

            tables["confusion"] = confusion_table(ev, Path(run_dir), selected[-1], device, probes, problems)
    tables["gradients"] = _join_update_ratios(tables["gradients"], tables["layers"])
    if sampler.rows:
        tables["gpu"] = _frame("gpu", sampler.rows, ev.run_id, None)
    return tables
