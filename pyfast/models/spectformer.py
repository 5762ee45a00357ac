"""SpectFormer (Patro, Namboodiri & Agneeswaran 2023), the vanilla architecture sized for 32x32 input.

    x [B, 3, 32, 32] --patch_embed (Conv 4x4, stride 4)--> tokens [B, 64, C] (+ learned position embedding)
    alpha spectral blocks:   x + DropPath(MLP(LN2(SG(LN1 x))))      (a single residual, as the official code)
    depth - alpha attention blocks (pyfast.models.vit.Block, num_heads heads): x + attn(LN x); x + MLP(LN x)
    LN, global average pool over tokens, Linear head                  -> logits [B, num_classes]

SG is :class:`pyfast.nn.SpectralGating` on the 8x8 token grid. Spectral blocks come first ("initial spectral
layers, deeper attention"). Official quirks kept: the attention blocks' heads are fixed (6 in the official code,
here ``num_heads=6`` by default), the complex filter is initialised N(0, 0.02^2), and the spectral block has one
residual around the whole (SG, MLP) path. SpectFormer-S on ImageNet is patch 16, embed 384, depth 12; the CIFAR
paper results fine-tune from ImageNet at 224 px, so this 32-px model (patch 4, dim 192) is a from-scratch variant.
"""

from __future__ import annotations

import torch
from torch import nn

from pyfast._checks import check_int, check_multiple_of, check_rate
from pyfast.models.vit import Block, Mlp, check_vit_options, init_vit_weights
from pyfast.nn.spectral import DropPath, SpectralGating
from pyfast.registry import MODELS


class SpectralBlock(nn.Module):
    """``x + DropPath(MLP(LN2(SG(LN1 x))))`` on tokens [B, h w, dim]."""

    def __init__(self, dim: int, h: int, w: int, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.filter = SpectralGating(dim, h, w)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm2(self.filter(self.norm1(x)))))


class SpectFormer(nn.Module):
    """Vanilla SpectFormer: ``alpha`` spectral blocks, then ``depth - alpha`` attention blocks, GAP head.

    Args:
        num_classes, image_size, patch, in_channels: as :class:`pyfast.models.vit.VisionTransformer`.
        dim, depth, num_heads, mlp_ratio, drop: sizes as there; ``num_heads`` applies to the attention blocks (``dim``
            must be a multiple of it only if there are any).
        alpha: how many initial blocks are spectral (0 <= alpha <= depth).
        drop_path: stochastic-depth rate, increasing linearly over the blocks, in [0, 1).
    """

    def __init__(self, num_classes: int, image_size: int = 32, patch: int = 4, in_channels: int = 3, dim: int = 192,
                 depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0, alpha: int = 4, drop: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        check_vit_options("SpectFormer", num_classes=num_classes, image_size=image_size, patch=patch,
                          in_channels=in_channels, dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                          drop=drop, heads_used=False)
        if check_int("SpectFormer", "alpha", alpha, 0) > depth:
            raise ValueError(f"SpectFormer: alpha must be in [0, depth={depth}], got {alpha}")
        if alpha < depth:  # attention blocks follow the spectral ones
            check_multiple_of("SpectFormer", "dim", dim, "num_heads", num_heads)
        check_rate("SpectFormer", "drop_path", drop_path)
        self.image_size, self.in_channels = image_size, in_channels
        grid = image_size // patch
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, dim))
        rates = torch.linspace(0, drop_path, depth).tolist()
        blocks = [SpectralBlock(dim, grid, grid, mlp_ratio, drop, rates[i]) for i in range(alpha)]
        blocks += [Block(dim, num_heads, mlp_ratio, drop) for _ in range(alpha, depth)]
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_vit_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"SpectFormer: x must have shape [B, {self.in_channels}, {self.image_size}, "
                             f"{self.image_size}], got {tuple(x.shape)}")
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


@MODELS.register("spectformer", "SpectFormer (vanilla) for 32x32: patch 4, dim 192, 4 spectral + 8 attention blocks")
def spectformer(num_classes: int, in_channels: int = 3, image_size: int = 32, **kw) -> SpectFormer:
    return SpectFormer(num_classes, image_size=image_size, in_channels=in_channels, **kw)
