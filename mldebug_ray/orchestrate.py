"""Ray at the edge: connect, fan `analyze_runs` out over batches of runs, bound what is in flight."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mldebug_ray.analyze_run import RunSummary, analyze_runs, mark_unreadable
from mldebug_ray.config import ClusterConfig, MainConfig
from mldebug_ray.discover import RunRef
from mldebug_ray.errors import ConfigError, OutputError
from mldebug_ray.evidence.io import scan_table
from mldebug_ray.probes.device import task_gpus
from mldebug_ray.progress import Progress

log = logging.getLogger(__name__)

TASKS_PER_CPU = 4  # enough tasks per CPU to balance uneven runs, few enough to amortise task overhead
MAX_RUNS_PER_TASK = 64


@contextmanager
def ray_cluster(cfg: ClusterConfig) -> Iterator[None]:
    """Connect to (or start) the Ray cluster `cfg` names; shut down only what we started."""
    import ray

    if ray.is_initialized():
        yield
        return
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    if cfg.kind == "local":
        kwargs["address"] = "local"
        if cfg.num_cpus:
            kwargs["num_cpus"] = cfg.num_cpus
    else:
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if not address:
            raise ConfigError(f"cluster.address is not set (cluster={cfg.kind}) and RAY_ADDRESS is empty")
        kwargs = dict(address=address, logging_level=logging.WARNING)
        use_token_auth_if_available()
    own_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        hint = "" if os.environ.get("RAY_AUTH_MODE") == "token" else (
            " (a cluster with token auth needs RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token)")
        raise ConfigError(f"cluster.address: cannot connect to Ray at {kwargs.get('address')}: {exc}{hint}") from None
    if threading.current_thread() is threading.main_thread() and own_sigterm not in (None, signal.SIG_DFL):
        # ray.init replaces the driver's SIGTERM handler with sys.exit(15); keep the app's own,
        # which unwinds through the finally below and ends with the "rerun to resume" status.
        signal.signal(signal.SIGTERM, own_sigterm)
    try:
        yield
    finally:
        ray.shutdown()


def use_token_auth_if_available() -> None:
    """Send Ray's auth token when one is at hand and the user chose no RAY_AUTH_MODE.

    `ray start` turns token auth on when a token exists, but a driver connecting to an
    explicit address only sends one with RAY_AUTH_MODE=token (FIELD-NOTES); a token sent to
    a cluster without auth is ignored. Token sources as Ray reads them: RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token. Ray caches its config at import, hence the refresh.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(token_file)):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        from ray._raylet import Config

        Config.initialize("")
    except Exception as exc:  # private API: without the refresh the driver may still connect unauthenticated
        log.debug("could not refresh Ray's config for token auth: %s", exc)


def batch_runs(runs: list[RunRef], cpus: int, runs_per_task: int) -> list[list[RunRef]]:
    """Split runs into task batches: `runs_per_task` each, or about TASKS_PER_CPU tasks per CPU."""
    if not runs:
        return []
    size = runs_per_task or max(1, min(MAX_RUNS_PER_TASK, math.ceil(len(runs) / (max(cpus, 1) * TASKS_PER_CPU))))
    return [runs[i : i + size] for i in range(0, len(runs), size)]


def fan_out(runs: list[RunRef], cfg: MainConfig, out_dir: Path) -> list[RunSummary]:
    """Analyse every run on the cluster; each task writes its own parts and returns summaries."""
    import ray

    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    batches = batch_runs(runs, cpus, cfg.cluster.runs_per_task)
    max_in_flight = cfg.cluster.max_in_flight or 2 * cpus
    # Probes on CUDA: each task asks for a (fractional) GPU so Ray places it on a GPU node
    # and sets its CUDA_VISIBLE_DEVICES (probes/device.py task_gpus).
    num_gpus = task_gpus(cfg.probes, resources)
    remote = ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=cfg.cluster.task_max_retries)(analyze_runs)
    cfg_ref = ray.put(cfg)
    previous = previous_fingerprints(out_dir)
    progress = Progress(len(runs), cfg.progress)
    log.info("analysing %d runs in %d tasks on %d CPUs (at most %d in flight)", len(runs), len(batches), cpus, max_in_flight)
    pending: dict = {}
    summaries: list[RunSummary] = []
    queue = list(reversed(batches))
    while queue or pending:
        while queue and len(pending) < max_in_flight:
            batch = queue.pop()
            known = {r.run_id: previous[r.run_id] for r in batch if r.run_id in previous}
            pending[remote.remote(batch, cfg_ref, str(out_dir), known)] = batch
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            batch = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(getattr(exc, "cause", None), OutputError):
                    raise exc.cause from None  # the output dir is full or read-only: stop the sweep
                reason = f"task failed: {type(getattr(exc, 'cause', None) or exc).__name__}"
                log.error("%s for runs %s", reason, [r.run_id for r in batch])
                result = [mark_unreadable(run, out_dir, reason) for run in batch]
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayError) as exc:
                reason = f"task failed after {cfg.cluster.task_max_retries} retries: {type(exc).__name__}"
                log.error("%s for runs %s", reason, [r.run_id for r in batch])
                result = [mark_unreadable(run, out_dir, reason) for run in batch]
            summaries.extend(result)
            progress.update(len(result), sum(1 for s in result if s.status == "unreadable"))
    progress.close()
    peak = max((s.worker_peak_rss_bytes for s in summaries), default=0)
    if peak:
        log.info("workers' peak RSS: %.0f MB", peak / 2**20)
    reused = sum(1 for s in summaries if s.cached)
    if reused:
        log.info("reused the cached evidence of %d of %d runs (unchanged files and config)", reused, len(runs))
    return summaries


def previous_fingerprints(out_dir: Path) -> dict[str, str]:
    """run_id -> fingerprint from an earlier invocation's `runs` table in `out_dir`."""
    try:
        frame = scan_table(out_dir, "runs").select("run_id", "fingerprint").drop_nulls().collect()
    except Exception as exc:  # an unreadable cache costs a recompute, nothing more
        log.warning("ignoring the cached runs table in %s: %s", out_dir, exc)
        return {}
    return dict(zip(frame["run_id"].to_list(), frame["fingerprint"].to_list()))
