"""PyHessian (Yao et al., 2020) itself, as the reference our Hessian estimators are checked and timed against.

This is the only module of the project that imports `pyhessian`. PyPI's pyhessian 0.1 calls
`torch.eig`, which torch 2 removed, inside its density routine: `_pyhessian` gives PyHessian's
module a `torch` with a symmetric-only `eig` for the duration of one call, under a lock.
"""
from __future__ import annotations

import copy
import math
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from otcore.hessian import Batches, Density


class _TorchWithEig:
    """`torch` as PyHessian 0.1 sees it, plus the `torch.eig` removed in torch 2.0 (for symmetric input only)."""

    def __getattr__(self, name: str) -> object:
        return getattr(torch, name)

    @staticmethod
    def eig(matrix: Tensor, eigenvectors: bool = False) -> tuple[Tensor, Tensor]:
        # PyHessian passes the symmetric Lanczos tridiagonal, reads values[:, 0] (real parts) and vectors[0, :]
        if eigenvectors:
            values, vectors = torch.linalg.eigh(matrix)
        else:
            values, vectors = torch.linalg.eigvalsh(matrix), matrix.new_empty(0)
        return torch.stack([values, torch.zeros_like(values)], dim=1), vectors


_PYHESSIAN_LOCK = threading.Lock()


@contextmanager
def _pyhessian() -> Iterator[type]:
    """PyHessian's `hessian` class, its module seeing `_TorchWithEig` as `torch` until the block ends."""
    import pyhessian  # noqa: F401  # only here: the rest of the project never imports pyhessian

    module = sys.modules["pyhessian.hessian"]  # the package re-exports the class under the module's name
    with _PYHESSIAN_LOCK:
        saved, module.torch = module.torch, _TorchWithEig()
        try:
            yield module.hessian
        finally:
            module.torch = saved


@dataclass
class ReferenceResult:
    """What PyHessian computes for the same model and batches (tests and benchmarks)."""

    top_eigenvalues: list[float]
    trace: float
    trace_samples: list[float]
    density: Density
    timings: dict[str, float]  # seconds: setup, top_eigenvalues, trace, density


def pyhessian_reference(model: nn.Module, batches: Batches, top_k: int = 1, trace_iters: int = 100,
                        lanczos_iters: int = 100, probes: int = 1, *, power_iters: int = 100, tol: float = 1e-4,
                        seed: int = 0) -> ReferenceResult:
    """PyHessian's eigenvalues, trace and density; a part is skipped when its count is 0.

    One batch uses PyHessian's `data=` path (the gradient graph is built once), several its
    `dataloader=` path (a forward and double backward per batch for every HVP).
    """
    model = copy.deepcopy(model)  # PyHessian calls .eval() and leaves a create_graph gradient in .grad
    device = next(model.parameters()).device
    data = {"data": batches[0]} if len(batches) == 1 else {"dataloader": batches}
    timings: dict[str, float] = {}
    values, samples, density = [], [], Density(torch.empty(0, 0), torch.empty(0, 0))
    with _pyhessian() as hessian_class, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
        torch.manual_seed(seed)  # PyHessian draws from the global generator; fork_rng restores it afterwards
        clock = time.perf_counter()
        engine = hessian_class(model, nn.CrossEntropyLoss(), cuda=device.type == "cuda", **data)
        timings["setup"], clock = time.perf_counter() - clock, time.perf_counter()
        if top_k:
            values, _ = engine.eigenvalues(maxIter=power_iters, tol=tol, top_n=top_k)
        timings["top_eigenvalues"], clock = time.perf_counter() - clock, time.perf_counter()
        if trace_iters:  # tol=-inf disables its stop on the running mean's change: exactly trace_iters probes
            samples = engine.trace(maxIter=trace_iters, tol=float("-inf"))
        timings["trace"], clock = time.perf_counter() - clock, time.perf_counter()
        if lanczos_iters:
            nodes, weights = engine.density(iter=lanczos_iters, n_v=probes)
            density = Density(torch.tensor(nodes, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64))
        timings["density"] = time.perf_counter() - clock
    for p in model.parameters():
        p.grad = None  # break the parameter <-> graph cycle that create_graph left
    trace = sum(samples) / len(samples) if samples else math.nan
    return ReferenceResult([float(v) for v in values], trace, [float(s) for s in samples], density, timings)
