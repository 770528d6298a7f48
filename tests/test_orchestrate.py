from mldebug_ray.discover import RunRef
from mldebug_ray.orchestrate import MAX_RUNS_PER_TASK, batch_runs


def refs(n):
    return [RunRef(f"r{i}", f"/x/r{i}", "/x") for i in range(n)]


def test_batches_cover_every_run_once_in_order():
    runs = refs(103)
    batches = batch_runs(runs, cpus=2, runs_per_task=0)
    assert [r for b in batches for r in b] == runs
    assert len(batches) >= 8  # about 4 tasks per CPU


def test_explicit_batch_size_and_cap():
    assert [len(b) for b in batch_runs(refs(5), cpus=2, runs_per_task=2)] == [2, 2, 1]
    assert max(len(b) for b in batch_runs(refs(10_000), cpus=1, runs_per_task=0)) == MAX_RUNS_PER_TASK
    assert batch_runs([], cpus=4, runs_per_task=0) == []
