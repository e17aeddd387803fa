"""Tests of otcore.train on the embedded digits: accuracy, determinism, progress, evaluation."""
from __future__ import annotations

import math

import pytest
import torch

from otcore.config import TrainSpec
from otcore.data import load_dataset
from otcore.models import build_model
from otcore.train import TrainProgress, evaluate, init_model, train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def trained(digits, spec: TrainSpec, init_seed: int | None = None, progress=None):
    model = init_model(build_model("mlpnet", digits.input_shape, 10), spec.seed if init_seed is None else init_seed)
    return train(model, digits.x_train, digits.y_train, spec, progress)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_default_training_of_mlpnet_on_digits_reaches_95_percent(digits, digits_parents):
    first = digits_parents[0]
    assert first.name == "parent 1"
    score = evaluate(first.model, digits.x_test, digits.y_test)
    assert score.accuracy >= 95.0
    assert math.isclose(first.metrics["test"]["accuracy"], score.accuracy, abs_tol=1e-6)
    assert first.metrics["input_shape"] == [1, 8, 8] and first.metrics["num_classes"] == 10


def test_parents_come_back_from_the_cache_unchanged(digits_cli_train, digits_parents):
    from otcore.cache import DiskCache
    from otcore.config import DataSpec, ModelSpec
    from otcore.pipeline import train_parents

    again = train_parents(DataSpec(), ModelSpec(), TrainSpec(), [0, 1], device="cpu",
                          cache=DiskCache(digits_cli_train.cache))
    assert [p.metrics["cached"] for p in again] == [True, True]
    assert [p.key for p in again] == [p.key for p in digits_parents]
    assert all(same_weights(a.model, b.model) for a, b in zip(again, digits_parents))
    assert not same_weights(again[0].model, again[1].model)


def test_training_is_reproducible_across_processes(digits, digits_parents):
    """The parent that the CLI trained in its own process is the network train() makes here from seed 0."""
    assert same_weights(digits_parents[0].model, trained(digits, TrainSpec(seed=0)))


def test_same_seed_gives_identical_weights_and_other_seeds_differ(digits):
    spec = TrainSpec(epochs=2, seed=5)
    a, b = trained(digits, spec), trained(digits, spec)
    assert same_weights(a, b)
    assert not same_weights(a, trained(digits, TrainSpec(epochs=2, seed=6)))
    # The seed alone also changes the batch order: same initialisation, other order, other weights.
    assert not same_weights(a, trained(digits, TrainSpec(epochs=2, seed=6), init_seed=5))


def test_init_model_is_seeded():
    a = init_model(build_model("mlpnet", (1, 8, 8), 10), 3)
    b = init_model(build_model("mlpnet", (1, 8, 8), 10), 3)
    c = init_model(build_model("mlpnet", (1, 8, 8), 10), 4)
    assert same_weights(a, b) and not same_weights(a, c)


def test_zero_epochs_leave_the_weights_alone(digits):
    model = init_model(build_model("mlpnet", digits.input_shape, 10), 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, digits.x_train, digits.y_train, TrainSpec(epochs=0))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_progress_reports_every_step_in_order(digits):
    spec = TrainSpec(epochs=3, batch_size=100, seed=0)
    reports: list[TrainProgress] = []
    model = trained(digits, spec, progress=reports.append)
    steps = math.ceil(len(digits.x_train) / spec.batch_size)  # 1347 examples -> 14 steps
    assert [(r.epoch, r.step) for r in reports] == [(e, s) for e in range(1, 4) for s in range(1, steps + 1)]
    assert all(r.epochs == spec.epochs and r.steps == steps for r in reports)
    assert reports[-1].epoch == spec.epochs and reports[-1].step == steps
    assert all(0.0 <= r.accuracy <= 100.0 and math.isfinite(r.loss) for r in reports)
    # Training learns: the last epoch's batches score better than the first's.
    first = sum(r.loss for r in reports[:steps]) / steps
    last = sum(r.loss for r in reports[-steps:]) / steps
    assert last < first
    assert not model.training  # train() hands back a model in eval mode


def test_evaluate_matches_a_manual_computation(digits, digits_parents):
    model = digits_parents[1].model
    x, y = digits.x_train, digits.y_train  # 1,347 examples: more than one evaluation batch
    score = evaluate(model, x, y)
    with torch.no_grad():
        logits = model(x)
    correct = sum(int(row.argmax()) == int(label) for row, label in zip(logits, y))
    log_probs = logits - logits.logsumexp(1, keepdim=True)
    manual_loss = -log_probs[torch.arange(len(y)), y].mean().item()
    assert math.isclose(score.accuracy, 100.0 * correct / len(y), abs_tol=1e-4)
    assert math.isclose(score.loss, manual_loss, rel_tol=1e-4, abs_tol=1e-6)
    assert score.accuracy > 1.0  # percent, not a fraction


def test_evaluate_of_a_constant_network_is_chance(digits):
    """All-zero weights give equal logits: loss ln(10), and argmax 0 is right exactly for the zeros."""
    model = build_model("mlpnet", digits.input_shape, 10)
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    score = evaluate(model, digits.x_test, digits.y_test)
    assert math.isclose(score.loss, math.log(10), rel_tol=1e-6)
    assert math.isclose(score.accuracy, 100.0 * (digits.y_test == 0).float().mean().item(), abs_tol=1e-4)


def test_training_settles_batch_norms_on_the_examples_it_trained_on():
    """After training, a batch norm's running statistics are those of its input on the training examples (the
    momentum averages of a short run lag its weights), and the network is left in eval mode."""
    generator = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(100, 4, generator=generator), torch.randint(0, 3, (100,), generator=generator)
    train(net, x, y, TrainSpec(epochs=2, batch_size=16))
    with torch.no_grad():
        inputs = net[0](x)
    assert torch.allclose(net[1].running_mean, inputs.mean(0), atol=1e-6)
    assert torch.allclose(net[1].running_var, inputs.var(0, unbiased=False), rtol=1e-5)
    assert not net.training and not net[1].training
