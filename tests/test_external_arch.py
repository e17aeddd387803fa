"""Architectures from outside the zoo in specs and keys: names checked, the traced structure's digest and a
file:'s source hash in every key, zoo keys unchanged, initialisation from the seed alone, pruning's layers,
checkpoints through the same reader."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from otcore.config import DATASET_SHAPES, DataSpec, FusionSpec, ModelSpec, PruneSpec, SpecError, TrainSpec, spec_dict
from otcore.keys import OUTSIDE_TRAINING, fusion_key, keyed_model, parent_key, prune_key
from tests.support import REPO

SMALL_NET = '''
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))
'''


@pytest.fixture
def net_file(tmp_path: Path) -> Path:
    path = tmp_path / "mynet.py"
    path.write_text(SMALL_NET)
    return path


def test_zoo_specs_and_keys_are_as_before():
    assert spec_dict(ModelSpec("vgg11_nobias")) == {"_type": "ModelSpec", "arch": "vgg11_nobias"}
    assert keyed_model(DataSpec(), ModelSpec()) == ModelSpec()
    assert parent_key(DataSpec(), ModelSpec(), TrainSpec()) == "8c091c6f0e52494f9f24c981"  # as test_architecture


def test_library_names_are_checked_with_one_message():
    assert ModelSpec("torchvision:resnet18").source == ""
    with pytest.raises(SpecError, match="torchvision has no classification model 'resnet19'"):
        ModelSpec("torchvision:resnet19")
    with pytest.raises(SpecError, match="timm has no model 'not_a_net'"):
        ModelSpec("timm:not_a_net")
    with pytest.raises(SpecError, match="must be file:PATH.py:NAME"):
        ModelSpec("file:mynet.txt:Net")
    with pytest.raises(SpecError, match="does not exist"):
        ModelSpec("file:/nonexistent/mynet.py:Net")


def test_dataset_shapes_are_the_loaders():
    from otcore.data import load_dataset

    digits = load_dataset("digits")
    assert DATASET_SHAPES["digits"] == (digits.input_shape, digits.num_classes)


def test_every_key_holds_the_traced_structure():
    from otcore.arch_structure import structure_digest, traced_structure
    from otcore.graph import trace_groups
    from otcore.models import build_model

    data, model = DataSpec(), ModelSpec("torchvision:resnet18")
    digest = structure_digest(model, (1, 8, 8), 10)
    # The memoised trace (built on the meta device) is the trace of a real network.
    assert digest == trace_groups(build_model(model.arch, (1, 8, 8), 10), (1, 8, 8)).digest
    assert traced_structure(model, (1, 8, 8), 10) is traced_structure(model, [1, 8, 8], 10)  # traced once
    parents = [parent_key(data, model, TrainSpec(seed=s)) for s in (0, 1)]
    keys = [parents[0], fusion_key(data, model, FusionSpec(), None, parents),
            prune_key(data, model, PruneSpec(), FusionSpec(), None, parents)]
    for key in keys:
        held = [s for s in key.settings if isinstance(s, dict) and s.get("_type") == "ModelSpec"]
        assert held == [{"_type": "ModelSpec", "arch": "torchvision:resnet18", "structure": digest,
                         "training": OUTSIDE_TRAINING}]
    assert parents[0] != parent_key(data, ModelSpec("torchvision:resnet34"), TrainSpec(seed=0))


def test_a_model_files_code_is_in_its_keys(net_file: Path):
    arch = f"file:{net_file}:Net"
    first = ModelSpec(arch)
    assert first.source == hashlib.sha256(net_file.read_bytes()).hexdigest()
    key = parent_key(DataSpec(), first, TrainSpec())
    net_file.write_text(SMALL_NET + "# a comment changes no structure, but it is another file\n")
    commented = parent_key(DataSpec(), ModelSpec(arch), TrainSpec())
    net_file.write_text(SMALL_NET.replace("nn.Linear(8, num_classes)", "nn.Sequential(nn.Linear(8, 16), nn.ReLU(), "
                                          "nn.Linear(16, num_classes))"))
    changed = ModelSpec(arch)
    deeper = parent_key(DataSpec(), changed, TrainSpec())
    assert len({key, commented, deeper}) == 3
    structures = [k.settings[3]["structure"] for k in (key, commented, deeper)]
    assert structures[0] == structures[1] != structures[2]  # the trace follows the changed class


def test_a_sweep_key_holds_the_structure():
    from otcore.sweep import SweepSpec

    spec = SweepSpec((("fusion.mode", ("weights", "activations")),), model=ModelSpec("torchvision:resnet18"),
                     step="fusion")
    zoo = SweepSpec((("fusion.mode", ("weights", "activations")),), step="fusion")
    assert any(isinstance(s, list) and s and s[0][1] == "torchvision:resnet18" for s in spec.key.settings)
    assert all(not isinstance(s, list) for s in zoo.key.settings[2:])


def test_initialisation_draws_from_the_seed_alone():
    from otcore.models import build_model
    from otcore.train import init_model

    nets = [build_model("timm:test_resnet", (1, 8, 8), 10) for _ in range(3)]
    before = torch.random.get_rng_state()
    states = [init_model(net, seed).state_dict() for net, seed in zip(nets, (0, 0, 1))]
    assert torch.equal(before, torch.random.get_rng_state())  # no draw from the global generator
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    drawn = [k for k in states[0] if states[0][k].is_floating_point() and not torch.equal(states[0][k], states[2][k])]
    assert any(k.endswith("conv1.weight") for k in drawn) and "fc.weight" in drawn
    assert all(float(v) == 1.0 for k, v in states[0].items() if k.endswith("bn1.running_var") for v in v)


def test_unstructured_pruning_keeps_the_classifier_of_a_library_network():
    from otcore.models import build_model
    from otcore.prune import output_layers, prunable_layers, prune_model, sparsity_report

    net = build_model("torchvision:resnet18", (1, 8, 8), 10)
    assert output_layers(net) == ["fc"]
    layers = prunable_layers(net, "all", keep_last_layer=True)
    assert "fc" not in layers and len(layers) == 20
    pruned = prune_model(net, PruneSpec(fraction=0.5))
    assert sparsity_report(pruned, layers).overall_fraction == pytest.approx(0.5, abs=1e-3)
    assert not any(hasattr(m, "weight_mask") for m in net.modules())  # the original is untouched


@pytest.mark.slow  # scores two loaded networks on digits: 75 s at load 8-10
def test_a_library_networks_checkpoint_loads_and_a_mismatched_one_is_refused(tmp_path: Path):
    import torchvision
    from safetensors.torch import save_file

    from otcore.errors import UserError
    from otcore.pipeline import load_parent

    net = torchvision.models.shufflenet_v2_x0_5(num_classes=10)
    torch.save(net.state_dict(), tmp_path / "state.pt")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "state.safetensors")
    torch.save(torchvision.models.shufflenet_v2_x0_5().state_dict(), tmp_path / "imagenet.pt")
    model = ModelSpec("torchvision:shufflenet_v2_x0_5")
    loaded = [load_parent(tmp_path / name, DataSpec(), model, "p") for name in ("state.pt", "state.safetensors")]
    assert loaded[0].key == loaded[1].key and loaded[0].key.startswith("ckpt-")
    for key, value in net.state_dict().items():
        assert torch.equal(loaded[0].model.state_dict()[key], value)
    with pytest.raises(UserError) as refused:
        load_parent(tmp_path / "imagenet.pt", DataSpec(), model, "p")
    assert str(refused.value) == ("checkpoint does not fit torchvision:shufflenet_v2_x0_5: fc.weight has shape "
                                  "(1000, 1024), the model expects (10, 1024)")


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otcore", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OTCORE_CACHE_DIR": str(cache)})


@pytest.mark.slow  # a process importing torch and timm: 70-200 s beside four other engineers' work (load 8-10)
@pytest.mark.parametrize("command", ["train", "fuse"])
def test_a_model_the_tracer_refuses_is_one_error_line(command: str, tmp_path: Path):
    proc = run_cli(command, "--arch", "timm:levit_128s", "--json", cache=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: cannot read the channel structure at 'head.bn': normalises a tensor without channels"]


@pytest.mark.slow  # a process training two parents: 90 s at load 8-10
def test_a_users_own_model_file_trains_on_the_command_line(net_file: Path, tmp_path: Path):
    arch = f"file:{net_file}:Net"
    proc = run_cli("train", "--arch", arch, "--epochs", "1", "--seeds", "0", "--json", cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    (parent,) = out["parents"]
    assert 0 <= parent["test_accuracy"] <= 100 and parent["cached"] is False
    assert parent["key"] == parent_key(DataSpec(), ModelSpec(arch), TrainSpec(epochs=1, seed=0))
