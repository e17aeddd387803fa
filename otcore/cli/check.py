"""`check`: will an architecture work? Its groups, and each alignment on it and its permuted copy."""
from __future__ import annotations

import argparse

from otcore.cli.registry import command
from otcore.config import DATASETS, DataSpec, ModelSpec, SpecError


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default=ModelSpec().arch,
                   help="a zoo name (as train --arch), torchvision:NAME, timm:NAME or file:PATH.py:NAME")
    p.add_argument("--dataset", default=DataSpec().name, choices=DATASETS, help="whose image shape and classes to use")
    p.add_argument("--data-root", default=None, help="torchvision root folder of a real dataset")
    p.add_argument("--samples", type=int, default=64, help="random inputs the logits are compared on")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise on the weights, the permutations and the inputs")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


@command("check", _check_args)
def run_check(args: argparse.Namespace) -> dict:
    """Whether an architecture's channel groups are read right (exit 3 when an alignment does not give back the logits)."""
    from otcore.arch_check import TOLERANCE, check_architecture
    from otcore.data import load_dataset

    data = DataSpec(args.dataset, args.data_root)
    if not 1 <= args.samples <= 10_000:
        raise SpecError("--samples must be in [1, 10000]")
    dataset = load_dataset(data.name, data.root, fingerprint=data.fingerprint)
    import torch
    torch.manual_seed(args.seed)  # this process's one run: builders draw initial weights from the global generator
    result = check_architecture(args.arch, dataset.input_shape, dataset.num_classes, samples=args.samples,
                                seed=args.seed)
    lines = [f"{result.arch}: {result.parameters:,} parameters, {result.groups} channel groups "
             f"(widths {min(result.widths, default=0)}-{max(result.widths, default=0)}, {len(result.shared)} shared), "
             f"{100 * result.moved_fraction:.1f} % of the weights moved by the permuted copy"]
    for a in result.alignments:
        name = f"{a.alignment} ({a.mode})"
        lines.append(f"  {name:28s} refused: {a.refused}" if a.refused else
                     f"  {name:28s} max |logit difference| {a.max_difference:.2e} "
                     f"({a.relative:.1e} of the logits' scale) {'ok' if a.passed else 'FAILED'}")
    lines.append(f"{'passed' if result.passed else 'failed'} (tolerance {TOLERANCE:g} of the logits' scale)")
    return {**result.as_dict(), "text": "\n".join(lines), "exit_code": 0 if result.passed else 3}
