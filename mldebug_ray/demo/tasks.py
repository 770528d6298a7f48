"""Seeded synthetic tasks for the demo runs: a Markov-chain language, token bags and a teacher classifier."""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import numpy as np
import torch

# Offsets from `data.task_seed`: the task itself, the validation set and the small
# fixed training pool draw from separate streams so one never shifts another.
VAL_SEED_OFFSET = 1
POOL_SEED_OFFSET = 2


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


def make_task(data_cfg: Mapping[str, Any]) -> Task:
    """The task named by `data.task`, built from the rest of the `data` section."""
    name, seed = data_cfg["task"], data_cfg["task_seed"]
    if name == "markov_lm":
        return MarkovLM(data_cfg["vocab_size"], data_cfg["context_len"], data_cfg["concentration"], seed)
    if name == "token_bags":
        return TokenBags(data_cfg["vocab_size"], data_cfg["n_classes"], data_cfg["doc_len"], data_cfg["signal_frac"], seed)
    if name == "teacher_classes":
        return TeacherClasses(data_cfg["in_dim"], data_cfg["n_classes"], seed)
    raise ValueError(f"data.task={name!r} is not one of markov_lm, token_bags, teacher_classes")


def validation_set(task: Task, data_cfg: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed validation examples, the same for every run of a task whatever its seed."""
    generator = torch.Generator().manual_seed(data_cfg["task_seed"] + VAL_SEED_OFFSET)
    return task.sample(data_cfg["n_val"], generator)


class TrainStream:
    """Training batches: fresh samples every step, or epochs over a small fixed pool when `data.n_train` is set."""

    def __init__(self, task: Task, data_cfg: Mapping[str, Any], batch_size: int, seed: int):
        self.task = task
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.pool: tuple[torch.Tensor, torch.Tensor] | None = None
        self.order = torch.empty(0, dtype=torch.long)
        if data_cfg.get("n_train") is not None:
            pool_generator = torch.Generator().manual_seed(data_cfg["task_seed"] + POOL_SEED_OFFSET)
            self.pool = task.sample(data_cfg["n_train"], pool_generator)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool is None:
            return self.task.sample(self.batch_size, self.generator)
        if len(self.order) < self.batch_size:
            self.order = torch.randperm(len(self.pool[1]), generator=self.generator)
        index, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return self.pool[0][index], self.pool[1][index]
