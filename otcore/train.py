"""Train, evaluate and retrain networks on tensors held on the device."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from otcore.config import RetrainSpec, TrainSpec
from otcore.data import iterate_batches

EVAL_BATCH = 1000


@dataclass(frozen=True)
class TrainProgress:
    """One step of training, as reported to a progress callback."""

    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based step within the epoch
    steps: int
    loss: float  # mean loss of this batch
    accuracy: float  # percent correct on this batch


@dataclass(frozen=True)
class Evaluation:
    """Accuracy (percent) and mean cross-entropy loss on a split."""

    accuracy: float
    loss: float


ProgressFn = Callable[[TrainProgress], None]


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Logits (N, classes) of a model in eval mode, batch by batch on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def score_logits(logits: torch.Tensor, y: torch.Tensor) -> Evaluation:
    """Accuracy and loss of given logits (or log-probabilities) against labels."""
    y = y.to(logits.device)
    loss = F.cross_entropy(logits, y).item()
    accuracy = 100.0 * (logits.argmax(1) == y).float().mean().item()
    return Evaluation(accuracy=accuracy, loss=loss)


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
    """Re-initialise every layer's parameters from a seed (PyTorch's default init)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()
    return model
