"""Batch-norm statistics after a merge that is not a permutation: re-estimated on a sample, or folded away.

A permutation moves a BatchNorm's running mean and variance exactly with its channels. Any other
map (a soft OT plan, CCA Merge, ZipIt!) mixes channels, and a variance does not mix linearly:
Var(sum_i t_i x_i) needs the channels' covariances, which the parents' running statistics do not
hold. Two remedies (issue 22, item 3), both here:

- reset (REPAIR's "reset BN", Jordan et al. 2023): run the fused network on the sample with every
  BatchNorm normalising by its batch statistics, and keep those as its running statistics;
- fold: write each BatchNorm that directly follows a convolution or linear layer into that layer
  (W' = a W, shift c = beta - a mu with a = gamma / sqrt(var + eps)) before merging, so the merge
  acts on the layer's effective affine map, and the BatchNorm is left as an identity plus shift.

Measured on digits (bench/bn_reset_vs_fold.py, two resnet18 parents): the reset is the choice;
fusion applies it after every non-permutation merge when it has a sample.
"""
from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from otcore.errors import FusionError

NORM_CHOICES = ("reset", "fold", "moved")  # after a mixing merge: re-estimate, fold first, or keep moved statistics
RESET_BATCH = 1024  # examples per forward pass of the reset; a sample up to this size gives exact statistics


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """The batch norms that keep running statistics (track_running_stats=False ones always use the batch's)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def channel_statistics(channels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, biased variance) in float64 of each row of (channels, values): what a batch norm normalises by."""
    rows = channels.double()
    return rows.mean(1), rows.var(1, unbiased=False)


def reset_batch_norm(model: nn.Module, x: torch.Tensor, batch_size: int = RESET_BATCH) -> nn.Module:
    """A new model (eval mode) whose BatchNorm running statistics are those of its own inputs on x.

    Every BatchNorm normalises by its batch's statistics during the pass (train mode for them only:
    dropout and stochastic depth stay off), and keeps the mean and the biased variance of what it saw,
    pooled over batches (law of total variance). With x in one batch (len(x) <= batch_size) the eval-mode
    network then standardises each BatchNorm's input exactly on x. The input model is never touched."""
    fused = copy.deepcopy(model).eval()
    reestimate_batch_norms(fused, x, batch_size)
    return fused


@torch.no_grad()
def reestimate_batch_norms(model: nn.Module, x: torch.Tensor, batch_size: int = RESET_BATCH) -> None:
    """reset_batch_norm's statistics written into `model` itself, for a model the caller owns (one in training,
    whose pruned weights are not graph leaves and cannot be deep-copied); every module's mode is restored."""
    norms = batch_norms(model)
    if not norms:
        return
    if len(x) < 2:
        raise FusionError(f"re-estimating batch-norm statistics needs at least 2 examples in the sample; got {len(x)}")
    seen: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = {id(m): [] for m in norms}

    def record(module: _BatchNorm, inputs: tuple) -> None:
        channels = inputs[0].transpose(0, 1).reshape(module.num_features, -1)
        seen[id(module)].append((channels.shape[1], *channel_statistics(channels)))

    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_pre_hook(record) for m in norms]
    model.eval()
    for m in norms:
        m.train()
    device = next(model.parameters()).device
    try:
        for batch in torch.tensor_split(x, -(-len(x) // batch_size)):  # even sizes: never a batch of one
            model(batch.to(device))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.train(training)
    for m in norms:
        counts = torch.tensor([n for n, _, _ in seen[id(m)]], dtype=torch.float64, device=device)
        means, variances = torch.stack([s[1] for s in seen[id(m)]]), torch.stack([s[2] for s in seen[id(m)]])
        share = (counts / counts.sum())[:, None]
        mean = (share * means).sum(0)
        m.running_mean.copy_(mean)
        m.running_var.copy_((share * (variances + (means - mean) ** 2)).sum(0))
        m.num_batches_tracked.fill_(len(counts))


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, batch norm) module paths where the norm reads only that conv/linear layer's output."""
    graph = fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BatchNorm):
            continue
        source = node.args[0]
        if (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1
                and isinstance(modules[source.target], (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
                and modules[node.target].track_running_stats
                and (modules[node.target].affine or modules[source.target].bias is not None)):
            pairs.append((source.target, node.target))
    return pairs


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A new model with each BatchNorm that directly follows a conv/linear layer written into it.

    The layer's output channel c is scaled by a_c = gamma_c / sqrt(var_c + eps); the norm keeps only
    the shift beta_c - a_c mu_c (mean 0, variance 1 - eps, weight 1), so the eval-mode function is
    unchanged. Returns (model, the folded norms' paths)."""
    folded = copy.deepcopy(model).eval()
    paths = []
    for layer_path, norm_path in foldable_pairs(folded):
        layer, norm = folded.get_submodule(layer_path), folded.get_submodule(norm_path)
        scale = (norm.weight if norm.affine else torch.ones_like(norm.running_var)) / (norm.running_var + norm.eps).sqrt()
        shift = (norm.bias if norm.affine else torch.zeros_like(norm.running_mean)) - scale * norm.running_mean
        layer.weight.mul_(scale.reshape(-1, *[1] * (layer.weight.dim() - 1)))
        if layer.bias is not None:  # the shift where it is a bias of its own: the layer's
            layer.bias.copy_(shift + scale * layer.bias)
            shift = torch.zeros_like(shift)
        set_identity(norm, shift)
        paths.append(norm_path)
    return folded, paths


def set_identity(norm: _BatchNorm, shift: torch.Tensor) -> None:
    """Makes an eval-mode BatchNorm compute x + shift (shift 0 where it has no affine parameters)."""
    norm.running_mean.zero_()
    norm.running_var.fill_(1.0 - norm.eps)
    if norm.affine:
        norm.weight.fill_(1.0)
        norm.bias.copy_(shift)


@torch.no_grad()
def identity_norms(model: nn.Module, paths: list[str]) -> nn.Module:
    """A new model whose named (folded, then merged) BatchNorms compute x + their merged shift exactly.

    A merge moves the folded norms' unit weights and variances with non-permutation maps too; only
    the shift (their bias) is a merged quantity."""
    out = copy.deepcopy(model).eval()
    for path in paths:
        norm = out.get_submodule(path)
        set_identity(norm, norm.bias.detach().clone() if norm.affine else torch.zeros_like(norm.running_mean))
    return out
