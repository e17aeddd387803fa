"""Exact diagonal, and so the exact trace, of the loss Hessian of networks piecewise linear in each weight.

Where every ReLU and max-pool pattern is fixed (everywhere but a null set), the logits f of a
network of Linear/Conv2d layers, ReLU, max/average pooling and residual sums are linear in each
single weight θ_i (it appears once, in one factor of a product): ∂²f/∂θ_i² = 0. The second
term of the Hessian then drops from its diagonal, which equals the Gauss-Newton one:

    H_ii = 1/N Σ_n J_niᵀ S_n J_ni,   S_n = diag(p_n) - p_n p_nᵀ = Σ_c a_nc a_ncᵀ,   a_nc = √p_nc (e_c - p_n)

for the mean cross-entropy with softmax p_n. So H_ii = 1/N Σ_c Σ_n (∂(a_nc·f_n)/∂θ_i)²: per class
c, one backward pass of the directions a_nc gives every layer's per-example output gradient δ,
and a weight's per-example gradient is δ times the layer's (unfolded) input. That is C backward
passes and C weight-gradient-sized products, against one Hessian-vector product per probe of
Hutchinson's estimator, and the answer is exact instead of an estimate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from otcore.device import private_copy

# Per-example gradients held at once (float entries); bounds memory on wide conv layers.
CHUNK_ENTRIES = 2**24


class NotPiecewiseLinear(ValueError):
    """The model is not one whose Hessian diagonal equals its Gauss-Newton diagonal; the message says why."""


def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The Linear/Conv2d modules that own trainable parameters, checked to be ones the formula covers."""
    if not getattr(model, "piecewise_linear", False):
        raise NotPiecewiseLinear(f"{type(model).__name__} does not declare its logits piecewise linear in each weight")
    layers = {}
    for name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        supported = isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))
        if not supported or any(n not in ("weight", "bias") for n, _ in own):
            names = ", ".join(_qualified(name, n) for n, _ in own)
            raise NotPiecewiseLinear(f"parameters {names} are not the weight or bias of a plain Linear/Conv2d "
                                     "(pruning masks, grouped convolutions and other layers are not covered)")
        layers[name] = module
    return layers


def _qualified(module: str, parameter: str) -> str:
    return f"{module}.{parameter}" if module else parameter


def _per_example_squares(delta: Tensor, inputs: Tensor) -> Tensor:
    """Σ_n (δ_n U_nᵀ)² for δ [N, out, L] and unfolded inputs U [N, in, L]: [out, in]."""
    if delta.shape[2] == 1:  # a dense layer: (δ_n ⊗ u_n)² = δ_n² ⊗ u_n², one matmul for all n
        return delta[:, :, 0].square().T @ inputs[:, :, 0].square()
    out = delta.new_zeros(delta.shape[1], inputs.shape[1])
    chunk = max(1, CHUNK_ENTRIES // (delta.shape[1] * inputs.shape[1]))
    for i in range(0, len(delta), chunk):
        out += torch.bmm(delta[i:i + chunk], inputs[i:i + chunk].transpose(1, 2)).square().sum(0)
    return out


def _accumulate(module: nn.Module, inputs: Tensor, delta: Tensor, into: dict[str, Tensor]) -> None:
    """Add this class direction's Σ_n (per-example gradient)² of the module's weight and bias."""
    n = len(delta)
    if isinstance(module, nn.Conv2d):
        unfolded = F.unfold(inputs, module.kernel_size, module.dilation, module.padding, module.stride)
        delta = delta.reshape(n, delta.shape[1], -1)  # [N, out, L]: L output positions
    else:  # Linear over [N, ..., in]: every position shares the weight, as a convolution's
        unfolded = inputs.reshape(n, -1, inputs.shape[-1]).transpose(1, 2)
        delta = delta.reshape(n, -1, delta.shape[-1]).transpose(1, 2)
    if "weight" in into:
        into["weight"] += _per_example_squares(delta, unfolded).view_as(into["weight"])
    if "bias" in into:
        into["bias"] += delta.sum(2).square().sum(0)


def loss_hessian_diagonal(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Exact diag of the Hessian of the size-weighted mean cross-entropy, per trainable parameter name.

    The model must declare `piecewise_linear = True` (see the module doc); raises NotPiecewiseLinear
    otherwise, or when a weight layer runs twice in one forward pass. The hooks go on a private
    eval-mode copy: a shared model would run them in every other thread's forward pass too.
    """
    _weight_layers(model)  # checked before copying
    model = private_copy(model)
    layers = _weight_layers(model)
    diagonal = {_qualified(m, n): torch.zeros_like(p) for m, module in layers.items()
                for n, p in module.named_parameters(recurse=False) if p.requires_grad}
    total = sum(len(y) for _, y in batches)
    for x, _ in batches:
        seen: dict[str, tuple[Tensor, Tensor]] = {}

        def keep(name: str):
            def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
                if name in seen:
                    raise NotPiecewiseLinear(f"layer {name} runs twice in one forward pass (shared weights)")
                seen[name] = (args[0].detach(), output)
                return output.clone()  # an in-place op downstream must not rewrite the tensor we differentiate by
            return hook

        handles = [module.register_forward_hook(keep(name)) for name, module in layers.items()]
        try:
            with torch.enable_grad():
                logits = model(x)
        finally:
            for handle in handles:
                handle.remove()
        names = list(seen)
        probabilities = logits.detach().softmax(-1)
        classes = probabilities.shape[1]
        for c in range(classes):
            one_hot = F.one_hot(torch.tensor(c, device=logits.device), classes).to(logits)
            direction = probabilities[:, c:c + 1].sqrt() * (one_hot - probabilities)  # a_nc for every n
            deltas = torch.autograd.grad(logits, [seen[n][1] for n in names], direction,
                                         retain_graph=c < classes - 1, allow_unused=True)
            for name, delta in zip(names, deltas):
                if delta is None:  # the layer does not reach the logits
                    continue
                own = {n: diagonal[_qualified(name, n)] for n in ("weight", "bias") if _qualified(name, n) in diagonal}
                _accumulate(layers[name], seen[name][0], delta, own)
    return {name: values / total for name, values in diagonal.items()}
