"""Tests of otcore.models: every architecture runs, names match the paper's reference, wiring is described."""
from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import nn

from otcore.models import INPUT, OUTPUT, build_model, count_parameters, list_models

BIG = ("vgg11", "resnet18")  # CIFAR-sized architectures
# The zoo's hand-described networks (FusableNet: no biases, alignment_layers); the Vision Transformers are read by
# tracing instead (tests/test_vit.py).
DESCRIBED = [a for a in list_models() if not a.startswith("vit_")]


def natural_shape(arch: str) -> tuple[int, int, int]:
    """CIFAR images for the paper's CIFAR networks, the 8x8 digits for everything else."""
    return (3, 32, 32) if arch.startswith(BIG) else (1, 8, 8)


@cache
def _built(arch: str, shape: tuple[int, int, int]) -> nn.Module:
    torch.manual_seed(0)
    return build_model(arch, shape, 10).eval()


@pytest.fixture(scope="module")
def built():
    """Each (arch, input shape) built once per module (vgg11_quad has 147M parameters)."""
    yield _built
    _built.cache_clear()


def weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def test_registry_holds_the_papers_architectures():
    assert {"mlpnet", "vgg11_nobias", "vgg11_half_nobias", "vgg11_doub_nobias", "vgg11_quad_nobias",
            "resnet18_nobias_nobn"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown architecture 'lenet'"):
        build_model("lenet", (1, 8, 8), 10)


@pytest.mark.parametrize("arch", DESCRIBED)
def test_every_model_builds_and_runs_forward_on_its_natural_input(built, arch):
    shape = natural_shape(arch)
    model = built(arch, shape)
    with torch.no_grad():
        out = model(torch.randn(3, *shape))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 0
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())


def test_mlpnet_names_and_shapes_on_mnist_inputs():
    model = build_model("mlpnet", (1, 28, 28), 10)
    assert weight_shapes(model) == {"fc1.weight": (400, 784), "fc2.weight": (200, 400),
                                    "fc3.weight": (100, 200), "fc4.weight": (10, 100)}
    assert list(model.state_dict()) == ["fc1.weight", "fc2.weight", "fc3.weight", "fc4.weight"]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("arch, hidden", [("mlpnet", (400, 200, 100)), ("mlpnet_half", (200, 100, 50)),
                                          ("mlpnet_doub", (800, 400, 200))])
def test_mlpnet_width_variants(arch, hidden):
    shapes = weight_shapes(build_model(arch, (1, 8, 8), 10))
    widths = (64, *hidden, 10)
    assert shapes == {f"fc{i + 1}.weight": (widths[i + 1], widths[i]) for i in range(4)}


def test_vgg11_nobias_names_as_the_reference(built):
    shapes = weight_shapes(built("vgg11_nobias", (3, 32, 32)))
    convs = {0: (64, 3), 3: (128, 64), 6: (256, 128), 8: (256, 256), 11: (512, 256), 13: (512, 512),
             16: (512, 512), 18: (512, 512)}
    expected = {f"features.{i}.weight": (out, inp, 3, 3) for i, (out, inp) in convs.items()}
    expected["classifier.weight"] = (10, 512)
    assert shapes == expected


@pytest.mark.parametrize("arch, factor", [("vgg11_half_nobias", 0.5), ("vgg11_nobias", 1),
                                          ("vgg11_doub_nobias", 2), ("vgg11_quad_nobias", 4)])
def test_vgg11_width_variants_scale_every_layer(built, arch, factor):
    shapes = weight_shapes(built(arch, (3, 32, 32)))
    base = (64, 128, 256, 256, 512, 512, 512, 512)
    widths = [int(c * factor) for c in base]
    convs = [shapes[f"features.{i}.weight"] for i in (0, 3, 6, 8, 11, 13, 16, 18)]
    assert [s[0] for s in convs] == widths
    assert [s[1] for s in convs] == [3] + widths[:-1]
    assert shapes["classifier.weight"] == (10, widths[-1])
    assert len(shapes) == 9


def test_resnet18_nobias_nobn_names_as_the_reference(built):
    model = built("resnet18_nobias_nobn", (3, 32, 32))
    shapes = weight_shapes(model)
    assert shapes["conv1.weight"] == (64, 3, 3, 3)
    assert shapes["layer1.0.conv1.weight"] == (64, 64, 3, 3)
    assert shapes["layer2.0.shortcut.0.weight"] == (128, 64, 1, 1)
    assert shapes["layer4.1.conv2.weight"] == (512, 512, 3, 3)
    assert shapes["linear.weight"] == (10, 512)
    # 1 stem + 8 blocks x 2 convs + 3 shortcuts (layers 2-4) + linear, all weights, no bias, no batch norm.
    assert len(shapes) == 1 + 16 + 3 + 1
    assert all(name.endswith(".weight") for name in model.state_dict())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert {n for n in shapes if "shortcut" in n} == {f"layer{k}.0.shortcut.0.weight" for k in (2, 3, 4)}


@pytest.mark.parametrize("arch", DESCRIBED)
def test_alignment_layers_cover_every_parameter_exactly_once(built, arch):
    shape = natural_shape(arch)
    model = built(arch, shape)
    layers = model.alignment_layers()
    names = [f"{layer.name}.weight" for layer in layers]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    modules = dict(model.named_modules())
    width = {INPUT: shape[0] if not arch.startswith("mlpnet") else shape[0] * shape[1] * shape[2]}
    for layer in layers:  # forward order: a group is written before it is read
        weight = modules[layer.name].weight
        assert layer.in_group in width, f"{layer.name} reads {layer.in_group} before anything writes it"
        assert weight.shape[1] == width[layer.in_group], layer.name
        width.setdefault(layer.out_group, weight.shape[0])
        assert weight.shape[0] == width[layer.out_group], layer.name
    assert layers[0].in_group == INPUT and layers[-1].out_group == OUTPUT and width[OUTPUT] == 10
    assert sum(layer.out_group == OUTPUT for layer in layers) == 1


@pytest.mark.parametrize("arch", DESCRIBED)
def test_group_modules_exist_and_output_the_groups_width(built, arch):
    shape = natural_shape(arch)
    model = built(arch, shape)
    layers = model.alignment_layers()
    widths = {layer.out_group: dict(model.named_modules())[layer.name].weight.shape[0] for layer in layers}
    groups = model.group_modules()
    hidden = {layer.out_group for layer in layers} - {OUTPUT}
    assert set(groups) == hidden  # every hidden group, nothing else
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = [modules[path].register_forward_hook(lambda m, i, o, g=group: outputs.__setitem__(g, o))
               for group, path in groups.items()]
    try:
        with torch.no_grad():
            model(torch.randn(2, *shape))
    finally:
        for h in handles:
            h.remove()
    assert set(outputs) == set(groups)
    for group, out in outputs.items():
        assert out.shape[0] == 2 and out.shape[1] == widths[group], group
