"""The channel-layout propagation behind otcore.graph: one visit per fx node, unions of what moves together.

Each tensor value is known by its channel dimension and its layout along it (segments of groups, each
channel repeated `repeat` times); layers open groups, sums and products join them, and whatever the
tracer cannot follow is either refused (a layer with weights it does not know) or fixed in place.
"""
from __future__ import annotations

import math
import operator

import torch
from torch import fx, nn

from otcore.errors import ModelError
from otcore.graph_ops import (ELEMENTWISE_FUNCTIONS, ELEMENTWISE_METHODS, ELEMENTWISE_MODULES, JOIN_METHODS, JOINS,
                              SHAPE_ONLY_METHODS)
from otcore.graph_types import FIXED, ChannelGroup, Slot, _Segment, _Value


class Tracer:
    """Propagates channel layouts through an fx graph and unions what must move together."""

    def __init__(self, module: fx.GraphModule, state: dict[str, torch.Tensor]) -> None:
        self.module = module
        self.state = state
        self.parent: list[int] = [0]  # id 0 is FIXED
        self.names: list[str] = [FIXED]
        self.sizes: list[int] = [0]
        self.slots: list[list[Slot]] = [[]]
        self.nodes: list[str] = [""]  # per group id: where its channels are sampled
        self.joined: set[int] = set()  # roots whose node is a sum's
        self.values: dict[str, _Value | tuple | None] = {}
        self.current = ""  # the node being visited

    # ----------------------------------------------------------------- union-find
    def new_group(self, name: str, size: int) -> int:
        self.parent.append(len(self.parent))
        self.names.append(name)
        self.sizes.append(size)
        self.slots.append([])
        self.nodes.append(self.current)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb == 0 or (ra != 0 and rb < ra):
            ra, rb = rb, ra  # keep FIXED, else the earlier group, as the root
        self.parent[rb] = ra

    def fix(self, value: _Value | None) -> None:
        for seg in value.segments if value is not None else []:
            self.union(0, seg.group)

    # ----------------------------------------------------------------- slots
    def add_slots(self, value: _Value, tensor: str, axis: int, role: str, scale: int = 1) -> None:
        """Record that `tensor`'s `axis` holds `value`'s channel layout (each entry `scale` times)."""
        offset = 0
        for seg in value.segments:
            self.slots[seg.group].append(Slot(tensor, axis, offset, seg.repeat * scale, role))
            offset += seg.size * seg.repeat * scale

    def module_tensor(self, path: str, name: str) -> str | None:
        key = f"{path}.{name}" if path else name
        return key if key in self.state else None

    # ----------------------------------------------------------------- nodes
    def refuse(self, node: fx.Node, why: str) -> ModelError:
        where = node.target if node.op == "call_module" else node.name
        return ModelError(f"cannot read the channel structure at '{where}': {why}")

    def shape(self, node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def value(self, arg: object) -> _Value | None:
        value = self.values.get(arg.name) if isinstance(arg, fx.Node) else None
        return value if isinstance(value, _Value) else None

    def run(self) -> None:
        for node in self.module.graph.nodes:
            self.current = node.name
            self.values[node.name] = self.visit(node)

    def visit(self, node: fx.Node) -> _Value | None:
        shape = self.shape(node)
        if node.op == "placeholder":
            if shape is None or len(shape) < 2:
                return None
            group = self.new_group("input", shape[1])
            self.union(0, group)  # the data's channels are what they are
            return _Value([_Segment(group, shape[1])], 1, shape)
        if node.op == "get_attr":
            return None
        if node.op == "output":
            for arg in _flatten_args(node.args):
                self.fix(self.value(arg))
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.module.get_submodule(node.target), shape)
        if node.op in ("call_function", "call_method"):
            return self.visit_function(node, shape)
        raise self.refuse(node, f"unsupported node kind {node.op}")

    def visit_module(self, node: fx.Node, mod: nn.Module, shape: tuple[int, ...] | None) -> _Value | None:
        path = node.target
        x = self.value(node.args[0]) if node.args else None
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return self.conv(node, mod, path, x, shape)
        if isinstance(mod, nn.Linear):
            return self.linear(node, mod, path, x, shape)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d)):
            self.follow(node, path, x, ("weight", "bias", "running_mean", "running_var"))
            return x
        if isinstance(mod, nn.LayerNorm):  # over more than the channels: their order is free, the rest not
            if x is None or len(mod.normalized_shape) != 1 or x.dim != len(x.shape) - 1:
                return self.fix(x) or self.fixed_like(x, shape)
            self.follow(node, path, x, ("weight", "bias"))
            return x
        if isinstance(mod, nn.GroupNorm):  # in blocks of channels (1 < groups < C): a permutation across them counts
            self.fix(x) if mod.num_groups not in (1, mod.num_channels) else self.follow(node, path, x, ("weight", "bias"))
            return x
        if isinstance(mod, nn.Flatten):
            return self.flatten(node, x, mod.start_dim, mod.end_dim, shape)
        if isinstance(mod, ELEMENTWISE_MODULES) or type(mod).__name__ in ("StochasticDepth", "DropPath"):
            if isinstance(mod, nn.PReLU) and mod.weight.numel() > 1:
                self.follow(node, path, x, ("weight",))
            return self.same(x, shape)
        if next(mod.parameters(recurse=False), None) is None and not list(mod.children()):
            raise self.refuse(node, f"{type(mod).__name__} is not a layer the tracer knows")
        raise self.refuse(node, f"{type(mod).__name__} has weights the tracer does not know how to align")

    def read(self, node: fx.Node, x: _Value | None, dim: int, width: int, what: str) -> _Value:
        """`x` seen with its channels on `dim`: a layout whose order is fixed anyway may be read on any dim."""
        if x is not None and x.dim == dim and x.width() == width:
            return x
        if x is not None and all(self.find(s.group) == 0 for s in x.segments):
            g = self.new_group("fixed", width)
            self.union(0, g)
            return _Value([_Segment(g, width)], dim, x.shape)
        raise self.refuse(node, f"{what} must read its {width} channels on dimension {dim}")

    def conv(self, node: fx.Node, mod: nn.Module, path: str, x: _Value | None, shape) -> _Value:
        x = self.read(node, x, 1, mod.in_channels, "a convolution")
        if mod.groups == 1:
            self.add_slots(x, f"{path}.weight", 1, "reader")
            out = self.new_group(path, mod.out_channels)
            self.slots[out].append(Slot(f"{path}.weight", 0, 0, 1, "writer"))
            if mod.bias is not None:
                self.slots[out].append(Slot(f"{path}.bias", 0, 0, 1, "follower"))
            return _Value([_Segment(out, mod.out_channels)], 1, shape)
        if mod.groups == mod.in_channels and all(s.repeat == 1 for s in x.segments):
            # Depthwise: output channel c*k+j reads input channel c; the filters move with their channel.
            multiplier = mod.out_channels // mod.in_channels
            self.add_slots(x, f"{path}.weight", 0, "follower", multiplier)
            if mod.bias is not None:
                self.add_slots(x, f"{path}.bias", 0, "follower", multiplier)
            return _Value([_Segment(s.group, s.size, multiplier) for s in x.segments], 1, shape)
        self.fix(x)  # grouped convolution: channels may move only within their block; keep them in place
        out = self.new_group(path, mod.out_channels)
        self.union(0, out)
        return _Value([_Segment(out, mod.out_channels)], 1, shape)

    def linear(self, node: fx.Node, mod: nn.Linear, path: str, x: _Value | None, shape) -> _Value:
        x = self.read(node, x, len(shape) - 1, mod.in_features, "a linear layer")
        self.add_slots(x, f"{path}.weight", 1, "reader")
        out = self.new_group(path, mod.out_features)
        self.slots[out].append(Slot(f"{path}.weight", 0, 0, 1, "writer"))
        if mod.bias is not None:
            self.slots[out].append(Slot(f"{path}.bias", 0, 0, 1, "follower"))
        return _Value([_Segment(out, mod.out_features)], len(shape) - 1, shape)

    def follow(self, node: fx.Node, path: str, x: _Value | None, names: tuple[str, ...]) -> None:
        if x is None:
            raise self.refuse(node, "normalises a tensor without channels")
        for name in names:
            key = self.module_tensor(path, name)
            if key is not None and self.state[key].dim() == 1:
                self.add_slots(x, key, 0, "follower")
        source = node.args[0]
        if len(x.segments) == 1 and isinstance(source, fx.Node):
            root = self.find(x.segments[0].group)
            if root not in self.joined and self.nodes[root] == source.name:
                self.nodes[root] = node.name  # a normalised output is what the next layer sees

    def fixed_like(self, x: _Value | None, shape) -> _Value | None:
        if x is None:
            return None
        g = self.new_group("fixed", x.width())
        self.union(0, g)
        return _Value([_Segment(g, x.width())], x.dim, shape)

    def same(self, x: _Value | None, shape) -> _Value | None:
        """A shape-preserving (or spatially pooling) op: the layout passes through."""
        if x is None or shape is None or len(shape) != len(x.shape) or shape[x.dim] != x.shape[x.dim]:
            return x if x is None or shape is None else self.reshape(x, shape)
        return _Value(x.segments, x.dim, shape)

    def flatten(self, node: fx.Node, x: _Value | None, start: int, end: int, shape) -> _Value | None:
        if x is None:
            return None
        ndim = len(x.shape)
        start, end = start % ndim, end % ndim
        if not start <= x.dim <= end:
            return _Value(x.segments, x.dim - (end - start if x.dim > end else 0), shape)
        if math.prod(x.shape[start:x.dim]) != 1:
            self.fix(x)  # the channels would be tiled, not repeated
            return self.fixed_like(_Value(x.segments, start, shape), shape)
        inner = math.prod(x.shape[x.dim + 1:end + 1])
        return _Value([_Segment(s.group, s.size, s.repeat * inner) for s in x.segments], start, shape)

    def reshape(self, x: _Value, shape: tuple[int, ...]) -> _Value:
        """A view or reshape: a flatten of the channel and trailing dims is followed, anything else fixes."""
        if len(shape) >= x.dim + 1 and tuple(shape[:x.dim]) == tuple(x.shape[:x.dim]):
            if shape[x.dim] == math.prod(x.shape[x.dim:]) and len(shape) == x.dim + 1:
                inner = math.prod(x.shape[x.dim + 1:])
                return _Value([_Segment(s.group, s.size, s.repeat * inner) for s in x.segments], x.dim, shape)
            if len(shape) == len(x.shape) and tuple(shape) == tuple(x.shape):
                return _Value(x.segments, x.dim, shape)
        self.fix(x)
        return self.fixed_like(_Value(x.segments, min(x.dim, len(shape) - 1), shape), shape)

    def join(self, node: fx.Node, args: list, shape) -> _Value | None:
        """Elementwise sum or product: tensors with channels share their layout; parameters follow it."""
        values = [self.value(a) for a in args]
        known = [v for v in values if v is not None]
        if not known:
            return None
        first = known[0]
        for other in known[1:]:
            if len(other.segments) == len(first.segments) and all(
                    a.size == b.size and a.repeat == b.repeat for a, b in zip(first.segments, other.segments)):
                for a, b in zip(first.segments, other.segments):
                    if self.find(a.group) != self.find(b.group) and len(first.segments) == 1:
                        self.union(a.group, b.group)
                        root = self.find(a.group)
                        if root not in self.joined and node.target in (operator.add, operator.iadd, torch.add, "add",
                                                                       "add_"):
                            self.nodes[root], _ = node.name, self.joined.add(root)
                    else:
                        self.union(a.group, b.group)
            elif other.width() == 1 or first.width() == 1:
                continue  # a per-example scalar broadcast over the channels
            else:
                self.fix(first)
                self.fix(other)
        for arg in args:
            if isinstance(arg, fx.Node) and arg.op == "get_attr":
                self.follow_attr(node, arg, first, shape)
            elif (key := self.vector_source(arg)) is not None and self.state[key].numel() == first.width() > 1:
                self.add_slots(first, key, 0, "follower")  # a layer scale reshaped to broadcast (timm's ConvNeXt)
        out_shape = shape if shape is not None else first.shape
        widest = max(known, key=lambda v: v.width())
        return _Value(widest.segments, widest.dim + len(out_shape) - len(widest.shape), out_shape)

    def follow_attr(self, node: fx.Node, attr: fx.Node, x: _Value, shape) -> None:
        """A parameter broadcast against channels (a layer scale) moves with them."""
        key = attr.target
        if key not in self.state:
            return
        tensor = self.state[key]
        axis = tensor.dim() - (len(shape) - x.dim)
        if axis < 0 or tensor.shape[axis] == 1:
            return
        if tensor.shape[axis] != x.width():
            raise self.refuse(node, f"parameter '{key}' does not match the channels it scales")
        self.add_slots(x, key, axis, "follower")

    def vector_source(self, arg: object) -> str | None:
        """The 1-D parameter or buffer a node only views (reshape, view, unsqueeze, indexing with None), if any."""
        while isinstance(arg, fx.Node) and arg.op != "get_attr":
            viewing = arg.op == "call_method" and arg.target in ("reshape", "view", "unsqueeze", "to", "type_as") or \
                arg.target in (torch.reshape, torch.unsqueeze, operator.getitem)
            if not viewing or not arg.args:
                return None
            arg = arg.args[0]
        key = arg.target if isinstance(arg, fx.Node) else None
        return key if key in self.state and self.state[key].dim() == 1 else None

    def functional_layer(self, node: fx.Node, x: _Value | None, shape) -> _Value | None:
        """F.batch_norm / F.group_norm / F.instance_norm with their parameters, as the modules are read."""
        target = node.target
        if target is torch.nn.functional.group_norm:
            groups = node.args[1] if len(node.args) > 1 else node.kwargs.get("num_groups")
            params = list(node.args[2:4]) + [node.kwargs.get("weight"), node.kwargs.get("bias")]
            if x is None or groups not in (1, x.width()):
                self.fix(x)  # channels normalised in blocks keep their place
                return x
        else:  # batch_norm(input, running_mean, running_var, weight, bias, ...), instance_norm alike
            params = list(node.args[1:5]) + [node.kwargs.get(k) for k in ("running_mean", "running_var", "weight",
                                                                           "bias")]
        if x is None or x.dim != 1:
            raise self.refuse(node, "normalises a tensor without channels on dimension 1")
        for param in params:
            if (key := self.vector_source(param)) is not None:
                self.add_slots(x, key, 0, "follower")
        return _Value(x.segments, x.dim, shape)

    def visit_function(self, node: fx.Node, shape) -> _Value | None:
        target = node.target
        args = list(node.args)
        x = self.value(args[0]) if args else None
        if target is operator.getitem and isinstance(args[0], fx.Node) and isinstance(self.values.get(args[0].name), tuple):
            parts = self.values[args[0].name]
            return parts[args[1]] if isinstance(args[1], int) and -len(parts) <= args[1] < len(parts) else None
        if node.op == "call_method" and target in SHAPE_ONLY_METHODS:
            return None
        if target is getattr or (node.op == "call_function" and target is operator.getitem and x is None):
            return None
        if target in JOINS or (node.op == "call_method" and target in JOIN_METHODS):
            return self.join(node, args[:2], shape)
        if target in ELEMENTWISE_FUNCTIONS or (node.op == "call_method" and target in ELEMENTWISE_METHODS):
            return self.same(x, shape)
        if target in (torch.flatten,) or (node.op == "call_method" and target == "flatten"):
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(node, x, start, end, shape)
        if node.op == "call_method" and target in ("view", "reshape") or target is torch.reshape:
            return None if x is None else self.reshape(x, shape)
        if target in (torch.mean, torch.sum, torch.amax) or (node.op == "call_method" and target in ("mean", "sum",
                                                                                                    "amax")):
            return self.reduce(node, x, shape)
        if target is torch.cat or target is torch.concat:
            return self.cat(node, shape)
        if node.op == "call_method" and target in ("permute", "transpose") or target in (torch.permute, torch.transpose):
            return self.permute(node, x, shape)
        if target is torch.nn.functional.layer_norm:
            return self.functional_norm(node, x, shape)
        if target in (torch.nn.functional.batch_norm, torch.nn.functional.group_norm, torch.nn.functional.instance_norm):
            return self.functional_layer(node, x, shape)
        if target in (torch.chunk, torch.split, torch.unbind) or (node.op == "call_method" and target in (
                "chunk", "split", "unbind")):
            return self.split(node, x)
        if x is None and all(not isinstance(a, fx.Node) or self.value(a) is None for a in args):
            return None  # arithmetic on shapes and constants
        for arg in _flatten_args(node.args):
            self.fix(self.value(arg))  # an op whose effect on channel order is unknown: keep those channels in place
        if shape is None:
            return None
        dim = x.dim if isinstance(x, _Value) and len(x.shape) == len(shape) else min(1, len(shape) - 1)
        g = self.new_group(node.name, shape[dim] if shape else 1)
        self.union(0, g)
        return _Value([_Segment(g, shape[dim] if shape else 1)], dim, shape)

    def functional_norm(self, node: fx.Node, x: _Value | None, shape) -> _Value | None:
        """F.layer_norm over the channels (torchvision's LayerNorm2d between two permutes)."""
        normalized = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
        if x is None or len(normalized) != 1 or x.dim != len(x.shape) - 1:
            self.fix(x)
            return self.fixed_like(x, shape)
        params = list(node.args[2:4]) + [node.kwargs.get("weight"), node.kwargs.get("bias")]
        for param in params:
            if isinstance(param, fx.Node) and param.op == "get_attr" and param.target in self.state:
                self.add_slots(x, param.target, 0, "follower")
        return _Value(x.segments, x.dim, shape)

    def split(self, node: fx.Node, x: _Value | None) -> tuple | None:
        """chunk/split/unbind: parts along another dimension keep the layout; parts of the channels are fixed."""
        metas = node.meta.get("tensor_meta")
        if x is None or not isinstance(metas, (list, tuple)):
            return None
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if node.target in ("unbind", torch.unbind):
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        dim = dim % len(x.shape)
        parts = []
        for meta in metas:
            shape = tuple(meta.shape)
            if dim != x.dim:
                parts.append(_Value(x.segments, x.dim - (len(x.shape) - len(shape)) * (dim < x.dim), shape))
            else:
                self.fix(x)
                parts.append(self.fixed_like(_Value(x.segments, x.dim, shape), shape))
        return tuple(parts)

    def reduce(self, node: fx.Node, x: _Value | None, shape) -> _Value | None:
        if x is None:
            return None
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or range(len(x.shape)))
        dims = [d % len(x.shape) for d in dims]
        if x.dim in dims:
            self.fix(x)
            return None
        keep = node.kwargs.get("keepdim", len(node.args) > 2 and node.args[2])
        return _Value(x.segments, x.dim if keep else x.dim - sum(d < x.dim for d in dims), shape)

    def cat(self, node: fx.Node, shape) -> _Value | None:
        parts = [self.value(a) for a in node.args[0]]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if any(p is None for p in parts):
            for p in parts:
                self.fix(p)
            return None
        dim = dim % len(parts[0].shape)
        if dim == parts[0].dim:
            return _Value([s for p in parts for s in p.segments], dim, shape)
        return self.join(node, list(node.args[0]), shape)

    def permute(self, node: fx.Node, x: _Value | None, shape) -> _Value | None:
        if x is None:
            return None
        ndim = len(x.shape)
        if node.target in ("permute", torch.permute):
            order = node.args[1:] if node.op == "call_method" else node.args[1]
            order = list(order[0]) if len(order) == 1 and isinstance(order[0], (list, tuple)) else list(order)
            order = [d % ndim for d in order]
            return _Value(x.segments, order.index(x.dim), shape)
        a, b = (d % ndim for d in node.args[1:3])
        return _Value(x.segments, b if x.dim == a else a if x.dim == b else x.dim, shape)

    # ----------------------------------------------------------------- result
    def groups(self) -> tuple[ChannelGroup, ...]:
        merged: dict[int, list[Slot]] = {}
        for g in range(1, len(self.parent)):
            merged.setdefault(self.find(g), []).extend(self.slots[g])
        out = []
        for root, slots in merged.items():
            if not slots:
                continue
            if root != 0:
                sampled = self.values.get(self.nodes[root])
                dim = sampled.dim if isinstance(sampled, _Value) else 1
                out.append(ChannelGroup(self.names[root], self.sizes[root], tuple(slots), False, self.nodes[root], dim))
        fixed_slots = merged.get(0, [])
        if fixed_slots:
            out.append(ChannelGroup(FIXED, 0, tuple(fixed_slots), True))
        return tuple(out)


def _flatten_args(args) -> list:
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out += _flatten_args(a)
        elif isinstance(a, dict):
            out += _flatten_args(list(a.values()))
        else:
            out.append(a)
    return out


