"""Will my architecture work? Its alignment groups, and every alignment on a network and its permuted copy.

A network and a copy of it with every free channel group randomly permuted compute the same function;
an alignment that reads the groups correctly maps the copy back exactly, so fusing the two gives the
original's logits. A wrong or missing group (a follower left behind, a join not seen) breaks this, so
the check is the contract every architecture must meet before its fusions mean anything.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from otcore.errors import FusionError, ModelError
from otcore.fusion import FusionOptions, fuse, permuted_copy, reset_batch_norm
from otcore.graph import trace_groups
from otcore.models import build_model, count_parameters

TOLERANCE = 1e-4  # largest |logit difference| allowed, relative to the logits' largest magnitude
ALIGNMENTS = (("ot", "weights"), ("ot", "activations"), ("weight_matching", "weights"), ("cca", "activations"),
              ("zipit", "activations"))


@dataclass(frozen=True)
class AlignmentCheck:
    """One alignment's fusion of the network with its permuted copy."""

    alignment: str  # 'ot', 'weight_matching', 'cca', 'zipit'
    mode: str  # 'weights' or 'activations'
    max_difference: float | None = None  # largest |fused logit - original logit|; None when refused
    relative: float | None = None  # max_difference / largest |original logit|
    passed: bool = False
    refused: str | None = None  # why this alignment does not apply to the architecture


@dataclass(frozen=True)
class ArchitectureCheck:
    """What `otcore check` reports."""

    arch: str
    input_shape: tuple[int, ...]
    parameters: int
    groups: int  # free channel groups (the ones alignment permutes)
    widths: list[int]  # their sizes, in forward order
    shared: dict[str, int]  # groups written by several layers (residual streams, gated channels): writer counts
    fixed_slots: int  # tensor axes whose channels keep their order (input, logits, grouped convolutions, ...)
    moved_fraction: float  # share of the weights' entries the permuted copy moved
    alignments: list[AlignmentCheck] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every alignment that applies gives the original's logits back, and OT by weights is one of them."""
        applied = [a for a in self.alignments if a.refused is None]
        return bool(applied) and all(a.passed for a in applied) and any(
            a.alignment == "ot" and a.mode == "weights" and a.passed for a in self.alignments)

    def as_dict(self) -> dict:
        """JSON-able form."""
        out = asdict(self)
        out["input_shape"], out["passed"] = list(self.input_shape), self.passed
        return out


def check_architecture(arch: str, input_shape: tuple[int, ...], num_classes: int, samples: int = 64,
                       seed: int = 0) -> ArchitectureCheck:
    """Build `arch`, read its groups, and fuse it with a permuted copy by every alignment."""
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model = _perturbed(build_model(arch, tuple(input_shape), num_classes), generator).eval()
    x = torch.randn(samples, *input_shape, generator=generator)
    # Batch norms take their statistics on the sample: with random ones, a deep BN network (mobilenet_v3_small)
    # maps every random input to features equal up to rounding, and correlation (CCA Merge, ZipIt!) cannot
    # tell its channels apart.
    model = reset_batch_norm(model, x)
    built = time.perf_counter()
    graph = trace_groups(model, tuple(input_shape))
    traced = time.perf_counter()
    twin = permuted_copy(model, seed + 1, tuple(input_shape))
    state, moved_state = model.state_dict(), twin.state_dict()
    floats = [k for k, t in state.items() if t.is_floating_point()]
    moved = sum(int((state[k] != moved_state[k]).sum()) for k in floats) / max(1, sum(state[k].numel() for k in floats))
    with torch.no_grad():
        logits = model(x)
    scale = float(logits.abs().max())
    checks = []
    for alignment, mode in ALIGNMENTS:
        try:
            fused = fuse([model, twin], FusionOptions(alignment=alignment, mode=mode), x).model
        except (FusionError, ModelError) as err:
            checks.append(AlignmentCheck(alignment, mode, refused=str(err)))
            continue
        with torch.no_grad():
            difference = float((fused(x) - logits).abs().max())
        relative = difference / scale if scale > 0 else difference
        checks.append(AlignmentCheck(alignment, mode, difference, relative, relative <= TOLERANCE))
    free = graph.free()
    writers = {g.name: len(g.writers()) for g in free}
    return ArchitectureCheck(
        arch=arch, input_shape=tuple(input_shape), parameters=count_parameters(model), groups=len(free),
        widths=[g.size for g in free], shared={n: k for n, k in writers.items() if k > 1},
        fixed_slots=sum(len(g.slots) for g in graph.groups if g.fixed), moved_fraction=moved, alignments=checks,
        seconds={"build": built - start, "trace": traced - built, "check": time.perf_counter() - traced})


def _perturbed(model: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """The model with noise on every weight and statistic, from a private generator.

    Initial values are symmetric (batch norm's weights all 1, biases and means 0): a group left out of a
    follower's permutation would go unnoticed on them. The noise keeps each tensor's scale."""
    state = model.state_dict()  # replaced entry by entry: its `_metadata` (module versions MNASNet's loader reads) stays
    for key, tensor in list(state.items()):
        if tensor.is_floating_point():
            noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            spread = float(tensor.std()) if tensor.numel() > 1 else 0.0
            tensor = tensor + (0.1 * spread + 0.05) * noise
            tensor = tensor.abs() + 0.5 if key.endswith("running_var") else tensor
        state[key] = tensor
    model.load_state_dict(state)
    return model
