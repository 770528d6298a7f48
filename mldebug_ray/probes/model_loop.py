"""Running the user's model on a checkpoint: entry points, the run's params, weights, batch, loss (SPEC §9).

Entry points (`probes.model_fn`, `probes.batch_fn`, `probes.loss_fn`) are `module:function`
names imported from `probes.code_paths` or installed packages. A function whose source
file lies inside the run directory being probed is refused: model code comes from the
sweep config, never from the runs (a run directory is data, possibly someone else's).

Conventions the probes rely on:
- `model_fn(params) -> nn.Module`, `params` being the run's hyperparameters as a nested
  dict (`params["model"]["depth"]`), values typed from the `params` table (JSON numbers,
  booleans, lists; empty values are None);
- `batch_fn(params)` returns one batch: a `(inputs, targets)` pair, a dict of keyword
  arguments for the model (Hugging Face style, with `labels`), or any object the model
  takes as its one argument;
- `loss_fn(model, batch) -> loss` (a scalar tensor, or `(loss, output)`); without it the
  loss is the model output's `.loss` / `["loss"]`, else cross-entropy for integer targets
  of a `(inputs, targets)` batch, else mean squared error for targets shaped like the
  output. Anything else needs a `loss_fn`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import polars as pl

from mldebug_ray.errors import MldebugError


class ProbeError(MldebugError):
    """A model probe could not run; the message says which entry point or checkpoint."""


@dataclass(frozen=True)
class EntryPoints:
    """The imported probe functions of a sweep."""

    model_fn: Callable[[dict], Any]
    batch_fn: Callable[[dict], Any]
    loss_fn: Callable[[Any, Any], Any] | None = None


def _inside(path: str | None, root: Path) -> bool:
    if not path or path in ("built-in", "frozen"):
        return False
    resolved = Path(path).resolve()
    return resolved == root or root in resolved.parents


def import_entry_point(spec: str, code_paths: list[str], run_dir: Path | None = None) -> Callable:
    """The function `module:function` names, importable from `code_paths` or installed packages.

    With `run_dir`, every package on the way to the module is located before it is
    executed (`importlib.util.find_spec`), and one that lies inside the run directory is
    refused: no code from a run directory ever runs.
    """
    module_name, _, attr = spec.partition(":")
    for path in reversed(code_paths):
        resolved = str(Path(path).expanduser().resolve())
        if resolved not in sys.path:
            sys.path.insert(0, resolved)
    try:
        if run_dir is not None:
            root = Path(run_dir).resolve()
            parts = module_name.split(".")
            for i in range(1, len(parts) + 1):
                found = importlib.util.find_spec(".".join(parts[:i]))
                if found is None:
                    break
                if _inside(found.origin, root) or any(_inside(loc, root) for loc in found.submodule_search_locations or ()):
                    raise ProbeError(f"{spec!r} resolves to {found.origin} inside the run directory; model code must come from probes.code_paths")
        module = importlib.import_module(module_name)
    except ProbeError:
        raise
    except Exception as exc:  # ImportError, or the user's module failing at import
        raise ProbeError(f"cannot import {module_name!r} for {spec!r}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ProbeError(f"{spec!r}: {module_name} has no function {attr!r}")
    if run_dir is not None:
        try:
            source = inspect.getfile(fn)
        except (TypeError, OSError):
            source = None
        if _inside(source, Path(run_dir).resolve()):
            raise ProbeError(f"{spec!r} is defined inside the run directory ({source}); model code must come from probes.code_paths")
    return fn


def load_entry_points(probes: Any, run_dir: Path | None = None) -> EntryPoints:
    """The sweep's model_fn, batch_fn and optional loss_fn."""
    return EntryPoints(
        model_fn=import_entry_point(probes.model_fn, probes.code_paths, run_dir),
        batch_fn=import_entry_point(probes.batch_fn, probes.code_paths, run_dir),
        loss_fn=import_entry_point(probes.loss_fn, probes.code_paths, run_dir) if probes.loss_fn else None,
    )


def _typed(value: str | None, value_num: float | None) -> Any:
    if value is None or value == "":
        return None
    try:
        return json.loads(value)
    except (json.JSONDecodeError, ValueError):
        pass
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    return value_num if value_num is not None and lowered in ("nan", "inf", "-inf") else value


def run_params(params: pl.DataFrame) -> dict[str, Any]:
    """The run's hyperparameters as a nested dict (dotted keys split), values typed.

    When a key is both a value and a prefix (`fault` and `fault.kind`), the nested
    mapping wins: it is the more specific record.
    """
    nested: dict[str, Any] = {}
    if params.height == 0:
        return nested
    for row in params.select("key", "value", "value_num").iter_rows(named=True):
        *parents, leaf = str(row["key"]).split(".")
        node = nested
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        value = _typed(row["value"], row["value_num"])
        if isinstance(node.get(leaf), dict) and not isinstance(value, dict):
            continue
        node[leaf] = value
    return nested


def _strip_prefix(state: Mapping[str, Any], wanted: set[str]) -> dict[str, Any]:
    """State dict keys with a wrapper prefix (`module.` from DDP, `model.` from Lightning,
    `_orig_mod.` from torch.compile) removed when that makes them the model's keys."""
    keys = set(state)
    if keys == wanted:
        return dict(state)
    for prefix in ("module.", "model.", "_orig_mod.", "module.module."):
        if all(k.startswith(prefix) for k in keys):
            stripped = {k[len(prefix) :]: v for k, v in state.items()}
            if set(stripped) == wanted:
                return stripped
    return dict(state)


def build_model(entry: EntryPoints, params: dict[str, Any], state: Mapping[str, Any], device: Any) -> Any:
    """model_fn(params) with the checkpoint's weights loaded (strict), on `device`."""
    try:
        model = entry.model_fn(params)
    except Exception as exc:
        raise ProbeError(f"model_fn failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
    wanted = set(model.state_dict())
    state = _strip_prefix(state, wanted)
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - wanted)
    if missing or unexpected:
        raise ProbeError(
            f"checkpoint does not match model_fn's model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # shape mismatches
        raise ProbeError(f"checkpoint does not load into model_fn's model: {' '.join(str(exc).split())[:300]}") from None
    return model.to(device)


def to_device(batch: Any, device: Any) -> Any:
    """The batch with every tensor moved to `device` (tuples, lists and dicts walked)."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(to_device(v, device) for v in batch)
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch


def make_batch(entry: EntryPoints, params: dict[str, Any], device: Any) -> Any:
    try:
        batch = entry.batch_fn(params)
    except Exception as exc:
        raise ProbeError(f"batch_fn failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
    return to_device(batch, device)


def forward(model: Any, batch: Any) -> Any:
    """The model applied to a batch by the conventions of the module docstring."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return model(batch[0])
    return model(batch)


def logits_of(output: Any) -> Any:
    """The tensor of per-class scores in a model output (a tensor, `.logits`, `["logits"]`, or
    the first tensor of a tuple); None when there is none."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)):
        return next((x for x in output if isinstance(x, torch.Tensor)), None)
    return None


def default_loss(output: Any, batch: Any) -> Any:
    """The loss without a loss_fn (module docstring), or ProbeError saying a loss_fn is needed."""
    import torch
    import torch.nn.functional as F

    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if isinstance(loss, torch.Tensor):
        return loss
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor):
        logits, targets = logits_of(output), batch[1]
        if logits is not None and not targets.is_floating_point() and logits.dim() >= 2 and logits.shape[:-1] == targets.shape:
            return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        if logits is not None and targets.is_floating_point() and logits.shape == targets.shape:
            return F.mse_loss(logits.float(), targets.float())
    raise ProbeError("cannot tell the loss from the model output and batch: set probes.loss_fn=module:function(model, batch)")


def compute_loss(model: Any, batch: Any, loss_fn: Callable | None) -> tuple[Any, Any]:
    """(loss, model output): through `loss_fn` when given, the output captured by a hook."""
    if loss_fn is None:
        output = forward(model, batch)
        return default_loss(output, batch), output
    captured: list[Any] = []
    handle = model.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        result = loss_fn(model, batch)
    finally:
        handle.remove()
    if isinstance(result, tuple) and len(result) == 2:
        return result[0], result[1]
    return result, (captured[-1] if captured else None)
