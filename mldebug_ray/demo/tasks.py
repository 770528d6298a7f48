"""Seeded synthetic tasks for the demo runs: a Markov-chain language, token bags and a teacher classifier (labels optionally skewed)."""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import numpy as np
import torch

# Offsets from `data.task_seed`: the task itself, the validation set, the small fixed
# training pool and the choice of leaked examples draw from separate streams so one never
# shifts another.
VAL_SEED_OFFSET = 1
POOL_SEED_OFFSET = 2
LEAK_SEED_OFFSET = 3


class Task(Protocol):
    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` fresh (inputs, targets) examples drawn with `generator`."""


class MarkovLM:
    """Next-token prediction over a fixed random Markov chain; inputs are the last `context_len` tokens."""

    def __init__(self, vocab_size: int, context_len: int, concentration: float, task_seed: int):
        rng = np.random.default_rng(task_seed)
        # A small Dirichlet concentration gives each token a few likely successors,
        # so a model can get far below chance (log vocab_size) but not to zero.
        rows = rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size)
        self.transition = torch.tensor(rows, dtype=torch.float32)
        self.vocab_size = vocab_size
        self.context_len = context_len

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        token = torch.randint(self.vocab_size, (n,), generator=generator)
        sequence = [token]
        for _ in range(self.context_len):
            token = torch.multinomial(self.transition[token], 1, generator=generator).squeeze(1)
            sequence.append(token)
        tokens = torch.stack(sequence, dim=1)
        return tokens[:, :-1], tokens[:, -1]


class TokenBags:
    """Documents of `doc_len` tokens labelled by class; each class owns a slice of the vocabulary."""

    def __init__(self, vocab_size: int, n_classes: int, doc_len: int, signal_frac: float, task_seed: int):
        if vocab_size % n_classes:
            raise ValueError(f"data.vocab_size={vocab_size} must be a multiple of data.n_classes={n_classes}")
        rng = np.random.default_rng(task_seed)
        # Token t belongs to class t % n_classes before this shuffle hides the pattern.
        self.token_ids = torch.tensor(rng.permutation(vocab_size), dtype=torch.long)
        self.vocab_size = vocab_size
        self.n_classes = n_classes
        self.doc_len = doc_len
        self.signal_frac = signal_frac

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(self.n_classes, (n,), generator=generator)
        per_class = self.vocab_size // self.n_classes
        signal = torch.randint(per_class, (n, self.doc_len), generator=generator) * self.n_classes + labels[:, None]
        noise = torch.randint(self.vocab_size, (n, self.doc_len), generator=generator)
        is_signal = torch.rand((n, self.doc_len), generator=generator) < self.signal_frac
        return self.token_ids[torch.where(is_signal, signal, noise)], labels


class TeacherClasses:
    """Gaussian inputs labelled by the argmax of a fixed random linear teacher."""

    def __init__(self, in_dim: int, n_classes: int, task_seed: int):
        self.teacher = torch.randn(in_dim, n_classes, generator=torch.Generator().manual_seed(task_seed))
        self.in_dim = in_dim

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.randn(n, self.in_dim, generator=generator)
        return inputs, (inputs @ self.teacher).argmax(dim=1)


class SkewedLabels:
    """Another task's examples, each kept with the probability `class_keep[label]`: a skewed label distribution."""

    def __init__(self, task: Task, class_keep: list[float]):
        if not class_keep or not all(0.0 < keep <= 1.0 for keep in class_keep):
            raise ValueError(f"data.class_keep={class_keep!r} must be probabilities in (0, 1], one per class")
        self.task = task
        self.keep = torch.tensor(class_keep, dtype=torch.float32)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = [], []
        kept = 0
        draw = max(64, 2 * n)  # one or two rounds when the common classes are kept
        while kept < n:
            x, y = self.task.sample(draw, generator)
            chosen = torch.rand(len(y), generator=generator) < self.keep[y]
            inputs.append(x[chosen])
            labels.append(y[chosen])
            kept += int(chosen.sum())
        return torch.cat(inputs)[:n], torch.cat(labels)[:n]


def make_task(data_cfg: Mapping[str, Any]) -> Task:
    """The task named by `data.task`, built from the rest of the `data` section.

    `data.class_keep` (optional, one probability per class) skews its labels: an example of
    class c is kept with probability class_keep[c] (SkewedLabels).
    """
    name, seed = data_cfg["task"], data_cfg["task_seed"]
    if name == "markov_lm":
        task: Task = MarkovLM(data_cfg["vocab_size"], data_cfg["context_len"], data_cfg["concentration"], seed)
    elif name == "token_bags":
        task = TokenBags(data_cfg["vocab_size"], data_cfg["n_classes"], data_cfg["doc_len"], data_cfg["signal_frac"], seed)
    elif name == "teacher_classes":
        task = TeacherClasses(data_cfg["in_dim"], data_cfg["n_classes"], seed)
    else:
        raise ValueError(f"data.task={name!r} is not one of markov_lm, token_bags, teacher_classes")
    if data_cfg.get("class_keep"):
        task = SkewedLabels(task, list(data_cfg["class_keep"]))
    return task


def training_pool(task: Task, data_cfg: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The fixed training set when `data.n_train` is set (the same for every seed), else None (fresh samples)."""
    if data_cfg.get("n_train") is None:
        return None
    return task.sample(data_cfg["n_train"], torch.Generator().manual_seed(data_cfg["task_seed"] + POOL_SEED_OFFSET))


def validation_set(task: Task, data_cfg: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed validation examples, the same for every run of a task whatever its seed.

    With `data.leak_frac` (needs `data.n_train`), that share of the validation examples,
    at random positions, is replaced by copies of random training-pool examples: the
    leaked split of a pipeline that sampled validation from data it also trained on.
    """
    generator = torch.Generator().manual_seed(data_cfg["task_seed"] + VAL_SEED_OFFSET)
    inputs, targets = task.sample(data_cfg["n_val"], generator)
    leak_frac = data_cfg.get("leak_frac") or 0.0
    if leak_frac:
        pool = training_pool(task, data_cfg)
        if pool is None:
            raise ValueError("data.leak_frac needs data.n_train: the examples leak from the fixed training pool")
        n_leaked = round(leak_frac * len(targets))
        leak_generator = torch.Generator().manual_seed(data_cfg["task_seed"] + LEAK_SEED_OFFSET)
        positions = torch.randperm(len(targets), generator=leak_generator)[:n_leaked]
        sources = torch.randperm(len(pool[1]), generator=leak_generator)[:n_leaked]
        inputs, targets = inputs.clone(), targets.clone()
        inputs[positions], targets[positions] = pool[0][sources], pool[1][sources]
    return inputs, targets


class TrainStream:
    """Training batches: fresh samples every step, or epochs over a small fixed pool when `data.n_train` is set."""

    def __init__(self, task: Task, data_cfg: Mapping[str, Any], batch_size: int, seed: int):
        self.task = task
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.pool = training_pool(task, data_cfg)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool is None:
            return self.task.sample(self.batch_size, self.generator)
        if len(self.order) < self.batch_size:
            self.order = torch.randperm(len(self.pool[1]), generator=self.generator)
        index, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return self.pool[0][index], self.pool[1][index]
