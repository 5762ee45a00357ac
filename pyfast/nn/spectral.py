"""``pyfast.nn.SpectralGating``: SpectFormer's global spectral filter for token maps, and ``DropPath``.

SpectralGating (Patro et al., SpectFormer; the GFNet global filter), for tokens x [B, N, C] laid out on an a x b
grid (N = a b)::

    X = rfft2(x as [B, a, b, C], dims (a, b), norm="ortho")          [B, a, b//2 + 1, C], complex
    y = irfft2(X * W, s=(a, b), norm="ortho") as [B, N, C]

with W a learnable complex filter [a, b//2 + 1, C] (stored as its real and imaginary parts, each initialised
N(0, 0.02^2) as in the official code). The transform runs in float32 (bf16/fp16 inputs are upcast: cuFFT/pocketfft
have no bf16, and the result is cast back). ``s=(a, b)`` keeps odd b exact. W = 1 + 0j is the identity and a real
constant c gives c x. Plain PyTorch: torch.fft is the kernel.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DropPath", "SpectralGating"]


class SpectralGating(nn.Module):
    """Global spectral gating of tokens on an ``h x w`` grid: ``[B, h w, dim] -> [B, h w, dim]``."""

    def __init__(self, dim: int, h: int, w: int, init_std: float = 0.02):
        super().__init__()
        for name, v in (("dim", dim), ("h", h), ("w", w)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"SpectralGating: {name} must be an int >= 1, got {v!r}")
        self.dim, self.h, self.w = dim, h, w
        self.complex_weight = nn.Parameter(torch.randn(h, w // 2 + 1, dim, 2) * init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        if N != self.h * self.w or C != self.dim:
            raise ValueError(f"SpectralGating: x must be [B, {self.h * self.w}, {self.dim}] (an {self.h}x{self.w} "
                             f"token grid), got {tuple(x.shape)}")
        dtype = x.dtype
        v = x.to(torch.float32).reshape(B, self.h, self.w, C)
        spec = torch.fft.rfft2(v, dim=(1, 2), norm="ortho")
        spec = spec * torch.view_as_complex(self.complex_weight.to(torch.float32).contiguous())
        v = torch.fft.irfft2(spec, s=(self.h, self.w), dim=(1, 2), norm="ortho")
        return v.reshape(B, N, C).to(dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, h={self.h}, w={self.w}"


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability ``p`` and scale the kept ones
    by ``1 / (1 - p)``; identity at eval or with ``p = 0``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath: p must be in [0, 1), got {p!r}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
