"""Which torch operations otcore.graph lets channels pass through unchanged, and which join two layouts."""
from __future__ import annotations

import operator

import torch
from torch import nn

# Shape-preserving or spatially pooling: a channel stays a channel, in its place.
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d,
    nn.AlphaDropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.Softmax, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.Upsample,
)
ELEMENTWISE_FUNCTIONS = {
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.nn.functional.relu, torch.nn.functional.relu6,
    torch.nn.functional.gelu, torch.nn.functional.silu, torch.nn.functional.hardswish, torch.nn.functional.hardsigmoid,
    torch.nn.functional.sigmoid, torch.nn.functional.tanh, torch.nn.functional.leaky_relu, torch.nn.functional.elu,
    torch.nn.functional.mish, torch.nn.functional.dropout, torch.nn.functional.max_pool2d,
    torch.nn.functional.avg_pool2d, torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.adaptive_max_pool2d,
    torch.nn.functional.max_pool1d, torch.nn.functional.avg_pool1d, torch.nn.functional.adaptive_avg_pool1d,
    torch.nn.functional.pad, torch.nn.functional.interpolate, torch.nn.functional.hardtanh, torch.nn.functional.softplus,
    torch.nn.functional.gelu, torch.clamp, torch.clip, torch.abs, torch.neg, torch.exp, operator.neg,
}
ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "float", "double", "half", "to",
                        "type", "detach", "clamp", "clamp_", "clamp_min", "clamp_max", "abs", "exp", "neg", "sigmoid_",
                        "type_as", "requires_grad_"}
JOINS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul, torch.add,
          torch.sub, torch.mul, torch.div}
JOIN_METHODS = {"add", "add_", "sub", "mul", "mul_", "div", "div_", "sub_"}
SHAPE_ONLY_METHODS = {"size", "dim"}
# Functions fx keeps as leaves (torch.fx.wrap), known by name: they drop whole examples or spatial blocks
# (torchvision.ops), never one channel more than another.
ELEMENTWISE_FUNCTION_NAMES = {"stochastic_depth", "drop_block2d", "drop_block3d"}


def flatten_args(args) -> list:
    """The fx nodes and constants inside nested args (lists, tuples, dicts), flat."""
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out += flatten_args(a)
        elif isinstance(a, dict):
            out += flatten_args(list(a.values()))
        else:
            out.append(a)
    return out


