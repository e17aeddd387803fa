"""How the tracer (otcore.graph_tracer) reads modules with weights: convolutions, linear layers, normalisations.

A layer's outputs open a group its weight's axis 0 writes; its inputs are read on axis 1; a bias,
a normalisation's affine parameters and running statistics follow the channels they belong to.
"""
from __future__ import annotations

from torch import fx, nn

from otcore.graph_ops import ELEMENTWISE_MODULES
from otcore.graph_types import Slot, _Segment, _Value


class LayerRules:
    """The Tracer's visits of `call_module` nodes (mixed into otcore.graph_tracer.Tracer)."""

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
        if isinstance(mod, nn.MultiheadAttention):
            return self.multihead_attention(node, mod, x)
        if next(mod.parameters(recurse=False), None) is None and not list(mod.children()):
            raise self.refuse(node, f"{type(mod).__name__} is not a layer the tracer knows")
        raise self.refuse(node, f"{type(mod).__name__} has weights the tracer does not know how to align")

    def read(self, node: fx.Node, x: _Value | None, dim: int, width: int, what: str) -> _Value:
        """`x` seen with its channels on `dim`: a layout whose order is fixed anyway may be read on any dim."""
        if x is not None and x.dim == dim and x.width() == width:
            return x
        # No layout (a buffer or constant such as Swin v2's coordinate table, or channels already fixed where
        # the tracer lost them), or one whose order is fixed anyway: the layer reads fixed channels.
        if x is None or all(self.find(s.group) == 0 for s in x.segments):
            g = self.new_group("fixed", width)
            self.union(0, g)
            return _Value([_Segment(g, width)], dim, x.shape if x is not None else self.shape(node))
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
