"""How the tracer (otcore.graph_tracer) follows a layout through shape changes.

Flattens and reshapes of the channel with its trailing dimensions repeat each channel; permutes and
transposes move the channel dimension; splits, reductions and concatenations along another
dimension keep the layout; along the channels they concatenate parts or fix them.
"""
from __future__ import annotations

import math

import torch
from torch import fx

from otcore.graph_types import _Segment, _Value


class ShapeRules:
    """The Tracer's rules for shape-changing nodes (mixed into otcore.graph_tracer.Tracer)."""

    def same(self, x: _Value | None, shape) -> _Value | None:
        """A shape-preserving (or spatially pooling) op: the layout passes through."""
        if x is None or shape is None or len(shape) != len(x.shape) or shape[x.dim] != x.shape[x.dim]:
            return x if x is None or shape is None else self.reshape(x, shape)
        return _Value(x.segments, x.dim, shape)

    def fixed_like(self, x: _Value | None, shape) -> _Value | None:
        if x is None:
            return None
        g = self.new_group("fixed", x.width())
        self.union(0, g)
        return _Value([_Segment(g, x.width())], x.dim, shape)

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
            if len(shape) > x.dim + 1 and shape[x.dim] == x.shape[x.dim]:
                return _Value(x.segments, x.dim, shape)  # only the dims after the channels regrouped (H, W -> H*W)
            if (heads := self.split_view(x, shape)) is not None:  # (B, N, C) -> (B, N, [3,] heads, head_dim)
                return heads
        self.fix(x)
        return self.fixed_like(_Value(x.segments, min(x.dim, len(shape) - 1), shape), shape)

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
            elif len(shape) == len(x.shape) and (cut := self.split_channels(x, [tuple(m.shape) for m in metas])):
                return cut  # a fused projection's parts (q, k, v): one group each
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
        known = [p for p in parts if p is not None]
        if known and len(known) < len(parts) and dim % len(known[0].shape) != known[0].dim:
            # Along tokens, beside parameters (a class token): those parameters follow the channels.
            keys = [None if p is not None else self.parameter_source(a, known[0], shape)
                    for a, p in zip(node.args[0], parts)]
            if all(k is not None for k, p in zip(keys, parts) if p is None):
                for key in keys:
                    if key is not None:
                        self.add_slots(known[0], key[0], key[1], "follower")
                return self.join(node, [a for a, p in zip(node.args[0], parts) if p is not None], shape)
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

    def parameter_source(self, arg: object, x: _Value, shape) -> tuple[str, int] | None:
        """(state key, axis) of a parameter that `arg` only expands or casts, with x's channels on that axis."""
        while isinstance(arg, fx.Node) and arg.op == "call_method" and arg.target in ("expand", "expand_as", "to",
                                                                                        "type_as", "contiguous"):
            arg = arg.args[0]
        if not isinstance(arg, fx.Node) or arg.op != "get_attr" or arg.target not in self.state or shape is None:
            return None
        tensor = self.state[arg.target]
        axis = tensor.dim() - (len(shape) - x.dim)
        if axis < 0 or tensor.shape[axis] != x.width():
            return None
        return arg.target, axis

    def index(self, x: _Value, index: object, shape) -> _Value | None:
        """x[...] with ints, slices, None and Ellipsis off the channels (x[:, 0], a class token); None otherwise."""
        items = list(index) if isinstance(index, tuple) else [index]
        if any(not (i is None or i is Ellipsis or isinstance(i, (int, slice))) for i in items) or items.count(Ellipsis) > 1:
            return None
        real = sum(i is not None and i is not Ellipsis for i in items)
        fill = [slice(None)] * (len(x.shape) - real)
        items = items[:items.index(Ellipsis)] + fill + items[items.index(Ellipsis) + 1:] if Ellipsis in items else \
            items + fill
        in_dim = out_dim = 0
        for item in items:
            if item is None:
                out_dim += 1
                continue
            if in_dim == x.dim:
                whole = isinstance(item, slice) and item.start in (None, 0) and item.step in (None, 1) and (
                    item.stop is None or isinstance(item.stop, int) and item.stop >= x.shape[x.dim])
                return _Value(x.segments, out_dim, shape) if whole else None
            out_dim += isinstance(item, slice)
            in_dim += 1
        return None
