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

from pyfast._checks import check_int, check_number
from pyfast.nn._checks import check_tokens

__all__ = ["DropPath", "SpectralGating"]


class SpectralGating(nn.Module):
    """Global spectral gating of tokens on an ``h x w`` grid: ``[B, h w, dim] -> [B, h w, dim]``."""

    def __init__(self, dim: int, h: int, w: int, init_std: float = 0.02):
        super().__init__()
        self.dim = check_int("SpectralGating", "dim", dim)
        self.h = check_int("SpectralGating", "h", h)
        self.w = check_int("SpectralGating", "w", w)
        init_std = check_number("SpectralGating", "init_std", init_std, low=0.0)
        self.complex_weight = nn.Parameter(torch.randn(h, w // 2 + 1, dim, 2) * init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tokens("SpectralGating", x, n=self.h * self.w, c=self.dim, note=f" (a token grid of {self.h}x{self.w})")
        B, N, C = x.shape
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
        self.p = check_number("DropPath", "p", p, low=0.0, high=1.0, high_open=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
