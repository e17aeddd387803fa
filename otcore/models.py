"""Architecture registry. Parameter names follow the OT fusion paper's reference models
(sidak/otfusion), so its published checkpoints load without renaming.

Every model also describes how its neurons are wired (`alignment_layers`): for each weight
layer, which group of neurons it reads and which it writes. Layers writing the same group
(a ResNet's residual stream) must share one alignment; fusion, pruning and weight matching
walk this description instead of guessing from names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from otcore.errors import ModelError
from otcore.external_models import build_external, is_external
from otcore.vit import VIT_TINY, VIT_TINY_DOUB, vit_builder

INPUT = "input"  # the group of the network's input channels (never permuted)
OUTPUT = "output"  # the group of the classes (never permuted unless asked)


@dataclass(frozen=True)
class AlignedLayer:
    """One weight layer: the module path, and the neuron groups it reads and writes."""

    name: str  # module path, e.g. 'features.3' or 'layer2.0.shortcut.0'
    in_group: str  # group of its input channels / features
    out_group: str  # group of its output channels / neurons


class FusableNet(nn.Module):
    """A network whose weight layers and neuron groups are described for alignment."""

    # Logits linear in each single weight wherever the ReLU/max-pool pattern is fixed (no biases
    # needed, no batch norm): then the Hessian diagonal is exact from otcore.hessian_diagonal.
    # Each registry family says so (tests check it against Hessian-vector products).
    piecewise_linear = False

    def alignment_layers(self) -> list[AlignedLayer]:
        """Weight layers in forward order."""
        raise NotImplementedError

    def group_modules(self) -> dict[str, str]:
        """For each hidden group, the module whose forward output is that group's pre-activation."""
        raise NotImplementedError


_REGISTRY: dict[str, Callable[[tuple[int, int, int], int], FusableNet]] = {}


def register_model(name: str) -> Callable:
    """Decorator: register a builder `(input_shape, num_classes) -> nn.Module` under a name (a FusableNet, or a
    network whose groups are traced, as the Vision Transformers)."""

    def wrap(fn: Callable) -> Callable:
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of the registered architectures."""
    return list(_REGISTRY)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised network of a registered architecture, or of `torchvision:NAME`, `timm:NAME`,
    `file:PATH.py:NAME` (otcore.external_models: any network, its alignment groups read by tracing)."""
    if is_external(name):
        return build_external(name, tuple(input_shape), num_classes)
    if name not in _REGISTRY:
        raise ModelError(f"unknown architecture '{name}'; choose one of {', '.join(list_models())}")
    return _REGISTRY[name](tuple(input_shape), num_classes)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- MLP


class MlpNet(FusableNet):
    """The paper's MLP: fc1..fcK without biases, ReLU between them."""

    piecewise_linear = True

    def __init__(self, input_dim: int, hidden: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        widths = (input_dim, *hidden, num_classes)
        self.depth = len(widths) - 1
        for i in range(self.depth):
            setattr(self, f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1], bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i in range(1, self.depth):
            x = F.relu(getattr(self, f"fc{i}")(x))
        return getattr(self, f"fc{self.depth}")(x)

    def alignment_layers(self) -> list[AlignedLayer]:
        names = [f"fc{i}" for i in range(1, self.depth + 1)]
        groups = [INPUT] + names[:-1] + [OUTPUT]
        return [AlignedLayer(n, groups[i], groups[i + 1]) for i, n in enumerate(names)]

    def group_modules(self) -> dict[str, str]:
        return {f"fc{i}": f"fc{i}" for i in range(1, self.depth)}


def _mlp(hidden: tuple[int, ...]) -> Callable:
    return lambda shape, classes: MlpNet(math.prod(shape), hidden, classes)


register_model("mlpnet")(_mlp((400, 200, 100)))
register_model("mlpnet_half")(_mlp((200, 100, 50)))
register_model("mlpnet_doub")(_mlp((800, 400, 200)))

# ---------------------------------------------------------------------------- VGG

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG_TINY = (16, "M", 32, "M", 32, "M")  # three pools: 8x8 digits -> 1x1


class VGG(FusableNet):
    """VGG without batch norm or biases: conv3x3(pad 1) + ReLU, max-pools, one linear classifier."""

    piecewise_linear = True

    def __init__(self, cfg: tuple, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = input_shape[0], min(input_shape[1:])
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                side //= 2
            else:
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1, bias=False), nn.ReLU()]
                channels = item
        if side < 1:
            raise ModelError(f"inputs of {input_shape[1]}x{input_shape[2]} are too small for this VGG's pools")
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))  # as the reference; keeps its indices
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * side * side, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))

    def _convs(self) -> list[str]:
        return [f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]

    def alignment_layers(self) -> list[AlignedLayer]:
        names = self._convs() + ["classifier"]
        groups = [INPUT] + names[:-1] + [OUTPUT]
        return [AlignedLayer(n, groups[i], groups[i + 1]) for i, n in enumerate(names)]

    def group_modules(self) -> dict[str, str]:
        return {n: n for n in self._convs()}


def _vgg(cfg: tuple, factor: float) -> Callable:
    scaled = tuple(c if c == "M" else max(1, int(c * factor)) for c in cfg)
    return lambda shape, classes: VGG(scaled, shape, classes)


register_model("vgg11_nobias")(_vgg(VGG11, 1))
register_model("vgg11_half_nobias")(_vgg(VGG11, 0.5))
register_model("vgg11_doub_nobias")(_vgg(VGG11, 2))
register_model("vgg11_quad_nobias")(_vgg(VGG11, 4))
register_model("vgg_tiny_nobias")(_vgg(VGG_TINY, 1))
register_model("vgg_tiny_doub_nobias")(_vgg(VGG_TINY, 2))

# ---------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """conv3x3-ReLU-conv3x3 plus a shortcut (1x1 conv where the shape changes), no BN, no bias."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))
        self.residual = nn.Identity()  # hook point: the block output before its ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(self.residual(out + self.shortcut(x)))


class ResNet(FusableNet):
    """ResNet of basic blocks without batch norm or biases (the paper's resnet18_nobias_nobn)."""

    piecewise_linear = True

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], input_shape: tuple[int, int, int],
                 num_classes: int) -> None:
        super().__init__()
        self.widths, self.blocks = widths, blocks
        self.conv1 = nn.Conv2d(input_shape[0], widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        in_planes = widths[0]
        for k, (planes, count) in enumerate(zip(widths, blocks), start=1):
            stride = 1 if k == 1 else 2
            layer = []
            for b in range(count):
                layer.append(BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{k}", nn.Sequential(*layer))
        self.linear = nn.Linear(widths[-1], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        for k in range(1, len(self.widths) + 1):
            out = getattr(self, f"layer{k}")(out)
        # Global average pool: equals the reference's avg_pool2d(out, 4) on 32x32 inputs.
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def alignment_layers(self) -> list[AlignedLayer]:
        stream = "conv1"  # the residual stream's group, named after the layer defining it
        out = [AlignedLayer("conv1", INPUT, stream)]
        for k in range(1, len(self.widths) + 1):
            for b, block in enumerate(getattr(self, f"layer{k}")):
                path = f"layer{k}.{b}"
                new_stream = f"{path}.residual" if len(block.shortcut) else stream
                out.append(AlignedLayer(f"{path}.conv1", stream, f"{path}.conv1"))
                out.append(AlignedLayer(f"{path}.conv2", f"{path}.conv1", new_stream))
                if len(block.shortcut):
                    out.append(AlignedLayer(f"{path}.shortcut.0", stream, new_stream))
                stream = new_stream
        out.append(AlignedLayer("linear", stream, OUTPUT))
        return out

    def group_modules(self) -> dict[str, str]:
        groups = {"conv1": "conv1"}
        for layer in self.alignment_layers():
            if layer.out_group not in (OUTPUT,) and layer.out_group not in groups:
                groups[layer.out_group] = layer.out_group  # conv1 of a block, or a block's residual
        return groups


register_model("resnet18_nobias_nobn")(
    lambda shape, classes: ResNet((64, 128, 256, 512), (2, 2, 2, 2), shape, classes))
register_model("resnet_tiny_nobias_nobn")(
    lambda shape, classes: ResNet((8, 16, 32), (1, 2, 1), shape, classes))

# ---------------------------------------------------------------------------- Vision Transformers
# Not FusableNets: their alignment groups (residual stream, heads, q/k pairs) are read by tracing (otcore.graph).
register_model("vit_tiny")(vit_builder(VIT_TINY))
register_model("vit_tiny_doub")(vit_builder(VIT_TINY_DOUB))
