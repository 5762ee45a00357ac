"""Ghost batch norm, Triton kernels (the Triton twin of csrc/ghost_bn/ghost_bn_kernel.cu).

x: [N, C, S] contiguous, ghost g = samples [g B, min(N, (g + 1) B)), m_g = n_g S values per channel.
  stats      one program per (g, c): shifted sums of x (shift k = the ghost's first value of the channel) ->
             mu_gc, var_gc (biased), inv_gc = 1 / sqrt(var_gc + eps)
  normalize  y = (x - mu_gc) inv_gc w_c + b_c, elementwise
  bwd_stats  one program per (g, c): sdy = sum dy, sdyxmu = sum dy (x - mu_gc)
  bwd_dx     dx = a dy + b (x - mu) + c with a = w inv, b = -w inv^3 sdyxmu / m_g, c = -a sdy / m_g
Arithmetic in float32 (float64 for float64 x); the [G, C] statistics come back in that type.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pyfast._dtypes import acc_dtype

from .common import INTERPRET, TL_DTYPES, check_tensor, tl_acc_dtype, to_storage

_BLOCK = 1024


@triton.jit
def _stats_kernel(x_ptr, mean_ptr, var_ptr, inv_ptr, N, C, S, B, eps, BLOCK: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    g = pid // C
    c = pid % C
    rows = tl.minimum(B, N - g * B)
    m = rows * S
    stride = C * S
    base = x_ptr + g.to(tl.int64) * B * stride + c * S
    k = tl.load(base).to(ACC)
    s1 = tl.zeros((BLOCK,), dtype=ACC)
    s2 = tl.zeros((BLOCK,), dtype=ACC)
    for start in range(0, m, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < m
        v = tl.load(base + (i // S).to(tl.int64) * stride + i % S, mask=mask, other=0.0).to(ACC)
        d = tl.where(mask, v - k, 0.0)
        s1 += d
        s2 += d * d
    d1 = tl.sum(s1, axis=0) / m
    var = tl.maximum(tl.sum(s2, axis=0) / m - d1 * d1, 0.0)
    tl.store(mean_ptr + pid, k + d1)
    tl.store(var_ptr + pid, var)
    tl.store(inv_ptr + pid, 1.0 / tl.sqrt(var + eps))


@triton.jit
def _normalize_kernel(x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, inv_ptr, n, C, S, B, HAS_W: tl.constexpr,
                      HAS_B: tl.constexpr, BLOCK: tl.constexpr, DTYPE: tl.constexpr, BF16_BY_HAND: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    c = (offs // S) % C
    gc = (offs // (C * S)) // B * C + c
    mu = tl.load(mean_ptr + gc, mask=mask, other=0.0)
    scale = tl.load(inv_ptr + gc, mask=mask, other=0.0)
    if HAS_W:
        scale = tl.load(w_ptr + c, mask=mask, other=0.0) * scale
    y = (tl.load(x_ptr + offs, mask=mask, other=0.0).to(mu.dtype) - mu) * scale
    if HAS_B:
        y += tl.load(b_ptr + c, mask=mask, other=0.0)
    tl.store(y_ptr + offs, to_storage(y, DTYPE, BF16_BY_HAND), mask=mask)


@triton.jit
def _bwd_stats_kernel(g_ptr, x_ptr, mean_ptr, sdy_ptr, sdyxmu_ptr, N, C, S, B, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    g = pid // C
    c = pid % C
    rows = tl.minimum(B, N - g * B)
    m = rows * S
    stride = C * S
    off = g.to(tl.int64) * B * stride + c * S
    mu = tl.load(mean_ptr + pid)
    s1 = tl.zeros((BLOCK,), dtype=mu.dtype)
    s2 = tl.zeros((BLOCK,), dtype=mu.dtype)
    for start in range(0, m, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < m
        j = off + (i // S).to(tl.int64) * stride + i % S
        dy = tl.load(g_ptr + j, mask=mask, other=0.0).to(mu.dtype)
        xv = tl.load(x_ptr + j, mask=mask, other=0.0).to(mu.dtype)
        s1 += dy
        s2 += tl.where(mask, dy * (xv - mu), 0.0)
    tl.store(sdy_ptr + pid, tl.sum(s1, axis=0))
    tl.store(sdyxmu_ptr + pid, tl.sum(s2, axis=0))


@triton.jit
def _bwd_dx_kernel(g_ptr, x_ptr, gx_ptr, w_ptr, mean_ptr, inv_ptr, sdy_ptr, sdyxmu_ptr, n, N, C, S, B,
                   HAS_W: tl.constexpr, BLOCK: tl.constexpr, DTYPE: tl.constexpr, BF16_BY_HAND: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    c = (offs // S) % C
    g = (offs // (C * S)) // B
    gc = g * C + c
    m = tl.where(mask, tl.minimum(B, N - g * B) * S, 1).to(tl.float32)  # masked lanes may lie past the last ghost
    inv = tl.load(inv_ptr + gc, mask=mask, other=0.0)
    a = inv
    if HAS_W:
        a = tl.load(w_ptr + c, mask=mask, other=0.0) * inv
    mu = tl.load(mean_ptr + gc, mask=mask, other=0.0)
    sdy = tl.load(sdy_ptr + gc, mask=mask, other=0.0)
    sdyxmu = tl.load(sdyxmu_ptr + gc, mask=mask, other=0.0)
    dy = tl.load(g_ptr + offs, mask=mask, other=0.0).to(mu.dtype)
    xmu = tl.load(x_ptr + offs, mask=mask, other=0.0).to(mu.dtype) - mu
    dx = a * dy - a * inv * inv * sdyxmu / m * xmu - a * sdy / m
    tl.store(gx_ptr + offs, to_storage(dx, DTYPE, BF16_BY_HAND), mask=mask)


def _layout(x: torch.Tensor, ghost_batch_size: int):
    n, c = x.shape[:2]
    return n, c, x.numel() // (n * c), ghost_batch_size, -(-n // ghost_batch_size)


def ghost_bn_fwd(x, weight, bias, ghost_batch_size: int, eps: float):
    """(y, mean, var, invstd); weight / bias: [C] in the arithmetic type or None."""
    check_tensor("ghost_bn", "x", x)
    n, c, s, b, g = _layout(x, ghost_batch_size)
    mean = torch.empty(g, c, dtype=acc_dtype(x.dtype), device=x.device)
    var, inv = torch.empty_like(mean), torch.empty_like(mean)
    _stats_kernel[(g * c,)](x, mean, var, inv, n, c, s, b, eps, BLOCK=_BLOCK, ACC=tl_acc_dtype(x.dtype))
    y = torch.empty_like(x)
    numel = x.numel()
    _normalize_kernel[(triton.cdiv(numel, _BLOCK),)](
        x, y, mean if weight is None else weight, mean if bias is None else bias, mean, inv, numel, c, s, b,
        HAS_W=weight is not None, HAS_B=bias is not None, BLOCK=_BLOCK, DTYPE=TL_DTYPES[x.dtype],
        BF16_BY_HAND=INTERPRET)
    return y, mean, var, inv


def ghost_bn_bwd(grad, x, mean, invstd, weight, ghost_batch_size: int, need_grad_x: bool):
    """(grad_x or None, sdy [G, C], sdyxmu [G, C])."""
    check_tensor("ghost_bn", "grad", grad)
    check_tensor("ghost_bn", "x", x)
    n, c, s, b, g = _layout(x, ghost_batch_size)
    sdy, sdyxmu = torch.empty_like(mean), torch.empty_like(mean)
    _bwd_stats_kernel[(g * c,)](grad, x, mean, sdy, sdyxmu, n, c, s, b, BLOCK=_BLOCK)
    gx = None
    if need_grad_x:
        gx = torch.empty_like(x)
        numel = x.numel()
        _bwd_dx_kernel[(triton.cdiv(numel, _BLOCK),)](
            grad, x, gx, mean if weight is None else weight, mean, invstd, sdy, sdyxmu, numel, n, c, s, b,
            HAS_W=weight is not None, BLOCK=_BLOCK, DTYPE=TL_DTYPES[x.dtype], BF16_BY_HAND=INTERPRET)
    return gx, sdy, sdyxmu
