"""Sessions share memoised models: real threads on the same parent objects get the sequential answers.

Built as the reproductions of issue 14: one thread fuses (or computes an exact trace) while others
run forward passes, hooks and `torch.func` calls on the very same `nn.Module`s (the session's
digits parents), and every result is compared with the one computed alone, in every run.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch

from otcore.config import DataSpec, FusionSpec
from otcore.fusion import fuse
from otcore.hessian import exact_trace, fixed_batches
from otcore.landscape import filter_normalized_direction, perturbation_curve
from otcore.models import build_model
from otcore.pipeline import dataset
from otcore.train import evaluate, init_model, predict_logits

RUNS = 6  # results per worker thread compared with the sequential one


def snapshot(model: torch.nn.Module) -> dict:
    """What a read-only user must leave as it was: parameter objects and values, hooks, mode, device."""
    return {"ids": [id(p) for p in model.parameters()],
            "values": [p.detach().clone() for p in model.parameters()],
            "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
            "training": [m.training for m in model.modules()],
            "device": next(model.parameters()).device}


def assert_untouched(model: torch.nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["ids"] == before["ids"]
    assert all(torch.equal(a, b) for a, b in zip(after["values"], before["values"]))
    assert after["hooks"] == 0 and model._forward_hooks == {}
    assert after["training"] == before["training"] and after["device"] == before["device"]


def run_together(work: Callable[[], object], disturbers: list[Callable[[], None]]) -> list:
    """`work` RUNS times in one thread while each disturber loops in its own thread; work's results, errors raised."""
    done, results, errors = threading.Event(), [], []

    def worker() -> None:
        try:
            for _ in range(RUNS):
                results.append(work())
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)
        finally:
            done.set()

    def disturb(action: Callable[[], None]) -> None:
        try:
            while not done.is_set():
                action()
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=worker)] + [threading.Thread(target=disturb, args=(d,)) for d in disturbers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(results) == RUNS
    return results


@pytest.fixture(scope="module")
def digits():
    return dataset(DataSpec())


def test_fusion_by_activations_under_concurrency_equals_the_sequential_one(digits_parents, digits) -> None:
    nets = [p.model for p in digits_parents]
    before = [snapshot(n) for n in nets]
    inputs = digits.x_train[:100]
    spec = FusionSpec(mode="activations", act_samples=100)

    def fused_accuracy() -> float:
        return evaluate(fuse(nets, spec, inputs).model, digits.x_test, digits.y_test).accuracy

    sequential = fused_accuracy()
    disturbers = [lambda: [predict_logits(n, digits.x_test[:200]) for n in nets], fused_accuracy]
    assert run_together(fused_accuracy, disturbers) == [sequential] * RUNS
    for net, snap in zip(nets, before):
        assert_untouched(net, snap)


def test_exact_trace_under_concurrency_equals_the_sequential_one(digits_parents, digits) -> None:
    net = digits_parents[0].model
    before = snapshot(net)
    batches = fixed_batches(digits.x_train, digits.y_train, 64, 2)
    sequential = exact_trace(net, batches)
    assert sequential.method == "exact"
    direction = filter_normalized_direction(net, seed=0)
    # a second exact trace (hooks), a landscape (functional_call swaps parameters) and plain forwards
    disturbers = [lambda: exact_trace(net, batches),
                  lambda: perturbation_curve(net, batches[:1], direction / direction.norm(), torch.tensor([0.1, 0.2])),
                  lambda: predict_logits(net, digits.x_test[:200])]
    traces = run_together(lambda: exact_trace(net, batches), disturbers)
    assert [t.mean for t in traces] == [sequential.mean] * RUNS
    assert {t.method for t in traces} == {"exact"}
    assert_untouched(net, before)


def test_init_under_concurrency_matches_the_seed(digits) -> None:
    seeds = list(range(8))

    def build(seed: int) -> dict:
        return init_model(build_model("mlpnet", digits.input_shape, digits.num_classes), seed).state_dict()

    sequential = [build(s) for s in seeds]
    got: dict[int, dict] = {}
    stop = threading.Event()

    def other_session() -> None:  # seeds and draws from the global generator, as PyHessian or user code may
        while not stop.is_set():
            torch.manual_seed(12345)
            torch.randn(1000)

    noise = threading.Thread(target=other_session)
    noise.start()
    workers = [threading.Thread(target=lambda s=s: got.__setitem__(s, build(s))) for s in seeds]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    stop.set()
    noise.join(timeout=30)
    for seed, reference in zip(seeds, sequential):
        assert got[seed].keys() == reference.keys()
        assert all(torch.equal(got[seed][k], reference[k]) for k in reference), f"seed {seed}"


def test_init_draws_what_the_global_seeded_default_init_draws(digits) -> None:
    """The private generator reproduces torch.manual_seed + reset_parameters: cached parents keep their keys."""
    net = build_model("mlpnet", digits.input_shape, digits.num_classes)
    torch.manual_seed(3)
    for module in net.modules():
        if module is not net and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    ours = init_model(build_model("mlpnet", digits.input_shape, digits.num_classes), 3)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ours.state_dict().values()))


def test_predict_logits_never_switches_a_models_mode(digits_parents, digits) -> None:
    from otcore.prune import copy_model

    net = copy_model(digits_parents[0].model).train()
    logits = predict_logits(net, digits.x_test[:50])
    assert net.training and all(m.training for m in net.modules())
    assert torch.equal(logits, predict_logits(digits_parents[0].model, digits.x_test[:50]))
