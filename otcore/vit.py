"""A small Vision Transformer (Dosovitskiy et al., 2021) in timm's layout, for fusion studies on small images.

Pre-LayerNorm blocks of multi-head self-attention and a GELU MLP on a residual stream; a class token
and learned position embeddings; the class token's final normalised features feed the head. The
state_dict names are timm's (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.i.norm1`,
`blocks.i.attn.qkv` (fused q, k, v), `blocks.i.attn.proj`, `blocks.i.norm2`, `blocks.i.mlp.fc1/fc2`,
`norm`, `head`), and the attention is written as timm's non-fused path, so otcore.graph reads this
network and timm's ViTs alike (heads, q/k pairs, value/projection pairs; otcore.graph_attention).

The image is cut into a 4x4 grid of patches (side/4 pixels each: 2 for 8x8 digits, 7 for 28x28 MNIST,
8 for 32x32 CIFAR), so every dataset gives 16 patch tokens plus the class token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from otcore.errors import ModelError

GRID = 4  # patches per image side


@dataclass(frozen=True)
class VitConfig:
    """A ViT's sizes."""

    dim: int = 64  # width of the residual stream (tokens' features)
    depth: int = 2  # transformer blocks
    heads: int = 4  # attention heads per block (head dim = dim / heads)
    mlp: int = 128  # hidden width of each block's MLP


VIT_TINY = VitConfig()
VIT_TINY_DOUB = VitConfig(dim=128, depth=2, heads=4, mlp=256)  # same heads, each twice as wide


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm's Attention, non-fused path)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, -1)  # the heads merged (not the stream's width C: it may differ)
        return self.proj(x)


class Mlp(nn.Module):
    """fc1 - GELU - fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: VitConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = Mlp(cfg.dim, cfg.mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches projected to the stream's width by one strided convolution."""

    def __init__(self, channels: int, patch: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)


class VisionTransformer(nn.Module):
    """ViT classifier: patch tokens plus a class token, position embeddings, pre-norm blocks, final norm, head."""

    def __init__(self, cfg: VitConfig, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        if len(input_shape) != 3 or input_shape[1] % GRID or input_shape[2] % GRID:
            raise ModelError(f"a ViT cuts images into a {GRID}x{GRID} grid of patches: their sides must be multiples "
                             f"of {GRID}, got {'x'.join(map(str, input_shape[1:]))}")
        if cfg.dim % cfg.heads:
            raise ModelError(f"a ViT's width {cfg.dim} must be a multiple of its {cfg.heads} heads")
        self.input_shape = tuple(input_shape)  # what otcore.graph traces it with
        patch = (input_shape[1] // GRID, input_shape[2] // GRID)
        self.patch_embed = PatchEmbed(input_shape[0], patch, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, GRID * GRID + 1, cfg.dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit_builder(cfg: VitConfig):
    """A registry builder `(input_shape, num_classes) -> VisionTransformer` of the given sizes."""
    return lambda shape, classes: VisionTransformer(cfg, tuple(shape), classes)


__all__ = ["VIT_TINY", "VIT_TINY_DOUB", "VisionTransformer", "VitConfig", "vit_builder"]
