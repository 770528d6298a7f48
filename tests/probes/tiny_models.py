"""Entry points for probe tests (imported through `probes.code_paths`): tiny models and batches."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """embed -> mlp (Linear, ReLU, Linear, Tanh) -> head, over one token per example."""

    def __init__(self, vocab: int = 16, dim: int = 8, classes: int = 5, scale: float = 1.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 12), nn.ReLU(), nn.Linear(12, dim), nn.Tanh())
        self.head = nn.Linear(dim, classes)
        self.scale = scale

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(self.embed(tokens))) * self.scale


def model_fn(params):
    model = params.get("model", {})
    return TinyNet(model.get("vocab", 16), model.get("dim", 8), model.get("classes", 5), model.get("scale", 1.0))


def batch_fn(params):
    gen = torch.Generator().manual_seed(int(params.get("seed", 0) or 0))
    model = params.get("model", {})
    tokens = torch.randint(0, model.get("vocab", 16), (64,), generator=gen)
    targets = torch.randint(0, model.get("classes", 5), (64,), generator=gen)
    return tokens, targets


def dict_batch_fn(params):
    tokens, targets = batch_fn(params)
    return {"tokens": tokens, "labels": targets}


def loss_fn(model, batch):
    logits = model(batch["tokens"])
    return nn.functional.cross_entropy(logits, batch["labels"])
