"""Activation capture: one batched pass in inference mode gives what per-module hooks under no_grad gave."""
from __future__ import annotations

import pytest
import torch

from otcore.activations import capture_activations
from otcore.models import build_model
from otcore.train import init_model

ARCHS = ["mlpnet", "vgg_tiny_nobias", "resnet_tiny_nobias_nobn"]
SHAPE = (1, 8, 8)


def net(arch: str, seed: int = 0) -> torch.nn.Module:
    return init_model(build_model(arch, SHAPE, 10), seed).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(70, *SHAPE, generator=torch.Generator().manual_seed(0))


def reference_capture(model: torch.nn.Module, x: torch.Tensor, modules: dict[str, str]) -> dict[str, torch.Tensor]:
    """The capture as first written: a hook per module under no_grad, transpose, reshape, clone."""
    found: dict[str, torch.Tensor] = {}
    handles = []
    lookup = dict(model.named_modules())
    for name, path in modules.items():
        def hook(_m: torch.nn.Module, _inp: tuple, out: torch.Tensor, name: str = name) -> None:
            found[name] = out.detach().transpose(0, 1).reshape(out.shape[1], -1).clone()
        handles.append(lookup[path].register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return found


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("batch_size", [1000, 32], ids=["one-pass", "batches"])
def test_capture_equals_the_reference(arch: str, batch_size: int, x: torch.Tensor) -> None:
    model = net(arch)
    modules = model.group_modules()
    expected = reference_capture(model, x, modules)
    got = capture_activations(model, x, modules, batch_size=batch_size)
    assert list(got) == list(expected) and len(got) == len(modules)
    for name, matrix in expected.items():
        assert got[name].shape == matrix.shape
        assert matrix.shape[1] % len(x) == 0  # neurons x (samples * positions)
        assert (got[name] - matrix).abs().max() <= 1e-6 * max(1.0, float(matrix.abs().max())), name


def test_capture_of_channels_last_inputs_and_its_results_are_ordinary_tensors(x: torch.Tensor) -> None:
    model = net("vgg_tiny_nobias")
    modules = model.group_modules()
    images = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    rgb = init_model(build_model("vgg_tiny_nobias", (3, 8, 8), 10), 0).eval()
    expected = reference_capture(rgb, images, modules)
    got = capture_activations(rgb, images.contiguous(memory_format=torch.channels_last), modules)
    for name, matrix in expected.items():
        assert torch.allclose(got[name], matrix, atol=1e-6), name
    # Captured under inference mode, returned as ordinary tensors: in-place edits and autograd both work.
    acts = capture_activations(model, x, modules)
    first = next(iter(acts.values()))
    assert not first.is_inference()
    weight = torch.ones(first.shape[0], requires_grad=True)
    (weight @ first.clamp_min_(0)).sum().backward()
    assert torch.allclose(weight.grad, first.sum(1))


def test_capture_leaves_the_model_untouched(x: torch.Tensor) -> None:
    model = net("resnet_tiny_nobias_nobn").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    capture_activations(model, x, model.group_modules())
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
