"""Tiny torch models for the demo runs, with parameter names that say their module type.

Names follow the convention the layer statistics classify by: `embed` for embeddings,
`attn` for attention, `mlp` for feed-forward layers, `norm` for normalisation and
`head` for the output layer.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn


class SelfAttention(nn.Module):
    """Single-head self-attention over the context window, with a residual connection."""

    def __init__(self, dim: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query, key, value = self.qkv(x).chunk(3, dim=-1)
        weights = torch.softmax(query @ key.transpose(1, 2) / math.sqrt(x.shape[-1]), dim=-1)
        return x + self.proj(weights @ value)


class TinyLM(nn.Module):
    """Next-token model: embed the context tokens, attend, flatten, MLP, norm, head."""

    def __init__(self, vocab_size: int, context_len: int, embed_dim: int, hidden_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.attn = SelfAttention(embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(context_len * embed_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.attn(self.embed(tokens)).flatten(1)
        return self.head(self.norm(self.mlp(hidden)))


class BagClassifier(nn.Module):
    """Mean of token embeddings, one hidden layer, class head: a text classifier dominated by its embedding."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, n_classes: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.ReLU())
        self.head = nn.Linear(hidden_dim, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(self.embed(tokens).mean(dim=1)))


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


class DeepMLP(nn.Module):
    """`depth` Linear+activation layers (`mlp.0`, `mlp.2`, ...), an optional final norm, and a head.

    Weights start at N(0, (init_gain / sqrt(fan_in))^2) with zero biases, so `init_gain`
    alone decides whether signals grow or shrink from layer to layer.
    """

    def __init__(
        self, in_dim: int, width: int, depth: int, n_classes: int, activation: str, init_gain: float, use_norm: bool
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"model.activation={activation!r} is not one of {sorted(ACTIVATIONS)}")
        layers: list[nn.Module] = []
        for index in range(depth):
            layers += [nn.Linear(in_dim if index == 0 else width, width), ACTIVATIONS[activation]()]
        self.mlp = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(width) if use_norm else None
        self.head = nn.Linear(width, n_classes)
        with torch.no_grad():
            for layer in [*self.mlp, self.head]:
                if isinstance(layer, nn.Linear):
                    layer.weight.normal_(0.0, init_gain / math.sqrt(layer.in_features))
                    layer.bias.zero_()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.mlp(inputs)
        return self.head(self.norm(hidden) if self.norm is not None else hidden)


def build_model(model_cfg: Mapping[str, Any]) -> nn.Module:
    """The model named by `model.name`, built from the rest of the `model` section."""
    name = model_cfg["name"]
    if name == "tiny_lm":
        return TinyLM(model_cfg["vocab_size"], model_cfg["context_len"], model_cfg["embed_dim"], model_cfg["hidden_dim"])
    if name == "bag_classifier":
        return BagClassifier(model_cfg["vocab_size"], model_cfg["embed_dim"], model_cfg["hidden_dim"], model_cfg["n_classes"])
    if name == "deep_mlp":
        return DeepMLP(
            model_cfg["in_dim"],
            model_cfg["width"],
            model_cfg["depth"],
            model_cfg["n_classes"],
            model_cfg["activation"],
            model_cfg["init_gain"],
            model_cfg["use_norm"],
        )
    raise ValueError(f"model.name={name!r} is not one of tiny_lm, bag_classifier, deep_mlp")


def bag_hidden_dim_for_share(vocab_size: int, embed_dim: int, n_classes: int, embed_share: float) -> int:
    """The BagClassifier hidden width that makes the embedding hold `embed_share` of all parameters."""
    embed_params = vocab_size * embed_dim
    other_params = embed_params * (1.0 - embed_share) / embed_share
    # other = hidden * (embed_dim + 1) + n_classes * (hidden + 1)
    return round((other_params - n_classes) / (embed_dim + 1 + n_classes))


def embedding_share(state_dict: Mapping[str, torch.Tensor]) -> float:
    """Share of parameters held by tensors whose name contains `embed`."""
    total = sum(tensor.numel() for tensor in state_dict.values())
    return sum(tensor.numel() for name, tensor in state_dict.items() if "embed" in name) / total


def _nested(params: Mapping[str, Any]) -> dict[str, Any]:
    """Accept both a nested config and a flat {dotted.key: value} mapping."""
    nested: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            value = _nested(value)
        *parents, leaf = str(key).split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return nested


def model_fn(params: Mapping[str, Any]) -> nn.Module:
    """Probe entry point (SPEC §9): the demo run's model, rebuilt from its hyperparameters."""
    return build_model(_nested(params)["model"])


def batch_fn(params: Mapping[str, Any], n_examples: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe entry point (SPEC §9): validation (inputs, targets) of the demo run's task."""
    from mldebug_ray.demo.tasks import make_task, validation_set

    data_cfg = dict(_nested(params)["data"])
    data_cfg["n_val"] = n_examples
    return validation_set(make_task(data_cfg), data_cfg)
