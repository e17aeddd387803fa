"""Networks from outside the zoo: `torchvision:NAME`, `timm:NAME` and, on the command line only, `file:PATH.py:NAME`.

Each is built with the dataset's classes and fed the dataset's images through an input adapter inside
its own forward: a 1-channel image is repeated into a 3-channel stem (torchvision's; timm's stems are
built with the dataset's channels), and an image smaller than 32x32 is resized bilinearly to 32x32, or
to the smallest side the network accepts (found by running it on the meta device: no arithmetic). The
adapter is a pure function of the architecture and the dataset's shape, both in every key, so it is
keyed with them. GoogLeNet and Inception v3 are built without their auxiliary classifiers (training-only
heads). The returned network's class is a subclass of the library's own, made here, so its
state_dict keys are the library's and its checkpoints load as they are.
"""
from __future__ import annotations

import copy
import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from otcore.errors import ModelError

FAMILIES = ("torchvision", "timm", "file")
MIN_SIDE = 32  # images smaller than this (digits' 8x8, MNIST's 28x28) are resized to it: CIFAR's size, which every
#              network that downsamples 32x still maps to at least one position
PROBE_SIDES = (32, 64, 128, 224, 299)  # sides tried, smallest first, when an image is too small for the network
_ADAPTED: dict[type, type] = {}
# torchvision builders built without their auxiliary classifiers: those only add loss terms in training, where
# they make forward return a tuple and need 299x299 inputs (Inception v3), so the adapter would resize to that.
AUX_HEADS = ("googlenet", "inception_v3")


def is_external(name: str) -> bool:
    """Whether an architecture name names a network from outside the zoo ('family:NAME')."""
    return name.split(":", 1)[0] in FAMILIES and ":" in name


def _adapted_class(base: type) -> type:
    """`base` with its forward preceded by the input adapter (one class per base, so instances pickle alike)."""
    if base not in _ADAPTED:
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Settings, never the tensor's shape, decide: torch.fx traces this forward (otcore.graph).
            if self.stem_channels != self.input_shape[0]:
                x = x.expand(-1, self.stem_channels, -1, -1)  # grey into a colour stem
            if self.side is not None:
                x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)
            return base.forward(self, x)

        _ADAPTED[base] = type(f"Adapted{base.__name__}", (base,), {"forward": forward, "__module__": __name__})
    return _ADAPTED[base]


@lru_cache(maxsize=4)
def library_models(family: str) -> tuple[str, ...]:
    """The classification models a library offers: torchvision's builders, or every timm model name (memoised:
    the installed library does not change while the process runs)."""
    if family == "torchvision":
        import torchvision
        return tuple(torchvision.models.list_models(module=torchvision.models))
    try:
        import timm
    except ImportError:
        raise ModelError("timm is not installed: pip install timm") from None
    return tuple(timm.list_models())


def check_library_name(name: str) -> None:
    """Refuse a 'torchvision:NAME' or 'timm:NAME' whose library has no such model (ModelError)."""
    family, _, rest = name.partition(":")
    if rest not in library_models(family):
        kind = "classification model" if family == "torchvision" else "model"
        raise ModelError(f"{family} has no {kind} '{rest}' (python -c \"import {family}; "
                         f"print({family}.{'models.' if family == 'torchvision' else ''}list_models())\" lists them)")


def _builder(name: str):
    family, _, rest = name.partition(":")
    if family == "torchvision":
        import torchvision
        check_library_name(name)
        extra = {"aux_logits": False} if rest in AUX_HEADS else {}
        return lambda classes, channels: torchvision.models.get_model(rest, num_classes=classes, **extra)
    if family == "timm":
        import timm
        check_library_name(name)
        return lambda classes, channels: timm.create_model(rest, pretrained=False, num_classes=classes, in_chans=channels)
    path, _, attr = rest.rpartition(":")
    if not path or not attr or not Path(path).is_file():
        raise ModelError(f"'{name}' must be file:PATH.py:NAME with an existing file")
    spec = importlib.util.spec_from_file_location(f"otcore_user_model_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the user's own code, by the user's own command (never offered by the web app)
    if not callable(getattr(module, attr, None)):
        raise ModelError(f"{path} defines no class or function '{attr}'")
    return lambda classes, channels: getattr(module, attr)(num_classes=classes)


def _runs(net: nn.Module, channels: int, side: int | None, shape: tuple[int, ...]) -> bool:
    """Whether the meta-device copy accepts the adapted input (shape only, no arithmetic)."""
    net.stem_channels, net.side, net.input_shape = channels, side, tuple(shape)
    try:
        with torch.no_grad():
            net(torch.zeros((2, *shape), device="meta"))
        return True
    except Exception:  # noqa: BLE001 - any failure means this size does not fit
        return False


def build_external(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised network of a `family:NAME` architecture, adapted to the dataset's inputs."""
    make = _builder(name)
    channels = input_shape[0]
    net = None
    try:
        with torch.device("meta"):  # find the adapter on a weightless copy: fast even for large networks
            probe = make(num_classes, channels)
    except NotImplementedError:  # a builder that reads tensors' values (torchvision's RegNet widths) needs real ones
        net = make(num_classes, channels)
        probe = copy.deepcopy(net).to("meta") if isinstance(net, nn.Module) else net
    if not isinstance(probe, nn.Module):
        raise ModelError(f"'{name}' did not build a torch.nn.Module")
    probe.__class__ = _adapted_class(type(probe))
    side_now = min(input_shape[1:]) if len(input_shape) == 3 else None
    sides = ([None] if side_now is None or side_now >= MIN_SIDE else []) + \
        [s for s in PROBE_SIDES if side_now is not None and s > side_now]
    found = next(((c, s) for s in sides for c in dict.fromkeys((channels, 3)) if _runs(probe, c, s, input_shape)), None)
    if found is None:
        raise ModelError(f"'{name}' accepts none of the inputs tried ({channels} or 3 channels, "
                         f"sides up to {PROBE_SIDES[-1]})")
    stem, side = found
    net = make(num_classes, channels) if net is None else net
    net.__class__ = _adapted_class(type(net))
    net.stem_channels, net.side, net.input_shape = stem, side, tuple(input_shape)
    return net
