"""GCAB ViT for 32x32 images: a shared ViT encoder, then one gated class-attention block run once per task token.

Shapes (``B`` batch, ``C = dim``, ``N = (image_size / patch)^2`` patch tokens, ``T = num_tasks``, ``K`` classes split
into T contiguous tasks of ``K / T``)::

    x [B, 3, 32, 32] -> patch tokens [B, N, C] (+ pos_embed) -> (depth - 1) x vit.Block -> tokens [B, N, C]
    task t: GatedClassAttentionBlock(tokens, task_token[t], t, s) [B, 1, C] -> norm -> head[t] -> [B, K / T]
    forward(x): the heads of every task concatenated -> logits [B, K] (no task id needed at inference)

GCAB's CIFAR configuration is dim 384, depth 6 (5 self-attention blocks + the gated class-attention block), 12 heads,
patch 4. The drift-compensation projectors of GCAB-CFDC are not part of this model.
"""

from __future__ import annotations

import torch
from torch import nn

from pyfast._checks import check_int, check_positive
from pyfast.models.vit import Block, check_vit_options, init_vit_weights
from pyfast.nn.gated import GatedClassAttentionBlock
from pyfast.registry import MODELS


class GCABViT(nn.Module):
    def __init__(self, num_classes: int, num_tasks: int = 5, image_size: int = 32, patch: int = 4,
                 in_channels: int = 3, dim: int = 384, depth: int = 6, num_heads: int = 12, mlp_ratio: float = 4.0,
                 s_max: float = 800.0):
        super().__init__()
        check_vit_options("GCABViT", num_classes=num_classes, image_size=image_size, patch=patch,
                          in_channels=in_channels, dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
        if num_classes % check_int("GCABViT", "num_tasks", num_tasks):
            raise ValueError(f"GCABViT: num_tasks ({num_tasks}) must divide num_classes ({num_classes})")
        check_positive("GCABViT", "s_max", s_max)
        self.num_tasks, self.classes_per_task = num_tasks, num_classes // num_tasks
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2, dim))
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_ratio) for _ in range(depth - 1)))
        self.task_tokens = nn.Parameter(torch.zeros(num_tasks, 1, dim))
        self.gcab = GatedClassAttentionBlock(dim, num_heads, num_tasks, mlp_ratio, s_max=s_max)
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleList(nn.Linear(dim, self.classes_per_task) for _ in range(num_tasks))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.task_tokens, std=0.02)
        for m in (self.patch_embed, self.blocks, self.norm, self.heads):
            m.apply(init_vit_weights)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, H, W] -> [B, N, dim]`` patch tokens of the shared encoder."""
        return self.blocks(self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed)

    def task_logits(self, tokens: torch.Tensor, task: int, s: float | None = None) -> torch.Tensor:
        """Logits ``[B, K / T]`` of ``task``'s head from encoder tokens, gate scale ``s`` (default s_max)."""
        tok = self.task_tokens[task].expand(tokens.shape[0], -1, -1)
        return self.heads[task](self.norm(self.gcab(tokens, tok, task, s)[:, 0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.features(x)
        return torch.cat([self.task_logits(tokens, t) for t in range(self.num_tasks)], dim=1)


@MODELS.register("gcab-vit", "GCAB ViT for 32x32: patch 4, dim 384, 5 SA blocks + 1 gated class-attention block")
def gcab_vit(num_classes: int, in_channels: int = 3, image_size: int = 32, **kw) -> GCABViT:
    return GCABViT(num_classes, image_size=image_size, in_channels=in_channels, **kw)
