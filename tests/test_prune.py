"""Tests of otcore.prune: sparsity per layer and globally, filter ranking, masked retraining, compaction."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from otcore.config import PruneSpec, TrainSpec
from otcore.data import load_dataset
from otcore.models import OUTPUT, MlpNet, build_model, count_parameters
from otcore.prune import (CompactionReport, compact, copy_model, finalize, is_pruned, prunable_layers, prune_model,
                          sparsity_report, strip_masks_state_dict)
from otcore.train import init_model, predict_logits, train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def fresh(arch: str, digits, seed: int = 0) -> nn.Module:
    return init_model(build_model(arch, digits.input_shape, digits.num_classes), seed)


def weight(model: nn.Module, name: str) -> torch.Tensor:
    return model.get_submodule(name).weight.detach()


@pytest.mark.parametrize("arch", ["mlpnet", "vgg_tiny_nobias"])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_unstructured_per_layer_sparsity(digits, arch, fraction):
    model = fresh(arch, digits)
    pruned = prune_model(model, PruneSpec(fraction=fraction, scope="all", keep_last_layer=True))
    names = prunable_layers(pruned, "all", keep_last_layer=True)
    report = sparsity_report(pruned, names)
    assert [r.name for r in report.layers] == names and all(r.masked for r in report.layers)
    for row in report.layers:
        assert abs(row.zeros - fraction * row.numel) <= 1, row
    last = model.alignment_layers()[-1].name
    assert int((weight(pruned, last) == 0).sum()) == 0  # classifier kept dense
    assert not is_pruned(model) and is_pruned(pruned)


@pytest.mark.parametrize("arch", ["mlpnet", "vgg_tiny_nobias"])
def test_global_unstructured_total_equals_fraction(digits, arch):
    pruned = prune_model(fresh(arch, digits), PruneSpec(fraction=0.6, global_=True, keep_last_layer=False))
    report = sparsity_report(pruned, prunable_layers(pruned, "all", keep_last_layer=False))
    assert abs(report.zeros - 0.6 * report.numel) <= 1
    # A global ranking spreads the zeros unevenly over the layers.
    assert len({round(r.fraction, 3) for r in report.layers}) > 1


def test_scope_selects_layer_kind(digits):
    model = fresh("vgg_tiny_nobias", digits)
    conv_only = sparsity_report(prune_model(model, PruneSpec(fraction=0.5, scope="conv", keep_last_layer=False)))
    assert all((r.zeros > 0) == (r.kind == "conv") for r in conv_only.layers)
    linear_only = sparsity_report(prune_model(model, PruneSpec(fraction=0.5, scope="linear", keep_last_layer=False)))
    assert all((r.zeros > 0) == (r.kind == "linear") for r in linear_only.layers)
    assert prunable_layers(model, "linear", keep_last_layer=True) == []  # the classifier is the only Linear
    mlp = fresh("mlpnet", digits)
    assert not is_pruned(prune_model(mlp, PruneSpec(fraction=0.5, scope="conv")))


def test_fraction_zero_is_an_unpruned_copy(digits):
    model = fresh("mlpnet", digits)
    same = prune_model(model, PruneSpec(fraction=0.0))
    assert same is not model and not is_pruned(same)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))


@pytest.mark.parametrize("arch", ["mlpnet", "vgg_tiny_nobias", "resnet_tiny_nobias_nobn"])
@pytest.mark.parametrize("norm", [1, 2])
def test_structured_removes_smallest_norm_filters(digits, arch, norm):
    model = fresh(arch, digits)
    fraction = 0.4
    pruned = prune_model(model, PruneSpec(fraction=fraction, type="structured", norm=norm))
    for name in prunable_layers(model, "all", keep_last_layer=True):
        before, after = weight(model, name).flatten(1), weight(pruned, name).flatten(1)
        zero = (after == 0).all(dim=1)
        untouched = (after == before).all(dim=1)
        assert bool((zero | untouched).all()), name  # each filter all-zero or untouched
        assert int(zero.sum()) == round(fraction * len(before)), name
        norms = before.norm(p=norm, dim=1)
        assert norms[zero].max() <= norms[~zero].min(), name


def test_structured_masks_bias_of_removed_neurons():
    torch.manual_seed(0)
    model = MlpNet(16, (12,), 3)
    model.fc1 = nn.Linear(16, 12, bias=True)
    pruned = prune_model(model, PruneSpec(fraction=0.5, type="structured"))
    zero = (weight(pruned, "fc1") == 0).all(dim=1)
    assert int(zero.sum()) == 6 and torch.all(pruned.fc1.bias[zero] == 0) and torch.all(pruned.fc1.bias[~zero] != 0)


def test_model_handed_in_is_not_mutated(digits):
    model = fresh("vgg_tiny_nobias", digits)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for spec in (PruneSpec(fraction=0.5), PruneSpec(fraction=0.5, type="structured"),
                 PruneSpec(fraction=0.5, global_=True)):
        pruned = prune_model(model, spec)
        finalize(pruned)
        compact(pruned)
        sparsity_report(pruned)
    assert not is_pruned(model) and model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not model._forward_pre_hooks and not model.features[0]._forward_pre_hooks


@pytest.mark.parametrize("spec", [PruneSpec(fraction=0.6), PruneSpec(fraction=0.5, type="structured")])
def test_masked_weights_stay_zero_through_retraining_and_finalize(digits, spec):
    pruned = prune_model(fresh("vgg_tiny_nobias", digits), spec)
    names = prunable_layers(pruned, spec.scope, spec.keep_last_layer)
    masks = {n: pruned.get_submodule(n).weight_mask.clone() for n in names}
    orig_before = weight(pruned, names[0]).clone()
    train(pruned, digits.x_train, digits.y_train, TrainSpec(epochs=1, lr=0.05))
    assert is_pruned(pruned)
    assert not torch.equal(pruned.get_submodule(names[0]).weight_orig.detach() * masks[names[0]], orig_before)
    final = finalize(pruned)
    assert not is_pruned(final) and is_pruned(pruned)  # finalize returns a copy
    assert not any(k.endswith(("_orig", "_mask")) for k in final.state_dict())
    assert final.state_dict().keys() == fresh("vgg_tiny_nobias", digits).state_dict().keys()
    stripped = strip_masks_state_dict(pruned)
    for name, mask in masks.items():
        for model_weight in (_fresh_effective(pruned, name), weight(final, name), stripped[f"{name}.weight"]):
            assert torch.all(model_weight[mask == 0] == 0), name
        assert isinstance(final.get_submodule(name).weight, nn.Parameter)
    assert torch.equal(predict_logits(final, digits.x_test), predict_logits(pruned, digits.x_test))
    masked, plain = sparsity_report(pruned, names), sparsity_report(final, names)
    assert masked.layers == tuple(dataclasses.replace(r, masked=True) for r in plain.layers)
    assert masked.params_nonzero == plain.params_nonzero == count_parameters(final) - masked.zeros


def test_copy_model_copies_masked_networks(digits):
    pruned = prune_model(fresh("mlpnet", digits), PruneSpec(fraction=0.5))
    with pytest.raises(RuntimeError):
        copy.deepcopy(pruned)  # torch refuses: the masked `weight` is not a graph leaf
    twin = copy_model(pruned)
    assert is_pruned(twin) and twin.fc1.weight_orig is not pruned.fc1.weight_orig
    train(twin, digits.x_train[:256], digits.y_train[:256], TrainSpec(epochs=1))
    assert not torch.equal(twin.fc1.weight_orig, pruned.fc1.weight_orig)  # the original did not move
    assert torch.equal(twin.fc1.weight_mask, pruned.fc1.weight_mask)
    assert torch.all(twin.fc1.weight[twin.fc1.weight_mask == 0] == 0)


def _fresh_effective(model: nn.Module, name: str) -> torch.Tensor:
    module = model.get_submodule(name)
    return (module.weight_orig * module.weight_mask).detach()


def test_sparsity_report_totals(digits):
    model = fresh("mlpnet", digits)
    dense = sparsity_report(model)
    assert dense.zeros == 0 and dense.params_nonzero == dense.params_total == count_parameters(model)
    pruned = prune_model(model, PruneSpec(fraction=0.5, keep_last_layer=False))
    report = sparsity_report(pruned)
    assert [r.name for r in report.layers] == [layer.name for layer in model.alignment_layers()]
    assert report.params_total == count_parameters(model)
    assert report.params_nonzero == report.params_total - report.zeros
    assert report.overall_fraction == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize("arch", ["mlpnet", "vgg_tiny_nobias", "resnet_tiny_nobias_nobn"])
def test_compaction_keeps_outputs_and_drops_parameters(digits, arch):
    model = fresh(arch, digits)
    pruned = prune_model(model, PruneSpec(fraction=0.5, type="structured"))
    result = compact(pruned)
    assert isinstance(result, CompactionReport) and not is_pruned(result.model)
    x = digits.x_test[:300]
    assert torch.allclose(predict_logits(result.model, x), predict_logits(pruned, x), atol=1e-5)
    assert result.params_after < result.params_before == count_parameters(model)
    assert result.params_after == count_parameters(result.model)
    writers = {}
    for layer in model.alignment_layers():
        writers.setdefault(layer.out_group, []).append(layer.name)
    expected = {}
    for group, names in writers.items():
        if group != OUTPUT:
            zero = torch.stack([(weight(pruned, n).flatten(1) == 0).all(1) for n in names]).all(0)
            if zero.any():
                expected[group] = (len(zero), len(zero) - int(zero.sum()))
    assert result.shrunk == expected
    single = {g for g, names in writers.items() if len(names) == 1 and g != OUTPUT}
    for group in single:  # every single-writer hidden group loses exactly the pruned filters
        width = weight(model, writers[group][0]).shape[0]
        assert result.shrunk[group] == (width, width - round(0.5 * width))
    for group, (_before, after) in result.shrunk.items():
        assert weight(result.model, writers[group][0]).shape[0] == after


def test_compaction_shrinks_residual_stream_only_where_every_writer_zeroes(digits):
    model = fresh("resnet_tiny_nobias_nobn", digits)
    layers = model.alignment_layers()
    stream = layers[0].out_group  # stem, layer1 blocks: all write the first stream
    with torch.no_grad():
        for layer in layers:
            if layer.out_group == stream:
                model.get_submodule(layer.name).weight[[1, 5]] = 0
        model.get_submodule(layers[0].name).weight[3] = 0  # one writer only: channel 3 must stay
    result = compact(model)
    assert result.shrunk == {stream: (8, 6)}
    x = digits.x_test[:200]
    assert torch.allclose(predict_logits(result.model, x), predict_logits(model, x), atol=1e-5)


def test_compaction_of_unpruned_network_is_identity(digits):
    model = fresh("mlpnet", digits)
    result = compact(model)
    assert result.shrunk == {} and result.params_after == result.params_before
