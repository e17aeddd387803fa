"""Device choice in one place: CUDA when present, CPU otherwise, overridable."""
from __future__ import annotations

import torch

from otcore.config import DEVICE_CHOICES  # torch-free there, for the CLI's choices
from otcore.errors import DeviceError
from otcore.prune import copy_model  # a deep copy that also handles pruning masks


def resolve_device(choice: str = "auto") -> torch.device:
    """Turn 'auto' / 'cpu' / 'cuda' into a torch.device; 'cuda' without a GPU is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceError("CUDA was asked for but no GPU is visible to torch; choose 'cpu' or 'auto'")
    if choice not in DEVICE_CHOICES:
        raise DeviceError(f"device must be one of {DEVICE_CHOICES}, got '{choice}'")
    return torch.device(choice)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's parameters live on."""
    return next(model.parameters()).device


def private_copy(model: torch.nn.Module, device: torch.device | str | None = None) -> torch.nn.Module:
    """A copy of the model in eval mode on `device` (None: the model's), for work that hooks, moves or swaps.

    Models memoised for every session are shared objects: forward hooks, `.to()`, `.eval()` and
    `torch.func.functional_call`'s parameter swaps on them would be seen by every other thread.
    """
    copy = copy_model(model).eval()
    return copy if device is None else copy.to(device)


def on_device(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """The model itself when it is already on `device` in eval mode (read-only use), else a private copy there."""
    device = torch.device(device)
    same = model_device(model).type == device.type and (device.index is None or model_device(model) == device)
    return model if same and not model.training else private_copy(model, device)
