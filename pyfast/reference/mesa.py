"""Mesa group-wise 8-bit activation storage (Pan et al., arXiv 2111.11124): readable pure-PyTorch truth.

Grouping. ``x`` is viewed as ``[outer, G, inner]`` around its axis ``dim``: ``outer = prod(x.shape[:dim])``,
``inner = x.shape[dim] / G * prod(x.shape[dim+1:])``. With ``dim=1`` and ``G = H`` a ``[B, H, N, D]`` tensor gets one
group per head; with ``dim=-1`` a ``[..., C]`` tensor gets ``G`` contiguous chunks of ``C / G`` channels. Group ``g``
owns the elements of ``[:, g, :]``.

Running estimates (float32, one per group). With the finite values of the current batch (non-finite values are left
out of the statistics)::

    r = max - min,  m = min
    no finite value:         alpha' = alpha,                        beta' = beta
    not initialized:         alpha' = r,                            beta' = m
    initialized, update:     alpha' = lam alpha + (1 - lam) r,      beta' = lam beta + (1 - lam) m
    initialized, no update:  alpha' = alpha,                        beta' = beta

A group without finite values (all NaN / inf, or no elements) says nothing about the range and keeps its estimates
(with range 0 instead, such a first batch left alpha' = 0, and every later batch quantized to a single code).

with ``lam = float32(ema_decay)`` and ``1 - lam`` rounded as ``float32(1 - ema_decay)``; each product is rounded to
float32 before the sum (no fused multiply-add), so every backend gets the same bits.

Quantize with the new estimates, per element (float32, each operation rounded)::

    s = (L - 1) / alpha'                      L = levels in 2..256
    t = (x - beta') s  [+ (u - 1/2)]          u ~ U[0, 1) for stochastic rounding
    q = round_half_even(min(max(t, 0), L - 1))   (NaN -> 0: the max is written t > 0 ? t : 0)

Dequantize: ``x_hat = q / s + beta`` (float32), rounded to the requested dtype. ``alpha = 0`` gives ``s = inf`` and
``x_hat = beta``. A code ``q > L - 1`` (quantized with more levels, or not by Mesa) is a ValueError.

Random numbers are counter-based, so CPU, CUDA and Triton draw the same ``u`` for the same seed and element: with
``h32`` the 32-bit integer hash below (xor-shift / multiply rounds), the element's linear index ``i`` (row-major in x)
split into 32-bit halves ``i_lo, i_hi``, and the int64 ``seed`` split alike::

    key = h32(seed_lo ^ h32(seed_hi ^ 0x9E3779B9))
    u   = (h32(h32(i_lo ^ key) + i_hi * 0x85EBCA6B) >> 8) * 2^-24        (32-bit wrap-around arithmetic)
"""

from __future__ import annotations

import torch

__all__ = [
    "check_codes",
    "group_shape",
    "hash_uniform",
    "mesa_dequantize_ref",
    "mesa_quantize_ref",
    "mesa_stats_ref",
]

_M32 = 0xFFFFFFFF
HASH_MUL1, HASH_MUL2 = 0x7FEB352D, 0x846CA68B
SEED_SALT, INDEX_MUL = 0x9E3779B9, 0x85EBCA6B


def group_shape(shape, dim: int, groups: int) -> tuple[int, int, int]:
    """``(outer, G, inner)`` of the grouped view of a tensor of ``shape`` (see the module docstring)."""
    dim = dim % len(shape)
    outer = 1
    for s in shape[:dim]:
        outer *= s
    inner = shape[dim] // groups
    for s in shape[dim + 1:]:
        inner *= s
    return outer, groups, inner


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32): split into 16-bit halves so no int64 product overflows."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + ((hi * c) << 16)) & _M32


def _h32(x: torch.Tensor) -> torch.Tensor:
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, HASH_MUL1)
    x = x ^ (x >> 15)
    x = _mul32(x, HASH_MUL2)
    return x ^ (x >> 16)


def hash_uniform(seed: torch.Tensor, numel: int, device=None) -> torch.Tensor:
    """float32 ``u[i]`` in [0, 1) for i = 0..numel-1 from an int64 seed tensor of one element (no host sync)."""
    seed = seed.reshape(1).to(torch.int64)
    seed_lo, seed_hi = seed & _M32, (seed >> 32) & _M32
    key = _h32(seed_lo ^ _h32(seed_hi ^ SEED_SALT))
    i = torch.arange(numel, dtype=torch.int64, device=device if device is not None else seed.device)
    h = _h32(_h32((i & _M32) ^ key) + _mul32(i >> 32, INDEX_MUL))
    return (h >> 8).to(torch.float32) * (2.0**-24)


def _grouped(x: torch.Tensor, dim: int, groups: int) -> torch.Tensor:
    return x.reshape(group_shape(x.shape, dim, groups))


def mesa_stats_ref(x: torch.Tensor, clip_val, shift, initialized, dim: int, ema_decay: float, update: bool):
    """The new float32 running range ``alpha'`` and minimum ``beta'`` ([G] each) for this batch."""
    groups = clip_val.numel()
    xg = _grouped(x.detach(), dim, groups).float()
    finite = torch.isfinite(xg)
    inf = torch.tensor(float("inf"), device=x.device)
    if xg.numel() == 0:
        mn, mx = inf.expand(groups), -inf.expand(groups)
    else:
        mn = torch.where(finite, xg, inf).amin(dim=(0, 2))
        mx = torch.where(finite, xg, -inf).amax(dim=(0, 2))
    empty = ~(mn <= mx)
    batch_min, batch_range = mn, mx - mn
    clip_val, shift = clip_val.reshape(-1).float(), shift.reshape(-1).float()
    if update:
        lam = torch.tensor(ema_decay, dtype=torch.float32, device=x.device)
        one_minus = torch.tensor(1.0 - ema_decay, dtype=torch.float32, device=x.device)
        ema_clip, ema_shift = clip_val * lam + batch_range * one_minus, shift * lam + batch_min * one_minus
    else:
        ema_clip, ema_shift = clip_val, shift
    init = initialized.reshape(1).bool()
    new_clip, new_shift = torch.where(init, ema_clip, batch_range), torch.where(init, ema_shift, batch_min)
    return torch.where(empty, clip_val, new_clip), torch.where(empty, shift, new_shift)


def check_codes(q: torch.Tensor, levels: int) -> None:
    """ValueError unless every code of ``q`` is below ``levels`` (one device sync on a GPU)."""
    largest = int(q.max()) if q.numel() else 0
    if largest >= levels:
        raise ValueError(f"mesa_dequantize: q holds code {largest}, but codes of levels = {levels} are "
                         f"0..{levels - 1} (was q quantized with more levels?)")


def _scale(clip_val: torch.Tensor, levels: int) -> torch.Tensor:
    return torch.tensor(float(levels - 1), dtype=torch.float32, device=clip_val.device) / clip_val.float()


def mesa_quantize_ref(x: torch.Tensor, clip_val: torch.Tensor, shift: torch.Tensor, initialized: torch.Tensor,
                      seed: torch.Tensor, dim: int, levels: int, ema_decay: float, update: bool, stochastic: bool):
    """Quantize ``x`` group-wise to uint8 codes in [0, levels - 1] (x's shape, contiguous), updating the running
    estimates. Returns ``(q, clip_val', shift')``; the inputs are not modified."""
    groups = clip_val.numel()
    new_clip, new_shift = mesa_stats_ref(x, clip_val, shift, initialized, dim, ema_decay, update)
    s = _scale(new_clip, levels)
    xg = _grouped(x.detach(), dim, groups).float()
    t = (xg - new_shift.view(1, -1, 1)) * s.view(1, -1, 1)
    if stochastic:
        u = hash_uniform(seed, x.numel(), x.device).view(xg.shape)
        t = t + (u - 0.5)
    t = torch.where(t > 0, t, 0.0)
    t = torch.clamp(t, max=float(levels - 1))
    q = torch.round(t).to(torch.uint8).reshape(x.shape)
    return q, new_clip, new_shift


def mesa_dequantize_ref(q: torch.Tensor, clip_val: torch.Tensor, shift: torch.Tensor, dim: int, levels: int,
                        dtype: torch.dtype) -> torch.Tensor:
    """``x_hat = q / s + beta`` with ``s = (levels - 1) / alpha`` per group, in ``dtype`` (q's shape). A code
    ``>= levels`` raises a ValueError (checked eagerly, not while torch.compile traces)."""
    if not torch.compiler.is_compiling():
        check_codes(q, levels)
    groups = clip_val.numel()
    s = _scale(clip_val.reshape(-1), levels)
    qg = _grouped(q, dim, groups).float()
    x = qg / s.view(1, -1, 1) + shift.reshape(-1).float().view(1, -1, 1)
    return x.to(dtype).reshape(q.shape)
