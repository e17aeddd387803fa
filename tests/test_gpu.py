"""The GPU path: CUDA and the CPU give the same fusion, pruning and Hessian results (skipped without CUDA).

Each step runs on private copies of the same networks, once on the CPU and once on CUDA; the results are
compared within what float32 kernels on two devices can differ by. Run on a machine with a GPU:
`python -m pytest -m gpu`.
"""
from __future__ import annotations

import copy

import pytest
import torch

from otcore.config import PruneSpec
from otcore.data import load_dataset
from otcore.fusion import FusionOptions, fuse
from otcore.hessian import exact_trace, spectral_density, top_eigenpairs
from otcore.models import build_model
from otcore.prune import prune_model
from otcore.train import init_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch sees no GPU here")]

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _parents(arch: str, input_shape: tuple[int, ...]) -> list[torch.nn.Module]:
    return [init_model(build_model(arch, input_shape, 10), seed).eval() for seed in (0, 1)]


def _on(models: list[torch.nn.Module], device: torch.device) -> list[torch.nn.Module]:
    return [copy.deepcopy(m).to(device) for m in models]


def _assert_states_close(cpu: torch.nn.Module, cuda: torch.nn.Module, rtol: float = 1e-4) -> None:
    for (name, a), (_, b) in zip(cpu.state_dict().items(), cuda.state_dict().items()):
        assert b.device.type == "cuda", f"{name} left the GPU"
        if a.is_floating_point():
            scale = a.abs().max().clamp_min(1e-12)
            assert float((a - b.cpu()).abs().max() / scale) < rtol, name
        else:
            assert torch.equal(a, b.cpu()), name


OPTIONS = {"ot-weights": FusionOptions(), "ot-activations": FusionOptions(mode="activations"),
           "weight-matching": FusionOptions(alignment="weight_matching"), "cca": FusionOptions(alignment="cca"),
           "zipit": FusionOptions(alignment="zipit"), "ot-repair": FusionOptions(mode="activations", renormalize=True)}
# CCA Merge and ZipIt! refuse the zoo's ResNets (a residual stream); traced ResNets take every alignment.
CASES = [pytest.param(arch, OPTIONS[name], id=f"{arch}-{name}")
         for arch in ("mlpnet", "vgg_tiny_nobias", "resnet_tiny_nobias_nobn", "torchvision:resnet18") for name in OPTIONS
         if not (arch == "resnet_tiny_nobias_nobn" and name in ("cca", "zipit"))]


@pytest.mark.parametrize(("arch", "options"), CASES)
def test_fusion_on_cuda_equals_the_cpu(digits, arch, options):
    parents = _parents(arch, digits.input_shape)
    sample = digits.x_train[:128]
    on_cpu = fuse(_on(parents, torch.device("cpu")), options, sample).model
    on_gpu = fuse(_on(parents, CUDA), options, sample.to(CUDA)).model
    _assert_states_close(on_cpu, on_gpu)
    x = digits.x_test[:256]
    with torch.no_grad():
        assert torch.allclose(on_cpu(x), on_gpu(x.to(CUDA)).cpu(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("arch", ["vgg_tiny_nobias", "torchvision:resnet18"])
@pytest.mark.parametrize("spec", [PruneSpec(fraction=0.5), PruneSpec(fraction=0.5, type="structured")],
                         ids=["unstructured", "structured"])
def test_pruning_on_cuda_keeps_the_cpus_masks(digits, arch, spec):
    (net, _) = _parents(arch, digits.input_shape)
    on_cpu = prune_model(copy.deepcopy(net), spec, digits.input_shape)
    on_gpu = prune_model(copy.deepcopy(net).to(CUDA), spec, digits.input_shape)
    masks_cpu = {k: v for k, v in on_cpu.state_dict().items() if "mask" in k}
    masks_gpu = {k: v for k, v in on_gpu.state_dict().items() if "mask" in k}
    assert masks_cpu and masks_cpu.keys() == masks_gpu.keys()
    for k in masks_cpu:
        assert masks_gpu[k].device.type == "cuda" and torch.equal(masks_cpu[k], masks_gpu[k].cpu()), k


def test_hessian_on_cuda_equals_the_cpu(digits):
    (net, _) = _parents("mlpnet", digits.input_shape)
    x, y = digits.x_train[:256], digits.y_train[:256]
    cpu_batches, gpu_batches = [(x, y)], [(x.to(CUDA), y.to(CUDA))]
    gpu_net = copy.deepcopy(net).to(CUDA)
    values_cpu, _ = top_eigenpairs(net, cpu_batches, k=2, max_iters=200, tol=1e-6)
    values_gpu, vectors_gpu = top_eigenpairs(gpu_net, gpu_batches, k=2, max_iters=200, tol=1e-6)
    assert vectors_gpu.device.type == "cuda"
    assert torch.allclose(values_cpu, values_gpu.cpu(), rtol=1e-3)
    assert exact_trace(net, cpu_batches).mean == pytest.approx(exact_trace(gpu_net, gpu_batches).mean, rel=1e-4)
    top_cpu = spectral_density(net, cpu_batches, lanczos_iters=60).nodes.max()
    top_gpu = spectral_density(gpu_net, gpu_batches, lanczos_iters=60).nodes.max()
    assert float(top_gpu) == pytest.approx(float(top_cpu), rel=1e-3)  # Lanczos finds the top of the spectrum
    assert float(top_cpu) == pytest.approx(float(values_cpu[0]), rel=1e-2)
