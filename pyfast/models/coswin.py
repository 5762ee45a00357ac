"""CoSwin (conv-enhanced Swin Transformer) for 32x32 input.

Each block is a Swin block with a parallel local convolution branch added through a learnable sigmoid gate::

    c = Conv3x3(C -> int(1.1 C)) -> ReLU -> Conv3x3(-> C)   on the raw tokens x (before LN1), as [B, C, H, W]
    a = W-MSA / SW-MSA(LN1(x))                              (cyclic shift window/2 on odd blocks, -100 mask,
                                                             relative-position bias table (2w-1)^2 x heads)
    x = x + DropPath(a + sigmoid(g) c)                      g: one scalar, initialised 0.5 (sigmoid(0.5) = 0.6225)
    x = x + DropPath(MLP(LN2(x)))

CIFAR model: patch 2 -> 16x16 tokens, embed 96, depths [2, 6, 4], heads [3, 6, 12], window 4, MLP ratio 2,
drop_path 0.1, patch-norm LN, no absolute position embedding; PatchMerging LN(4C) -> Linear(4C -> 2C, no bias);
head LN -> global average pool -> Linear. Stage resolutions 16 / 8 / 4: where the resolution is <= the window, the
window shrinks to the resolution and the shift is 0 (the whole of stage 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyfast._checks import check_int, check_int_sequence, check_mlp_width, check_multiple_of, check_positive, check_rate
from pyfast.models.vit import Mlp, init_vit_weights
from pyfast.nn.spectral import DropPath
from pyfast.registry import MODELS


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> [B (H/w) (W/w), w w, C]."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, C)


def window_reverse(windows: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    """[B (H/w) (W/w), w w, C] -> [B, H, W, C]."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside w x w windows with a learned relative-position bias:
    ``[B', w w, C] -> [B', w w, C]``; ``mask`` [num_windows, w w, w w] (0 or -100) for shifted windows."""

    def __init__(self, dim: int, window: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        check_multiple_of("WindowAttention", "dim", dim, "num_heads", num_heads)
        self.window, self.num_heads = window, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * window - 1) + rel[..., 1],
                             persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        attn = attn + bias.permute(2, 0, 1)[None]
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(B_ // nw, nw, self.num_heads, N, N) + mask[None, :, None]).view(B_, self.num_heads, N, N)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj(x)


def shift_mask(res: int, window: int, shift: int) -> torch.Tensor:
    """Swin's attention mask for cyclically shifted windows: [num_windows, w w, w w], 0 within a region, -100
    between regions that the roll brought together."""
    img = torch.zeros(1, res, res, 1)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = window_partition(img, window).squeeze(-1)
    diff = win[:, None, :] - win[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class CoSwinBlock(nn.Module):
    """Swin block with the gated local-convolution branch (module docstring); tokens [B, res res, dim] in and out."""

    def __init__(self, dim: int, res: int, heads: int, window: int = 4, shift: int = 0, mlp_ratio: float = 2.0,
                 drop_path: float = 0.0):
        super().__init__()
        if res <= window:
            window, shift = res, 0
        if res % window:
            raise ValueError(f"CoSwinBlock: the resolution ({res}) must be a multiple of the window ({window})")
        self.dim, self.res, self.window, self.shift = dim, res, window, shift
        hidden = int(1.1 * dim)
        self.conv = nn.Sequential(nn.Conv2d(dim, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, dim, 3, padding=1))
        self.gate = nn.Parameter(torch.tensor(0.5))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", shift_mask(res, window, shift) if shift else None, persistent=False)

    def window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(S)W-MSA of LN1(x): [B, L, C] -> [B, L, C]."""
        B, L, C = x.shape
        h = self.norm1(x).view(B, self.res, self.res, C)
        if self.shift:
            h = torch.roll(h, (-self.shift, -self.shift), dims=(1, 2))
        h = window_reverse(self.attn(window_partition(h, self.window), self.attn_mask), self.window, self.res,
                           self.res)
        if self.shift:
            h = torch.roll(h, (self.shift, self.shift), dims=(1, 2))
        return h.reshape(B, L, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, C = x.shape
        c = self.conv(x.transpose(1, 2).reshape(B, C, self.res, self.res)).flatten(2).transpose(1, 2)
        x = x + self.drop_path(self.window_attention(x) + torch.sigmoid(self.gate) * c)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbour concatenation, LN(4C), Linear(4C -> 2C, no bias): [B, H W, C] -> [B, H W / 4, 2C]."""

    def __init__(self, dim: int, res: int):
        super().__init__()
        self.res = res
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, C = x.shape
        x = x.view(B, self.res, self.res, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class CoSwin(nn.Module):
    """CoSwin classifier (module docstring). ``depths`` / ``heads``: one entry per stage (integers >= 1); each stage
    after the first halves the resolution (PatchMerging) and doubles the width, which must be a multiple of the
    stage's heads. ``window`` must divide every stage resolution larger than it (a smaller stage uses its whole map
    as the window)."""

    def __init__(self, num_classes: int, image_size: int = 32, in_channels: int = 3, patch: int = 2,
                 embed_dim: int = 96, depths: Sequence[int] = (2, 6, 4), heads: Sequence[int] = (3, 6, 12),
                 window: int = 4, mlp_ratio: float = 2.0, drop_path: float = 0.1):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("image_size", image_size), ("in_channels", in_channels),
                            ("patch", patch), ("embed_dim", embed_dim), ("window", window)):
            check_int("CoSwin", name, value)
        depths, heads = check_int_sequence("CoSwin", "depths", depths), check_int_sequence("CoSwin", "heads", heads)
        if len(depths) != len(heads):
            raise ValueError(f"CoSwin: depths {depths} and heads {heads} need one entry per stage each")
        if image_size % (patch * 2 ** (len(depths) - 1)):
            raise ValueError(f"CoSwin: image_size ({image_size}) must be divisible by patch x 2^(stages - 1)")
        for s, nh in enumerate(heads):
            check_multiple_of("CoSwin", f"embed_dim x 2^{s}", embed_dim * 2**s, f"heads[{s}]", nh)
            res = image_size // patch // 2**s
            if res > window and res % window:
                raise ValueError(f"CoSwin: window ({window}) must divide the resolution of stage {s} (image_size / "
                                 f"patch / 2^{s} = {res})")
        check_mlp_width("CoSwin", "embed_dim", embed_dim, "mlp_ratio", check_positive("CoSwin", "mlp_ratio", mlp_ratio))
        check_rate("CoSwin", "drop_path", drop_path)
        self.image_size, self.in_channels = image_size, in_channels
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch, stride=patch)
        self.patch_norm = nn.LayerNorm(embed_dim)
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        res, dim, k = image_size // patch, embed_dim, 0
        self.stages = nn.ModuleList()
        for s, (depth, nh) in enumerate(zip(depths, heads)):
            blocks = [CoSwinBlock(dim, res, nh, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, rates[k + i])
                      for i in range(depth)]
            k += depth
            if s < len(depths) - 1:
                blocks.append(PatchMerging(dim, res))
                res, dim = res // 2, dim * 2
            self.stages.append(nn.Sequential(*blocks))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.apply(init_vit_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"CoSwin: x must have shape [B, {self.in_channels}, {self.image_size}, "
                             f"{self.image_size}], got {tuple(x.shape)}")
        x = self.patch_norm(self.patch_embed(x).flatten(2).transpose(1, 2))
        for stage in self.stages:
            x = stage(x)
        return self.head(self.norm(x).mean(dim=1))


@MODELS.register("coswin", "CoSwin for 32x32: Swin with a gated 3x3-conv branch, patch 2, embed 96, depths [2,6,4]")
def coswin(num_classes: int, in_channels: int = 3, image_size: int = 32, **kw) -> CoSwin:
    return CoSwin(num_classes, image_size=image_size, in_channels=in_channels, **kw)


__all__ = ["CoSwin", "CoSwinBlock", "PatchMerging", "WindowAttention", "coswin", "shift_mask"]
