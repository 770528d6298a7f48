"""Output diversity over the probe batch (the `outputs` table): is the model saying the same thing to every input?

The model's prediction at each position is the argmax of its scores over the last
dimension (a class, or the next token at every position of a sequence). Over all
predictions of the batch (in eval mode, no grad):

- distinct_frac: distinct predictions / predictions (distinct-1 of text generation);
- top1_frac: share of predictions equal to the most common one;
- entropy_bits: Shannon entropy of the prediction histogram, in bits (0 when every
  prediction is the same; log2(classes) at most).

Positions whose scores hold a NaN/Inf are left out (argmax over NaN picks the NaN's
index, which would look like a collapse onto one class). Outputs that are not scores
(fewer than 2 dims, or a last dim of 1: regression) give no row.
"""

from __future__ import annotations

import math
from typing import Any


def output_diversity(logits: Any) -> dict[str, float] | None:
    """The `outputs` row (without run_id/step) of a score tensor [..., classes]; None if not scores."""
    import torch

    if not isinstance(logits, torch.Tensor) or logits.dim() < 2 or logits.shape[-1] < 2 or not logits.is_floating_point():
        return None
    scores = logits.detach().reshape(-1, logits.shape[-1])
    scores = scores[torch.isfinite(scores).all(dim=1)]
    if scores.shape[0] == 0:
        return None
    predictions = scores.argmax(dim=1)
    counts = torch.bincount(predictions, minlength=logits.shape[-1]).to(torch.float64)
    n = float(predictions.numel())
    p = counts[counts > 0] / n
    distinct, top1, entropy = torch.stack([(counts > 0).sum().to(torch.float64) / n, counts.max() / n, -(p * torch.log2(p)).sum()]).cpu().tolist()
    return {"distinct_frac": distinct, "top1_frac": top1, "entropy_bits": max(0.0, entropy) if math.isfinite(entropy) else entropy}
