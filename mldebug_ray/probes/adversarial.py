"""Adversarial robustness on the probe batch (the `robustness` table): accuracy clean and under small FGSM / PGD perturbations.

In eval mode, on the probe device, with the checkpoint's weights and the batch from
`batch_fn` (SPEC §9):

- targets: the integer labels of a `(inputs, targets)` batch, or `labels` of a dict
  batch (Hugging Face style; positions labelled -100 are ignored). A batch without
  integer targets, or a model whose output is not class scores, gives no rows and one
  logged line saying why.
- what is perturbed: a floating-point input tensor itself (`inputs`, or in a dict batch
  the first of `pixel_values`, `inputs_embeds`, `input_values`, `x`, `inputs`, else the
  first floating tensor); for integer inputs (token ids) the output of the model's first
  `nn.Embedding`, through a forward hook that adds the perturbation to it: a token id has
  no neighbour one epsilon away, its embedding does (the same choice as adversarial
  training for text, Miyato et al. 2017). A model with integer inputs and no
  `nn.Embedding` gives no rows and says so.
- budget: an L-infinity ball of radius epsilon_abs = `probes.adversarial.epsilon` x the
  standard deviation of the perturbed tensor over the batch (inputs or embedding
  outputs), so one setting means the same thing whatever the input's scale. The default
  0.016 is 1/255 on [0, 1] images, whose pixel std is about 0.25 (CIFAR-10 channel stds
  0.247 / 0.243 / 0.261): the low end of the budgets used on images (1/255 to 16/255),
  a change no person sees, far below the 8/255 of Madry et al. (2018). Inputs are not clipped to a valid
  range (it is not known here); for images that makes the attack at most slightly
  stronger than a clipped one.
- attacks: FGSM (Goodfellow et al., "Explaining and Harnessing Adversarial Examples",
  ICLR 2015): one step of epsilon_abs * sign(gradient of the cross-entropy); PGD (Madry
  et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018): a
  uniform random start in the ball (fixed seed), `probes.adversarial.pgd_steps` signed
  gradient steps of size 2.5 * epsilon_abs / steps (the rule of the MadryLab `robustness`
  library: the walk can cross the ball and come back), each projected back onto the ball;
  accuracy at the last iterate.
  PGD ascends the margin loss (best wrong score minus true score, Carlini & Wagner 2017)
  rather than cross-entropy: a confident model's float cross-entropy gradient is exactly 0
  (saturated softmax), which would make it look robust; FGSM keeps the cross-entropy of
  its definition, computed in float64 to delay that.

Rows: one per attack (`fgsm`, `pgd`) with epsilon (relative), epsilon_abs, the perturbed
site, clean_acc_frac and adv_acc_frac over the same examples (an example already wrong
counts as wrong under attack: robust accuracy), n_examples and n_classes. Only gradients
with respect to the perturbation are computed (`torch.autograd.grad`): the parameters'
`.grad` is left untouched.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from mldebug_ray.errors import ConfigError
from mldebug_ray.probes.model_loop import forward, logits_of

log = logging.getLogger(__name__)

ATTACKS = ("fgsm", "pgd")
# PGD step size 2.5 * epsilon / steps (MadryLab's `robustness` library).
PGD_STEP_FACTOR = 2.5
# The first floating tensor of a dict batch under one of these names is the input perturbed.
FLOAT_INPUT_KEYS = ("pixel_values", "inputs_embeds", "input_values", "x", "inputs")
IGNORE_INDEX = -100  # Hugging Face's "no label here"


class RobustnessSkipped(Exception):
    """The batch or model does not allow the attack; the message says why (one line)."""


@dataclass
class AdversarialConfig:
    """The robustness probe's attack (Hydra key `probes.adversarial`; the probe runs when
    `robustness` is in `probes.model_probes`)."""

    epsilon: float = 0.016
    """L-infinity budget relative to the perturbed tensor's std: 0.016 is 1/255 on [0, 1]
    images (pixel std about 0.25), the low end of the budgets used on images (module docstring)."""
    pgd_steps: int = 10
    """PGD iterations (Madry et al. 2018 use 7 to 40); each costs one forward and backward of the probe batch."""
    seed: int = 0
    """Seed of PGD's random start: the same checkpoint gives the same rows."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"probes.adversarial.epsilon must be a finite number > 0, got {self.epsilon}")
        if not 1 <= self.pgd_steps <= 1000:
            raise ConfigError(f"probes.adversarial.pgd_steps must be in [1, 1000], got {self.pgd_steps}")


def _targets(batch: Any) -> Any:
    import torch

    if isinstance(batch, Mapping):
        labels = batch.get("labels")
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        labels = batch[1]
    else:
        labels = None
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        raise RobustnessSkipped("the probe batch has no integer targets (a (inputs, targets) pair or a dict with 'labels')")
    return labels


class _Site:
    """Where the perturbation is added: `run(delta)` is the model's output with `delta` added there."""

    def __init__(self, model: Any, batch: Any):
        import torch

        self.model, self.batch = model, batch
        self.key: Any = None  # index or dict key of a floating input, None for the embedding hook
        self.embedding_name: str | None = None
        if isinstance(batch, (tuple, list)):
            if isinstance(batch[0], torch.Tensor) and batch[0].is_floating_point():
                self.key = 0
            elif not (isinstance(batch[0], torch.Tensor) and not batch[0].is_floating_point()):
                raise RobustnessSkipped("the probe batch's inputs are not a tensor")
        elif isinstance(batch, Mapping):
            floats = [k for k, v in batch.items() if k != "labels" and isinstance(v, torch.Tensor) and v.is_floating_point()]
            named = [k for k in FLOAT_INPUT_KEYS if k in floats]
            if named or floats:
                self.key = (named or floats)[0]
        if self.key is None:
            self.embedding_name = next((name for name, m in model.named_modules() if isinstance(m, torch.nn.Embedding)), None)
            if self.embedding_name is None:
                raise RobustnessSkipped("integer inputs and no nn.Embedding to perturb: token ids have no small perturbation")
            self.embedding = model.get_submodule(self.embedding_name)

    @property
    def name(self) -> str:
        return f"embedding:{self.embedding_name}" if self.embedding_name is not None else f"input:{self.key}"

    def clean_tensor(self) -> Any:
        """The unperturbed tensor at the site (the embedding's output from one forward)."""
        import torch

        if self.key is not None:
            return self.batch[self.key].detach()
        captured: list[Any] = []
        handle = self.embedding.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
        try:
            with torch.no_grad():
                forward(self.model, self.batch)
        finally:
            handle.remove()
        return captured[0]

    def run(self, delta: Any | None) -> Any:
        if delta is None:
            return forward(self.model, self.batch)
        if self.key is not None:
            if isinstance(self.batch, Mapping):
                perturbed: Any = {**self.batch, self.key: self.batch[self.key] + delta}
            else:
                perturbed = (self.batch[0] + delta, *self.batch[1:])
                perturbed = type(self.batch)(perturbed) if isinstance(self.batch, list) else perturbed
            return forward(self.model, perturbed)
        handle = self.embedding.register_forward_hook(lambda _m, _i, out: out + delta.to(out.dtype))
        try:
            return forward(self.model, self.batch)
        finally:
            handle.remove()


def _scores(output: Any, targets: Any) -> tuple[Any, Any]:
    """Per-position class scores [N, C] and targets [N], positions labelled IGNORE_INDEX dropped."""
    logits = logits_of(output)
    if logits is None or not logits.is_floating_point() or logits.dim() < 2 or logits.shape[-1] < 2 or logits.shape[:-1] != targets.shape:
        raise RobustnessSkipped("the model's output is not class scores shaped like the targets")
    scores, flat = logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
    keep = flat != IGNORE_INDEX
    return scores[keep], flat[keep]


def _correct(output: Any, targets: Any) -> Any:
    import torch

    scores, flat = _scores(output, targets)
    # A NaN/Inf score row is never a correct prediction (argmax of NaN is meaningless).
    return (scores.argmax(dim=1) == flat) & torch.isfinite(scores).all(dim=1)


def cross_entropy_loss(scores: Any, targets: Any) -> Any:
    """FGSM's loss: cross-entropy, in float64. In float32 the softmax of an example whose logit
    margin exceeds ~17 rounds to exactly one-hot and its gradient to 0, which hides the example
    from the attack (gradient masking by saturation); float64 moves that to a margin of ~37."""
    import torch.nn.functional as F

    return F.cross_entropy(scores.double(), targets, reduction="sum")


def margin_loss(scores: Any, targets: Any) -> Any:
    """PGD's loss: the best wrong class's score minus the true class's (Carlini & Wagner 2017),
    summed; unlike cross-entropy its gradient never vanishes, however confident the model."""
    import torch

    true = scores.gather(1, targets[:, None]).squeeze(1)
    wrong = scores.masked_fill(torch.nn.functional.one_hot(targets, scores.shape[1]).bool(), float("-inf")).amax(dim=1)
    return (wrong - true).sum()


def _loss_grad(site: _Site, delta: Any, targets: Any, loss_fn: Callable[[Any, Any], Any]) -> Any:
    import torch

    delta = delta.detach().requires_grad_(True)
    with torch.enable_grad():
        scores, flat = _scores(site.run(delta), targets)
        (grad,) = torch.autograd.grad(loss_fn(scores, flat), delta)
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def attack_rows(model: Any, batch: Any, cfg: AdversarialConfig) -> list[dict[str, Any]]:
    """The `robustness` rows (without run_id/step) of one model and batch; RobustnessSkipped when it cannot attack."""
    import torch

    targets = _targets(batch)
    model.eval()
    site = _Site(model, batch)
    clean = site.clean_tensor()
    if not clean.is_floating_point():
        raise RobustnessSkipped(f"the perturbed tensor at {site.name} is not floating point")
    with torch.no_grad():
        clean_output = site.run(None)
        clean_correct = _correct(clean_output, targets)
        n_classes = int(logits_of(clean_output).shape[-1])
    n = int(clean_correct.numel())
    if n == 0:
        raise RobustnessSkipped("no labelled positions in the probe batch")
    finite = clean[torch.isfinite(clean)].float()
    scale = float(finite.std()) if finite.numel() > 1 else math.nan
    if not math.isfinite(scale) or scale <= 0:
        raise RobustnessSkipped(f"the tensor at {site.name} has no spread to scale epsilon by (std {scale})")
    eps = cfg.epsilon * scale
    clean_acc = int(clean_correct.sum()) / n
    rows = []
    for attack in ATTACKS:
        if attack == "fgsm":
            zero = torch.zeros_like(clean, dtype=torch.float32)
            delta = eps * _loss_grad(site, zero, targets, cross_entropy_loss).sign()
            steps = 1
        else:
            generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
            delta = ((torch.rand(clean.shape, generator=generator) * 2 - 1) * eps).to(clean.device)
            alpha = PGD_STEP_FACTOR * eps / cfg.pgd_steps
            for _ in range(cfg.pgd_steps):
                delta = (delta + alpha * _loss_grad(site, delta, targets, margin_loss).sign()).clamp(-eps, eps)
            steps = cfg.pgd_steps
        with torch.no_grad():
            adv_correct = _correct(site.run(delta.to(clean.dtype)), targets)
        rows.append(
            {
                "attack": attack,
                "epsilon": cfg.epsilon,
                "epsilon_abs": eps,
                "site": site.name,
                "attack_steps": steps,
                "clean_acc_frac": clean_acc,
                "adv_acc_frac": int(adv_correct.sum()) / n,
                "n_examples": n,
                "n_classes": n_classes,
            }
        )
    return rows


def robustness_rows(model: Any, batch: Any, cfg: AdversarialConfig, note: Callable[[str], None]) -> list[dict[str, Any]]:
    """`attack_rows`, or no rows and one `note` saying why the attack does not apply.

    An unexpected failure (the user's model under a perturbed input, an OOM) is logged as
    a warning and gives no rows: the other probes of the checkpoint keep theirs.
    """
    try:
        return attack_rows(model, batch, cfg)
    except RobustnessSkipped as exc:
        note(f"robustness probe skipped: {exc}")
    except Exception as exc:
        log.warning("robustness probe failed: %s: %s", type(exc).__name__, " ".join(str(exc).split())[:300])
        log.debug("robustness probe failed", exc_info=True)
    return []
