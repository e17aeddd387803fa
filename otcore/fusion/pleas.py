"""PLeaS (Nasery et al., CVPR 2025): partial matching by activations, then least-squares weights, layer by layer.

1. Partial matching. Per hidden group, every other parent's features are matched to the anchor's by
   the assignment maximising their summed activation correlation (activation matching, as Git
   Re-Basin's). Each match is an edge (anchor feature i, parent q's feature matched to i) scored by
   its correlation; for a fused width k (from the anchor's d to the parents' N d) the N d - k
   best-scored edges merge, best first, and every other feature stays on its own: at k = d all are
   merged (one feature per anchor feature), at k = N d none (the parents' features side by side).
   The paper chooses which features merge the same way (the most similar matched pairs first),
   with a width budget per layer.
2. Least squares. The merge maps give a first network (W_0 = sum_p T_p^T W_p U_p, as ZipIt!'s).
   Then, layer after layer in forward order, with X the merged network's inputs to the layer on the
   activation sample (through the layers already solved) and Y the target (the parents' outputs of
   that layer moved into the fused basis, sum_p T_p^T z_p: the merged features' weighted means;
   the logits' weighted mean for the last layer), the layer's weights solve

       min_W |X W^T - Y|^2 + lambda |W - W_0|^2,   W = W_0 + (Y - X W_0^T)^T X (X^T X + lambda I)^-1,

   conv layers through their unfolded patches (every position a row).
   The ridge pulls towards W_0, not towards 0: directions of input space the sample does not
   span (a wide layer read by fewer samples than it has inputs, dead features, the patches'
   padding) keep the merge maps' weights instead of an arbitrary fit. lambda = RIDGE times the
   mean eigenvalue of X^T X (its trace over its size), so it is invariant to the scale of the
   features and of the sample size. 0.01 measured best on digits (two parents, 200 and 1000 samples,
   widths 1 and 1.5: 0.001-0.01 equal on mlpnet; on vgg_tiny at width 1, 98.2 % at 0.01 against 97.3
   at 0.1 and 95.8 at 1, where the pull towards W_0 undoes the fit). At full width W_0 already reproduces Y exactly (the
   network is the parents side by side), the residual is rounding, and the solve leaves W_0.
Networks: here the zoo's chains (mlpnet, the VGG family), where every hidden group has one writer;
any traced network in otcore.fusion.group_pleas (the same matching and refit over channel groups).
Cost: a chain's refit reads the targets from the pre-activations the matching captured and steps the fused
network once, layer by layer (otcore.fusion.chain), instead of hooked partial forward passes per layer
through private copies of every network (a third of the time, and the copies a seventh, on vgg_tiny).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from otcore.errors import FusionError
from otcore.fusion.align import Gather, as_gather
from otcore.fusion.chain import chain_steps, is_chain
from otcore.fusion.merge_maps import correlation, pre_activations
from otcore.fusion.zipit import cluster_maps
from otcore.models import OUTPUT, AlignedLayer, FusableNet

RIDGE = 0.01  # lambda relative to the mean eigenvalue of the input Gram matrix (see the module docstring)
BATCH = 256  # activation-sample inputs per forward pass of the fit


def matched_maps(feats: list[torch.Tensor], weights: list[float], width: int
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per parent, (merge T_p, unmerge U_p), both (d_p, width), by PLeaS's partial matching; the anchor first.

    feats: per parent (samples, d_p), the anchor's first. The fused features are the anchor's (each
    with the features merged into it), then each parent's unmerged features in their own order."""
    sizes = [f.shape[1] for f in feats]
    total, d = sum(sizes), sizes[0]
    if not d <= width <= total:
        raise FusionError(f"PLeaS cannot merge {total} features into {width} (at least the anchor's {d})")
    edges = []  # (correlation, parent, anchor feature, parent feature)
    for q, f in enumerate(feats[1:], start=1):
        corr = correlation(feats[0], f)
        if not torch.isfinite(corr).all():
            raise FusionError("PLeaS: the parents' features on the sample are not finite; check the parents' weights")
        corr_np = corr.cpu().numpy()
        rows, cols = linear_sum_assignment(corr_np, maximize=True)
        edges += [(float(corr_np[i, j]), q, int(i), int(j)) for i, j in zip(rows, cols)]
    edges.sort(key=lambda e: (-e[0], e[1], e[2]))  # best first; ties in a fixed order
    merged = edges[:total - width]
    offsets = np.cumsum([0] + sizes)
    cluster = np.full(total, -1)
    cluster[:d] = np.arange(d)
    for _, q, i, j in merged:
        cluster[offsets[q] + j] = i
    alone = np.flatnonzero(cluster < 0)
    cluster[alone] = d + np.arange(len(alone))
    return cluster_maps(cluster, sizes, weights, width, feats[0])


class _Stop(Exception):
    """Raised by a hook once it has what it came for: the rest of the forward pass is not needed."""


@torch.no_grad()
def _layer_io(model: nn.Module, name: str, x: torch.Tensor, want: str) -> torch.Tensor:
    """The input ('in') or output ('out') of the module at `name` when `model` runs on x."""
    module = model.get_submodule(name)
    found: list[torch.Tensor] = []

    def hook(_m: nn.Module, inputs: tuple, output: torch.Tensor | None = None) -> None:
        found.append(inputs[0] if want == "in" else output)
        raise _Stop

    handle = module.register_forward_pre_hook(hook) if want == "in" else module.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return found[0]


def _input_rows(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """A layer's inputs as regression rows (rows, fan-in [+1 for a bias]), float64; a conv's patches are rows."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise FusionError("PLeaS fits plain convolutions (one group, zero padding given as numbers)")
        (kh, kw), (dh, dw), (ph, pw), (sh, sw) = module.kernel_size, module.dilation, module.padding, module.stride
        padded = F.pad(inputs, (pw, pw, ph, ph)).contiguous()
        n, c, h, w = padded.shape
        out_h, out_w = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        # F.unfold's patches, transposed to a row per position and widened, in one copy straight from the input
        # (rows (n, y, x), columns (channel, ky, kx)): unfolding, transposing and widening made three.
        s_n, s_c, s_h, s_w = padded.stride()
        patches = padded.as_strided((n, out_h, out_w, c, kh, kw), (s_n, sh * s_h, sw * s_w, s_c, dh * s_h, dw * s_w))
        rows = patches.to(torch.float64, memory_format=torch.contiguous_format).view(n * out_h * out_w, -1)
    elif isinstance(module, nn.Linear):
        rows = inputs.reshape(-1, inputs.shape[-1]).double()
    else:
        raise FusionError(f"PLeaS fits convolution and linear layers, not {type(module).__name__}")
    if module.bias is not None:
        rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype, device=rows.device)], 1)
    return rows


def _output_rows(module: nn.Module, outputs: torch.Tensor) -> torch.Tensor:
    """A layer's outputs as (rows, out channels), in the rows' order of _input_rows."""
    if isinstance(module, nn.Conv2d):
        return outputs.flatten(2).transpose(1, 2).reshape(-1, outputs.shape[1])
    return outputs.reshape(-1, outputs.shape[-1])


def _flat_weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight as (out, fan-in [+1 bias column]), float64."""
    weight = module.weight.detach().reshape(module.weight.shape[0], -1).double()
    return weight if module.bias is None else torch.cat([weight, module.bias.detach().double()[:, None]], 1)


def _solve(module: nn.Module, name: str, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], ridge: float) -> None:
    """Refit `module` in place from its batches of (input rows X (rows, fan-in), targets Y^T (out channels, rows)):
    the ridge towards W_0 (module docstring)."""
    w0 = _flat_weight(module)
    gram = torch.zeros(w0.shape[1], w0.shape[1], dtype=torch.float64, device=w0.device)
    cross = torch.zeros(w0.shape[1], w0.shape[0], dtype=torch.float64, device=w0.device)
    for rows, targets in pairs:
        gram += rows.T @ rows
        cross += rows.T @ targets.T
    # X^T (Y - X W_0^T) from X^T X: one product with the rows (they are the bulk: a conv's every position) instead of
    # two. Not bit for bit the residual's product: the float32 weights move by at most a unit in their last place
    # (tests/test_fast_alignment.py).
    cross -= gram @ w0.T
    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    gram.diagonal().add_(lam)
    # X^T X + lambda I is symmetric positive definite: Cholesky (LU where rounding says otherwise, or NaNs).
    factor, info = torch.linalg.cholesky_ex(gram)
    solved = w0 + (torch.cholesky_solve(cross, factor) if int(info) == 0 else torch.linalg.solve(gram, cross)).T
    if not torch.isfinite(solved).all():
        raise FusionError(f"PLeaS: the least-squares weights of {name} are not finite; check the parents' weights")
    if module.bias is not None:
        module.bias.copy_(solved[:, -1].to(module.bias.dtype))
        solved = solved[:, :-1]
    module.weight.copy_(solved.reshape(module.weight.shape).to(module.weight.dtype))


@torch.no_grad()
def refit_layer(fused: nn.Module, name: str, x: torch.Tensor, target: Callable[[torch.Tensor], torch.Tensor],
                ridge: float | None = None) -> None:
    """Refit the conv/linear layer `name` of `fused` in place: W = W_0 + (Y - X W_0^T)^T X (X^T X + lambda I)^-1.

    X: the layer's inputs in `fused` on x (batch by batch, through the layers before it as they are now);
    target(batch): what its outputs should be there, in the layer's output layout. lambda = ridge (default
    RIDGE) times the mean eigenvalue of X^T X (module docstring)."""
    module = fused.get_submodule(name)
    device = module.weight.device
    batches = (x[start:start + BATCH].to(device) for start in range(0, len(x), BATCH))
    pairs = ((_input_rows(module, _layer_io(fused, name, batch, "in")),
              _output_rows(module, target(batch).to(device).double()).T) for batch in batches)
    _solve(module, name, pairs, RIDGE if ridge is None else ridge)


def _targets(pre: torch.Tensor, columns: slice, move: Gather | torch.Tensor) -> torch.Tensor:
    """A hidden layer's outputs on some samples moved into the fused basis, T^T z: (fused channels, rows), float64.

    pre: the layer's outputs (channels, samples x positions) as pre_activations gives them; columns: the samples'.
    Kept channel by row, as pre is: no transposing copy (the products that follow read either layout)."""
    if isinstance(move, Gather):  # T selects: gather the channels (whole rows of pre), then widen and scale
        moved = pre[:, columns].index_select(0, move.index).double()
        return moved if move.scale is None else moved.mul_(move.scale.double()[:, None])
    return move.double().T @ pre[:, columns].double()


@torch.no_grad()
def least_squares_layers(fused: FusableNet, parents: list[FusableNet], merges: list[dict[str, torch.Tensor]],
                         weights: list[float], x: torch.Tensor, ridge: float | None = None,
                         pre: list[dict[str, torch.Tensor]] | None = None,
                         logits: list[torch.Tensor] | None = None) -> FusableNet:
    """The fused network (changed in place and returned) with each layer refitted, in forward order, so its
    outputs on x reproduce the parents' merged outputs (module docstring: the ridge towards W_0).

    pre: per parent, its hidden groups' pre-activations on x as merge_maps.pre_activations gives them
    (computed when None). The targets are read from them (the logits through the parents' last layers),
    the fused network's inputs stepped through it layer by layer (chain_steps) as each layer is refitted:
    the parents are only read, never hooked, copied or switched (they may be shared). logits: a list that
    receives the refitted network's outputs on x, batch by batch (they come out of the last step)."""
    if not all(is_chain(net) for net in [fused, *parents]):
        raise FusionError("PLeaS's least squares walk mlpnet and the VGG family; other networks go through group_pleas")
    pre = pre_activations(parents, x) if pre is None else pre
    fused.eval()
    ridge = RIDGE if ridge is None else ridge
    device = next(fused.parameters()).device
    starts = range(0, len(x), BATCH)
    ours = [x[start:start + BATCH].to(device) for start in starts]  # per batch: the previous layer's fused output
    steps = [chain_steps(net) for net in [fused, *parents]]
    for k, layer in enumerate(fused.alignment_layers()):
        module = fused.get_submodule(layer.name)
        inputs = [steps[0][k](z) for z in ours]
        # T_p as a gather (PLeaS's merge maps select: one member of each parent per fused feature), found once.
        moves = [None if layer.out_group == OUTPUT else as_gather(merge[layer.out_group]) for merge in merges]

        def pairs(k: int = k, layer: AlignedLayer = layer, module: nn.Module = module, inputs: list = inputs,
                  moves: list = moves) -> Iterator:
            # Lazily, batch by batch: a conv's rows (every position a row) can be far larger than its activations.
            for b, (start, inp) in enumerate(zip(starts, inputs)):
                n, target = len(inp), None
                for p, (parent, move, weight) in enumerate(zip(parents, moves, weights)):
                    acts = pre[p].get(layer.in_group if move is None else layer.out_group)
                    columns = slice(start * (acts.shape[1] // len(x)), (start + n) * (acts.shape[1] // len(x))) \
                        if acts is not None else None
                    if move is not None:
                        moved = _targets(acts, columns, move)
                    else:  # the logits: the parent's last layer on its previous layer's outputs (or on x)
                        before = (acts[:, columns].reshape(acts.shape[0], n, *ours[b].shape[2:]).transpose(0, 1)
                                  if acts is not None else ours[b])
                        out = parent.get_submodule(layer.name)(steps[p + 1][k](before.contiguous()))
                        moved = weight * _output_rows(module, out.double()).T
                    target = moved if target is None else target.add_(moved)  # in place: fresh tensors
                yield _input_rows(module, inp), target

        _solve(module, layer.name, pairs(), ridge)
        ours = [module(inp) for inp in inputs]
    if logits is not None:
        logits.extend(ours)
    return fused
