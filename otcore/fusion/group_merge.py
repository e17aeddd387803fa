"""CCA Merge and ZipIt! over the channel groups traced from any model (otcore.graph).

The zoo's merge-map fusion (otcore.fusion.merge_maps) with the network described by its traced
groups. Per free group g and parent p, a merge map T_p[g] (n_p, n_fused), the parent's averaging
share folded in, moves every writer and follower axis holding g (weights' outputs, biases, norm
parameters, layer scales, depthwise filters), and an unmerge map U_p[g] (n_p, n_fused) moves every
reader axis; the fused state is the sum over parents, W_fused = sum_p T_p[out]^T W_p U_p[in]. What
no merge map covers (the logits' rows, grouped convolutions' fixed channels, buffers) carries the
parent's weight w_p instead, so a tensor is always the weighted sum of its parents. All writers of a
group (a residual stream's, a gate's) take the group's one merge map.

Maps that are permutations up to rounding (a permuted copy) are snapped to them, so the fusion is
exact; after any other merge, fuse_by_groups re-estimates batch-norm statistics on the sample (batch_norm).
"""
from __future__ import annotations

import time

import torch
from torch import fx, nn

from otcore.fusion.align import Plans
from otcore.fusion.cca import cca_map
from otcore.fusion.group_state import State, align_state, capture_nodes, load_fused
from otcore.fusion.merge_maps import MergeMethodError
from otcore.fusion.options import FusionOptions
from otcore.fusion.resize import resized_copy
from otcore.fusion.pleas import matched_maps
from otcore.fusion.zipit import zipit_maps
from otcore.graph import ModelGraph

MERGE_NAMES = {"cca": "CCA Merge", "zipit": "ZipIt!", "pleas": "PLeaS"}  # alignments by merge/unmerge maps, as messages name them
SNAP = 1e-6  # a map within this (max entry) of a scaled permutation is taken as that permutation

# Nonlinearities a group's features are sampled after (what the next layer reads).
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.ELU, nn.SELU, nn.CELU, nn.Mish)
ACTIVATION_FUNCTIONS = {torch.relu, torch.relu_, nn.functional.relu, nn.functional.relu6, nn.functional.gelu,
                        nn.functional.silu, nn.functional.hardswish, nn.functional.leaky_relu, nn.functional.elu,
                        nn.functional.mish}
PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)


ACTIVATED = "/activated"  # suffix of a group's post-nonlinearity sample in feature_nodes' keys


def feature_nodes(model: nn.Module, graph: ModelGraph) -> dict[str, tuple[str, int]]:
    """Where each group's merge features are sampled: name -> (fx node, channel dimension).

    `group` names the group's node (otcore.graph), which is what every reader of the group reads: a
    residual sum's output for a stream (its writers' separate outputs are not what the next layers see,
    and one map moves them all), else the first writer's output after its normalisation (a batch norm
    is a per-channel affine map of the layer's output: the same correlations, and the scale the next
    layer sees). `group + ACTIVATED` names the nonlinearity that node alone feeds (through identities
    and dropouts), where there is one: the papers merge after the ReLU, whose zeros are what the next
    layer reads. A node read by several consumers (a stream, a concatenation) has no such entry.
    """
    traced = fx.symbolic_trace(model)
    modules = dict(traced.named_modules())
    by_name = {n.name: n for n in traced.graph.nodes}

    def activation(node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(modules.get(node.target), ACTIVATIONS)
        if node.op == "call_function":
            return node.target in ACTIVATION_FUNCTIONS
        return node.op == "call_method" and node.target in ("relu", "relu_")

    nodes = {}
    for group in graph.free():
        node = by_name[group.node]
        nodes[group.name] = (node.name, group.node_dim, group.node_offset, group.size)
        while len(node.users) == 1:
            node = next(iter(node.users))
            if activation(node):
                nodes[group.name + ACTIVATED] = (node.name, group.node_dim)
                break
            if not (node.op == "call_module" and isinstance(modules.get(node.target), PASS_THROUGH)):
                break
    return nodes


def group_features(captured: dict[str, torch.Tensor], group: str) -> torch.Tensor:
    """A group's merge features (samples, channels), float64: after its nonlinearity, then before it.

    Both, stacked as samples where the group has a nonlinearity of its own: after a ReLU a channel that
    is off on the whole sample is all zeros, tied with every other such channel (a permuted copy's
    channels could then pair with the wrong twin); before it, they still differ."""
    parts = [captured[group + ACTIVATED]] if group + ACTIVATED in captured else []
    return torch.cat(parts + [captured[group]], 1).T.double()


def _selection(merge: torch.Tensor, unmerge: torch.Tensor) -> bool:
    """Whether each fused channel the maps give is one channel of this parent alone, copied (merge = unmerge, 0/1,
    at most one per column): partial merging's unmerged channels, which keep the parent's statistics exactly."""
    binary = bool(((unmerge == 0) | (unmerge == 1)).all())
    return binary and bool(torch.equal(merge, unmerge)) and bool((unmerge.sum(0) <= 1).all())


def _snapped(merge: torch.Tensor, unmerge: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(w P, P) when unmerge is within SNAP of a permutation P and merge of w P; else None."""
    if unmerge.shape[0] != unmerge.shape[1]:
        return None
    perm = torch.zeros_like(unmerge)
    perm[torch.arange(len(unmerge)), unmerge.argmax(1)] = 1.0
    if not bool((perm.sum(0) == 1).all()):
        return None
    if (unmerge - perm).abs().max() > SNAP or (merge - weight * perm).abs().max() > SNAP * max(weight, 1e-12):
        return None
    return weight * perm, perm


def merge_and_unmerge_maps(feats: list[dict[str, torch.Tensor]], graphs: list[ModelGraph], opts: FusionOptions,
                           weights: list[float], anchor_idx: int) -> tuple[list[Plans], list[Plans], bool]:
    """Per parent, (merge maps, unmerge maps) per free group, float64, from the captured features (feature_nodes);
    and whether every map moves channels without mixing them (a permutation, or at full width a selection).

    ZipIt!'s fused width per group is opts.group_width of the anchor's (partial merging when opts.width > 1)."""
    merges: list[Plans] = [{} for _ in graphs]
    unmerges: list[Plans] = [{} for _ in graphs]
    permutations = True
    order = [anchor_idx] + [i for i in range(len(graphs)) if i != anchor_idx]  # the anchor's features first
    for group in graphs[anchor_idx].free():
        f = [group_features(feats[i], group.name) for i in range(len(graphs))]
        for i, part in enumerate(f):
            if not torch.isfinite(part).all():
                raise MergeMethodError(f"parent {i + 1}'s activations at {group.name} on the sample are not finite "
                                       "(its weights are too large); check the parents' weights")
        if opts.alignment == "cca":
            eye = torch.eye(group.size, dtype=torch.float64, device=f[anchor_idx].device)
            maps = {anchor_idx: (weights[anchor_idx] * eye, eye)}
            for i in order[1:]:
                forward, inverse = cca_map(f[anchor_idx], f[i])
                maps[i] = (weights[i] * forward.T, inverse)
        else:
            # Attention heads keep the anchor's width: the attention views them by its fixed head size.
            width = group.size if group.heads > 1 else opts.group_width(group.size, sum(part.shape[1] for part in f))
            fit = zipit_maps if opts.alignment == "zipit" else matched_maps  # PLeaS's partial matching
            merge, unmerge = fit([f[i] for i in order], [weights[i] for i in order], width)
            maps = {i: (merge[k], unmerge[k]) for k, i in enumerate(order)}
        for i, (merge, unmerge) in maps.items():
            snapped = _snapped(merge, unmerge, weights[i])
            permutations &= snapped is not None or _selection(merge, unmerge)
            merges[i][group.name], unmerges[i][group.name] = snapped or (merge, unmerge)
    return merges, unmerges, permutations


def _weighted(state: State, graph: ModelGraph, weight: float) -> State:
    """The state with w_p on every entry that no merge map will move (those maps carry w_p themselves)."""
    covered: dict[str, dict[int, list[tuple[int, int]]]] = {}
    for group in graph.free():
        for slot in group.slots:
            if slot.role != "reader":
                covered.setdefault(slot.tensor, {}).setdefault(slot.axis, []).append(
                    (slot.offset, group.size * slot.repeat))
    out = {}
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            out[key] = tensor
            continue
        axes = covered.get(key)
        if not axes:
            out[key] = weight * tensor.detach()
            continue
        if len(axes) > 1:
            raise MergeMethodError(f"'{key}' holds merged channels on several axes; merge methods cannot weight it")
        (axis, runs), = axes.items()
        scale = torch.full((tensor.shape[axis],), weight, dtype=tensor.dtype, device=tensor.device)
        for offset, length in runs:
            scale[offset:offset + length] = 1.0
        out[key] = tensor.detach() * scale.reshape(-1, *[1] * (tensor.dim() - axis - 1))
    return out


def merge_by_group_maps(parents: list[nn.Module], graphs: list[ModelGraph], opts: FusionOptions,
                        act_inputs: torch.Tensor) -> tuple[nn.Module, list[Plans], dict[str, float], bool]:
    """CCA Merge, ZipIt! or PLeaS's maps of traced parents into the anchor's widths (times opts.width for ZipIt! and
    PLeaS; PLeaS's least squares follow in group_pleas): (fused network,
    merge maps, seconds, whether a map mixed channels). Batch norms keep the moved statistics: the caller
    renormalises where a map mixed channels (at full width every map is a selection: the statistics are exact)."""
    anchor_idx = opts.anchor_index(len(parents))
    weights = opts.parent_weights(len(parents))
    start = time.perf_counter()
    feats = [capture_nodes(p, act_inputs, feature_nodes(p, g)) for p, g in zip(parents, graphs)]
    seconds = {"activations": time.perf_counter() - start}
    start = time.perf_counter()
    merges, unmerges, permutations = merge_and_unmerge_maps(feats, graphs, opts, weights, anchor_idx)
    anchor_state = parents[anchor_idx].state_dict()
    summed: State = {k: t for k, t in anchor_state.items() if not t.is_floating_point()}  # counters: the anchor's
    for parent, graph, merge, unmerge, weight in zip(parents, graphs, merges, unmerges, weights):
        # Running variances move like biases here: exact for a permutation, a placeholder for any other map.
        moved = align_state(_weighted(parent.state_dict(), graph, weight), graph, graphs[anchor_idx], merge,
                            reader_plans=unmerge)
        for key, tensor in moved.items():
            if anchor_state[key].is_floating_point():
                tensor = tensor.to(anchor_state[key].dtype)
                summed[key] = summed[key] + tensor if key in summed else tensor
    if not all(torch.isfinite(t).all() for t in summed.values() if t.is_floating_point()):
        raise MergeMethodError(f"{MERGE_NAMES[opts.alignment]}: the fused network's weights are not finite (a "
                               "parent's weights are too large); check the parents' weights")
    if all(summed[k].shape == t.shape for k, t in anchor_state.items()):
        fused = load_fused(parents[anchor_idx], summed)
    else:  # partial merging: wider than the anchor
        fused = resized_copy(parents[anchor_idx], summed).eval()
        try:
            with torch.no_grad():
                fused(act_inputs[:2])
        except RuntimeError as exc:  # the network's own code fixes a width (an attention's reshape to its heads)
            raise MergeMethodError(f"{MERGE_NAMES[opts.alignment]} at width {opts.width:g}: the widened network does not run "
                              f"({str(exc).splitlines()[0][:120]}); its code fixes a width the tracer cannot see: "
                              "use width 1") from None
    seconds["fusion"] = time.perf_counter() - start
    return fused, merges, seconds, not permutations
