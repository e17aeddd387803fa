"""How the tracer (otcore.graph_tracer) reads multi-head attention: heads, query/key pairs, value/projection pairs.

A projection's output viewed as (..., heads, head_dim) spreads one group's channels over several
dimensions (a `_Heads` layout); permutes, transposes and splits follow it. Then, as Imfeld et al.
(ICLR 2024) align a transformer:

- q @ k^T sums over the head dimension: q's and k's channels must move by one permutation (joined
  into one group), and only whole heads may move (the scores of head h pair with the values of head h);
- scores @ v pairs each head of the scores with the same head of v: v's group shares the q/k group's
  permutation of the heads (`heads_with`), its within-head channels move on their own, with the
  projection reading the heads merged back;
- a fused qkv projection's (or any) output split along its channels (unbind, chunk) becomes one group
  per part, each with its share of the writer's rows.

Any other operation on such a view keeps the channels it touches in place (sound: a fixed group is
averaged without alignment). F.scaled_dot_product_attention is read as the three steps above.
"""
from __future__ import annotations

import math
import operator

import torch
from torch import fx, nn

from otcore.graph_ops import (ELEMENTWISE_FUNCTION_NAMES, ELEMENTWISE_FUNCTIONS, ELEMENTWISE_METHODS, ELEMENTWISE_MODULES,
                              JOIN_METHODS, JOINS, SHAPE_ONLY_METHODS, flatten_args)
from otcore.graph_types import Slot, _Heads, _Segment, _Value

_UNKNOWN = object()  # an op on head views this module does not follow
MATMULS = (operator.matmul, torch.matmul, torch.bmm)
SOFTMAXES = (torch.softmax, torch.nn.functional.softmax)


class AttentionRules:
    """The Tracer's rules for attention (mixed into otcore.graph_tracer.Tracer)."""

    def init_attention(self) -> None:
        self.offsets: list[int] = [0]  # per group id: where its channels start in its sampled node's output
        self.head_counts: dict[int, set[int]] = {}  # group id -> head counts attention saw it split into
        self.head_links: list[tuple[int, int]] = []  # groups whose heads must move together (q/k with v)
        self.split_groups: dict[int, list[int]] = {}  # a group cut into parts -> the parts' ids

    def heads_of(self, arg: object) -> _Heads | None:
        value = self.values.get(arg.name) if isinstance(arg, fx.Node) else None
        return value if isinstance(value, _Heads) else None

    def touches_heads(self, node: fx.Node) -> bool:
        return any(self.heads_of(a) is not None for a in flatten_args(node.args) + flatten_args(list(node.kwargs.values())))

    # ----------------------------------------------------------------- entering and leaving head views
    def split_view(self, x: _Value, shape: tuple[int, ...]) -> _Heads | None:
        """A view cutting the (last) channel dimension into several: the group's channels in row-major order."""
        d = x.dim
        if (len(x.segments) != 1 or x.segments[0].repeat != 1 or d != len(x.shape) - 1 or len(shape) <= d + 1
                or tuple(shape[:d]) != tuple(x.shape[:d]) or math.prod(shape[d:]) != x.width()):
            return None
        return _Heads(x.segments[0].group, [(d + i, shape[d + i]) for i in range(len(shape) - d)], tuple(shape))

    def split_group(self, g: int, widths: list[int]) -> list[int] | None:
        """Cut a fresh group into consecutive parts, each with its share of every slot; None if it is not fresh."""
        if g == 0 or self.find(g) != g or any(self.find(i) == g for i in range(1, len(self.parent)) if i != g) or \
                any(s.repeat != 1 for s in self.slots[g]) or sum(widths) != self.sizes[g]:
            return None
        parts, start = [], 0
        for j, width in enumerate(widths):
            part = self.new_group(f"{self.names[g]}.part{j}", width)
            self.nodes[part], self.offsets[part] = self.nodes[g], self.offsets[g] + start
            self.slots[part] = [Slot(s.tensor, s.axis, s.offset + start, 1, s.role) for s in self.slots[g]]
            parts.append(part)
            start += width
        self.slots[g] = []
        self.split_groups[g] = parts
        return parts

    def split_channels(self, x: _Value, shapes: list[tuple[int, ...]]) -> tuple | None:
        """chunk/split of a plain layout along its channels: one group per part (a fused projection's q, k, v)."""
        if len(x.segments) != 1 or x.segments[0].repeat != 1:
            return None
        parts = self.split_group(x.segments[0].group, [s[x.dim] for s in shapes])
        if parts is None:
            return None
        return tuple(_Value([_Segment(p, s[x.dim])], x.dim, s) for p, s in zip(parts, shapes))

    # ----------------------------------------------------------------- visits
    def visit_heads(self, node: fx.Node, shape) -> object:
        """A node reading a head view: followed where attention's rules know it, else its channels are fixed."""
        if node.op == "call_function" and node.target is getattr or node.op == "call_method" and \
                node.target in SHAPE_ONLY_METHODS:
            return None
        result = self.attention_rule(node, shape)
        if result is not _UNKNOWN:
            return result
        for arg in flatten_args(node.args) + flatten_args(list(node.kwargs.values())):
            heads = self.heads_of(arg)
            if heads is not None:
                self.union(0, heads.group)
            else:
                self.fix(self.value(arg))
        if shape is None or node.op == "output":
            return None
        g = self.new_group(node.name, shape[-1] if shape else 1)
        self.union(0, g)
        return _Value([_Segment(g, shape[-1] if shape else 1)], max(len(shape) - 1, 0), shape)

    def attention_rule(self, node: fx.Node, shape) -> object:
        target, args, op = node.target, list(node.args), node.op
        h = self.heads_of(args[0]) if args else None
        leaf = getattr(target, "__name__", "") if op == "call_function" else ""
        if op == "call_module":
            mod = self.module.get_submodule(target)
            if isinstance(mod, nn.Softmax):
                return self.heads_softmax(h, mod.dim, shape)
            return self.heads_same(h, shape) if isinstance(mod, ELEMENTWISE_MODULES) else _UNKNOWN
        if op not in ("call_function", "call_method"):
            return _UNKNOWN
        if target in MATMULS or (op == "call_method" and target == "matmul"):
            return self.heads_matmul(args[0], args[1], shape)
        if target is torch.nn.functional.scaled_dot_product_attention:
            return self.heads_sdpa(node, shape)
        if target in SOFTMAXES or (op == "call_method" and target == "softmax"):
            return self.heads_softmax(h, args[1] if len(args) > 1 else node.kwargs.get("dim"), shape)
        if target in JOINS or (op == "call_method" and target in JOIN_METHODS):
            return self.heads_scale(node, args[:2], shape)
        if target in ELEMENTWISE_FUNCTIONS or leaf in ELEMENTWISE_FUNCTION_NAMES or (
                op == "call_method" and target in ELEMENTWISE_METHODS):
            return self.heads_same(h, shape)
        if h is None:
            return _UNKNOWN
        if op == "call_method" and target in ("permute", "transpose") or target in (torch.permute, torch.transpose):
            return self.heads_permute(node, h, shape)
        if op == "call_method" and target in ("view", "reshape") or target is torch.reshape or \
                target is torch.flatten or (op == "call_method" and target == "flatten"):
            return self.heads_merge(h, shape)
        if target in (torch.unbind, torch.chunk, torch.split) or (op == "call_method" and target in (
                "unbind", "chunk", "split")):
            return self.heads_split(node, h)
        return _UNKNOWN

    def heads_same(self, h: _Heads | None, shape) -> object:
        if h is None or shape is None or len(shape) != len(h.shape) or any(shape[d] != n for d, n in h.factors):
            return _UNKNOWN
        return _Heads(h.group, h.factors, tuple(shape), h.partial)

    def heads_softmax(self, h: _Heads | None, dim: int | None, shape) -> object:
        if h is None or dim is None or dim % len(h.shape) in [d for d, _ in h.factors]:
            return _UNKNOWN
        return self.heads_same(h, shape)

    def heads_scale(self, node: fx.Node, args: list, shape) -> object:
        """q * scale, scores + mask: a constant, or a tensor broadcast over the channels, leaves the layout."""
        heads = [self.heads_of(a) for a in args]
        if sum(h is not None for h in heads) != 1:
            return _UNKNOWN
        h = next(x for x in heads if x is not None)
        for arg in args:
            if not isinstance(arg, fx.Node) or self.heads_of(arg) is not None:
                continue
            other = self.shape(arg)
            if self.value(arg) is not None or other is None:
                return _UNKNOWN
            lead = len(h.shape) - len(other)
            if any(d - lead >= 0 and other[d - lead] != 1 for d, _ in h.factors):
                return _UNKNOWN  # it differs per channel or per head (a per-head bias): its order would matter
        return self.heads_same(h, shape)

    def heads_permute(self, node: fx.Node, h: _Heads, shape) -> _Heads:
        ndim = len(h.shape)
        if node.target in ("permute", torch.permute):
            order = node.args[1:] if node.op == "call_method" else node.args[1]
            order = list(order[0]) if len(order) == 1 and isinstance(order[0], (list, tuple)) else list(order)
            where = {d % ndim: i for i, d in enumerate(order)}
        else:
            a, b = (d % ndim for d in node.args[1:3])
            where = {d: d for d in range(ndim)} | {a: b, b: a}
        return _Heads(h.group, [(where[d], n) for d, n in h.factors], tuple(shape), h.partial)

    def heads_merge(self, h: _Heads, shape) -> object:
        """Heads merged back into one channel dimension (x.transpose(1, 2).reshape(B, N, C))."""
        dims = [d for d, _ in h.factors]
        first, last = dims[0], dims[-1]
        if h.partial or dims != list(range(first, last + 1)) or len(shape) != len(h.shape) - (last - first) or \
                tuple(shape[:first]) != h.shape[:first] or tuple(shape[first + 1:]) != h.shape[last + 1:] or \
                shape[first] != math.prod(n for _, n in h.factors):
            return _UNKNOWN
        return _Value([_Segment(h.group, shape[first])], first, tuple(shape))

    def heads_split(self, node: fx.Node, h: _Heads) -> object:
        """unbind/chunk/split: along another dimension each part keeps the view; along the outermost channel
        factor (qkv's 3) each part becomes a group of its own."""
        metas = node.meta.get("tensor_meta")
        if not isinstance(metas, (list, tuple)) or h.partial:
            return _UNKNOWN
        unbind = node.target in ("unbind", torch.unbind)
        dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) if unbind else \
            (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0))
        dim %= len(h.shape)
        shapes = [tuple(m.shape) for m in metas]
        moved = [(d - (unbind and d > dim), n) for d, n in h.factors]
        if dim not in [d for d, _ in h.factors]:
            return tuple(_Heads(h.group, moved, s) for s in shapes)
        if dim != h.factors[0][0]:
            return _UNKNOWN  # an inner factor: each part's channels would be strided
        inner = math.prod(n for _, n in h.factors[1:])
        counts = [1 if unbind else s[dim] for s in shapes]
        parts = self.split_group(h.group, [c * inner for c in counts])
        if parts is None:
            return _UNKNOWN
        rest = moved[1:] if unbind else None
        return tuple(_Heads(p, rest if unbind else [(dim, c)] + moved[1:], s) for p, c, s in zip(parts, counts, shapes))

    def heads_matmul(self, left: object, right: object, shape) -> object:
        """q @ k^T (joins q and k, one head count) and scores @ v (v's heads move with the scores')."""
        a, b = self.heads_of(left), self.heads_of(right)
        if a is None or b is None or shape is None or len(a.shape) != len(b.shape) or len(a.shape) < 3:
            return _UNKNOWN
        last = len(a.shape) - 1
        if not a.partial and not b.partial and len(a.factors) == len(b.factors) == 2:
            (ha, na), (ia, da) = a.factors
            (hb, nb), (ib, db) = b.factors
            if ia == last and ib == last - 1 and ha == hb < last - 1 and na == nb and da == db:
                self.union(a.group, b.group)
                self.head_counts.setdefault(a.group, set()).add(na)
                return _Heads(a.group, [(ha, na)], tuple(shape), partial=True)
        if a.partial and not b.partial and len(a.factors) == 1 and len(b.factors) == 2:
            (ha, na), ((hb, nb), (ib, _)) = a.factors[0], b.factors
            if ha == hb < last - 1 and na == nb and ib == last:
                self.head_counts.setdefault(b.group, set()).add(nb)
                self.head_links.append((a.group, b.group))
                return _Heads(b.group, b.factors, tuple(shape))
        return _UNKNOWN

    def heads_sdpa(self, node: fx.Node, shape) -> object:
        """F.scaled_dot_product_attention(q, k, v, attn_mask=None, ...): q @ k^T, softmax, @ v."""
        names = ("query", "key", "value", "attn_mask")
        given = {**dict(zip(names, node.args)), **node.kwargs}
        mask = given.get("attn_mask")
        if isinstance(mask, fx.Node) and not (mask.op == "placeholder" and mask.args == (None,)) or \
                isinstance(given.get("scale"), fx.Node):
            return _UNKNOWN  # a mask may differ per head; a forward argument left at its default None does not
        q, k, v = (self.heads_of(given.get(n)) for n in names[:3])
        if q is None or k is None or v is None or shape is None:
            return _UNKNOWN
        last = len(q.shape) - 1
        if q.partial or k.partial or v.partial or not (len(q.factors) == len(k.factors) == len(v.factors) == 2):
            return _UNKNOWN
        (hq, nq), (iq, dq) = q.factors
        (hk, nk), (ik, dk) = k.factors
        (hv, nv), (iv, _) = v.factors
        if not (iq == ik == iv == last and hq == hk == hv < last - 1 and nq == nk == nv and dq == dk):
            return _UNKNOWN
        self.union(q.group, k.group)
        self.head_counts.setdefault(q.group, set()).add(nq)
        self.head_counts.setdefault(v.group, set()).add(nv)
        self.head_links.append((q.group, v.group))
        return _Heads(v.group, v.factors, tuple(shape))

    def multihead_attention(self, node: fx.Node, mod: nn.MultiheadAttention, x: _Value | None) -> tuple:
        """nn.MultiheadAttention (torchvision's ViTs), one fx leaf: in_proj reads the input's channels and out_proj
        writes new ones; q, k, v and the heads inside stay in place (their outputs are not nodes to sample)."""
        path = node.target
        given = {**dict(zip(("query", "key", "value"), node.args)), **node.kwargs}
        if mod.in_proj_weight is None or not (given.get("query") is given.get("key") is given.get("value")):
            raise self.refuse(node, "MultiheadAttention is read only as self-attention with one in_proj_weight "
                                    "(query, key and value the same tensor)")
        shape = self.shape(given["query"]) if isinstance(given.get("query"), fx.Node) else None
        if shape is None:
            raise self.refuse(node, "MultiheadAttention on an input of unknown shape")
        x = self.read(node, x, len(shape) - 1, mod.embed_dim, "MultiheadAttention")
        self.add_slots(x, f"{path}.in_proj_weight", 1, "reader")
        inner = self.new_group(f"{path}.in_proj", 3 * mod.embed_dim)
        self.union(0, inner)  # q, k, v channels in place
        self.slots[inner] += [Slot(f"{path}.in_proj_weight", 0, 0, 1, "writer"),
                              Slot(f"{path}.out_proj.weight", 1, 0, 1, "reader")]
        out = self.new_group(f"{path}.out_proj", mod.embed_dim)
        self.slots[out].append(Slot(f"{path}.out_proj.weight", 0, 0, 1, "writer"))
        for name, group in (("in_proj_bias", inner), ("out_proj.bias", out)):
            if self.module_tensor(path, name) is not None:
                self.slots[group].append(Slot(f"{path}.{name}", 0, 0, 1, "follower"))
        return _Value([_Segment(out, mod.embed_dim)], len(shape) - 1, shape), None

    # ----------------------------------------------------------------- result
    def resolve_heads(self) -> dict[int, tuple[int, int]]:
        """Per root: (head count, the first root whose heads it shares); fixes what cannot be kept apart."""
        for g, parts in self.split_groups.items():  # the whole was used again after its cut: keep the parts in place
            if self.find(g) != g or self.slots[g] or any(self.find(i) == g for i in range(1, len(self.parent)) if i != g):
                for p in parts:
                    self.union(0, p)
        counts: dict[int, set[int]] = {}
        for g, found in self.head_counts.items():
            counts.setdefault(self.find(g), set()).update(found)
        link = {r: r for r in counts}

        def top(r: int) -> int:
            while link[r] != r:
                r = link[r]
            return r

        for a, b in self.head_links:
            ra, rb = top(self.find(a)), top(self.find(b))
            link[max(ra, rb)] = min(ra, rb)
        classes: dict[int, list[int]] = {}
        for r in counts:
            classes.setdefault(top(r), []).append(r)
        out: dict[int, tuple[int, int]] = {}
        for members in classes.values():
            found = set().union(*(counts[r] for r in members))
            if len(found) != 1 or any(self.find(r) == 0 for r in members):
                for r in members:
                    self.union(0, r)  # heads of different counts, or a member that must stay: all in place
                continue
            heads = found.pop()
            for r in members:
                out[r] = (heads, min(members) if len(members) > 1 else r)
        return out
