"""The exact Hessian diagonal (and trace) of piecewise-linear nets against torch.func.hessian and Hessian-vector products."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from otcore import hessian_diagonal
from otcore.config import HessianSpec
from otcore.hessian import HessianError, _HessianOperator, analyse, exact_trace, fixed_batches, trainable_layout
from otcore.hessian_diagonal import NotPiecewiseLinear, loss_hessian_diagonal
from otcore.models import build_model, list_models

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


@pytest.fixture(autouse=True, scope="module")
def one_thread(one_torch_thread):
    """One torch thread (the shared fixture in tests/conftest.py)."""


class EveryLayerKind(nn.Module):
    """Every case the formula covers: conv with bias, stride, dilation and in-place ReLU; max and average pooling;
    a residual sum; a Linear applied per position of a [N, T, in] input; a classifier with bias."""

    piecewise_linear = True

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, kernel_size=3, padding=1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(3, 3, kernel_size=3, padding=2, dilation=2, bias=False)
        self.down = nn.Conv2d(3, 4, kernel_size=2, stride=2, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.per_position = nn.Linear(4, 3, bias=True)
        self.classifier = nn.Linear(12, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv1(x))
        h = self.relu(self.conv2(h) + h)  # residual sum
        h = self.pool(self.relu(self.down(h)))  # [N, 4, 2, 2] from 8x8
        h = F.relu(self.per_position(h.flatten(2).transpose(1, 2)))  # [N, 4 positions, 3]
        return self.classifier(F.avg_pool1d(h.transpose(1, 2), 1).flatten(1))


def exact_diagonal(model: nn.Module, batches: list) -> torch.Tensor:
    """diag of torch.func.hessian of the size-weighted mean cross-entropy, in trainable_layout order."""
    layout = trainable_layout(model)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(torch.func.functional_call(model, layout.unflatten(theta), (x,)), y)

    theta = layout.flatten(dict(model.named_parameters()))
    return torch.func.hessian(loss)(theta).diagonal()


def flat(diagonal: dict[str, torch.Tensor], model: nn.Module) -> torch.Tensor:
    return torch.cat([diagonal[n].reshape(-1) for n in trainable_layout(model).names])


@pytest.mark.parametrize("chunk", [hessian_diagonal.CHUNK_ENTRIES, 7])  # 7: per-example products a few at a time
def test_diagonal_equals_exact_hessian_diagonal(monkeypatch, chunk):
    monkeypatch.setattr(hessian_diagonal, "CHUNK_ENTRIES", chunk)
    torch.manual_seed(0)
    model = EveryLayerKind().double().eval()
    x, y = torch.randn(40, 2, 8, 8, dtype=torch.float64), torch.randint(0, 3, (40,))
    batches = fixed_batches(x, y, 16, 3)  # 16, 16, 8: unequal batches are weighted by size
    exact = exact_diagonal(model, batches)
    ours = flat(loss_hessian_diagonal(model, batches), model)
    assert exact.abs().max() > 1e-3  # a real curvature, not zeros matching zeros
    torch.testing.assert_close(ours, exact, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("arch", ["mlpnet", "vgg_tiny_nobias", "resnet_tiny_nobias_nobn"])
def test_registry_nets_diagonal_matches_hessian_vector_products(arch):
    """Each family's `piecewise_linear` claim: diagonal entries equal e_iᵀHe_i at random coordinates."""
    torch.manual_seed(1)
    model = build_model(arch, (1, 8, 8), 10).double().eval()
    x, y = torch.randn(48, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (48,))
    batches = fixed_batches(x, y, 32, 2)
    ours = flat(loss_hessian_diagonal(model, batches), model)
    op = _HessianOperator(model, batches)
    index = torch.cat([torch.randperm(op.size)[:40], ours.argmax()[None]])  # random entries and the largest
    basis = torch.zeros(len(index), op.size, dtype=torch.float64)
    basis[torch.arange(len(index)), index] = 1.0
    torch.testing.assert_close(ours[index], (op.matmat(basis) * basis).sum(1), rtol=1e-8, atol=1e-14)


def test_every_registry_family_declares_itself_piecewise_linear():
    for arch in (a for a in list_models() if not a.startswith("vit_")):  # ViTs: softmax, GELU (tests/test_vit.py)
        assert build_model(arch, (1, 32, 32) if "tiny" not in arch else (1, 8, 8), 10).piecewise_linear, arch


def test_exact_trace_in_analyse_and_its_fallbacks():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12, bias=False), nn.Tanh(), nn.Linear(12, 4, bias=False))
    model = model.double().eval()
    x, y = torch.randn(64, 16, dtype=torch.float64), torch.randint(0, 4, (64,))
    batches = fixed_batches(x, y, 64, 1)
    spec = HessianSpec(top_k=1, lanczos_iters=4, trace_probes=3)
    # tanh is smooth: an undeclared net falls back to Hutchinson under 'auto' and is refused under 'exact'
    assert analyse(model, batches, spec).trace_method == "hutchinson"
    with pytest.raises(HessianError, match="no exact trace"):
        analyse(model, batches, HessianSpec(trace_method="exact", top_k=1, lanczos_iters=4))
    relu = nn.Sequential(nn.Flatten(), nn.Linear(16, 12, bias=False), nn.ReLU(), nn.Linear(12, 4, bias=False))
    relu = relu.double().eval()
    relu.piecewise_linear = True
    result = analyse(relu, batches, spec)
    exact = float(exact_diagonal(relu, batches).sum())
    assert result.trace_method == "exact" and result.trace_probes == 0 and result.trace_std_error == 0.0
    assert result.trace == pytest.approx(exact, rel=1e-10)
    assert exact_trace(relu, batches).mean == pytest.approx(exact, rel=1e-10)
    hutchinson = analyse(relu, batches, HessianSpec(trace_method="hutchinson", top_k=1, lanczos_iters=4))
    assert hutchinson.trace_method == "hutchinson" and hutchinson.trace_probes == 100


def test_refuses_what_the_formula_does_not_cover():
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    with pytest.raises(NotPiecewiseLinear, match="does not declare"):
        loss_hessian_diagonal(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), [(x, y)])
    pruned = build_model("mlpnet", (1, 8, 8), 10).eval()
    prune.l1_unstructured(pruned.fc1, "weight", amount=0.5)  # weight_orig * mask: not a plain weight
    with pytest.raises(NotPiecewiseLinear, match="fc1.weight_orig"):
        loss_hessian_diagonal(pruned, [(x, y)])

    class Shared(nn.Module):
        piecewise_linear = True

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 64, bias=False)
            self.out = nn.Linear(64, 10, bias=False)

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:  # fc twice: its weight enters quadratically
            return self.out(F.relu(self.fc(F.relu(self.fc(inputs.flatten(1))))))

    with pytest.raises(NotPiecewiseLinear, match="runs twice"):
        loss_hessian_diagonal(Shared().eval(), [(x, y)])
