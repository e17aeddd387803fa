"""Device choice in one place: CUDA when present, CPU otherwise, overridable."""
from __future__ import annotations

import torch

from otcore.config import DEVICE_CHOICES  # torch-free there, for the CLI's choices


def resolve_device(choice: str = "auto") -> torch.device:
    """Turn 'auto' / 'cpu' / 'cuda' into a torch.device; 'cuda' without a GPU is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was asked for but no GPU is visible to torch; choose 'cpu' or 'auto'")
    if choice not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {DEVICE_CHOICES}, got '{choice}'")
    return torch.device(choice)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's parameters live on."""
    return next(model.parameters()).device
