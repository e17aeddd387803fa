"""Any network: per torchvision model, tracing its channel groups, the permuted-copy check and fusion times.

For each model (built with 10 classes for 3x32x32 inputs, weights perturbed as `otcore check` does): the
time to trace its groups, the group count, the time of a permuted copy, and the time to fuse it with that
copy by OT on weights and on activations (200 samples), with the largest relative logit difference of each
fusion. One thread, warm-ups (imports, a first trace and fusion of a small model) outside the clock.

Run: python -m bench.any_model [--models resnet18 resnet50 ...]
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torchvision

from bench.common import machine, table
from otcore.arch_check import _perturbed
from otcore.fusion import FusionOptions, fuse, permuted_copy
from otcore.graph import trace_groups

DEFAULT = ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v3_small", "efficientnet_b0", "densenet121", "convnext_tiny",
           "regnet_y_400mf", "squeezenet1_1", "shufflenet_v2_x1_0"]
SHAPE = (3, 32, 32)


def _seconds(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure(name: str, samples: int) -> list:
    torch.manual_seed(0)
    model = _perturbed(torchvision.models.get_model(name, num_classes=10), torch.Generator().manual_seed(1)).eval()
    graph, trace = _seconds(lambda: trace_groups(model, SHAPE))
    twin, copy_s = _seconds(lambda: permuted_copy(model, 2, SHAPE))
    x = torch.randn(samples, *SHAPE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(x)
    row = [name, f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}", len(graph.free()), f"{trace:.2f}",
           f"{copy_s:.2f}"]
    for mode in ("weights", "activations"):
        result, seconds = _seconds(lambda: fuse([model, twin], FusionOptions(mode=mode), x))
        with torch.no_grad():
            error = float((result.model(x) - logits).abs().max() / logits.abs().max())
        row += [f"{seconds:.2f}", f"{error:.0e}"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warm = torchvision.models.get_model("squeezenet1_1", num_classes=10).eval()
    fuse([warm, permuted_copy(warm, 0, SHAPE)], FusionOptions(), torch.randn(4, *SHAPE))  # imports, first calls
    rows = [measure(name, args.samples) for name in args.models]
    print(f"{machine()}; 1 thread; load average {os.getloadavg()[0]:.2f} at the end\n")
    print(table(["model", "M params", "groups", "trace s", "permuted copy s", "fuse weights s", "rel. error",
                 "fuse activations s", "rel. error"], rows))


if __name__ == "__main__":
    main()
