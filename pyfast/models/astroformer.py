"""Astroformer (Dagli 2023): a CoAtNet/MaxViT-style conv-transformer hybrid with stage layout C-C-C-T.

    stem       conv3x3 (stride ``stem_stride``) -> BN + GELU -> conv3x3
    C stages   MBConv blocks (pre-norm): BN -> conv1x1 (-> 4 out) -> BN+GELU -> depthwise 3x3 (carries the stride)
               -> BN+GELU -> squeeze-excite (0.25, SiLU) -> conv1x1 (-> out); shortcut avgpool2 + conv1x1 when
               the block downsamples or changes width; x = shortcut + DropPath(main)
    T stage    NCHW transformer blocks: LN2d (eps 1e-6) -> multi-head attention (dim_head 32) with a relative-position
               bias over the whole stage map, table (2h - 1)(2w - 1) x heads; then LN2d -> 1x1-conv MLP (x4, GELU);
               the first block downsamples (avgpool2 on the normed input; shortcut avgpool2 + conv1x1)
    head       NormMlpClassifierHead: global average pool -> LN -> fc(head_hidden) -> tanh -> dropout -> fc
Every stage has stride 2.

Variants (embed / depths / stem / head_hidden): 0: 96-768 / 2,3,5,2 / 64 / 768; 1: 96-768 / 2,6,14,2; 2: 128-1024 /
2,6,14,2 / 128 / 1024; 3: 192-1536 / 2,6,14,2 / 192 / 1536; 4: 192-1536 / 2,12,28,2; 5: 256,512,1280,2048 /
2,12,28,2 / 192 / 2048. Widths double per stage (96-768 = 96, 192, 384, 768).

32x32 input: with the official stride-2 stem, four stride-2 stages leave the T stage a 1x1 map (the official
advice is to upsample to 224/256 px). Here ``stem_stride`` defaults to 1 for inputs up to 64 px, so a 32x32 image
reaches the T stage as a 2x2 map (stages at 16, 8, 4, 2) without the cost of upsampling; pass ``stem_stride=2`` for
the official layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyfast._checks import check_choice, check_int, check_int_sequence, check_multiple_of, check_rate
from pyfast.nn.spectral import DropPath
from pyfast.registry import MODELS

VARIANTS = {
    0: ((96, 192, 384, 768), (2, 3, 5, 2), 64, 768),
    1: ((96, 192, 384, 768), (2, 6, 14, 2), 64, 768),
    2: ((128, 256, 512, 1024), (2, 6, 14, 2), 128, 1024),
    3: ((192, 384, 768, 1536), (2, 6, 14, 2), 192, 1536),
    4: ((192, 384, 768, 1536), (2, 12, 28, 2), 192, 1536),
    5: ((256, 512, 1280, 2048), (2, 12, 28, 2), 192, 2048),
}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    """Shortcut of a block that downsamples and / or changes width: avgpool2 (stride 2) then conv1x1."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()
        self.expand = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.pool(x))


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(SiLU(fc1(mean_hw x)))), reduced width ``round(rd_ratio * channels)``."""

    def __init__(self, channels: int, rd_ratio: float = 0.25):
        super().__init__()
        rd = max(1, round(channels * rd_ratio))
        self.fc1 = nn.Conv2d(channels, rd, 1)
        self.fc2 = nn.Conv2d(rd, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(F.silu(self.fc1(x.mean((2, 3), keepdim=True)))))


class MbConvBlock(nn.Module):
    """Pre-norm MBConv (module docstring): [B, cin, H, W] -> [B, cout, H / stride, W / stride]."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 4, drop_path: float = 0.0):
        super().__init__()
        mid = cout * expand
        self.shortcut = Downsample(cin, cout, stride) if stride != 1 or cin != cout else nn.Identity()
        self.pre_norm = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.se = SqueezeExcite(mid, 0.25)
        self.conv3 = nn.Conv2d(mid, cout, 1)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.norm1(self.conv1(self.pre_norm(x))))
        h = self.conv3(self.se(F.gelu(self.norm2(self.conv2(h)))))
        return self.shortcut(x) + self.drop_path(h)


class RelAttention2d(nn.Module):
    """Multi-head self-attention over a whole h x w NCHW map with a learned relative-position bias
    (table (2h - 1)(2w - 1) x heads): [B, cin, h, w] -> [B, cout, h, w]; qkv / proj are 1x1 convs."""

    def __init__(self, cin: int, cout: int, size: tuple[int, int], dim_head: int = 32):
        super().__init__()
        if cout % dim_head:
            raise ValueError(f"RelAttention2d: width ({cout}) must be a multiple of dim_head ({dim_head})")
        self.num_heads, self.dim_head = cout // dim_head, dim_head
        self.scale = dim_head**-0.5
        h, w = size
        self.size = size
        self.qkv = nn.Conv2d(cin, 3 * cout, 1)
        self.proj = nn.Conv2d(cout, cout, 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * h - 1) * (2 * w - 1), self.num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        index = (rel[..., 0] + h - 1) * (2 * w - 1) + rel[..., 1] + w - 1
        self.register_buffer("relative_position_index", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        if (H, W) != self.size:
            raise ValueError(f"RelAttention2d: expected a {self.size} map, got {(H, W)}")
        n = H * W
        q, k, v = self.qkv(x).view(B, 3, self.num_heads, self.dim_head, n).unbind(1)  # [B, heads, d, n]
        attn = (q.transpose(-2, -1) * self.scale) @ k  # [B, heads, n, n]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = (attn + bias.permute(2, 0, 1)[None]).softmax(dim=-1)
        out = (v @ attn.transpose(-2, -1)).reshape(B, -1, H, W)
        return self.proj(out)


class TransformerBlock2d(nn.Module):
    """NCHW transformer block (module docstring): [B, cin, H, W] -> [B, cout, H / stride, W / stride]."""

    def __init__(self, cin: int, cout: int, size: tuple[int, int], stride: int = 1, dim_head: int = 32,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.Sequential(LayerNorm2d(cin, eps=1e-6), nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity())
        self.shortcut = Downsample(cin, cout, stride) if stride != 1 or cin != cout else nn.Identity()
        self.attn = RelAttention2d(cin, cout, size, dim_head)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm2d(cout, eps=1e-6)
        self.mlp = nn.Sequential(nn.Conv2d(cout, 4 * cout, 1), nn.GELU(), nn.Conv2d(4 * cout, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shortcut(x) + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Astroformer(nn.Module):
    """Astroformer classifier; see the module docstring. ``embed_dims`` / ``depths``: one entry per stage, integers
    >= 1 (the last stage is the transformer stage: its width must be a multiple of ``dim_head``). ``stem_stride``:
    None picks 1 up to 64 px, else 2; ``image_size`` must be a multiple of ``stem_stride x 2^stages``.
    ``drop_rate`` (before the last linear layer) and ``drop_path_rate`` are in [0, 1)."""

    def __init__(self, num_classes: int, image_size: int = 32, in_channels: int = 3,
                 embed_dims: Sequence[int] = VARIANTS[0][0], depths: Sequence[int] = VARIANTS[0][1],
                 stem_width: int = VARIANTS[0][2], head_hidden: int = VARIANTS[0][3], stem_stride: int | None = None,
                 dim_head: int = 32, drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("image_size", image_size), ("in_channels", in_channels),
                            ("stem_width", stem_width), ("head_hidden", head_hidden), ("dim_head", dim_head)):
            check_int("Astroformer", name, value)
        embed_dims = check_int_sequence("Astroformer", "embed_dims", embed_dims)
        depths = check_int_sequence("Astroformer", "depths", depths)
        if len(embed_dims) != len(depths) or len(depths) < 2:
            raise ValueError(f"Astroformer: embed_dims {embed_dims} and depths {depths} need one entry per stage "
                             f"(>= 2 stages) each")
        check_multiple_of("Astroformer", "embed_dims[-1]", embed_dims[-1], "dim_head", dim_head)  # the attention stage
        for name, value in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
            check_rate("Astroformer", name, value)
        if stem_stride is None:
            stem_stride = 1 if image_size <= 64 else 2
        check_int("Astroformer", "stem_stride", stem_stride)
        final = image_size // stem_stride // 2 ** len(depths)
        if final < 1 or image_size % (stem_stride * 2 ** len(depths)):
            raise ValueError(f"Astroformer: image_size {image_size} with stem_stride {stem_stride} and {len(depths)} "
                             f"stride-2 stages does not divide evenly")
        self.image_size, self.in_channels = image_size, in_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_width, 3, stem_stride, 1), nn.BatchNorm2d(stem_width),
                                  nn.GELU(), nn.Conv2d(stem_width, stem_width, 3, 1, 1))
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        res, cin, k = image_size // stem_stride, stem_width, 0
        stages = []
        for s, (cout, depth) in enumerate(zip(embed_dims, depths)):
            res //= 2
            blocks = []
            for i in range(depth):
                stride = 2 if i == 0 else 1
                if s < len(depths) - 1:
                    blocks.append(MbConvBlock(cin, cout, stride, 4, rates[k + i]))
                else:
                    blocks.append(TransformerBlock2d(cin, cout, (res, res), stride, dim_head, rates[k + i]))
                cin = cout
            k += depth
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head_norm = nn.LayerNorm(cin)
        self.head_fc = nn.Linear(cin, head_hidden)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(head_hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"Astroformer: x must have shape [B, {self.in_channels}, {self.image_size}, "
                             f"{self.image_size}], got {tuple(x.shape)}")
        x = self.stages(self.stem(x)).mean((2, 3))
        return self.head(self.head_drop(torch.tanh(self.head_fc(self.head_norm(x)))))


@MODELS.register("astroformer", "Astroformer C-C-C-T hybrid (variant 0 by default; stem stride 1 at 32x32)")
def astroformer(num_classes: int, in_channels: int = 3, image_size: int = 32, variant: int = 0, **kw) -> Astroformer:
    check_choice("astroformer", "variant", variant, sorted(VARIANTS))
    embed, depths, stem, hidden = VARIANTS[variant]
    kw = {"embed_dims": embed, "depths": depths, "stem_width": stem, "head_hidden": hidden, **kw}
    return Astroformer(num_classes, image_size=image_size, in_channels=in_channels, **kw)
