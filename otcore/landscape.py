"""Loss landscapes: along a direction, along paths between models, on a plane through a model.

Every function evaluates many weight vectors at once: the states θ_i = base + Σ_d c_id · dir_d are
built chunk by chunk and run through `torch.func.functional_call` under `torch.func.vmap`, so no
model is ever copied per point. A state is the flat trainable parameters θ (the layout of
`otcore.hessian`, P entries) followed by the model's other floating tensors (frozen parameters,
batch-norm statistics), which interpolation moves too and perturbations leave alone.
Filter normalisation follows Li et al., "Visualizing the Loss Landscape of Neural Nets" (2018).
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from otcore.hessian import Batches, FlatLayout, eval_model, trainable_layout

Progress = Callable[[float], None]

# States evaluated per vmap call: peak memory is about CHUNK forward passes of one batch plus CHUNK
# state vectors. On the CPU the size hardly matters (bench MLP, 21 points: chunks of 1 to 21 within 20%).
CHUNK = 8


@dataclass
class Curve:
    """Loss and accuracy along a one-parameter family of weights; tensors [L] on the CPU (float64)."""

    lambdas: Tensor  # step along the direction, or position along a path (0 = first model, 1 = second, ...)
    loss_mean: Tensor  # mean cross-entropy over the batches, weighted by batch size
    loss_std: Tensor  # its spread over the batches (batch-size weighted)
    accuracy_mean: Tensor
    accuracy_std: Tensor


@dataclass
class Surface:
    """Loss and accuracy on the plane θ + α·d1 + β·d2: alphas [n1], betas [n2], loss and accuracy [n1, n2]."""

    alphas: Tensor
    betas: Tensor
    loss: Tensor
    accuracy: Tensor


def _state_layout(model: nn.Module) -> FlatLayout:
    """θ's layout followed by the model's other floating tensors (frozen parameters, float buffers)."""
    theta = trainable_layout(model)
    extra = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()]
             if n not in theta.names and t.is_floating_point()]
    return FlatLayout(theta.names + tuple(n for n, _ in extra), theta.shapes + tuple(t.shape for _, t in extra))


def _state(model: nn.Module, layout: FlatLayout) -> Tensor:
    return layout.flatten({**dict(model.named_parameters()), **dict(model.named_buffers())})


def _evaluate(model: nn.Module, layout: FlatLayout, batches: Batches, base: Tensor | None, directions: Tensor,
              coefficients: Tensor, chunk: int, progress: Progress | None) -> tuple[Tensor, Tensor]:
    """Loss and accuracy [L, n_batches] of states base + coefficients [L, D] @ directions [D, S]."""
    if not batches:
        raise ValueError("no batches to evaluate the loss on")

    def loss_and_accuracy(state: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = functional_call(model, layout.unflatten(state), (x,))
        return F.cross_entropy(logits, y), (logits.argmax(-1) == y).to(logits.dtype).mean()

    batched = vmap(loss_and_accuracy, in_dims=(0, None, None))
    count = coefficients.shape[0]
    losses = directions.new_zeros(count, len(batches))
    accuracies = torch.zeros_like(losses)
    coefficients = coefficients.to(directions)
    with torch.no_grad():
        for first in range(0, count, chunk):
            states = coefficients[first:first + chunk] @ directions
            if base is not None:
                states += base
            for b, (x, y) in enumerate(batches):
                losses[first:first + chunk, b], accuracies[first:first + chunk, b] = batched(states, x, y)
            if progress:
                progress(min(first + chunk, count) / count)
    return losses, accuracies


def _curve(lambdas: Tensor, losses: Tensor, accuracies: Tensor, batches: Batches) -> Curve:
    """Batch-size-weighted mean and spread over the batches (dim 1)."""
    sizes = torch.tensor([len(y) for _, y in batches], dtype=torch.float64)
    weights = sizes / sizes.sum()

    def mean_std(values: Tensor) -> tuple[Tensor, Tensor]:
        values = values.detach().cpu().double()
        mean = values @ weights
        return mean, (((values - mean[:, None]) ** 2) @ weights).sqrt()

    loss_mean, loss_std = mean_std(losses)
    accuracy_mean, accuracy_std = mean_std(accuracies)
    return Curve(lambdas.detach().cpu().double(), loss_mean, loss_std, accuracy_mean, accuracy_std)


def filter_normalized_direction(model: nn.Module, seed: int = 0) -> Tensor:
    """[P] Gaussian direction, each filter (row along dim 0) rescaled to its weight's norm; 1-D parameters zeroed."""
    generator = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same direction on every device
    parts = []
    for name in trainable_layout(model).names:
        weight = model.get_parameter(name).detach()
        if weight.dim() <= 1:  # biases and norm scales stay put (Li et al., 2018, section 4)
            parts.append(torch.zeros(weight.numel(), dtype=weight.dtype))
            continue
        direction = torch.randn(weight.shape, generator=generator, dtype=weight.dtype)
        scale = weight.cpu().flatten(1).norm(dim=1) / direction.flatten(1).norm(dim=1).clamp_min(1e-12)
        parts.append((direction * scale.view(-1, *[1] * (weight.dim() - 1))).reshape(-1))
    return torch.cat(parts).to(next(model.parameters()).device)


def perturbation_curve(model: nn.Module, batches: Batches, direction: Tensor, lambdas: Tensor, *,
                       chunk: int = CHUNK, progress: Progress | None = None) -> Curve:
    """Loss of θ + λ·d for every λ of lambdas [L], d [P] used as given, vectorised over λ."""
    model = eval_model(model)
    layout = _state_layout(model)
    base = _state(model, layout)
    if direction.numel() != trainable_layout(model).size:
        raise ValueError(f"the direction has {direction.numel()} entries, the model {trainable_layout(model).size} "
                         "trainable parameters")
    padded = torch.zeros_like(base)
    padded[:direction.numel()] = direction.to(base)
    losses, accuracies = _evaluate(model, layout, batches, base, padded[None], lambdas.reshape(-1, 1), chunk, progress)
    return _curve(lambdas, losses, accuracies, batches)


def path_curve(models: Sequence[nn.Module], batches: Batches, points_per_segment: int = 11, *,
               chunk: int = CHUNK, progress: Progress | None = None) -> Curve:
    """Loss along the piecewise-linear path through the models' states (A→C→B...); lambdas in [0, len-1].

    Consecutive segments share their end point: (len-1)·(points_per_segment-1)+1 points in all.
    States are (1-t)·θ_i + t·θ_{i+1}, exact at the models themselves.
    """
    if len(models) < 2 or points_per_segment < 2:
        raise ValueError("a path needs at least two models and two points per segment")
    models = [eval_model(m) for m in models]
    layout = _state_layout(models[0])
    for other in models[1:]:
        if _state_layout(other) != layout:
            raise ValueError("the models on a path must share one architecture (names and shapes of their tensors)")
    states = torch.stack([_state(m, layout).to(_state(models[0], layout)) for m in models])
    segments = len(models) - 1
    lambdas = torch.linspace(0, segments, segments * (points_per_segment - 1) + 1, dtype=torch.float64)
    segment = lambdas.floor().clamp(max=segments - 1).long()
    fraction = lambdas - segment
    coefficients = torch.zeros(len(lambdas), len(models), dtype=torch.float64)
    coefficients[torch.arange(len(lambdas)), segment] = 1 - fraction
    coefficients[torch.arange(len(lambdas)), segment + 1] = fraction
    losses, accuracies = _evaluate(models[0], layout, batches, None, states, coefficients, chunk, progress)
    return _curve(lambdas, losses, accuracies, batches)


def interpolation_curve(model_a: nn.Module, model_b: nn.Module, batches: Batches, points: int = 11, *,
                        chunk: int = CHUNK, progress: Progress | None = None) -> Curve:
    """Loss of (1-t)·θ_a + t·θ_b for `points` values of t in [0, 1]."""
    return path_curve([model_a, model_b], batches, points, chunk=chunk, progress=progress)


def barrier(curve: Curve) -> float:
    """max over the path of loss(t) - [(1-t)·loss(start) + t·loss(end)], t the normalised position (>= 0)."""
    return barrier_of(curve.lambdas, curve.loss_mean)


def barrier_of(lambdas: Tensor, losses: Tensor) -> float:
    """barrier() of losses at positions lambdas (increasing), the path's ends first and last."""
    t = (lambdas - lambdas[0]) / (lambdas[-1] - lambdas[0])
    line = (1 - t) * losses[0] + t * losses[-1]
    return float((losses - line).max())


def surface_2d(model: nn.Module, batches: Batches, dir1: Tensor, dir2: Tensor,
               range1: tuple[float, float] = (-1.0, 1.0), range2: tuple[float, float] = (-1.0, 1.0),
               points: int = 21, *, chunk: int = CHUNK,
               progress: Progress | None = None) -> Surface:
    """Loss on a points x points grid of θ + α·d1 + β·d2, α in range1, β in range2; vectorised in chunks."""
    model = eval_model(model)
    layout = _state_layout(model)
    base = _state(model, layout)
    size = trainable_layout(model).size
    directions = torch.zeros(2, base.numel(), dtype=base.dtype, device=base.device)
    directions[0, :size], directions[1, :size] = dir1.to(base), dir2.to(base)
    alphas = torch.linspace(*range1, points, dtype=torch.float64)
    betas = torch.linspace(*range2, points, dtype=torch.float64)
    grid = torch.cartesian_prod(alphas, betas)  # row-major: alpha outer, beta inner
    losses, accuracies = _evaluate(model, layout, batches, base, directions, grid, chunk, progress)
    curve = _curve(torch.arange(len(grid)), losses, accuracies, batches)
    return Surface(alphas, betas, curve.loss_mean.view(points, points), curve.accuracy_mean.view(points, points))
