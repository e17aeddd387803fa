"""How the tracer (otcore.graph_tracer) reads functions and methods: sums and products, functional norms.

Elementwise sums and products join the layouts they combine (residual streams, gates); parameters
broadcast against channels (layer scales) and the tensors a functional norm is given follow them;
an op whose effect on the channel order is unknown fixes the channels it touches.
"""
from __future__ import annotations

import operator

import torch
from torch import fx

from otcore.graph_ops import (ELEMENTWISE_FUNCTION_NAMES, ELEMENTWISE_FUNCTIONS, ELEMENTWISE_METHODS, JOIN_METHODS, JOINS,
                              SHAPE_ONLY_METHODS, flatten_args)
from otcore.graph_types import Slot, _Segment, _Value


class FunctionRules:
    """The Tracer's visits of `call_function` and `call_method` nodes (mixed into otcore.graph_tracer.Tracer)."""

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
        if node.op == "call_function" and target is operator.getitem and (kept := self.index(x, args[1], shape)):
            return kept  # indexing tokens or positions, not channels
        if target in JOINS or (node.op == "call_method" and target in JOIN_METHODS):
            return self.join(node, args[:2], shape)
        leaf = getattr(target, "__name__", "") if node.op == "call_function" else ""
        if target in ELEMENTWISE_FUNCTIONS or leaf in ELEMENTWISE_FUNCTION_NAMES or (
                node.op == "call_method" and target in ELEMENTWISE_METHODS):
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
        if leaf == "shifted_window_attention" and x is not None:
            return self.window_attention(node, x, shape)
        if leaf == "_patch_merging_pad" and x is not None and x.dim == len(x.shape) - 1:
            # Swin's patch merging: the four 2x2 neighbours' channels side by side, each in the input's layout.
            return _Value([_Segment(s.group, s.size, s.repeat) for _ in range(4) for s in x.segments], x.dim, shape)
        if target in (torch.nn.functional.batch_norm, torch.nn.functional.group_norm, torch.nn.functional.instance_norm):
            return self.functional_layer(node, x, shape)
        if target in (torch.chunk, torch.split, torch.unbind) or (node.op == "call_method" and target in (
                "chunk", "split", "unbind")):
            return self.split(node, x)
        if x is None and all(not isinstance(a, fx.Node) or self.value(a) is None for a in args):
            return None  # arithmetic on shapes and constants
        for arg in flatten_args(node.args):
            self.fix(self.value(arg))  # an op whose effect on channel order is unknown: keep those channels in place
        if shape is None:
            return None
        dim = x.dim if isinstance(x, _Value) and len(x.shape) == len(shape) else min(1, len(shape) - 1)
        g = self.new_group(node.name, shape[dim] if shape else 1)
        self.union(0, g)
        return _Value([_Segment(g, shape[dim] if shape else 1)], dim, shape)

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

    def vector_source(self, arg: object, ndim: int = 1) -> str | None:
        """The `ndim`-D parameter or buffer a node only views (reshape, view, unsqueeze, indexing with None), if any."""
        while isinstance(arg, fx.Node) and arg.op != "get_attr":
            viewing = arg.op == "call_method" and arg.target in ("reshape", "view", "unsqueeze", "to", "type_as") or \
                arg.target in (torch.reshape, torch.unsqueeze, operator.getitem)
            if not viewing or not arg.args:
                return None
            arg = arg.args[0]
        key = arg.target if isinstance(arg, fx.Node) else None
        return key if key in self.state and self.state[key].dim() == ndim else None

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

    def window_attention(self, node: fx.Node, x: _Value, shape) -> _Value | None:
        """torchvision's Swin attention (one fx leaf): qkv_weight reads the input's channels (last dimension) on
        its axis 1, proj_weight and proj_bias write new ones; the heads inside stay in place."""
        names = ("input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
                 "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias")
        given = {**dict(zip(names, node.args)), **node.kwargs}
        qkv, proj = self.vector_source(given.get("qkv_weight"), 2), self.vector_source(given.get("proj_weight"), 2)
        if qkv is None or proj is None or x.dim != len(x.shape) - 1:
            raise self.refuse(node, "a window attention whose projections are not parameters of its own")
        self.add_slots(self.read(node, x, x.dim, self.state[qkv].shape[1], "an attention block"), qkv, 1, "reader")
        out = self.new_group(proj.rsplit(".", 1)[0], self.state[proj].shape[0])
        self.slots[out].append(Slot(proj, 0, 0, 1, "writer"))
        if (bias := self.vector_source(given.get("proj_bias"))) is not None:
            self.slots[out].append(Slot(bias, 0, 0, 1, "follower"))
        return _Value([_Segment(out, self.state[proj].shape[0])], len(shape) - 1, shape)
