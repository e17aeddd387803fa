"""Partial merging to a width budget (ZipIt!, PLeaS), PLeaS's least squares, and the accuracy-versus-size frontier.

At full width (N times the anchor's) nothing is merged: every hidden layer holds the parents' features
side by side and the last layer averages their logits, so the fused network's logits are the mean of
the parents' (up to float32 rounding). At width 1 it is today's fusion; in between, accuracy grows
with the width (the margins are those measured on digits, see each test).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from otcore.config import DataSpec, FusionSpec, ModelSpec, SpecError, TrainSpec
from otcore.errors import FusionError
from otcore.fusion import FusionOptions, MergeMethodError, fuse, resized_copy
from otcore.fusion.batch_norm import reset_batch_norm
from otcore.models import build_model, count_parameters
from tests.support import REPO, copy_cache

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCHS = ("mlpnet", "vgg_tiny_nobias")
RELATIVE = 1e-5  # the full-width logits' distance to the parents' mean logits, relative to their largest


def _parents(data: DataSpec, arch: str, n: int, spec: TrainSpec | None = None) -> list[nn.Module]:
    from otcore.pipeline import train_parents

    return [p.model for p in train_parents(data, ModelSpec(arch), spec or TrainSpec(), list(range(n)), device="cpu")]


def _inputs(data: DataSpec, spec: FusionSpec) -> torch.Tensor:
    from otcore.pipeline import fusion_inputs

    return fusion_inputs(data, spec, torch.device("cpu"))


def _assert_the_ensemble(parents: list[nn.Module], fused: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        mean = sum(p(x) for p in parents) / len(parents)
        error = float((fused(x) - mean).abs().max() / mean.abs().max())
    assert error < RELATIVE, error


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100 * float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("alignment", ["zipit", "pleas"])
@pytest.mark.parametrize("n", [2, 3])
def test_at_full_width_the_fused_network_is_the_ensemble_on_digits(arch: str, alignment: str, n: int) -> None:
    from otcore.pipeline import dataset

    data = DataSpec()
    parents = _parents(data, arch, n)
    spec = FusionSpec(alignment=alignment, width=n)
    fused = fuse(parents, spec, _inputs(data, spec)).model
    # Every hidden layer holds all the parents' features: N times the anchor's widths.
    anchor_widths = [m.weight.shape[0] for m in parents[0].modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    widths = [m.weight.shape[0] for m in fused.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert widths == [n * w for w in anchor_widths[:-1]] + [anchor_widths[-1]]
    _assert_the_ensemble(parents, fused, dataset(data).x_test)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n", [2, 3])
def test_at_full_width_both_methods_are_the_ensemble_on_real_mnist_files(make_mnist_root, arch: str, n: int) -> None:
    """28x28 IDX files: vgg_tiny's classifier reads 3x3 positions per channel, so its flattened inputs widen too."""
    from otcore.pipeline import dataset

    root, _ = make_mnist_root("MNIST", n_train=60, n_test=30)
    data = DataSpec("mnist", root=str(root))
    parents = _parents(data, arch, n, TrainSpec(epochs=2, batch_size=16))
    for alignment in ("zipit", "pleas"):
        for repair in (False, True):  # REPAIR at full width: each neuron's target is its own statistics
            spec = FusionSpec(alignment=alignment, width=n, renormalize=repair, act_samples=60)
            fused = fuse(parents, spec, _inputs(data, spec)).model
            _assert_the_ensemble(parents, fused, dataset(data).x_test)


@pytest.fixture(scope="module")
def width_scores() -> dict:
    """Test accuracy (%) of ZipIt! and PLeaS at each width on two digits parents (seeds 0, 1), per architecture."""
    from otcore.pipeline import dataset

    data = DataSpec()
    ds = dataset(data)
    out: dict = {}
    for arch in ARCHS:
        parents = _parents(data, arch, 2)
        for alignment in ("zipit", "pleas"):
            for width in (1, 1.25, 1.5, 2):
                spec = FusionSpec(alignment=alignment, width=width)
                out[arch, alignment, width] = _accuracy(fuse(parents, spec, _inputs(data, spec)).model, ds.x_test,
                                                        ds.y_test)
    return out


def test_pleas_at_width_one_is_at_least_as_accurate_as_zipit(width_scores: dict) -> None:
    """Measured (450 test images): mlpnet PLeaS 97.3 against ZipIt! 96.7; vgg_tiny 98.2 against 92.7."""
    for arch in ARCHS:
        assert width_scores[arch, "pleas", 1] >= width_scores[arch, "zipit", 1], (arch, width_scores)


def test_accuracy_grows_with_the_width(width_scores: dict) -> None:
    """Measured, widths 1, 1.25, 1.5, 2: mlpnet ZipIt! 96.7, 97.1, 97.8, 98.0 and PLeaS 97.3, 97.8, 98.0, 98.0;
    vgg_tiny ZipIt! 92.7, 96.7, 98.4, 97.8 and PLeaS 98.2, 97.8, 98.7, 97.8. Width 2 is the logit ensemble
    (97.8 % on vgg_tiny), which PLeaS beats at widths 1 and 1.5 by 2 and 4 of the 450 images: a step may
    dip by up to 1 point (4.5 images), and width 2 ends at most half a point below width 1."""
    for arch in ARCHS:
        for alignment in ("zipit", "pleas"):
            scores = [width_scores[arch, alignment, w] for w in (1, 1.25, 1.5, 2)]
            assert all(b >= a - 1.0 for a, b in zip(scores, scores[1:])), (arch, alignment, scores)
            assert scores[-1] >= scores[0] - 0.5, (arch, alignment, scores)
    assert width_scores["vgg_tiny_nobias", "zipit", 2] > width_scores["vgg_tiny_nobias", "zipit", 1] + 3


def test_repair_and_its_bias_work_above_width_one() -> None:
    """REPAIR with --repair-bias at width 1.5: every repaired fused neuron ends at its target mean and std."""
    from otcore.fusion.merge_maps import pre_activations, repair_target
    from otcore.pipeline import dataset

    data = DataSpec()
    parents = _parents(data, "vgg_tiny_nobias", 2)
    spec = FusionSpec(alignment="pleas", width=1.5, renormalize=True, repair_bias=True)
    x = _inputs(data, spec)
    result = fuse(parents, spec, x)
    target = repair_target(pre_activations(parents, x), result.plans)
    got = pre_activations([result.model], x)[0]
    for group, (mean, std) in target.items():
        assert got[group].shape[0] == round(1.5 * parents[0].get_submodule(group).weight.shape[0])
        live = std > 1e-6
        assert torch.allclose(got[group].std(1)[live].double(), std[live].double(), rtol=1e-3), group
        assert torch.allclose(got[group].mean(1)[live].double(), mean[live].double(), rtol=1e-3, atol=1e-4), group
    assert _accuracy(result.model, dataset(data).x_test, dataset(data).y_test) > 90


class _Small(nn.Module):
    """Conv, batch norm, ReLU twice, global pool, a linear head with a bias: a network the zoo does not have."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class _Residual(nn.Module):
    """A stem, one residual block (conv-BN-ReLU-conv-BN plus the identity), pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                   nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(x.mean((2, 3)))


def _traced_parents(n: int, x: torch.Tensor, kind: type[nn.Module] = _Small) -> list[nn.Module]:
    nets = []
    for seed in range(n):
        torch.manual_seed(seed)
        net = kind()
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0, 0.5)
        nets.append(reset_batch_norm(net, x).eval())
    return nets


@pytest.mark.parametrize("n", [2, 3])
def test_traced_zipit_at_full_width_keeps_each_parents_batch_norm_statistics(n: int) -> None:
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    parents = _traced_parents(n, x)
    fused = fuse(parents, FusionOptions(alignment="zipit", width=n), x).model
    _assert_the_ensemble(parents, fused, x)
    # Every map is a selection: the statistics are the parents' own, concatenated (not re-estimated).
    for name in ("body.1", "body.4"):
        for stat in ("running_mean", "running_var"):
            ours = getattr(fused.get_submodule(name), stat)
            theirs = torch.cat([getattr(p.get_submodule(name), stat) for p in parents])
            assert torch.equal(ours.sort().values, theirs.sort().values), (name, stat)
    # REPAIR re-estimates the batch norms on the sample, then restores each neuron's own statistics.
    _assert_the_ensemble(parents, fuse(parents, FusionOptions(alignment="zipit", width=n, renormalize=True), x).model, x)
    partial = fuse(parents, FusionOptions(alignment="zipit", width=1.5, renormalize=True), x).model
    assert partial.get_submodule("body.4").num_features == 18 and torch.isfinite(partial(x)).all()


@pytest.mark.parametrize("kind", [_Small, _Residual])
def test_traced_pleas_is_the_ensemble_at_full_width_and_closer_to_it_than_zipit_below(kind: type[nn.Module]) -> None:
    """Batch norms folded, then every conv and linear layer refitted in call order (the residual block's too).
    Measured (relative distance to the mean logits on the sample, _Small, 2 parents): PLeaS 4.6e-2 at width 1,
    3.8e-2 at 1.5; ZipIt! 3.4e-1 and 1.6e-1."""
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for n in (2, 3):
        parents = _traced_parents(n, x, kind)
        _assert_the_ensemble(parents, fuse(parents, FusionOptions(alignment="pleas", width=n), x).model, x)
        with torch.no_grad():
            mean = sum(p(x) for p in parents) / n
            for width in (1, 1.5):
                distance = {a: float((fuse(parents, FusionOptions(alignment=a, width=width), x).model(x) - mean).abs().max())
                            for a in ("zipit", "pleas")}
                assert distance["pleas"] < distance["zipit"], (n, width, distance)


def test_traced_pleas_gives_a_permuted_copy_back() -> None:
    from otcore.fusion import permuted_copy

    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    model = _traced_parents(1, x, _Residual)[0]
    fused = fuse([model, permuted_copy(model, 2, (3, 8, 8))], FusionOptions(alignment="pleas"), x).model
    _assert_the_ensemble([model], fused, x)


def test_widths_above_one_are_refused_where_they_cannot_be_built(tmp_path) -> None:
    for alignment in ("ot", "weight_matching", "cca"):
        with pytest.raises(SpecError, match="only ZipIt!"):
            FusionSpec(alignment=alignment, width=1.5)
        with pytest.raises(FusionError, match="only ZipIt!"):
            FusionOptions(alignment=alignment, width=2)
    with pytest.raises(SpecError, match="above the number of parents"):
        FusionSpec(alignment="zipit", width=2.5).parent_weights(2)
    with pytest.raises(SpecError, match="at least 1|in \\[1"):
        FusionSpec(alignment="zipit", width=0.5)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(FusionError, match="above the number of parents"):
        fuse(_traced_parents(2, x), FusionOptions(alignment="zipit", width=3), x)
    with pytest.raises(MergeMethodError, match="residual"):
        fuse([build_model("resnet_tiny_nobias_nobn", (3, 8, 8), 10)] * 2, FusionOptions(alignment="pleas"), x)
    done = subprocess.run([sys.executable, "-m", "otcore", "fuse", "--dataset", "digits", "--arch", "mlpnet",
                           "--alignment", "weight-matching", "--width", "1.5", "--json"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OTCORE_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 2 and done.stderr.strip().startswith("error:") and "only ZipIt!" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_cli_prints_each_rows_parameter_count(digits_cli_train, tmp_path) -> None:
    """`fuse --alignment pleas --width 1.5 --json`: the fused mlpnet has 600, 300 and 150 hidden neurons."""
    cache = copy_cache(digits_cli_train.cache, tmp_path)  # a copy: other tests expect that cache untouched
    done = subprocess.run([sys.executable, "-m", "otcore", "fuse", "--dataset", "digits", "--arch", "mlpnet",
                           "--alignment", "pleas", "--width", "1.5", "--json"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OTCORE_CACHE_DIR": str(cache)})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    rows = {r["id"]: r for r in out["rows"]}
    anchor = count_parameters(build_model("mlpnet", (1, 8, 8), 10))
    assert out["alignment"] == "pleas" and out["width"] == 1.5
    assert rows["ot_fusion"]["parameters"] == 64 * 600 + 600 * 300 + 300 * 150 + 150 * 10
    assert rows["parent_1"]["parameters"] == rows["vanilla_average"]["parameters"] == anchor
    assert rows["prediction_ensemble"]["parameters"] == 2 * anchor
    assert rows["ot_fusion"]["test_accuracy"] == out["ot_fusion"] > 90


def test_a_cached_wider_fusion_loads_back_and_the_frontier_holds_its_rows() -> None:
    from otcore.frontier import frontier_rows
    from otcore.pipeline import dataset, fuse_and_compare, train_parents

    data, model = DataSpec(), ModelSpec("mlpnet")
    parents = train_parents(data, model, TrainSpec(), [0, 1], device="cpu")
    comparisons = [fuse_and_compare(data, model, parents, FusionSpec(alignment="zipit", width=w), device="cpu")
                   for w in (1, 2)]
    again = fuse_and_compare(data, model, parents, FusionSpec(alignment="zipit", width=2), device="cpu")
    assert again.cached
    x = dataset(data).x_test
    with torch.no_grad():
        assert torch.equal(again.row("ot_fusion").model(x), comparisons[1].row("ot_fusion").model(x))
    rows = frontier_rows(comparisons + [again], len(x))
    fused = [r for r in rows if r["kind"] == "fusion"]
    assert [(r["label"], r["width"]) for r in fused] == [("ZipIt! ×1", 1.0), ("ZipIt! ×2", 2.0), ("ZipIt! ×2", 2.0)]
    for point, comparison in zip(fused, comparisons + [again]):
        row = comparison.row("ot_fusion")
        assert (point["accuracy"], point["parameters"]) == (row.test.accuracy, row.parameters)
        assert point["seconds_per_1000"] == row.inference_ms / len(x) > 0  # the table's own timing
    references = {r["method"]: r for r in rows if r["kind"] != "fusion"}
    assert set(references) == {"parent_1", "parent_2", "vanilla_average", "prediction_ensemble"}
    ensemble = comparisons[0].row("prediction_ensemble")
    assert references["prediction_ensemble"]["parameters"] == 2 * count_parameters(parents[0].model)
    assert references["prediction_ensemble"]["accuracy"] == ensemble.test.accuracy
    assert references["parent_1"]["accuracy"] == parents[0].metrics["test"]["accuracy"]


def test_resized_copy_takes_the_new_shapes_and_refuses_unknown_names() -> None:
    net = build_model("vgg_tiny_nobias", (1, 8, 8), 10)
    state = {k: torch.ones(2 * v.shape[0], *v.shape[1:]) if k == "features.0.weight" else v
             for k, v in net.state_dict().items()}
    state["features.3.weight"] = torch.ones(32, 32, 3, 3)
    wide = resized_copy(net, state)
    assert wide.features[0].out_channels == 32 and wide.features[3].in_channels == 32
    assert wide(torch.zeros(1, 1, 8, 8)).shape == (1, 10) and net.features[0].out_channels == 16
    with pytest.raises(FusionError, match="not a tensor"):
        resized_copy(net, {"nope.weight": torch.zeros(1)})


def test_width_is_swept_and_keyed_only_when_set() -> None:
    """`fusion.width` is a sweep field; width 1 leaves a fusion's key as it was before the field existed."""
    from otcore.config import spec_dict
    from otcore.sweep import SweepSpec, parse_grid

    assert "width" not in spec_dict(FusionSpec(alignment="zipit"))
    assert spec_dict(FusionSpec(alignment="zipit", width=1.5))["width"] == 1.5
    sweep = SweepSpec(parse_grid(["fusion.width=1,1.5,2"]), step="fusion", fusion=FusionSpec(alignment="pleas"))
    points = sweep.points()
    assert [p.fusion.width for p in points] == [1.0, 1.5, 2.0]
    assert points[0].key == SweepSpec(step="fusion", fusion=FusionSpec(alignment="pleas")).points()[0].key
    assert len({p.key for p in points}) == 3
    with pytest.raises(SpecError, match="only ZipIt!"):
        SweepSpec(parse_grid(["fusion.width=1,1.5"]), step="fusion").points()
