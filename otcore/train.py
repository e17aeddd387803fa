"""Train, evaluate and retrain networks on tensors held on the device."""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from otcore.comparison import Evaluation  # noqa: F401  (re-exported: what evaluate returns)
from otcore.config import RetrainSpec, TrainSpec
from otcore.data import iterate_batches
from otcore.activations import EVAL_BATCH, predict_logits  # noqa: F401  (re-exported: train's public API)


@dataclass(frozen=True)
class TrainProgress:
    """One step of training, as reported to a progress callback."""

    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based step within the epoch
    steps: int
    loss: float  # mean loss of this batch
    accuracy: float  # percent correct on this batch


ProgressFn = Callable[[TrainProgress], None]


def score_logits(logits: torch.Tensor, y: torch.Tensor) -> Evaluation:
    """Accuracy and loss of given logits (or log-probabilities) against labels."""
    y = y.to(logits.device)
    loss = F.cross_entropy(logits, y).item()
    correct = (logits.argmax(1) == y).float()
    accuracy = 100.0 * correct.mean().item()
    classes = logits.shape[1]
    totals = torch.bincount(y, minlength=classes)
    hits = torch.bincount(y, weights=correct, minlength=classes)
    per_class = [100.0 * h / t if t else None for h, t in zip(hits.tolist(), totals.tolist())]
    return Evaluation(accuracy=accuracy, loss=loss, per_class=per_class)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Evaluation:
    """Accuracy (percent) and mean loss of a model on (x, y)."""
    return score_logits(predict_logits(model, x), y)


def lr_schedule(optimizer: torch.optim.Optimizer, spec: TrainSpec | RetrainSpec, epochs: int,
                steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-step scheduler of a recipe: None for training from scratch and the 'constant' schedule.

    'cosine' anneals lr to 0 over all epochs * steps steps (per step, so one epoch decays too);
    'step' multiplies lr by decay_factor after every decay_epochs epochs, as the reference's
    --retrain-lr-decay-epochs / --retrain-lr-decay-factor do.
    """
    if not isinstance(spec, RetrainSpec) or spec.schedule == "constant":
        return None
    if spec.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs * steps, 1))
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec.decay_epochs * steps, gamma=spec.decay_factor)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: TrainSpec | RetrainSpec,
          progress: ProgressFn | None = None, epochs: int | None = None) -> nn.Module:
    """Train in place with SGD + momentum on shuffled mini-batches; returns the model.

    A TrainSpec trains from scratch at a constant lr for spec.epochs; a RetrainSpec retrains for
    `epochs` (its step's budget) under its schedule. Pruning masks from torch.nn.utils.prune stay
    in force: the forward pre-hook recomputes weight = weight_orig * mask, so pruned weights stay
    exactly zero.
    """
    epochs = spec.epochs if epochs is None else epochs
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum,
                                weight_decay=spec.weight_decay)
    generator = torch.Generator().manual_seed(spec.seed)
    steps = (len(x) + spec.batch_size - 1) // spec.batch_size
    scheduler = lr_schedule(optimizer, spec, epochs, steps)
    model.train()
    for epoch in range(1, epochs + 1):
        for step, (xb, yb) in enumerate(iterate_batches(x, y, spec.batch_size, generator), start=1):
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if progress is not None:
                acc = 100.0 * (logits.argmax(1) == yb).float().mean().item()
                progress(TrainProgress(epoch, epochs, step, steps, loss.item(), acc))
    model.eval()
    return model


def init_model(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every layer's parameters from a seed (PyTorch's default init), in place.

    Draws from a private generator, never the global one another thread may be seeding or drawing
    from; in the same order and distributions as `reset_parameters` after `torch.manual_seed(seed)`,
    so the values are the ones a sequential global-seeded init gives.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                _default_init(module, generator)
            elif any(True for _ in module.parameters(recurse=False)):
                raise TypeError(f"init_model covers Linear and Conv2d layers, not {type(module).__name__}")
    return model


def _default_init(module: nn.Linear | nn.Conv2d, generator: torch.Generator) -> None:
    """torch's reset_parameters of Linear/Conv2d (kaiming-uniform weight, uniform bias), drawn from `generator`."""
    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
    if module.bias is not None:
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(module.bias, -bound, bound, generator=generator)
