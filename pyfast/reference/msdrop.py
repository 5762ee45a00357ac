"""Readable pure-PyTorch multi-sample dropout head (Inoue 2019, "Multi-Sample Dropout for Accelerated Training and
Better Generalization"): the definition of correct for every backend of ``msdrop_fwd`` / ``msdrop_bwd``.

For pooled features h [B, D], a shared linear layer (W [C, D], b [C]) and M dropout samples::

    logits_k = (h * mask_k / (1 - p)) W^T + b        k = 1..M, independent masks, one shared FC
    loss     = (1 / M) sum_k CE(logits_k, y)          the losses are averaged, not the logits

At eval, dropout is off and the head is the single FC. All M masks are drawn at once from a counter-based hash, so
every backend (and the backward, which regenerates them instead of storing them) drops the same units::

    index(k, i, d) = (k B + i) D + d                      (32-bit)
    key            = fmix32(seed_lo ^ fmix32(seed_hi ^ 0x9e3779b9))
    keep           = (fmix32(index ^ key) >> 8) >= ceil(p 2^24)

with fmix32 murmur3's 32-bit finaliser. Written with int64 tensor ops here (products split so nothing overflows), so
it also runs under torch.compile.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pyfast._dtypes import acc_dtype

_MASK32 = 0xFFFFFFFF


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """(a * c) mod 2^32 for a in [0, 2^32), without int64 overflow."""
    return (a * (c & 0xFFFF) + (((a * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding uint32 values."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def threshold(p: float) -> int:
    """A unit is kept when its 24-bit hash is >= ceil(p 2^24)."""
    return math.ceil(p * 16777216.0)


def keep_mask(seed: torch.Tensor, num_samples: int, batch: int, dim: int, p: float) -> torch.Tensor:
    """The M dropout masks at once: bool [M, B, D], True where a unit is kept. ``seed``: one int64 tensor."""
    s = seed.reshape(()).to(torch.int64)
    lo, hi = s & _MASK32, (s >> 32) & _MASK32
    key = fmix32(lo ^ fmix32(hi ^ 0x9E3779B9))
    index = torch.arange(num_samples * batch * dim, device=seed.device, dtype=torch.int64)
    return ((fmix32(index ^ key) >> 8) >= threshold(p)).reshape(num_samples, batch, dim)


def msdrop_logits_ref(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seed: torch.Tensor,
                      num_samples: int, p: float) -> torch.Tensor:
    """logits of every dropout sample, [M, B, C] (one batched matmul over the stacked masked copies)."""
    mask = keep_mask(seed, num_samples, h.shape[0], h.shape[1], p)
    x = (h.to(acc_dtype(h.dtype)) * mask * (1.0 / (1.0 - p))).to(h.dtype)
    return F.linear(x, weight, bias)


def msdrop_loss_ref(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
                    seed: torch.Tensor, num_samples: int, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits): loss = (1/M) sum_k CE(logits_k, y) (mean over the batch), logits [M, B, C]."""
    logits = msdrop_logits_ref(h, weight, bias, seed, num_samples, p)
    m, b, c = logits.shape
    loss = F.cross_entropy(logits.reshape(m * b, c).to(acc_dtype(h.dtype)), target.repeat(m)).to(h.dtype)
    return loss, logits
