"""otcore.graph: the channel groups read from a traced model.

The zoo's traced groups must equal its hand-written descriptions, and for networks with batch
norm, biases, depthwise convolutions, squeeze-excitation gates, concatenations and layer scales,
permuting every free group by the traced description must leave the logits unchanged while
moving most weights (a wrong group breaks one of the two).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from otcore.errors import ModelError
from otcore.graph import permute_state, trace_groups
from otcore.models import INPUT, OUTPUT, build_model, list_models

ZOO_INPUT = {"mlpnet": (1, 8, 8), "vgg": (3, 32, 32), "resnet": (3, 32, 32)}


def _zoo_shape(name: str) -> tuple[int, int, int]:
    return (1, 8, 8) if "tiny" in name or "mlp" in name else (3, 32, 32)


def _described_groups(model) -> set[tuple[frozenset, frozenset]]:
    layers = model.alignment_layers()
    groups = {layer.out_group for layer in layers} - {OUTPUT, INPUT}
    return {(frozenset(l.name for l in layers if l.out_group == g), frozenset(l.name for l in layers if l.in_group == g))
            for g in groups}


@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith("vit_")])  # ViTs: test_vit.py
def test_traced_groups_equal_the_zoos_descriptions(name):
    model = build_model(name, _zoo_shape(name), 10)
    graph = trace_groups(model, _zoo_shape(name))
    traced = {(frozenset(g.writers()), frozenset(g.readers())) for g in graph.free()}
    assert traced == _described_groups(model)
    fixed = [g for g in graph.groups if g.fixed]
    assert [g.writers() for g in fixed] == [[model.alignment_layers()[-1].name]]  # the logits' layer alone


def _noisy(model: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    """Random weights and batch-norm statistics everywhere, so no init symmetry hides a wrong group (`scale`
    times the usual noise)."""
    generator = torch.Generator().manual_seed(seed)
    state = model.state_dict()  # replaced entry by entry: its `_metadata` (MNASNet's loader reads it) stays
    for key, tensor in list(state.items()):
        if tensor.is_floating_point():
            noise = torch.randn(tensor.shape, generator=generator)
            tensor = tensor + scale * (0.1 * noise * (tensor.std() if tensor.numel() > 1 else 1.0) + 0.05 * noise)
            tensor = tensor.abs() + 0.5 if key.endswith("running_var") else tensor
        state[key] = tensor
    model.load_state_dict(state)
    return model.eval()


def _permuted_twin(model: nn.Module, shape: tuple[int, ...], seed: int) -> tuple[nn.Module, float]:
    graph = trace_groups(model, shape)
    generator = torch.Generator().manual_seed(seed)
    perms = {g.name: torch.randperm(g.size, generator=generator) for g in graph.free()}
    state = model.state_dict()
    moved_state = permute_state(state, graph, perms)
    floats = [k for k in state if state[k].is_floating_point()]
    moved = sum(int((moved_state[k] != state[k]).sum()) for k in floats) / sum(state[k].numel() for k in floats)
    twin = copy.deepcopy(model)
    twin.load_state_dict(moved_state)
    return twin.eval(), moved


# Each brings a structure of its own: batch norm after every conv, depthwise convolutions with
# SE gates (hardsigmoid / sigmoid), dense concatenations, fire modules, grouped convolutions,
# channel shuffles (fixed by the tracer), LayerNorm between permutes with layer scales.
TORCHVISION = ["resnet18", "vgg11_bn", "mobilenet_v3_small", "efficientnet_b0", "densenet121", "squeezenet1_1",
               "resnext50_32x4d", "shufflenet_v2_x0_5", "convnext_tiny", "googlenet"]
MOVED_AT_LEAST = {"shufflenet_v2_x0_5": 0.5, "googlenet": 0.5}


@pytest.mark.parametrize("name", TORCHVISION)
def test_a_permuted_torchvision_model_keeps_its_logits(name):
    torch.manual_seed(0)  # torchvision's builders draw their initial weights from the global generator
    model = _noisy(torchvision.models.get_model(name, num_classes=10), 1)
    twin, moved = _permuted_twin(model, (3, 32, 32), seed=2)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, twin_logits = model(x), twin(x)
    assert (logits - twin_logits).abs().max() <= 1e-4 * logits.abs().max()
    assert moved >= MOVED_AT_LEAST.get(name, 0.9)


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a value: torch.fx cannot trace it
            return self.fc(x)
        return -self.fc(x)


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.attn(x, 2 * x, 2 * x)[0].mean(1))  # cross-attention: refused


def test_a_model_the_tracer_cannot_follow_is_refused_with_one_message():
    with pytest.raises(ModelError, match="cannot trace the model with torch.fx"):
        trace_groups(_DataDependent(), (4,))
    with pytest.raises(ModelError, match="'attn'.*MultiheadAttention"):
        trace_groups(_Attention(), (5, 8))


def test_tracing_leaves_the_callers_model_untouched():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace_groups(model, (3, 32, 32))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_digest_names_the_structure():
    a = trace_groups(build_model("mlpnet", (1, 8, 8), 10), (1, 8, 8))
    b = trace_groups(build_model("mlpnet", (1, 8, 8), 10), (1, 8, 8))
    c = trace_groups(build_model("mlpnet_half", (1, 8, 8), 10), (1, 8, 8))
    assert a.digest == b.digest != c.digest


# timm's own blocks: batch norm (resnet18), LayerNorm on channels-last tokens with layer scales
# (convnext_atto), squeeze-excitation with hardsigmoid or sigmoid (mobilenetv3_small_050,
# efficientnet_b0), SE beside grouped convolutions (regnety_002), ghost modules' concatenations
# (ghostnet_100), effective SE over one-shot aggregation (ese_vovnet19b_dw).
TIMM = {"resnet18": 0.9, "convnext_atto": 0.9, "mobilenetv3_small_050": 0.9, "efficientnet_b0": 0.9,
        "regnety_002": 0.85, "ghostnet_100": 0.7, "ese_vovnet19b_dw": 0.9}  # share of weight entries moved at least


@pytest.mark.parametrize("name", list(TIMM))
def test_a_permuted_timm_model_keeps_its_logits(name):
    torch.manual_seed(0)
    model = _noisy(build_model(f"timm:{name}", (3, 32, 32), 10), 1)
    twin, moved = _permuted_twin(model, (3, 32, 32), seed=2)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, twin_logits = model(x), twin(x)
    assert (logits - twin_logits).abs().max() <= 1e-4 * logits.abs().max()
    assert moved >= TIMM[name]
