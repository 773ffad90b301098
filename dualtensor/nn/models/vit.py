"""Vision Transformer as in the paper: patch 4, dim 256, depth 6, 4 heads, MLP 512, pre-LayerNorm."""
from __future__ import annotations

from typing import Any

import numpy as np

from ... import ops
from .. import init
from ..layers import GELU, Conv2d, LayerNorm, Linear, MultiheadAttention
from ..module import Module, Parameter, Sequential
from .blocked import Blocked


class EncoderBlock(Module):
    """x + MHA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = MultiheadAttention(dim, heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = Sequential(Linear(dim, mlp_dim), GELU(), Linear(mlp_dim, dim))

    def forward(self, x: Any) -> Any:
        h = self.norm1(x)
        x = x + self.attn(h, h, h)[0]
        return x + self.mlp(self.norm2(x))


class PatchEmbed(Module):
    """Patches via a strided conv, a class token, and learned positional embeddings."""

    def __init__(self, image_size: int, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"vit: image_size={image_size} is not divisible by patch_size={patch_size}")
        n = (image_size // patch_size) ** 2
        self.proj = Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = Parameter(np.zeros((1, 1, dim), init.get_default_dtype()))
        self.pos_embedding = Parameter(init.trunc_normal((1, n + 1, dim), std=0.02))

    def forward(self, x: Any) -> Any:
        p = self.proj(x)  # (B, dim, h, w)
        b, d = p.shape[0], p.shape[1]
        p = p.reshape(b, d, -1).transpose(0, 2, 1)  # (B, n, dim)
        cls = ops.broadcast_to(self.cls_token, (b, 1, d))
        return ops.concatenate([cls, p], axis=1) + self.pos_embedding


class Head(Module):
    """Final LayerNorm and a linear classifier on the class token."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.fc = Linear(dim, classes)

    def forward(self, x: Any) -> Any:
        return self.fc(self.norm(x)[:, 0])


class ViT(Blocked):
    """Blocks: each encoder block, the embedding folded into the first and the head into the last."""


def vit(image_size: int = 32, patch_size: int = 4, in_channels: int = 3, classes: int = 10, dim: int = 256,
        depth: int = 6, heads: int = 4, mlp_dim: int = 512) -> ViT:
    """The paper's ViT configuration (defaults) for ``image_size`` x ``image_size`` inputs."""
    if depth < 1:
        raise ValueError(f"vit: depth must be >= 1, got {depth}")
    enc = [EncoderBlock(dim, heads, mlp_dim) for _ in range(depth)]
    for e in enc:  # ViT convention: trunc-normal(0.02) linear weights, zero biases
        for m in e.modules():
            if isinstance(m, Linear):
                m.weight.data[...] = init.trunc_normal(m.weight.data.shape, std=0.02)
                if m.bias is not None:
                    m.bias.data[...] = 0
    head = Head(dim, classes)
    embed = PatchEmbed(image_size, patch_size, in_channels, dim)
    if depth == 1:
        return ViT([Sequential(embed, enc[0], head)])
    return ViT([Sequential(embed, enc[0]), *enc[1:-1], Sequential(enc[-1], head)])
