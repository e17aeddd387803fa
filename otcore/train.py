"""Train, evaluate and retrain networks on tensors held on the device."""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.nn.utils import prune as torch_prune
from torch import nn

from otcore.comparison import Evaluation  # noqa: F401  (re-exported: what evaluate returns)
from otcore.config import RetrainSpec, SpecError, TrainSpec
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


def _sgd_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: TrainSpec | RetrainSpec,
               epochs: int, rows: torch.Tensor | None = None) -> Iterator[TrainProgress]:
    """SGD + momentum on shuffled mini-batches of (x, y), in place; yields after every step (model in train mode).

    rows: the examples to train on (None: all), gathered batch by batch, so a subset never copies the split.
    """
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum,
                                weight_decay=spec.weight_decay)
    generator = torch.Generator().manual_seed(spec.seed)
    steps = (len(x if rows is None else rows) + spec.batch_size - 1) // spec.batch_size
    scheduler = lr_schedule(optimizer, spec, epochs, steps)
    model.train()
    for epoch in range(1, epochs + 1):
        batches = iterate_batches(x, y, spec.batch_size, generator) if rows is None else _subset_batches(
            x, y, rows, spec.batch_size, generator)
        for step, (xb, yb) in enumerate(batches, start=1):
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            acc = 100.0 * (logits.argmax(1) == yb).float().mean().item()
            yield TrainProgress(epoch, epochs, step, steps, loss.item(), acc)


def _subset_batches(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, batch_size: int,
                    generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches of the examples `rows` of (x, y)."""
    order = rows[torch.randperm(len(rows), generator=generator)].to(x.device)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: TrainSpec | RetrainSpec,
          progress: ProgressFn | None = None, epochs: int | None = None) -> nn.Module:
    """Train in place with SGD + momentum on shuffled mini-batches; returns the model.

    A TrainSpec trains from scratch at a constant lr for spec.epochs; a RetrainSpec trains for
    `epochs` under its schedule, on all of (x, y) and without keeping the best (that is `retrain`).
    Pruning masks from torch.nn.utils.prune stay in force: the forward pre-hook recomputes
    weight = weight_orig * mask, so pruned weights stay exactly zero.
    """
    for report in _sgd_steps(model, x, y, spec, spec.epochs if epochs is None else epochs):
        if progress is not None:
            progress(report)
    settle_batch_norms(model, x)
    model.eval()
    return model


SETTLE_EXAMPLES = 4096  # training examples whose statistics the batch norms keep after training (the first ones)


@torch.no_grad()
def settle_batch_norms(model: nn.Module, x: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """Re-estimate every batch norm's running statistics on the training examples, in place ("precise BN").

    The momentum averages of a short run lag its weights, and eval mode normalises by them: torchvision's
    resnet18 on digits after 3 epochs scored 33.6 % on test with them and 80.0 % with them re-estimated.
    rows: the examples trained on (None: all of x); at most SETTLE_EXAMPLES of them are used. A network
    without batch norms is left as it is."""
    from otcore.fusion.batch_norm import batch_norms, reestimate_batch_norms

    if not batch_norms(model):
        return
    sample = x[:SETTLE_EXAMPLES] if rows is None else x[rows[:SETTLE_EXAMPLES].to(x.device)]
    if len(sample) >= 2:  # a single example has no variance to keep: the running statistics stay as trained
        reestimate_batch_norms(model, sample)  # in place: the model is the caller's own, in training


CHECKS_IN_ONE_EPOCH = 4  # validation checkpoints of a one-epoch retraining (longer ones: one per epoch)


@dataclass(frozen=True)
class Checkpoint:
    """One evaluation of a retraining on its validation part."""

    epoch: float  # epochs done when evaluated: 0 is the network as it came in; 0.25 a quarter of the first
    accuracy: float  # percent correct on the validation part
    loss: float | None  # mean cross-entropy there; None when not finite (a diverged net)


@dataclass
class Retrained:
    """What `retrain` returns: the best network seen, when it was seen, and every evaluation."""

    model: nn.Module
    best_epoch: float  # 0: no checkpoint beat the network as it came in, which is returned unchanged
    validation: list[Checkpoint]  # in order; the first is epoch 0
    fit_examples: int  # examples retrained on
    validation_examples: int  # examples of the validation part

    def record(self) -> dict:
        """The JSON-able summary a cached result stores: best_epoch, validation curve, split sizes."""
        return {"best_epoch": self.best_epoch, "validation": [c.__dict__ for c in self.validation],
                "fit_examples": self.fit_examples, "validation_examples": self.validation_examples}


def retraining_split(n: int, spec: RetrainSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(retraining indices, validation indices) of a train split of n examples, disjoint, drawn with validation_seed.

    The split's first spec.train_examples examples of one seeded permutation (all n when 0) are used;
    validation_fraction of them (at least one) are held out for validation, the rest are retrained on.
    """
    if spec.train_examples > n:
        raise SpecError(f"retraining examples ({spec.train_examples}) exceed the train split ({n} examples)")
    used = torch.randperm(n, generator=torch.Generator().manual_seed(spec.validation_seed))[:spec.train_examples or n]
    held = max(1, round(spec.validation_fraction * len(used)))
    if held >= len(used):
        raise SpecError(f"a train split of {len(used)} examples leaves nothing to retrain on after holding out "
                        f"{spec.validation_fraction:g} of it for validation")
    return used[held:], used[:held]


def retrain(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: RetrainSpec, epochs: int,
            progress: ProgressFn | None = None) -> Retrained:
    """Retrain `model` in place on part of (x, y) and return the best state seen on the rest (validation).

    The validation part (retraining_split) is scored before retraining and after every epoch, or
    CHECKS_IN_ONE_EPOCH times in a one-epoch retraining. The best (accuracy, then loss) is loaded back
    into the model; a checkpoint must beat the best so far strictly, so ties keep the network as it
    came in (exact ties too) and it is never returned worse on validation. Masks stay attached: the state saved and
    restored holds weight_orig and the unchanged masks, so the returned net is a masked state.
    """
    fit, held = retraining_split(len(x), spec)
    x_val, y_val = x[held], y[held]  # a tenth of the split by default; the rest is gathered batch by batch
    steps = (len(fit) + spec.batch_size - 1) // spec.batch_size
    checks = CHECKS_IN_ONE_EPOCH if epochs == 1 else 1
    at = {min(steps, math.ceil(k * steps / checks)) for k in range(1, checks + 1)}  # steps ending a checkpoint

    def check(epoch: float) -> Checkpoint:
        if epoch > 0:  # eval mode normalises by them: a checkpoint is scored and kept with them settled
            settle_batch_norms(model, x, fit)
        model.eval()  # the caller's private copy (retrain trains in place), so its mode may be switched
        score = evaluate(model, x_val, y_val)
        model.train()
        return Checkpoint(epoch, score.accuracy, score.loss if math.isfinite(score.loss) else None)

    curve = [check(0.0)]
    best, best_state = curve[0], _saved(model)
    for report in _sgd_steps(model, x, y, spec, epochs, fit):
        if progress is not None:
            progress(report)
        if report.step in at:
            point = check(round(report.epoch - 1 + report.step / steps if checks > 1 else report.epoch, 4))
            curve.append(point)
            if _better(point, best):
                best, best_state = point, _saved(model)
    model.load_state_dict(best_state)
    _refresh_masked(model)
    model.eval()
    return Retrained(model, best.epoch, curve, len(fit), len(held))


def _saved(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _refresh_masked(model: nn.Module) -> None:
    """Set each masked parameter's attribute to orig * mask of the restored state (else it holds the last step's)."""
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, torch_prune.BasePruningMethod):
                setattr(module, hook._tensor_name, hook.apply_mask(module))


def _better(point: Checkpoint, best: Checkpoint) -> bool:
    """Strictly better on validation: higher accuracy, or the same with a lower (finite) loss."""
    if point.accuracy != best.accuracy:
        return point.accuracy > best.accuracy
    return point.loss is not None and (best.loss is None or point.loss < best.loss)


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
            elif isinstance(module, _NORMS):
                module.reset_parameters()  # ones and zeros, statistics reset: no draw
            else:
                for param in module.parameters(recurse=False):
                    _other_init(param, generator)
    return model


# Normalisation layers of networks from outside the zoo (torchvision's, timm's): their init draws nothing.
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _other_init(param: torch.Tensor, generator: torch.Generator) -> None:
    """Any other layer's own parameter (timm's layer scales, embeddings, tokens): a constant stays as its
    library set it (layer scales, zero tokens: no draw), anything drawn is drawn again here, normal(0, 0.02)
    as timm's and ViT's embeddings, so a network's initial weights depend on the seed alone."""
    flat = param.detach().flatten()
    if flat.numel() and not bool((flat == flat[0]).all()):
        param.normal_(0.0, 0.02, generator=generator)


def _default_init(module: nn.Linear | nn.Conv2d, generator: torch.Generator) -> None:
    """torch's reset_parameters of Linear/Conv2d (kaiming-uniform weight, uniform bias), drawn from `generator`."""
    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
    if module.bias is not None:
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(module.bias, -bound, bound, generator=generator)
