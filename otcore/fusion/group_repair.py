"""Full REPAIR over traced channel groups (Jordan et al., 2022): each fused neuron's mean and std restored.

Averaging aligned neurons shrinks their variance and shifts their mean. REPAIR measures, on a
sample of inputs, each neuron of each parent, moves those statistics into the fused network's
neuron order with the same plans that moved the weights, averages them with the parents'
weights, and sets each fused neuron to that target mean and standard deviation.

Where a neuron is corrected (a "point", one fx node per layer, channel c of its output):
- a conv/linear directly followed by a normalisation layer (BatchNorm, LayerNorm, GroupNorm):
  at the norm's output; a batch norm's running statistics are re-estimated on the sample first,
  then its affine weight and bias are set so the output has the target mean and std;
- any other normalisation layer with an affine weight (a depthwise conv's batch norm, a pre-norm
  transformer's LayerNorm): the same, at its output;
- a conv/linear with a bias and no norm: the scale folded into its weight rows, the shift into its bias;
- a conv/linear without bias or norm: the scale only (the mean follows it), unless `gain_bias`
  gives the fused layer a bias, so that its mean is restored too.
Each writer of a residual stream is corrected at its own output, before the sum (as REPAIR does
for ResNets). An output y = a u + b of the layer's own affine (a, b) becomes k (y - b) + b' with
k = std_target / std(y) and b' = mean_target - k (mean(y) - b): the exact target on the sample.
Channels in no free group are left as they are at a layer (the logits) and kept in place at a
norm (they were averaged without a plan). The points are set in forward order in one pass, so
each is measured after everything before it was corrected.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from otcore.device import private_copy
from otcore.errors import FusionError
from otcore.fusion.align import Plans
from otcore.fusion.batch_norm import channel_statistics
from otcore.fusion.new_weights import with_biases
from otcore.fusion.repair import check_sample
from otcore.graph import ModelGraph

EPS = 1e-6  # a neuron whose std on the sample is below this is constant there: its mean is set, not its scale
BATCH = 256  # inputs per forward pass when the parents' statistics are taken
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm, nn.GroupNorm)
_NORM_FUNCTIONS = {F.batch_norm: (3, 4), F.instance_norm: (3, 4), F.layer_norm: (2, 3),
                   F.group_norm: (2, 3)}  # positions of the weight and bias arguments


@dataclass(frozen=True)
class RepairPoint:
    """One fx node whose output channels REPAIR restores, and the tensors that set them."""

    node: str  # the fx node whose output is corrected
    dim: int  # its channel dimension (1, or -1 for a linear layer's or LayerNorm's last axis)
    scale: str  # state_dict tensor whose axis 0 is multiplied by k (a layer's weight, a norm's weight)
    shift: str | None  # state_dict tensor set to the shifted bias; None: the mean follows the scale
    running: tuple[str, str] | None = None  # a batch norm's running mean and variance, re-estimated first
    writer: bool = True  # a conv/linear's own output (False: a norm's), which decides the non-free channels


@dataclass(frozen=True)
class NeuronTarget:
    """What REPAIR sets at one point: per output channel, a mean and a std; `restore` says which channels."""

    mean: torch.Tensor
    std: torch.Tensor
    restore: torch.Tensor  # bool: channels to set (others are left as they are)


Targets = dict[str, NeuronTarget]  # point node -> its target


def _attr_key(arg: object) -> str | None:
    return arg.target if isinstance(arg, fx.Node) and arg.op == "get_attr" else None


def _norm_tensors(module: fx.GraphModule, node: fx.Node) -> tuple[str | None, str | None, tuple[str, str] | None, int]:
    """(affine weight, bias, batch norm's running stats, channel dim) of a normalisation node; all None else."""
    weight = bias = running = None
    if node.op == "call_module":
        mod = module.get_submodule(node.target)
        if not isinstance(mod, _NORMS):
            return None, None, None, 1
        weight = f"{node.target}.weight" if getattr(mod, "weight", None) is not None else None
        bias = f"{node.target}.bias" if getattr(mod, "bias", None) is not None else None
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
            running = (f"{node.target}.running_mean", f"{node.target}.running_var")
        return weight, bias, running, -1 if isinstance(mod, nn.LayerNorm) else 1
    if node.op == "call_function" and node.target in _NORM_FUNCTIONS:
        w_at, b_at = _NORM_FUNCTIONS[node.target]
        args = list(node.args) + [None] * 8
        weight, bias = _attr_key(node.kwargs.get("weight", args[w_at])), _attr_key(node.kwargs.get("bias", args[b_at]))
        if node.target is F.batch_norm and not node.kwargs.get("training", args[5] or False):
            mean = _attr_key(node.kwargs.get("running_mean", args[1]))
            var = _attr_key(node.kwargs.get("running_var", args[2]))
            running = (mean, var) if mean and var else None
        return weight, bias, running, -1 if node.target is F.layer_norm else 1
    return None, None, None, 1


def repair_points(model: nn.Module, graph: ModelGraph, gain_bias: bool = False) -> list[RepairPoint]:
    """The points REPAIR corrects in `model` (traced anew), in forward order; see the module docstring.

    gain_bias: a bias-free layer without norm gets a shift too (named `<layer>.bias`, which
    `repair_groups` creates)."""
    module = fx.symbolic_trace(private_copy(model))
    free = {s.tensor for g in graph.free() for s in g.slots if s.axis == 0}
    per_channel = {s.tensor for g in graph.groups for s in g.slots if s.axis == 0}  # norms the tracer read
    calls: dict[str, int] = {}
    for node in module.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    points: list[RepairPoint] = []
    for node in module.graph.nodes:
        weight, bias, running, dim = _norm_tensors(module, node)
        if weight is not None or running is not None:
            if weight in per_channel:
                points.append(RepairPoint(node.name, dim, weight, bias, running, writer=False))
            continue
        if not _is_writer(module, node, free, calls):
            continue
        if len(node.users) == 1 and _norm_tensors(module, next(iter(node.users)))[0] is not None \
                and next(iter(node.users)).args[0] is node:
            continue  # its norm is the point: the norm would undo any correction made here
        mod = module.get_submodule(node.target)
        shift = f"{node.target}.bias" if mod.bias is not None or gain_bias else None
        points.append(RepairPoint(node.name, -1 if isinstance(mod, nn.Linear) else 1, f"{node.target}.weight", shift))
    return points


def _is_writer(module: fx.GraphModule, node: fx.Node, free: set[str], calls: dict[str, int]) -> bool:
    """A conv/linear called once whose outputs hold channels of a free group."""
    if node.op != "call_module" or calls.get(node.target, 0) != 1:
        return False
    mod = module.get_submodule(node.target)
    return isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)) and f"{node.target}.weight" in free


def _channels(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """(channels, samples): every position other than the channel one is one more sample."""
    moved = tensor.movedim(dim, 0)
    return moved.reshape(moved.shape[0], -1)


@dataclass
class _Moments:
    count: int
    total: torch.Tensor  # (C,) float64
    second: torch.Tensor  # (C,) sums of squares, or (C, C) the Gram matrix

    def mean(self) -> torch.Tensor:
        return self.total / self.count

    def covariance(self) -> torch.Tensor:
        """Unbiased: (C,) variances, or (C, C) when the Gram matrix was kept."""
        mean = self.mean()
        centred = self.second - self.count * (torch.outer(mean, mean) if self.second.dim() == 2 else mean ** 2)
        return centred / max(self.count - 1, 1)


@torch.no_grad()
def _moments(model: nn.Module, x: torch.Tensor, points: list[RepairPoint], full: bool) -> dict[str, _Moments]:
    """Each point's first and second moments on x, in float64, on a traced private copy (the model may be shared)."""
    module = fx.symbolic_trace(private_copy(model))
    dims = {p.node: p.dim for p in points}
    found: dict[str, _Moments] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node):  # noqa: ANN202 - fx's signature
            result = super().run_node(n)
            if n.name in dims:
                rows = _channels(result, dims[n.name]).double()
                second = rows @ rows.T if full else (rows * rows).sum(1)
                seen = found.get(n.name)
                found[n.name] = _Moments(rows.shape[1], rows.sum(1), second) if seen is None else \
                    _Moments(seen.count + rows.shape[1], seen.total + rows.sum(1), seen.second + second)
            return result

    device = next(module.parameters()).device
    for start in range(0, len(x), BATCH):
        _Recorder(module).run(x[start:start + BATCH].to(device))
    return found


def _segments(graph_a: ModelGraph, graph_p: ModelGraph, key: str) -> list[tuple[str, int, int, int, int, int]]:
    """(group, offset in the anchor, its width, offset in the parent, its width, repeat) of key's axis-0 free slots."""
    out = []
    for g_a, g_p in zip(graph_a.groups, graph_p.groups):
        if g_a.fixed:
            continue
        for s_a, s_p in zip(g_a.slots, g_p.slots):
            if s_a.tensor == key and s_a.axis == 0:
                out.append((g_a.name, s_a.offset, g_a.size, s_p.offset, g_p.size, s_a.repeat))
    return out


def _rest(width: int, segments: list[tuple[int, int, int]]) -> torch.Tensor:
    """Indices of a width's channels outside the (offset, size, repeat) segments."""
    inside = torch.zeros(width, dtype=torch.bool)
    for offset, size, repeat in segments:
        inside[offset:offset + size * repeat] = True
    return (~inside).nonzero().flatten()


def _moved(moments: _Moments, plan: torch.Tensor, offset: int, size: int, repeat: int, maps: bool) -> tuple:
    """A segment's (mean, std) in the fused order: n_fused * repeat channels.

    Plans (maps=False): each fused neuron's statistics are the convex combination of its parent
    neurons' (columns normalised). Merge maps: the statistics of T^T z, the parent's weight folded in."""
    index = offset + torch.arange(size * repeat, device=moments.total.device).reshape(size, repeat)
    mean = moments.mean()[index]  # (size, repeat)
    plan = plan.double().to(mean.device)
    if not maps:
        plan = plan / plan.sum(0, keepdim=True).clamp_min(1e-12)
        std = moments.covariance()[index].clamp_min(0).sqrt()
        return (plan.T @ mean).reshape(-1), (plan.T @ std).reshape(-1)
    cov = moments.covariance()
    if cov.dim() != 2:
        raise FusionError("REPAIR by merge maps needs the neurons' covariances")
    variances = [torch.einsum("ij,ik,jk->k", cov[index[:, r]][:, index[:, r]], plan, plan) for r in range(repeat)]
    return (plan.T @ mean).reshape(-1), torch.stack(variances, 1).clamp_min(0).sqrt().reshape(-1)


def repair_targets(fused: nn.Module, parents: list[nn.Module], graphs: list[ModelGraph], maps: list[Plans],
                   weights: list[float], x: torch.Tensor, anchor: int, merge_maps: bool = False,
                   points: list[RepairPoint] | None = None, fused_graph: ModelGraph | None = None) -> Targets:
    """Per point, the parents' statistics moved into the fused order by each parent's plans and averaged.

    maps: per parent, group -> transport plan (n_parent, n_fused), missing: identity (the anchor's).
    merge_maps=True: maps are CCA Merge / ZipIt! merge maps with the parent's weight folded in
    (otcore.fusion.merge_maps); the target is then sum_p stats(T_p^T z_p), as repair_target there.
    fused_graph: the fused network's groups where its widths are not the anchor's (partial merging)."""
    fused_graph = graphs[anchor] if fused_graph is None else fused_graph
    points = repair_points(fused, fused_graph) if points is None else points
    state = fused.state_dict()
    widths = {p.scale: state[p.scale].shape[0] for p in points}
    targets: Targets = {}
    for parent, graph_p, plans, weight in zip(parents, graphs, maps, weights):
        stats = _moments(parent, x, points, merge_maps)
        for point in points:
            part = _parent_target(stats[point.node], point, _segments(fused_graph, graph_p, point.scale),
                                  widths[point.scale], plans, 1.0 if merge_maps else weight, weight, merge_maps)
            seen = targets.get(point.node)
            targets[point.node] = part if seen is None else NeuronTarget(
                seen.mean + part.mean, seen.std + part.std, seen.restore & part.restore)
    return targets


def _parent_target(moments: _Moments, point: RepairPoint, segments: list, width: int, plans: Plans, share: float,
                   weight: float, merge_maps: bool) -> NeuronTarget:
    """One parent's share of a point's target, in the fused network's channel order (width channels)."""
    device = moments.total.device
    mean = torch.zeros(width, dtype=torch.float64, device=device)
    std, restore = torch.zeros_like(mean), torch.zeros(width, dtype=torch.bool, device=device)
    for group, off_a, n_a, off_p, n_p, repeat in segments:
        plan = plans.get(group)
        if plan is None:
            if n_a != n_p:
                raise FusionError(f"REPAIR: group '{group}' has no plan for a parent of another width")
            plan = torch.eye(n_p, dtype=torch.float64)
        m, s = _moved(moments, plan, off_p, n_p, repeat, merge_maps)
        mean[off_a:off_a + n_a * repeat] = share * m
        std[off_a:off_a + n_a * repeat] = share * s
        restore[off_a:off_a + n_a * repeat] = True
    rest_a = _rest(width, [(s[1], s[2], s[5]) for s in segments]).to(device)
    rest_p = _rest(len(moments.total), [(s[3], s[4], s[5]) for s in segments]).to(device)
    if not point.writer and len(rest_a) == len(rest_p):  # a norm's other channels were averaged in place
        variance = moments.covariance()
        variance = variance.diagonal() if variance.dim() == 2 else variance
        mean[rest_a] = weight * moments.mean()[rest_p]
        std[rest_a] = weight * variance[rest_p].clamp_min(0).sqrt()
        restore[rest_a] = True
    return NeuronTarget(mean, std, restore)


class _Repairer(fx.Interpreter):
    """Runs the fused copy once, correcting each point's parameters (and output) as it goes."""

    def __init__(self, module: fx.GraphModule, points: list[RepairPoint], targets: Targets | None,
                 tensors: dict[str, torch.Tensor], reset: set[str]) -> None:
        super().__init__(module)
        self.points = {p.node: p for p in points}
        self.targets, self.tensors, self.reset = targets, tensors, reset

    def run_node(self, n: fx.Node):  # noqa: ANN202 - fx's signature
        point = self.points.get(n.name)
        if n.name in self.reset:  # batch norm's statistics on the sample, in place of the stale ones
            _, _, running, _ = _norm_tensors(self.module, n)
            # Here, not by batch_norm.reestimate_batch_norms: each norm must see its input with the points
            # before it already corrected, in this one pass; the statistics are the same.
            mean, variance = channel_statistics(_channels(self.env[n.args[0]], 1))
            self.tensors[running[0]].copy_(mean)
            self.tensors[running[1]].copy_(variance)
        result = super().run_node(n)
        if point is None or self.targets is None or point.node not in self.targets:
            return result
        target = self.targets[point.node]
        target = NeuronTarget(*(t.to(result.device) for t in (target.mean, target.std, target.restore)))
        dim = point.dim % result.dim()
        rows = _channels(result, dim).double()
        mean, std = rows.mean(1), rows.std(1)
        live = target.restore & (std > EPS)
        k = torch.where(live, target.std / std.clamp_min(EPS), torch.ones_like(std))
        scale = self.tensors[point.scale]
        scale.mul_(k.to(scale.dtype).view(-1, *([1] * (scale.dim() - 1))))
        old = torch.zeros_like(mean) if point.shift is None else self.tensors[point.shift].double()
        new = old * k if point.shift is None else torch.where(target.restore, target.mean - k * (mean - old), old)
        if point.shift is not None:
            self.tensors[point.shift].copy_(new)
        view = [1] * result.dim()
        view[dim] = -1
        return (k.view(view) * (result.double() - old.view(view)) + new.view(view)).to(result.dtype)


@torch.no_grad()
def _run(fused: nn.Module, x: torch.Tensor, points: list[RepairPoint], targets: Targets | None) -> nn.Module:
    """A new network: fused with each batch norm re-estimated and each point set to its target on x."""
    model = copy.deepcopy(fused).eval()
    gained = [p.shift.rsplit(".", 1)[0] for p in points if p.shift and p.node in (targets or {})
              and p.shift not in model.state_dict()]
    model = with_biases(model, gained) if gained else model
    module = fx.symbolic_trace(model)  # shares model's parameters: what the pass sets lands in the model
    tensors = dict(model.state_dict(keep_vars=True))
    reset = {n.name for n in module.graph.nodes if _norm_tensors(module, n)[2] is not None}
    tensors = {k: v.data for k, v in tensors.items()}
    _Repairer(module, points, targets, tensors, reset).run(x.to(next(model.parameters()).device))
    return model


def repair_groups(fused: nn.Module, parents: list[nn.Module], graphs: list[ModelGraph], maps: list[Plans],
                  weights: list[float], x: torch.Tensor, anchor: int, gain_bias: bool = False,
                  targets: Targets | None = None, fused_graph: ModelGraph | None = None) -> nn.Module:
    """REPAIR of a network fused over traced groups: a new network, each point at its target mean and std on x.

    maps, weights, anchor: as repair_targets (plans, the parents' averaging weights, the anchor's index);
    targets: computed by the caller where it knows them better (repair_targets(..., merge_maps=True)).
    gain_bias: a bias-free layer without norm gets a bias, so its mean is restored too.
    fused_graph: the fused network's groups where its widths are not the anchor's (partial merging).
    The parents are read, never changed."""
    check_sample(x)
    points = repair_points(fused, graphs[anchor] if fused_graph is None else fused_graph, gain_bias)
    if targets is None:
        targets = repair_targets(fused, parents, graphs, maps, weights, x, anchor, points=points,
                                 fused_graph=fused_graph)
    return _run(fused, x, points, targets)
