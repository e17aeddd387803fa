"""Vision Transformers (otcore.vit) read by the tracer (otcore.graph_attention) and fused (otcore.fusion.heads).

Independent checks: a ViT fused with a permuted copy of itself (residual stream, heads, channels within
heads and every MLP hidden layer reordered) gives back its logits by every alignment; the plans of
head groups are block matrices that move whole heads; timm's ViT is read into the same groups; the
Hessian-vector products the curvature analyses use equal torch.func.hessian on a block of coordinates.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import torchvision

from otcore.config import HessianSpec, PruneSpec, RetrainSpec, TrainSpec
from otcore.data import load_dataset
from otcore.errors import ModelError
from otcore.fusion import FusionOptions, MergeMethodError, fuse, permuted_copy
from otcore.graph import trace_groups
from otcore.hessian import _HessianOperator, analyse, fixed_batches, trainable_layout
from otcore.models import build_model, list_models
from otcore.prune import compact, prune_model
from otcore.train import evaluate, init_model, retrain, train

SHAPE = (1, 8, 8)
METHODS = {"OT weights": FusionOptions(), "OT activations": FusionOptions(mode="activations"),
           "OT weights sinkhorn": FusionOptions(solver="sinkhorn", reg=1e-3),
           "weight matching": FusionOptions(alignment="weight_matching"), "CCA Merge": FusionOptions(alignment="cca"),
           "ZipIt!": FusionOptions(alignment="zipit")}


@pytest.fixture(autouse=True, scope="module")
def one_thread(one_torch_thread):
    """One torch thread (the shared fixture in tests/conftest.py)."""


def _vit(arch: str = "vit_tiny", seed: int = 0, shape=SHAPE, dtype=torch.float32):
    return init_model(build_model(arch, shape, 10), seed).to(dtype).eval()


def _inputs(n: int = 200, shape=SHAPE, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(5)).to(dtype)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_the_registry_offers_both_vits_on_digits_and_mnist_shapes():
    assert {"vit_tiny", "vit_tiny_doub"} <= set(list_models())
    for shape in (SHAPE, (1, 28, 28), (3, 32, 32)):
        for arch, width in (("vit_tiny", 64), ("vit_tiny_doub", 128)):
            model = build_model(arch, shape, 10).eval()
            with torch.no_grad():
                assert model(torch.randn(3, *shape)).shape == (3, 10)
            state = model.state_dict()
            assert state["patch_embed.proj.weight"].shape == (width, shape[0], shape[1] // 4, shape[2] // 4)
            assert state["cls_token"].shape == (1, 1, width) and state["pos_embed"].shape == (1, 17, width)
            assert state["blocks.1.attn.qkv.weight"].shape == (3 * width, width)
            assert {"blocks.0.norm1.weight", "blocks.0.attn.proj.bias", "blocks.0.mlp.fc2.weight", "norm.bias",
                    "head.weight"} <= set(state)
    with pytest.raises(ModelError, match="multiples of 4"):
        build_model("vit_tiny", (1, 10, 10), 10)


def test_the_tracer_reads_the_stream_the_heads_and_the_mlps():
    graph = trace_groups(_vit(), SHAPE)
    free = {g.name: g for g in graph.free()}
    stream = free["patch_embed.proj"]
    followers = {s.tensor for s in stream.slots if s.role == "follower"}
    assert {"cls_token", "pos_embed", "norm.weight", "norm.bias", "blocks.1.norm2.bias"} <= followers
    assert stream.writers() == ["blocks.0.attn.proj", "blocks.0.mlp.fc2", "blocks.1.attn.proj", "blocks.1.mlp.fc2",
                                "patch_embed.proj"]
    assert "head" in stream.readers() and stream.heads == 0
    for b in (0, 1):
        qk, v = free[f"blocks.{b}.attn.qkv.part0"], free[f"blocks.{b}.attn.qkv.part2"]
        assert (qk.size, qk.heads, v.size, v.heads) == (64, 4, 64, 4)
        assert qk.heads_with == v.heads_with == qk.name  # one order of the heads for q, k and v
        writes = sorted(s.offset for s in qk.slots if s.role == "writer")
        assert writes == [0, 64]  # q's and k's rows of the fused projection move together
        assert [s.offset for s in v.slots if s.role == "writer"] == [128] and v.readers() == [f"blocks.{b}.attn.proj"]
        assert (qk.node_offset, v.node_offset) == (0, 128)
        assert free[f"blocks.{b}.mlp.fc1"].size == 128
    assert len(free) == 1 + 2 * 3


def test_a_permuted_copy_moves_whole_heads_and_keeps_the_logits():
    model = _vit(dtype=torch.float64)
    twin = permuted_copy(model, seed=3)
    state, moved = model.state_dict(), twin.state_dict()
    changed = sum(int((moved[k] != state[k]).sum()) for k in state) / sum(t.numel() for t in state.values())
    assert changed > 0.5
    x = _inputs(dtype=torch.float64)
    with torch.no_grad():
        assert _relative(twin(x), model(x)) < 1e-12
    # The heads were reordered as blocks, and channels within them: q's rows are a permutation of whole heads.
    q, q_twin = state["blocks.0.attn.qkv.weight"][:64], moved["blocks.0.attn.qkv.weight"][:64]
    def head(rows: torch.Tensor) -> list:  # a head's rows as a set, blind to the stream's order of columns
        return sorted(tuple(sorted(r)) for r in rows.tolist())

    heads = [head(q[h * 16:(h + 1) * 16]) for h in range(4)]
    found = [heads.index(head(q_twin[t * 16:(t + 1) * 16])) for t in range(4)]
    assert sorted(found) == [0, 1, 2, 3] and found != [0, 1, 2, 3]


@pytest.mark.parametrize("method", list(METHODS))
def test_fusing_a_vit_with_its_permuted_copy_gives_back_its_logits(method):
    model = _vit()
    twin = permuted_copy(model, seed=1)
    x = _inputs()
    fused = fuse([model, twin], METHODS[method], x).model
    with torch.no_grad():
        assert _relative(fused(x), model(x)) < 1e-4


def test_heads_kept_in_place_cannot_undo_a_permutation_of_the_heads():
    model = _vit()
    twin = permuted_copy(model, seed=1)
    x = _inputs()
    with torch.no_grad():
        units = fuse([model, twin], FusionOptions(heads="units"), x).model(x)
        within = fuse([model, twin], FusionOptions(heads="within"), x).model(x)
        assert _relative(units, model(x)) < 1e-4 < 1e-2 < _relative(within, model(x))


@pytest.mark.parametrize("heads", ["units", "within"])
def test_head_plans_are_blocks_moving_whole_heads(heads):
    anchor, parent = _vit(seed=0), _vit(seed=1)
    result = fuse([anchor, parent], FusionOptions(heads=heads), _inputs())
    for name in ("blocks.0.attn.qkv.part0", "blocks.1.attn.qkv.part2"):
        plan = result.plans[1][name]
        mass = plan.reshape(4, 16, 4, 16).sum((1, 3))  # (parent head, anchor head)
        assert ((mass > 0).sum(1) == 1).all() and ((mass > 0).sum(0) == 1).all()  # one anchor head per parent head
        if heads == "within":
            assert torch.equal(mass > 0, torch.eye(4, dtype=torch.bool))
    q_heads = result.plans[1]["blocks.0.attn.qkv.part0"].reshape(4, 16, 4, 16).sum((1, 3)) > 0
    v_heads = result.plans[1]["blocks.0.attn.qkv.part2"].reshape(4, 16, 4, 16).sum((1, 3)) > 0
    assert torch.equal(q_heads, v_heads)  # q/k and v heads move together


@pytest.mark.parametrize("anchor", [0, 1])
def test_vit_tiny_and_vit_tiny_doub_fuse_into_either_width(anchor):
    parents = [_vit("vit_tiny", 0), _vit("vit_tiny_doub", 1)]
    x = _inputs()
    for mode in ("weights", "activations"):
        fused = fuse(parents, FusionOptions(anchor=anchor, mode=mode), x).model
        assert [p.shape for p in fused.parameters()] == [p.shape for p in parents[anchor].parameters()]
        with torch.no_grad():
            assert torch.isfinite(fused(x)).all()


def test_timms_vit_is_read_into_the_same_groups_and_fuses_back_from_a_permuted_copy():
    model = build_model("timm:vit_tiny_patch16_224", (3, 32, 32), 10).double().eval()
    graph = trace_groups(model, (3, 32, 32))
    heads = [g for g in graph.free() if g.heads]
    assert len(heads) == 24 and {g.heads for g in heads} == {3}  # q/k and v of 12 blocks, 3 heads each
    assert len(graph.free()) == 1 + 12 * 3  # the stream, and per block q/k, v and the MLP's hidden layer
    twin = permuted_copy(model, seed=2)
    x = _inputs(2, (3, 32, 32), torch.float64)
    fused = fuse([model, twin], FusionOptions(), x).model
    with torch.no_grad():
        reference = model(x)
        assert _relative(twin(x), reference) < 1e-10 and _relative(fused(x), reference) < 1e-10


def test_the_vits_hessian_vector_products_equal_the_exact_hessian_on_a_block():
    """The products every curvature analysis uses (otcore.hessian) against torch.func.hessian of the loss as a
    function of 40 coordinates (the others held), in float64: rows and columns of the exact Hessian."""
    torch.manual_seed(1)
    model = _vit(dtype=torch.float64)
    x, y = _inputs(24, dtype=torch.float64), torch.randint(0, 10, (24,))
    batches = fixed_batches(x, y, 16, 2)  # 16 and 8: unequal batches weighted by size
    op = _HessianOperator(model, batches)
    layout = trainable_layout(model)
    theta = layout.flatten(dict(model.named_parameters()))
    index = torch.randperm(op.size)[:40]

    def loss(part: torch.Tensor) -> torch.Tensor:
        full = theta.index_put((index,), part)
        return F.cross_entropy(torch.func.functional_call(model, layout.unflatten(full), (x,)), y)

    exact = torch.func.hessian(loss)(theta[index])
    assert exact.abs().max() > 1e-4  # a real curvature, attention and norms included
    basis = torch.zeros(len(index), op.size, dtype=torch.float64)
    basis[torch.arange(len(index)), index] = 1.0
    torch.testing.assert_close(op.matmat(basis)[:, index], exact, rtol=1e-8, atol=1e-12)


def test_the_curvature_analysis_runs_on_a_vit():
    model = _vit(dtype=torch.float64)
    x, y = _inputs(64, dtype=torch.float64), torch.randint(0, 10, (64,))
    batches = fixed_batches(x, y, 64, 1)
    result = analyse(model, batches, HessianSpec(top_k=2, power_iters=50, trace_probes=10, lanczos_iters=20))
    assert result.trace_method == "hutchinson"  # GELU, softmax and norms: no exact trace
    op = _HessianOperator(model, batches)
    vector = result.top_eigenvectors[0]
    residual = (op.matmat(vector[None])[0] - result.top_eigenvalues[0] * vector).norm()
    # Power iteration: the largest in magnitude first (an untrained ViT's loss is far from convex).
    assert abs(result.top_eigenvalues[0]) >= abs(result.top_eigenvalues[1]) > 0
    assert residual < 1e-2 * abs(result.top_eigenvalues[0])
    assert abs(float(result.density.weights.sum(-1).mean()) - 1.0) < 1e-6


def test_trained_vits_of_two_widths_fuse_into_better_than_chance_networks():
    """Parents trained 5 epochs of the default recipe (40.7 and 34.4 % on digits' test split); OT on weights into
    either width measured 25.8 and 38.9 % one-shot, 45.1 and 51.6 % after one epoch at lr 0.01 (chance: 10 %)."""
    data = load_dataset("digits")
    x, y = data.split("train")
    x_te, y_te = data.split("test")
    parents = []
    for arch, seed in (("vit_tiny", 0), ("vit_tiny_doub", 1)):
        net = init_model(build_model(arch, data.input_shape, data.num_classes), seed)
        train(net, x, y, replace(TrainSpec(seed=seed), epochs=5))
        parents.append(net.eval())
    for anchor in (0, 1):
        fused = fuse(parents, FusionOptions(anchor=anchor), x[:300]).model
        with torch.no_grad():
            assert torch.isfinite(fused(x_te)).all()
        one_shot = evaluate(fused, x_te, y_te).accuracy
        tuned = retrain(fused, x, y, RetrainSpec(lr=0.01), 1).model
        assert one_shot > 20.0 and evaluate(tuned, x_te, y_te).accuracy > max(35.0, one_shot)


def test_structured_pruning_masks_heads_and_compaction_shrinks_only_the_mlps():
    model = _vit()
    pruned = prune_model(model, PruneSpec(type="structured", fraction=0.25))
    report = compact(pruned)
    assert report.shrunk == {"blocks.0.mlp.fc1": (128, 96), "blocks.1.mlp.fc1": (128, 96)}
    x = _inputs()
    with torch.no_grad():
        assert _relative(report.model(x), pruned(x)) < 1e-5


def test_torchvisions_vit_with_multihead_attention_modules_is_read_with_its_heads_in_place():
    """nn.MultiheadAttention is one fx leaf: its in_proj reads the stream and out_proj writes into it, its
    q, k, v channels stay in place; the stream (class token, position embedding, norms) and MLPs are aligned."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                                 mlp_dim=32, num_classes=10)
    model = init_model(model, 0).double().eval()
    graph = trace_groups(model, (3, 32, 32))
    stream = next(g for g in graph.free() if "conv_proj" in g.writers())
    followers = {s.tensor for s in stream.slots if s.role == "follower"}
    assert {"class_token", "encoder.pos_embedding", "encoder.ln.weight"} <= followers
    assert "encoder.layers.encoder_layer_1.self_attention.out_proj" in stream.writers()
    assert len(graph.free()) == 1 + 2  # the stream and two MLP hidden layers
    twin = permuted_copy(model, seed=1, input_shape=(3, 32, 32))
    x = _inputs(4, (3, 32, 32), torch.float64)
    with torch.no_grad():
        reference = model(x)
        assert _relative(twin(x), reference) < 1e-12
        for opts in (FusionOptions(), FusionOptions(mode="activations")):
            assert _relative(fuse([model, twin], opts, x).model(x), reference) < 1e-10


def test_cross_attention_by_a_multihead_attention_module_is_refused_by_name():
    class Cross(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(4, 8)
            self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(self.a(x), self.b(x), self.b(x))[0]

    with pytest.raises(ModelError, match="'attn': MultiheadAttention is read only as self-attention"):
        trace_groups(Cross(), (3, 4))


def test_partial_merging_widens_the_stream_and_mlps_but_not_the_heads():
    parents = [_vit(seed=0), _vit(seed=1)]
    x = _inputs(100)
    fused = fuse(parents, FusionOptions(alignment="zipit", width=2.0), x).model
    state = fused.state_dict()
    assert state["norm.weight"].shape == (128,) and state["blocks.0.mlp.fc1.weight"].shape == (256, 128)
    assert state["blocks.0.attn.qkv.weight"].shape == (192, 128)  # q, k, v at the anchor's 4 heads of 16
    with torch.no_grad():
        assert torch.isfinite(fused(x)).all()


def test_partial_merging_of_a_network_whose_code_fixes_a_width_is_one_error():
    class FixedWidth(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(x)).reshape(-1, 4, 4).reshape(-1, 16))  # 16 written in the code

    parents = [FixedWidth(), FixedWidth()]
    with pytest.raises(MergeMethodError, match="width 2: the widened network does not run"):
        fuse(parents, FusionOptions(alignment="zipit", width=2.0), torch.randn(50, 8))


def test_the_head_mode_is_a_fusion_setting_of_the_cli_the_spec_and_its_key():
    """--heads reaches FusionSpec and FusionOptions; the default keeps every key as it was, another mode is its own."""
    import argparse

    from otcore.cli.flags import add_fusion, fusion_spec
    from otcore.config import DataSpec, FusionSpec, ModelSpec, SpecError, spec_dict
    from otcore.keys import fusion_key

    parser = argparse.ArgumentParser()
    add_fusion(parser)
    spec = fusion_spec(parser.parse_args(["--heads", "within"]))
    assert spec == FusionSpec(heads="within") and spec.options(2).heads == "within"
    assert fusion_spec(parser.parse_args([])) == FusionSpec() and FusionSpec().options(2).heads == "units"
    keys = {mode: fusion_key(DataSpec(), ModelSpec("vit_tiny"), FusionSpec(heads=mode), TrainSpec(), ["a", "b"])
            for mode in ("units", "within", "flat")}
    assert len(set(keys.values())) == 3
    assert "heads" not in spec_dict(FusionSpec())
    with pytest.raises(SpecError, match="heads must be one of"):
        FusionSpec(heads="rows")
