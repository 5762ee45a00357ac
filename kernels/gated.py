"""Gated attention, Triton kernels (the Triton twin of csrc/gated/gated_kernel.cu; maths in csrc/gated/gated.h).

Gated class-attention core, per (b, h), with w, zp, attn, gzp, gs, gw in the arithmetic type (float32; float64 for
float64 x) and x [B, N1, C] in its own dtype::

    forward        attn[n] = softmax_n(x[n] . w),   zp = sum_n attn[n] x[n]
    backward (1)   gA[n] = x[n] . gzp,   gs = attn (gA - sum_n attn gA),   gw = sum_n gs[n] x[n],   zp again
    backward (2)   gx[b, n] = [n == 0] gx0[b] + sum_h (attn[h, n] gzp[h] + gs[h, n] w[h])

One program per (b, h) holds all N1 scores (BLOCK_N >= N1) and walks C in BLOCK_C chunks; backward (2) is one
program per (b, token block, channel block). The O(B C^2) GEMMs around the core are torch's (pyfast/ops/gated.py).

Gradient routing, in place, one program per block of elements::

    weight [O, I]: g *= 1 - m_out[o] m_in[i]      bias [O]: g *= 1 - m_out[o]
    embedding:     g *= (s_max / s) (cosh(clamp(s e, -c, c)) + 1) / (cosh(e) + 1)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import INTERPRET, TL_DTYPES, check_tensor, tl_acc_dtype, to_storage

_BLOCK_C = 64
_BLOCK = 1024


@triton.jit
def _core_fwd_kernel(x_ptr, w_ptr, attn_ptr, zp_ptr, N1, C, H, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                     ACC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    n = tl.arange(0, BLOCK_N)
    n_ok = n < N1
    xb = x_ptr + b * N1 * C
    s = tl.zeros([BLOCK_N], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        xt = tl.load(xb + n[:, None] * C + c[None, :], mask=n_ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
        wv = tl.load(w_ptr + pid * C + c, mask=c_ok, other=0.0)
        s += tl.sum(xt * wv[None, :], axis=1)
    s = tl.where(n_ok, s, float("-inf"))
    p = tl.exp(s - tl.max(s, axis=0))
    p = tl.where(n_ok, p, 0.0)
    p = p / tl.sum(p, axis=0)
    tl.store(attn_ptr + pid * N1 + n, p, mask=n_ok)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        xt = tl.load(xb + n[:, None] * C + c[None, :], mask=n_ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
        tl.store(zp_ptr + pid * C + c, tl.sum(p[:, None] * xt, axis=0), mask=c_ok)


@triton.jit
def _core_bwd1_kernel(x_ptr, attn_ptr, gzp_ptr, gs_ptr, gw_ptr, zp_ptr, N1, C, H, BLOCK_N: tl.constexpr,
                      BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    n = tl.arange(0, BLOCK_N)
    n_ok = n < N1
    xb = x_ptr + b * N1 * C
    p = tl.load(attn_ptr + pid * N1 + n, mask=n_ok, other=0.0)
    ga = tl.zeros([BLOCK_N], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        xt = tl.load(xb + n[:, None] * C + c[None, :], mask=n_ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
        gz = tl.load(gzp_ptr + pid * C + c, mask=c_ok, other=0.0)
        ga += tl.sum(xt * gz[None, :], axis=1)
    gs = p * (ga - tl.sum(p * ga, axis=0))
    tl.store(gs_ptr + pid * N1 + n, gs, mask=n_ok)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        xt = tl.load(xb + n[:, None] * C + c[None, :], mask=n_ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
        tl.store(gw_ptr + pid * C + c, tl.sum(gs[:, None] * xt, axis=0), mask=c_ok)
        tl.store(zp_ptr + pid * C + c, tl.sum(p[:, None] * xt, axis=0), mask=c_ok)


@triton.jit
def _core_bwd2_kernel(attn_ptr, gs_ptr, gzp_ptr, w_ptr, gx0_ptr, gx_ptr, N1, C, H, BLOCK_N: tl.constexpr,
                      BLOCK_C: tl.constexpr, ACC: tl.constexpr, DTYPE: tl.constexpr, BF16_BY_HAND: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    n_ok = n < N1
    c_ok = c < C
    g0 = tl.load(gx0_ptr + b * C + c, mask=c_ok, other=0.0)
    acc = tl.where(n[:, None] == 0, g0[None, :], 0.0).to(ACC)
    for h in range(H):
        row = (b * H + h)
        a = tl.load(attn_ptr + row * N1 + n, mask=n_ok, other=0.0)
        g = tl.load(gs_ptr + row * N1 + n, mask=n_ok, other=0.0)
        gz = tl.load(gzp_ptr + row * C + c, mask=c_ok, other=0.0)
        wv = tl.load(w_ptr + row * C + c, mask=c_ok, other=0.0)
        acc += a[:, None] * gz[None, :] + g[:, None] * wv[None, :]
    tl.store(gx_ptr + b * N1 * C + n[:, None] * C + c[None, :], to_storage(acc, DTYPE, BF16_BY_HAND),
             mask=n_ok[:, None] & c_ok[None, :])


@triton.jit
def _route_kernel(g_ptr, mo_ptr, mi_ptr, numel, cols, HAS_IN: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
                  DTYPE: tl.constexpr, BF16_BY_HAND: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    mo = tl.load(mo_ptr + offs // cols, mask=ok, other=0.0)
    if HAS_IN:
        mo = mo * tl.load(mi_ptr + offs % cols, mask=ok, other=0.0)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(ACC)
    tl.store(g_ptr + offs, to_storage(g * (1.0 - mo), DTYPE, BF16_BY_HAND), mask=ok)


@triton.jit
def _comp_kernel(g_ptr, e_ptr, numel, s, s_max, clamp, BLOCK: tl.constexpr, ACC: tl.constexpr, DTYPE: tl.constexpr,
                 BF16_BY_HAND: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    e = tl.load(e_ptr + offs, mask=ok, other=0.0).to(ACC)
    se = tl.minimum(tl.maximum(s * e, -clamp), clamp)
    num = 0.5 * (tl.exp(se) + tl.exp(-se)) + 1.0
    den = 0.5 * (tl.exp(e) + tl.exp(-e)) + 1.0
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(ACC)
    tl.store(g_ptr + offs, to_storage(g * ((s_max / s) * num / den), DTYPE, BF16_BY_HAND), mask=ok)


def _blocks(n1: int) -> tuple[int, int]:
    return max(16, triton.next_power_of_2(n1)), _BLOCK_C


def core_fwd(x: torch.Tensor, w: torch.Tensor, attn: torch.Tensor, zp: torch.Tensor) -> None:
    """attn [B, H, N1] and zp [B, H, C] from x [B, N1, C] and w [B, H, C] (written in place)."""
    B, N1, C = x.shape
    H = w.shape[1]
    check_tensor("gated", "x", x)
    for name, t, shape in (("w", w, (B, H, C)), ("attn", attn, (B, H, N1)), ("zp", zp, (B, H, C))):
        check_tensor("gated", name, t, (w.dtype,), shape)
    if B == 0:
        return
    block_n, block_c = _blocks(N1)
    _core_fwd_kernel[(B * H,)](x, w, attn, zp, N1, C, H, BLOCK_N=block_n, BLOCK_C=block_c, ACC=tl_acc_dtype(w.dtype))


def core_bwd1(x: torch.Tensor, attn: torch.Tensor, gzp: torch.Tensor, gs: torch.Tensor, gw: torch.Tensor,
              zp: torch.Tensor) -> None:
    """gs [B, H, N1], gw [B, H, C] and zp [B, H, C] (written in place) from x, attn and gzp."""
    B, N1, C = x.shape
    H = attn.shape[1]
    check_tensor("gated", "x", x)
    for name, t, shape in (("attn", attn, (B, H, N1)), ("gzp", gzp, (B, H, C)), ("gs", gs, (B, H, N1)),
                           ("gw", gw, (B, H, C)), ("zp", zp, (B, H, C))):
        check_tensor("gated", name, t, (attn.dtype,), shape)
    if B == 0:
        return
    block_n, block_c = _blocks(N1)
    _core_bwd1_kernel[(B * H,)](x, attn, gzp, gs, gw, zp, N1, C, H, BLOCK_N=block_n, BLOCK_C=block_c,
                                ACC=tl_acc_dtype(attn.dtype))


def core_bwd2(attn: torch.Tensor, gs: torch.Tensor, gzp: torch.Tensor, w: torch.Tensor, gx0: torch.Tensor,
              gx: torch.Tensor) -> None:
    """gx [B, N1, C] (x's dtype, written in place) from attn, gs, gzp, w and the query path's gx0 [B, C]."""
    B, N1, C = gx.shape
    H = attn.shape[1]
    check_tensor("gated", "gx", gx)
    for name, t, shape in (("attn", attn, (B, H, N1)), ("gs", gs, (B, H, N1)), ("gzp", gzp, (B, H, C)),
                           ("w", w, (B, H, C)), ("gx0", gx0, (B, C))):
        check_tensor("gated", name, t, (attn.dtype,), shape)
    if gx.numel() == 0:
        return
    block_n, block_c = 16, _BLOCK_C
    grid = (B, triton.cdiv(N1, block_n), triton.cdiv(C, block_c))
    _core_bwd2_kernel[grid](attn, gs, gzp, w, gx0, gx, N1, C, H, BLOCK_N=block_n, BLOCK_C=block_c,
                            ACC=tl_acc_dtype(attn.dtype), DTYPE=TL_DTYPES[gx.dtype], BF16_BY_HAND=INTERPRET)


def route(g: torch.Tensor, m_out: torch.Tensor, m_in: torch.Tensor | None) -> None:
    """g *= 1 - outer(m_out, m_in) (a weight [O, I]) or 1 - m_out (a bias [O], m_in None), in place; the masks are
    in the arithmetic type."""
    check_tensor("gated", "g", g)
    if g.numel() == 0:
        return
    cols = 1 if m_in is None else g.shape[1]
    _route_kernel[(triton.cdiv(g.numel(), _BLOCK),)](g, m_out, m_out if m_in is None else m_in, g.numel(), cols,
                                                     HAS_IN=m_in is not None, BLOCK=_BLOCK, ACC=tl_acc_dtype(g.dtype),
                                                     DTYPE=TL_DTYPES[g.dtype], BF16_BY_HAND=INTERPRET)


def compensate(g: torch.Tensor, e: torch.Tensor, s: float, s_max: float, clamp: float) -> None:
    """g *= (s_max / s) (cosh(clamp(s e, +-clamp)) + 1) / (cosh(e) + 1), in place (e: g's shape and dtype)."""
    check_tensor("gated", "g", g)
    check_tensor("gated", "e", e, (g.dtype,), g.shape)
    if g.numel() == 0:
        return
    _comp_kernel[(triton.cdiv(g.numel(), _BLOCK),)](g, e, g.numel(), float(s), float(s_max), float(clamp),
                                                    BLOCK=_BLOCK, ACC=tl_acc_dtype(g.dtype), DTYPE=TL_DTYPES[g.dtype],
                                                    BF16_BY_HAND=INTERPRET)
