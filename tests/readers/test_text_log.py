"""The free-text log reader: the pattern library, events, pasted scripts, restarts, bad bytes, AlgoPerf trial logs."""

from __future__ import annotations

import math
import os
import tracemalloc
from pathlib import Path

import polars as pl
import pytest

from mldebug_ray.discover import discover
from mldebug_ray.errors import ConfigError
from mldebug_ray.gather import read_run_dir
from mldebug_ray.readers import READERS, text_log
from mldebug_ray.readers.text_log import EVENT_PATTERNS, METRIC_PATTERNS, LogParser, _Collector, parse_logs

MEGATRON = (
    " iteration    {step}/  159576 | consumed samples:      8130784 | elapsed time per iteration (ms): 422832.0 |"
    " learning rate: 5.948E-05 | global batch size:  2048 | lm loss: {loss} | loss scale: {scale} |"
    " grad norm: {gn} | num zeros: 0.0 | number of skipped iterations:   0 | number of nan iterations:   0 |"
)
OVERFLOW = (
    "[2022-01-19 13:09:13,305] [INFO] [stage_1_and_2.py:1644:step] [deepscale] OVERFLOW! Rank 0 Skipping step."
    " Attempted loss scale: {a}, reducing to {b}"
)
LFS = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146\nsize 2119040\n"


def _write(path: Path, lines: list[str] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(lines if isinstance(lines, str) else "\n".join(lines) + "\n")
    return path


def _read(run_dir: Path):
    files = READERS["text_log"].detect(run_dir)
    return READERS["text_log"].read(run_dir, files)


def _value(metrics: pl.DataFrame, step: int, key: str) -> float:
    hit = metrics.filter((pl.col("step") == step) & (pl.col("key") == key))
    assert hit.height == 1, (step, key, metrics)
    return hit["value"][0]


@pytest.mark.parametrize("pattern", [p for p in METRIC_PATTERNS if not p.marker], ids=lambda p: p.name)
def test_every_metric_pattern_reads_its_own_example(pattern):
    collector = _Collector()
    parser = LogParser(collector, "x.log")
    parser.last_step = 5  # stepless patterns take the last step seen
    hit = parser._match_metrics(pattern.example)
    assert hit is not None and hit[0].name == pattern.name
    parser.feed(pattern.example, 1)
    parser.close()
    assert collector.frame().height or collector.params, pattern.name


@pytest.mark.parametrize("pattern", EVENT_PATTERNS, ids=lambda p: p.name)
def test_every_event_pattern_matches_its_own_example(pattern):
    collector = _Collector()
    parser = LogParser(collector, "x.log")
    parser.feed(pattern.example, 7)
    parser.close()
    assert [e[1] for e in collector.events] == [pattern.kind]
    assert collector.events[0][4] == 7


def test_megatron_lines_with_rank_prefixes_keep_placeholder_grad_norm(tmp_path):
    lines = [
        "[default7]:" + MEGATRON.format(step=29040, loss="2.768131E+00", scale="65536.0", gn="0.000"),
        "[default7]:" + MEGATRON.format(step=29050, loss="7.343709E+00", scale="8192.0", gn="0.000"),
        "[default0]:" + MEGATRON.format(step=29050, loss="9.999999E+00", scale="8192.0", gn="0.000"),
        " validation loss at iteration 29050 | lm loss value: 7.174200E+00 | lm loss PPL: 1.305315E+03 |",
        "time (ms)",
    ]
    data = _read(_write(tmp_path / "train.log", lines).parent)
    m = data.metrics
    assert _value(m, 29050, "lm_loss") == pytest.approx(7.343709)  # rank 7 printed first: rank 0 ignored
    assert _value(m, 29050, "loss_scale") == 8192.0
    assert _value(m, 29040, "grad_norm") == 0.0  # kept as logged; the detectors know the placeholder
    assert _value(m, 29050, "val_lm_loss") == pytest.approx(7.1742)
    assert _value(m, 29050, "elapsed_time_per_iteration_ms") == 422832.0
    splits = dict(m.select("key", "split").unique().iter_rows())
    assert splits["lm_loss"] == "train" and splits["val_lm_loss"] == "val"
    assert data.params == {"log.total_steps": 159576}
    assert data.problems == []


def test_overflow_lines_take_the_step_of_the_iteration_printed_after_them(tmp_path):
    lines = [
        MEGATRON.format(step=17061, loss="2.667121E+00", scale="1048576.0", gn="464441.887"),
        OVERFLOW.format(a="1048576.0", b="524288.0"),
        MEGATRON.format(step=17062, loss="4.374269E+00", scale="524288.0", gn="464441.887"),
        "Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 262144.0",
    ]
    data = _read(_write(tmp_path / "train.log", lines).parent)
    events = data.events.select("step", "kind", "line").rows()
    # The second overflow has no iteration line after it: the last step seen.
    assert events == [(17062, "overflow_skip", 2), (17062, "overflow_skip", 4)]


def test_a_traceback_is_one_event_with_exception_and_first_frame(tmp_path):
    lines = [
        "step:10/100 train_loss:3.5 train_time:10ms step_avg:1.00ms",
        "Traceback (most recent call last):",
        '  File "/src/train.py", line 540, in <module>',
        "    loss.backward()",
        '  File "/usr/lib/python3/site-packages/torch/_tensor.py", line 581, in backward',
        "    torch.autograd.backward(",
        "           ^^^^^^^^^^^^^^^^",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
        "[rank1]: Traceback (most recent call last):",
        "[rank0]: some other output",
        '[rank1]:   File "/src/train.py", line 12, in <module>',
        "[rank1]: RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error",
    ]
    data = _read(_write(tmp_path / "stderr.txt", lines).parent)
    rows = data.events.select("step", "kind", "text", "line").rows()
    assert rows[0] == (
        10,
        "traceback",
        'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. | File "/src/train.py", line 540,'
        ' in <module> | File "/usr/lib/python3/site-packages/torch/_tensor.py", line 581, in backward',
        2,
    )
    assert rows[1][:2] == (10, "oom")
    assert rows[2] == (
        10,
        "traceback",
        'RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error | File "/src/train.py", line 12, in <module>',
        9,
    )
    assert rows[3][1] == "error"  # the NCCL exception line also matches the event table
    assert len(rows) == 4


def test_a_pasted_training_script_gives_no_metrics_and_no_events(tmp_path):
    script = [
        "=" * 100,
        "import os",
        "# a comment mentioning Traceback (most recent call last): and UserWarning: x",
        "    print(f'step:{step}/{args.num_iterations} train_loss:{train_loss.item():.4f}')",
        "    loss: 1.0",
        "    print('step 3 | loss=9.9')",
        "=" * 100,
        "Running pytorch 2.5.1+cu124 compiled for CUDA 12.4",
        "=" * 100,
        "step:0/3200 val_loss:10.8258 train_time:487ms step_avg:nanms",
        "step:1/3200 train_loss:10.8258 train_time:6565ms step_avg:nanms",
        "step:13/3200 train_loss:6.5060 train_time:372ms step_avg:123.92ms",
    ]
    run = _write(tmp_path / "run" / "0f8e.txt", script).parent
    data = _read(run)
    assert data.events.height == 0
    assert sorted(data.metrics["key"].unique()) == ["step_avg_ms", "train_loss", "train_time_ms", "val_loss"]
    assert data.metrics.filter(pl.col("key") == "step_avg_ms")["step"].to_list() == [13]  # `nanms`: a placeholder
    # A log that starts straight with Python source, no separator: skipped up to the first metric line.
    source = ["import torch", "raise ValueError('loss: 3')", "warnings.warn('UserWarning: x')", "s:0 tel:11.0092"]
    data = _read(_write(tmp_path / "run2" / "main.log", source).parent)
    assert data.metrics.rows() == [(0, "val_loss", 11.0092, None, "val")]
    assert data.events.height == 0


def test_steps_going_back_start_a_new_segment_and_keep_the_resumed_curve(tmp_path):
    lines = [f"s:{s} trl:{10 - s * 0.1:.4f} lr:0.001 norm:1.0" for s in range(0, 6)]
    lines += ["Resuming from checkpoint ckpt/step_3"]
    lines += [f"s:{s} trl:{20 + s:.4f} lr:0.001 norm:1.0" for s in range(3, 8)]
    data = _read(_write(tmp_path / "main.log", lines).parent)
    loss = dict(data.metrics.filter(pl.col("key") == "train_loss").select("step", "value").iter_rows())
    assert loss == {0: 10.0, 1: 9.9, 2: 9.8, 3: 23.0, 4: 24.0, 5: 25.0, 6: 26.0, 7: 27.0}
    restarts = data.events.filter(pl.col("kind") == "restart").select("step", "line").rows()
    assert restarts == [(5, 7), (3, 8)]  # the log's own line (step: the last seen), then the step going back


def test_two_files_holding_the_same_output_are_not_a_restart(tmp_path):
    lines = [f"step:{s}/10 train_loss:{3 - s * 0.1:.4f}" for s in range(1, 6)]
    _write(tmp_path / "train.log", lines)
    _write(tmp_path / "stdout.log", lines)
    data = _read(tmp_path)
    assert data.events.height == 0
    assert data.metrics.height == 5


def test_a_resumed_job_in_a_second_slurm_file_is_a_restart(tmp_path):
    first = _write(tmp_path / "slurm-101.out", [f"step:{s}/10 train_loss:{3 - s * 0.1:.4f}" for s in range(1, 7)])
    second = _write(tmp_path / "slurm-102.out", [f"step:{s}/10 train_loss:{5 - s * 0.1:.4f}" for s in range(4, 11)])
    os.utime(first, (1_000, 1_000))
    os.utime(second, (2_000, 2_000))
    data = _read(tmp_path)
    loss = dict(data.metrics.select("step", "value").iter_rows())
    assert loss[3] == pytest.approx(2.7) and loss[4] == pytest.approx(4.6) and max(loss) == 10
    assert data.events.select("step", "kind", "file").rows() == [(4, "restart", "slurm-102.out")]


def test_an_enormous_line_is_skipped_in_bounded_memory(tmp_path):
    path = tmp_path / "train.log"
    with open(path, "wb") as handle:
        handle.write(b"step:1/3 train_loss:3.0\n")
        chunk = b"x" * (1 << 20)
        for _ in range(48):  # one 48 MiB line
            handle.write(chunk)
        handle.write(b"\nstep:2/3 train_loss:2.0\r\nstep:3/3 train_loss:1.0\n")
    tracemalloc.start()
    data = _read(tmp_path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, peak
    assert dict(data.metrics.select("step", "value").iter_rows()) == {1: 3.0, 2: 2.0, 3: 1.0}
    assert data.problems == ["train.log: 1 line(s) longer than 65536 bytes skipped (first: line 2)"]


def test_bytes_that_are_not_utf8_are_replaced_and_noted(tmp_path):
    (tmp_path / "train.log").write_bytes(b"step:1/2 train_loss:3.0 \xff\xfe\nstep:2/2 train_loss:2.0\n")
    data = _read(tmp_path)
    assert data.metrics.height == 2
    assert data.problems == ["train.log: 1 line(s) not valid UTF-8, read with replacement characters"]


def test_carriage_return_progress_bars_give_steps_to_hf_console_dicts(tmp_path):
    text = (
        " 10%|#         | 50/500 [00:10<01:30,  4.98it/s]\r{'loss': 2.3012, 'grad_norm': 1.48, 'learning_rate': 4.9e-05, 'epoch': 0.1}\n"
        " 20%|##        | 100/500 [00:20<01:20,  4.98it/s]\r{'eval_loss': 2.2, 'eval_runtime': 1.5, 'epoch': 0.2}\n"
        "{'train_runtime': 100.0, 'train_samples_per_second': 3.2, 'train_loss': 2.1, 'epoch': 1.0}\n"
    )
    _write(tmp_path / "stdout.log", text)
    data = _read(tmp_path)
    assert _value(data.metrics, 50, "loss") == 2.3012
    assert _value(data.metrics, 100, "eval_loss") == 2.2
    assert data.params["summary.train_loss"] == 2.1
    (tmp_path / "trainer_state.json").write_text("{}")
    assert _read(tmp_path).metrics.height == 0  # trainer_state.json holds the same numbers with real steps


def test_generic_lines_need_a_loss_and_keras_epochs_give_the_step(tmp_path):
    lines = [
        "Epoch 2 | step 1200 | loss=2.4312 | lr=3.0e-04 | grad_norm: 0.91",
        "step 1300: saved checkpoint to /ckpt/lr=0.5",
        "final_loss: 0.0",
    ]
    data = _read(_write(tmp_path / "a" / "train.log", lines).parent)
    assert {(r[0], r[1]): r[2] for r in data.metrics.rows()} == {(1200, "loss"): 2.4312, (1200, "lr"): 3e-4, (1200, "grad_norm"): 0.91}
    keras = [
        "Epoch 3/10",
        "  1/1875 [..............................] - ETA: 5:00 - loss: 2.3026 - accuracy: 0.0938",
        "1875/1875 [==============================] - 5s 2ms/step - loss: 0.2345 - accuracy: 0.9100",
    ]
    data = _read(_write(tmp_path / "b" / "train.log", keras).parent)
    assert {(r[0], r[1]): r[2] for r in data.metrics.rows()} == {(3, "loss"): 0.2345, (3, "accuracy"): 0.91}


def test_user_patterns_are_tried_first_and_bad_ones_name_their_entry(tmp_path):
    try:
        text_log.configure([r"^it=(?P<step>\d+) myloss=(?P<my_loss>\S+)$"])
        data = _read(_write(tmp_path / "train.log", ["it=7 myloss=1.25"]).parent)
        assert data.metrics.select("step", "key", "value").rows() == [(7, "my_loss", 1.25)]
        with pytest.raises(ConfigError, match=r"patterns\[1\]"):
            text_log.configure([r"(?P<step>\d+) (?P<x>\d)", r"(?P<step>\d+)"])
    finally:
        text_log.configure([])


def test_only_log_like_txt_files_are_logs(tmp_path):
    _write(tmp_path / "requirements.txt", ["torch==2.1", "numpy"])
    _write(tmp_path / "vocab.txt", ["the", "loss"])
    assert READERS["text_log"].detect(tmp_path) == []
    _write(tmp_path / "4a71cc92.txt", ["import os"] * 3 + ["step:1/2 train_loss:3.0"])
    assert [p.name for p in READERS["text_log"].detect(tmp_path)] == ["4a71cc92.txt"]


def test_lfs_pointers_and_binary_logs_are_recognised_never_parsed(tmp_path):
    lonely = tmp_path / "sweep" / "lonely"
    _write(lonely / "train.log", LFS)
    with_csv = tmp_path / "sweep" / "with_csv"
    _write(with_csv / "run_07-02-2024.log", LFS)
    _write(with_csv / "metrics.csv", ["step,loss", "1,2.0"])
    (with_csv / "stderr.log").write_bytes(b"\x00\x01\x02garbage")
    assert READERS["text_log"].detect(lonely) == []
    assert [r.run_id for r in discover([str(tmp_path / "sweep")])] == ["with_csv"]
    ev, used, problems = read_run_dir(with_csv, "with_csv")
    assert "text_log" not in used and ev.runs["status"][0] == "partial"
    assert problems == [
        "run_07-02-2024.log is a Git-LFS pointer, not a log (fetch it with `git lfs pull`)",
        "stderr.log holds binary data (NUL bytes), not a text log",
    ]


def test_tracker_folders_are_left_to_their_readers(tmp_path):
    wandb_files = tmp_path / "wandb" / "offline-run-20240101_120000-abc123" / "files"
    _write(wandb_files / "output.log", ["step:1/2 train_loss:3.0"])
    _write(wandb_files.parent / "logs" / "debug.log", ["2024-01-01 INFO loss: 2"])
    mlflow_artifacts = tmp_path / "mlruns" / "0" / ("a" * 32) / "artifacts"
    _write(mlflow_artifacts / "train.log", ["step:1/2 train_loss:3.0"])
    for folder in (wandb_files, wandb_files.parent / "logs", mlflow_artifacts):
        assert READERS["text_log"].detect(folder) == []


def _algoperf_log(trials: list[int], loss: float) -> list[str]:
    lines = ["python submission_runner.py --framework=jax --workload=criteo1tb", "WARNING: early warning"]
    for trial in trials:
        lines += [
            "I0306 12:06:30.538099 140443094713536 submission_runner.py:620] Creating tuning directory at"
            f" /experiment_runs/baseline/study_0/criteo1tb_jax/trial_{trial}.",
            "I0306 12:06:53.595175 140301146519296 logging_writer.py:48] [0] global_step=0,"
            f" grad_norm=10.09414291381836, loss={loss + trial}",
            f"I0306 12:25:54.786484 1404 submission_runner.py:469] Time since start: 1154.49s, \tStep: 1, \t{{'train/loss': {loss},"
            " 'validation/loss': 1.98, 'validation/num_examples': 83274637}",
            f"W0306 12:26:00.000000 1404 trial.py:1] warning of trial {trial}",
        ]
    return lines


def test_algoperf_trials_read_the_log_beside_them_that_names_them(tmp_path):
    workload = tmp_path / "sweep" / "study_0" / "criteo1tb_jax"
    for trial in (1, 2, 3):
        _write(workload / f"trial_{trial}" / "measurements.csv", ["global_step,loss,score", f"0,{trial},", f"5,,{trial}"])
    _write(workload / "criteo1tb_jax_03-06-2025-12-06-22.log", _algoperf_log([1], 1.5))
    _write(workload / "criteo1tb_jax_03-06-2025-13-00-00.log", _algoperf_log([2, 3], 2.5))
    _write(workload / "criteo1tb_pytorch_06-02-2024-09-40-08.log", LFS)
    runs = discover([str(tmp_path / "sweep")])
    assert [r.run_id for r in runs] == [f"study_0/criteo1tb_jax/trial_{t}" for t in (1, 2, 3)]
    for trial in (1, 2, 3):
        run_dir = workload / f"trial_{trial}"
        files = READERS["text_log"].detect(run_dir)
        assert len(files) == 1 and files[0].parent == workload
        ev, used, problems = read_run_dir(run_dir, run_dir.name)
        assert problems == [] and used == ["csv", "text_log"]
        warnings = ev.events.filter(pl.col("kind") == "warning")["text"].to_list()
        assert any(f"warning of trial {trial}" in w for w in warnings)
        assert not any(f"warning of trial {other}" in w for w in warnings for other in {1, 2, 3} - {trial})
        # The first trial of a log also owns the lines before its `Creating tuning directory` line.
        assert ("WARNING: early warning" in warnings) == (trial in (1, 2))
        assert ev.events["file"].str.starts_with("../criteo1tb_jax_").all()
        assert _value(ev.metrics, 0, "loss") == trial  # measurements.csv wins the dedup
    assert READERS["text_log"].detect(workload / "trial_9") == []


def test_events_are_capped_per_file_and_repeated_warnings_kept_once(tmp_path, monkeypatch):
    monkeypatch.setattr(text_log, "MAX_EVENTS_PER_FILE", 3)
    lines = ["UserWarning: same thing"] * 5 + [f"NCCL WARN failure {i}" for i in range(5)]
    data = _read(_write(tmp_path / "stderr.err", lines).parent)
    assert data.events["text"].to_list() == [
        "UserWarning: same thing (repeated 5 times)",
        "NCCL WARN failure 0",
        "NCCL WARN failure 1",
    ]
    assert data.problems == ["stderr.err: more than 3 events; 3 not kept"]


def test_parse_logs_without_metrics_reads_events_only(tmp_path):
    path = _write(tmp_path / "output.log", ["step:1/2 train_loss:3.0", "torch.OutOfMemoryError: CUDA out of memory."])
    data = parse_logs(tmp_path, [path], metrics=False)
    assert data.metrics is None
    assert data.events.select("step", "kind").rows() == [(1, "oom")]


def test_nan_losses_are_kept_as_nan(tmp_path):
    data = _read(_write(tmp_path / "main.log", ["s:1 trl:nan lr:0.1 norm:inf"]).parent)
    assert math.isnan(_value(data.metrics, 1, "train_loss"))
    assert _value(data.metrics, 1, "grad_norm") == math.inf


def test_a_line_naming_only_its_step_dates_the_overflow_before_it(tmp_path):
    lines = [
        "[INFO] [logging.py:96:log_dist] [Rank 0] step=4, skipped=0, lr=[0.001]",
        "[INFO] [loss_scaler.py:183:update_scale] [deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 1024, reducing to 512",
        "[INFO] [logging.py:96:log_dist] [Rank 0] step=5, skipped=1, lr=[0.001]",
        "Traceback (most recent call last):",
        '  File "train.py", line 142, in <module>',
        "Exception: Current loss scale already at minimum - cannot decrease scale anymore. Exiting run.",
    ]
    data = _read(_write(tmp_path / "train.log", lines).parent)
    assert data.metrics.height == 0
    assert data.events.select("step", "kind").rows() == [(5, "overflow_skip"), (5, "traceback")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_log_is_a_clear_reason(tmp_path):
    path = _write(tmp_path / "train.log", ["step:1/2 train_loss:3.0"])
    path.chmod(0)
    try:
        ev, _, problems = read_run_dir(tmp_path, "run")
    finally:
        path.chmod(0o644)
    assert ev.runs["status"][0] == "unreadable"
    assert problems == ["train.log: Permission denied"]


def test_an_empty_log_reads_as_a_run_without_values(tmp_path):
    (tmp_path / "train.log").write_bytes(b"")
    ev, used, problems = read_run_dir(tmp_path, "run")
    assert used == ["text_log"] and ev.runs["status"][0] == "unreadable"
    assert problems == [f"{tmp_path}: metrics sources hold no values"]


def test_a_log_inventing_keys_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(text_log, "MAX_KEYS", 3)
    lines = [f"step:{s}/9 train_loss:1.0 k{s}:2.0" for s in range(1, 6)]
    data = _read(_write(tmp_path / "train.log", lines).parent)
    assert sorted(data.metrics["key"].unique()) == ["k1", "k2", "train_loss"]
    assert data.problems == ["more than 3 distinct metric keys; values of further keys dropped"]


def test_terminal_colour_codes_are_removed_before_matching(tmp_path):
    lines = ["\x1b[32mstep:1/2 train_loss:3.0\x1b[0m", "\x1b[33mUserWarning: \x1b[1mcoloured\x1b[0m"]
    data = _read(_write(tmp_path / "train.log", lines).parent)
    assert data.metrics.select("step", "key", "value").rows() == [(1, "train_loss", 3.0)]
    assert data.events.select("kind", "text").rows() == [("warning", "UserWarning: coloured")]
