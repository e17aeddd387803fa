"""otcore.landscape: vectorised curves and surfaces against one-model-per-point loops."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from otcore.hessian import fixed_batches, flat_parameters
from otcore.landscape import (barrier, filter_normalized_direction, interpolation_curve, path_curve,
                              perturbation_curve, surface_2d)


@pytest.fixture(autouse=True, scope="module")
def one_thread(one_torch_thread):
    """Every test here runs with one torch thread (the shared fixture in tests/conftest.py)."""


def trained(seed: int, batch_norm: bool = False) -> nn.Module:
    """A 16-12-4 ReLU net trained briefly on a fixed random problem; seed sets the initialisation."""
    data = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 16, generator=data), torch.randint(0, 4, (256,), generator=data)
    torch.manual_seed(seed)
    hidden = [nn.BatchNorm1d(12)] if batch_norm else []
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12, bias=False), *hidden, nn.ReLU(), nn.Linear(12, 4, bias=False))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.3)
    for _ in range(100):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def batches():
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(150, 16, generator=generator), torch.randint(0, 4, (150,), generator=generator)
    return fixed_batches(x, y, 64, 3)  # 64, 64, 22: unequal sizes exercise the weighting


def loop_loss(model: nn.Module, state: torch.Tensor, batches) -> tuple[float, float]:
    """Reference: a deep copy with the weights set, size-weighted mean loss and accuracy over the batches."""
    copy_ = copy.deepcopy(model)
    nn.utils.vector_to_parameters(state, copy_.parameters())
    total, loss, correct = 0, 0.0, 0.0
    with torch.no_grad():
        for x, y in batches:
            logits = copy_(x)
            loss += len(y) * float(F.cross_entropy(logits, y))
            correct += float((logits.argmax(1) == y).sum())
            total += len(y)
    return loss / total, correct / total


def test_perturbation_curve_equals_a_deep_copy_loop(batches):
    model = trained(0)
    before = flat_parameters(model).clone()
    direction = filter_normalized_direction(model, seed=3)
    lambdas = torch.tensor([-1.0, -0.5, -0.1, 0.0, 0.25, 0.5, 1.0])
    curve = perturbation_curve(model, batches, direction, lambdas, chunk=3)  # 3 chunks, the last one short
    assert torch.equal(flat_parameters(model), before)
    reference = [loop_loss(model, before + lam * direction, batches) for lam in lambdas]
    torch.testing.assert_close(curve.loss_mean, torch.tensor([r[0] for r in reference], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(curve.accuracy_mean, torch.tensor([r[1] for r in reference], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    assert curve.loss_mean[3] == pytest.approx(loop_loss(model, before, batches)[0], abs=1e-6)  # λ = 0: the model
    assert curve.loss_std.shape == (7,) and bool((curve.loss_std > 0).all())  # three different batches
    with pytest.raises(ValueError):
        perturbation_curve(model, batches, direction[:-1], lambdas)


def test_filter_normalized_direction_matches_filter_norms():
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Flatten(), nn.Linear(5 * 4 * 4, 7))
    direction = filter_normalized_direction(model, seed=0)
    parts = dict(zip([n for n, _ in model.named_parameters()],
                     direction.split([p.numel() for p in model.parameters()])))
    for name, weight in model.named_parameters():
        part = parts[name].view(weight.shape)
        if weight.dim() == 1:
            assert torch.equal(part, torch.zeros_like(part))  # biases stay put
        else:
            torch.testing.assert_close(part.flatten(1).norm(dim=1), weight.detach().flatten(1).norm(dim=1))
    assert torch.equal(direction, filter_normalized_direction(model, seed=0))
    assert not torch.equal(direction, filter_normalized_direction(model, seed=1))


def test_interpolation_endpoints_barrier_and_three_point_paths(batches):
    model_a, model_b, model_c = trained(0), trained(1), trained(2)
    curve = interpolation_curve(model_a, model_b, batches, points=5)
    assert curve.lambdas.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    theta_a, theta_b = flat_parameters(model_a), flat_parameters(model_b)
    assert float(curve.loss_mean[0]) == pytest.approx(loop_loss(model_a, theta_a, batches)[0], abs=1e-6)
    assert float(curve.loss_mean[-1]) == pytest.approx(loop_loss(model_b, theta_b, batches)[0], abs=1e-6)
    assert float(curve.loss_mean[2]) == pytest.approx(loop_loss(model_a, (theta_a + theta_b) / 2, batches)[0],
                                                      abs=1e-5)
    assert barrier(curve) >= 0.0
    itself = interpolation_curve(model_a, copy.deepcopy(model_a), batches, points=7)
    assert barrier(itself) == pytest.approx(0, abs=1e-6)
    path = path_curve([model_a, model_c, model_b], batches, points_per_segment=4)
    assert len(path.lambdas) == 7 and path.lambdas.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2])
    theta_c = flat_parameters(model_c)
    for index, state in ((0, theta_a), (3, theta_c), (6, theta_b)):
        assert float(path.loss_mean[index]) == pytest.approx(loop_loss(model_a, state, batches)[0], abs=1e-6)
    with pytest.raises(ValueError):
        interpolation_curve(model_a, nn.Sequential(nn.Flatten(), nn.Linear(16, 4, bias=False)), batches)


def test_interpolation_moves_batch_norm_statistics_too(batches):
    model_a, model_b = trained(0, batch_norm=True), trained(1, batch_norm=True)
    curve = interpolation_curve(model_a, model_b, batches, points=3)
    for model, index in ((model_a, 0), (model_b, -1)):
        with torch.no_grad():
            losses = [float(F.cross_entropy(model(x), y)) * len(y) for x, y in batches]
        assert float(curve.loss_mean[index]) == pytest.approx(sum(losses) / 150, abs=1e-6)


def test_surface_centre_equals_the_loss(batches):
    model = trained(0)
    theta = flat_parameters(model)
    first, second = filter_normalized_direction(model, seed=0), filter_normalized_direction(model, seed=1)
    surface = surface_2d(model, batches, first, second, (-1.0, 1.0), (-0.5, 0.5), points=5, chunk=4)
    assert surface.loss.shape == surface.accuracy.shape == (5, 5)
    assert float(surface.loss[2, 2]) == pytest.approx(loop_loss(model, theta, batches)[0], abs=1e-6)
    corner = loop_loss(model, theta - 1.0 * first + 0.5 * second, batches)  # alpha outer, beta inner
    assert float(surface.loss[0, 4]) == pytest.approx(corner[0], abs=1e-5)
    assert float(surface.accuracy[0, 4]) == pytest.approx(corner[1], abs=1e-6)


def test_typed_curves_round_trip_the_stored_dicts(batches):
    from otcore.curves import InterpolationPath, LossSurface, PerturbationCurve

    curve = interpolation_curve(trained(0), trained(1), batches, points=5)
    typed = PerturbationCurve.from_curve(curve)
    assert typed.loss == curve.loss_mean.tolist() and typed.accuracy == curve.accuracy_mean.tolist()
    assert PerturbationCurve.from_stored(typed.stored()) == typed
    path = InterpolationPath.from_stored({"curve": typed.stored(), "barrier": barrier(curve), "path": ["A", "B"]})
    assert path.label == "A → B" and path.alignment == "naive" and not path.repair
    assert path.alphas == [0.0, 0.25, 0.5, 0.75, 1.0] and path.midpoint_loss == typed.loss[2]
    three = InterpolationPath.from_stored({"curve": {**typed.stored(), "lambdas": [0, 0.5, 1, 1.5, 2]},
                                          "barrier": 0.0, "path": ["A", "C", "B"]})
    assert three.alphas == [0.0, 0.25, 0.5, 0.75, 1.0]  # positions normalised over both segments
    stored = {"alphas": [-1.0, 1.0], "betas": [0.0, 1.0], "loss": [[1.0, 2.0], [3.0, 4.0]],
              "accuracy": [[0.5, 0.5], [0.25, 1.0]], "directions": "random"}
    assert LossSurface.from_stored(stored).stored() == stored
