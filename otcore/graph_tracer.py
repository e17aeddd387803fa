"""The channel-layout propagation behind otcore.graph: one visit per fx node, unions of what moves together.

Each tensor value is known by its channel dimension and its layout along it (segments of groups, each
channel repeated `repeat` times); layers open groups, sums and products join them, and whatever the
tracer cannot follow is either refused (a layer with weights it does not know) or fixed in place. The rules
for layers, functions and shape changes live in otcore.graph_layers, .graph_functions and .graph_shapes.
"""
from __future__ import annotations

import torch
from torch import fx

from otcore.errors import ModelError
from otcore.graph_attention import AttentionRules
from otcore.graph_functions import FunctionRules
from otcore.graph_layers import LayerRules
from otcore.graph_ops import flatten_args
from otcore.graph_shapes import ShapeRules
from otcore.graph_types import FIXED, ChannelGroup, Slot, _Segment, _Value


class Tracer(LayerRules, FunctionRules, ShapeRules, AttentionRules):
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
        self.init_attention()

    # ----------------------------------------------------------------- union-find
    def new_group(self, name: str, size: int) -> int:
        self.parent.append(len(self.parent))
        self.names.append(name)
        self.sizes.append(size)
        self.slots.append([])
        self.nodes.append(self.current)
        self.offsets.append(0)
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
        if self.touches_heads(node):  # attention's views of channels over several dimensions
            return self.visit_heads(node, shape)
        if node.op == "output":
            for arg in flatten_args(node.args):
                self.fix(self.value(arg))
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.module.get_submodule(node.target), shape)
        if node.op in ("call_function", "call_method"):
            return self.visit_function(node, shape)
        raise self.refuse(node, f"unsupported node kind {node.op}")

    # ----------------------------------------------------------------- result
    def groups(self) -> tuple[ChannelGroup, ...]:
        heads = self.resolve_heads()
        shared = {first for root, (_, first) in heads.items() if first != root}  # groups others share heads with
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
                count, first = heads.get(root, (0, root))
                tied = first != root or first in shared
                out.append(ChannelGroup(self.names[root], self.sizes[root], tuple(slots), False, self.nodes[root], dim,
                                        self.offsets[root], count, self.names[first] if tied else ""))
        fixed_slots = merged.get(0, [])
        if fixed_slots:
            out.append(ChannelGroup(FIXED, 0, tuple(fixed_slots), True))
        return tuple(out)

