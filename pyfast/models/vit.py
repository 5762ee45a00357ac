"""Vision Transformer for 32x32 images (patch 4 -> 64 tokens + a class token), timm-style module names.

Shapes, with ``B`` the batch, ``N = (image_size / patch)^2 + 1`` tokens and ``C = dim``::

    x [B, 3, 32, 32] --patch_embed (Conv patch x patch, stride patch)--> [B, C, 8, 8] --> tokens [B, 64, C]
    prepend cls_token, add pos_embed                                   -> [B, N, C]
    depth x Block: x + attn(norm1(x)); x + mlp(norm2(x))                -> [B, N, C]
    norm, take the class token, head                                    -> logits [B, num_classes]

A ``Block`` has ``norm1``, ``attn`` (``qkv``: Linear(C, 3C), ``proj``: Linear(C, C), ``num_heads``, ``scale``),
``norm2`` and ``mlp`` (``fc1``, ``act``: GELU, ``fc2``), the names timm uses, so code written for timm blocks (e.g.
``pyfast.mesa.convert``) works on these too. The attention is swappable by name: ``attention=`` picks a builder
from :data:`pyfast.registry.ATTENTIONS`, where this module registers ``"softmax"`` (:class:`Attention`), ``"mesa"``
(:class:`pyfast.nn.mesa.Attention`) and ``"karat"`` (:class:`pyfast.nn.FourierKArAtAttention`).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from pyfast._checks import check_int, check_mlp_width, check_multiple_of, check_positive, check_rate
from pyfast.nn import mesa as mesa_nn
from pyfast.nn.karat import FourierKArAtAttention
from pyfast.registry import ATTENTIONS, MODELS


@ATTENTIONS.register("softmax", "multi-head softmax attention, softmax(q k^T / sqrt(d)) v")
class Attention(nn.Module):
    """Multi-head self-attention: ``[B, N, C] -> [B, N, C]`` with ``num_heads`` heads of ``C / num_heads``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        for name, value in (("dim", dim), ("num_heads", num_heads)):
            check_int("Attention", name, value)
        check_multiple_of("Attention", "dim", dim, "num_heads", num_heads)
        for name, value in (("attn_drop", attn_drop), ("proj_drop", proj_drop)):
            check_rate("Attention", name, value)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # [B, heads, N, N]
        x = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


@ATTENTIONS.register("mesa", "softmax attention whose q k^T, softmax and attn v save 8-bit activations (Mesa)")
def mesa_attention(dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                   proj_drop: float = 0.0) -> mesa_nn.Attention:
    """:class:`Attention` with Mesa's quantized products and softmax; its ``qkv`` / ``proj`` stay plain Linear layers
    (``pyfast.mesa.convert`` swaps those too)."""
    return mesa_nn.Attention.from_timm(Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop))


ATTENTIONS.register("karat", "Fourier-KArAt: learnable W Phi(A) row operator (Fourier basis, G=3, r=12) instead of "
                    "softmax")(FourierKArAtAttention)


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2``: ``[..., C] -> [..., C]`` through a hidden width ``hidden``."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; ``[B, N, C]`` in and out."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0,
                 attention: str = "softmax", attention_args: dict | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ATTENTIONS.get(attention).builder(dim, num_heads, proj_drop=drop, **(attention_args or {}))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT with a class token and learned position embeddings (see the module docstring for shapes).

    Args:
        num_classes: outputs of the head.
        image_size, patch, in_channels: input geometry; ``image_size`` must be a multiple of ``patch``.
        dim, depth, num_heads, mlp_ratio: the usual ViT sizes (ViT-Tiny: 192, 12, 3; ViT-Small: 384, 12, 6); integers
            >= 1 (a ViT has at least one block) with ``dim`` a multiple of ``num_heads``, and ``mlp_ratio`` a finite
            number > 0 with ``int(dim * mlp_ratio) >= 1``.
        drop: dropout after the attention projection and in the MLP, in [0, 1).
        attention: name in :data:`ATTENTIONS`.
        attention_args: extra keyword arguments of the attention class (e.g. ``{"G": 1, "mode": "universal"}`` for
            ``"karat"``). An attention class whose constructor takes ``n_tokens`` gets the model's token count
            (``(image_size / patch)^2 + 1``), and one that takes ``shared`` gets one dict per model (for parameters
            shared across blocks), unless ``attention_args`` sets them.
    """

    def __init__(self, num_classes: int, image_size: int = 32, patch: int = 4, in_channels: int = 3, dim: int = 192,
                 depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0, drop: float = 0.0,
                 attention: str = "softmax", attention_args: dict | None = None):
        super().__init__()
        check_vit_options("VisionTransformer", num_classes=num_classes, image_size=image_size, patch=patch,
                          in_channels=in_channels, dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                          drop=drop)
        if not isinstance(attention, str):
            raise TypeError(f"VisionTransformer: attention must be a name (str), got {attention!r}")
        takes = inspect.signature(ATTENTIONS.get(attention).builder).parameters
        if attention_args is not None and not isinstance(attention_args, dict):
            raise TypeError(f"VisionTransformer: attention_args must be a dict, got {attention_args!r}")
        self.image_size, self.in_channels = image_size, in_channels
        num_patches = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        attn_kw = dict(attention_args or {})
        if "n_tokens" in takes:
            attn_kw.setdefault("n_tokens", num_patches + 1)
        if "shared" in takes:
            attn_kw.setdefault("shared", {})
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_ratio, drop, attention, attn_kw)
                                      for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_vit_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, image_size, image_size] -> [B, N, dim]`` (after the final norm)."""
        if x.dim() != 4 or x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"VisionTransformer: x must have shape [B, {self.in_channels}, {self.image_size}, "
                             f"{self.image_size}], got {tuple(x.shape)}")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])


def check_vit_options(owner: str, *, num_classes: int, image_size: int, patch: int, in_channels: int, dim: int,
                      depth: int, num_heads: int, mlp_ratio: float, drop: float = 0.0, heads_used: bool = True) -> None:
    """The options the ViT-style models share (ViT, SpectFormer, GCAB): sizes >= 1, ``image_size`` a multiple of
    ``patch``, ``dim`` a multiple of ``num_heads`` (when ``heads_used``: the model has attention blocks), an MLP of at
    least one hidden unit, ``drop`` in [0, 1)."""
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("image_size", image_size),
                        ("patch", patch), ("dim", dim), ("depth", depth), ("num_heads", num_heads)):
        check_int(owner, name, value)
    check_multiple_of(owner, "image_size", image_size, "patch", patch)
    if heads_used:
        check_multiple_of(owner, "dim", dim, "num_heads", num_heads)
    check_mlp_width(owner, "dim", dim, "mlp_ratio", check_positive(owner, "mlp_ratio", mlp_ratio))
    check_rate(owner, "drop", drop)


def init_vit_weights(m: nn.Module) -> None:
    """The transformers' initialisation (ViT, SpectFormer, GCAB, CoSwin): Linear weights truncated normal (std 0.02)
    and zero biases, LayerNorm to the identity; for ``module.apply``."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


@MODELS.register("vit-tiny", "ViT-Tiny for 32x32: patch 4, dim 192, depth 12, 3 heads (5.4M parameters)")
def vit_tiny(num_classes: int, in_channels: int = 3, image_size: int = 32, **kw) -> VisionTransformer:
    kw = {"dim": 192, "depth": 12, "num_heads": 3, **kw}
    return VisionTransformer(num_classes, image_size=image_size, in_channels=in_channels, **kw)


@MODELS.register("vit-small", "ViT-Small for 32x32: patch 4, dim 384, depth 12, 6 heads (21.3M parameters)")
def vit_small(num_classes: int, in_channels: int = 3, image_size: int = 32, **kw) -> VisionTransformer:
    kw = {"dim": 384, "depth": 12, "num_heads": 6, **kw}
    return VisionTransformer(num_classes, image_size=image_size, in_channels=in_channels, **kw)
