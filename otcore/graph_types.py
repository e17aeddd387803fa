"""What otcore.graph returns: channel groups and the tensor axes (slots) that hold them."""
from __future__ import annotations

from dataclasses import dataclass, field

FIXED = "fixed"  # the union-find root of every channel whose order must not change


@dataclass(frozen=True)
class Slot:
    """One run of a group's channels along one axis of one state_dict tensor.

    Channel c of the group sits at indices offset + c*repeat ... offset + c*repeat + repeat - 1."""

    tensor: str  # state_dict key, e.g. 'layer1.0.bn1.running_mean'
    axis: int
    offset: int = 0
    repeat: int = 1  # H*W for a linear layer reading a flattened CxHxW map; k for a depthwise multiplier
    role: str = "follower"  # 'writer' (a layer's outputs), 'reader' (a layer's inputs) or 'follower'


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that move together, with every tensor axis that holds them."""

    name: str  # the first module writing the group (or 'input' / the node that opened it)
    size: int
    slots: tuple[Slot, ...]
    fixed: bool  # never permuted: the input, the logits, and channels whose order matters
    node: str = ""  # the fx node whose output samples these channels: the first sum joining them, else the
    # first writer's output after its normalisation
    node_dim: int = 1  # the channel dimension of that node's output (1 for maps, the last for token features)
    node_offset: int = 0  # where the group's channels start along node_dim (a part of a fused q/k/v projection)
    heads: int = 0  # > 1: channels are `heads` contiguous blocks (attention heads) that move as whole blocks
    heads_with: str = ""  # groups naming the same group here share one permutation of their heads (q/k and v)

    def writers(self) -> list[str]:
        """Module paths whose outputs are these channels (weight axis 0)."""
        return sorted({s.tensor.rsplit(".", 1)[0] for s in self.slots if s.role == "writer"})

    def readers(self) -> list[str]:
        """Module paths that read these channels (weight axis 1)."""
        return sorted({s.tensor.rsplit(".", 1)[0] for s in self.slots if s.role == "reader"})


@dataclass(frozen=True)
class ModelGraph:
    """The model's channel groups in forward order, and a digest of that structure."""

    groups: tuple[ChannelGroup, ...]
    digest: str = field(default="")

    def free(self) -> list[ChannelGroup]:
        """The groups alignment may permute."""
        return [g for g in self.groups if not g.fixed]


# What the tracer (otcore.graph_tracer) knows of each tensor while it walks the graph.
@dataclass
class _Segment:
    group: int  # union-find id
    size: int  # channels
    repeat: int = 1


@dataclass
class _Value:
    """What the tracer knows of a tensor: its channel layout along dimension `dim`."""

    segments: list[_Segment]
    dim: int  # the channel dimension (non-negative)
    shape: tuple[int, ...]

    def width(self) -> int:
        return sum(s.size * s.repeat for s in self.segments)


@dataclass
class _Heads:
    """What the tracer knows of a tensor whose channels of one group are spread over several dimensions
    (attention's (batch, heads, tokens, head_dim) views): channel = sum_k index_k * prod(sizes after k)."""

    group: int  # union-find id
    factors: list[tuple[int, int]]  # (dimension, size) in the channels' row-major order
    shape: tuple[int, ...]
    partial: bool = False  # only the head index is left (attention scores: the within-head channels were summed)
