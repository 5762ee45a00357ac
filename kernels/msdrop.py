"""Multi-sample dropout head, Triton kernels (the Triton twin of csrc/msdrop/msdrop_kernel.cu; the GEMMs are torch.mm).

  mask      keep(k, i, d) = (fmix32(((k B + i) D + d) ^ key) >> 8) >= ceil(p 2^24), s = 1 / (1 - p)
  make_x    X[(k B + i), d] = h[i, d] keep s                         [M B, D]
  ce        per row r: lse_r = log sum_c exp(z_rc), loss_r = lse_r - z_r,y(r mod B)
  grad      G = (softmax(z) - onehot(y)) dloss / (M B)
  masked    dh[i, d] = sum_k keep(k, i, d) s (G W)[(k B + i), d]
key = fmix32(seed_lo ^ fmix32(seed_hi ^ 0x9e3779b9)), fmix32 murmur3's finaliser, all in uint32 (wrapping).
Arithmetic in float32 (float64 for float64 h).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pyfast._dtypes import acc_dtype

from .common import INTERPRET, TL_DTYPES, check_tensor, tl_acc_dtype, to_storage

_BLOCK = 1024


@triton.jit
def _fmix32(h):
    h ^= h >> 16
    h *= 0x85EBCA6B
    h ^= h >> 13
    h *= 0xC2B2AE35
    h ^= h >> 16
    return h


@triton.jit
def _key(seed_ptr):
    s = tl.load(seed_ptr)
    lo = (s & 0xFFFFFFFF).to(tl.uint32)
    hi = ((s >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return _fmix32(lo ^ _fmix32(hi ^ 0x9E3779B9))


@triton.jit
def _make_x_kernel(h_ptr, x_ptr, seed_ptr, n, B, D, THRESHOLD, scale, BLOCK: tl.constexpr, DTYPE: tl.constexpr,
                   ACC: tl.constexpr, BF16_BY_HAND: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    key = _key(seed_ptr)
    kept = (_fmix32(offs.to(tl.uint32) ^ key) >> 8) >= THRESHOLD
    r = offs // D
    v = tl.load(h_ptr + (r % B) * D + offs % D, mask=mask, other=0.0).to(ACC)
    tl.store(x_ptr + offs, to_storage(tl.where(kept, v * scale, 0.0), DTYPE, BF16_BY_HAND), mask=mask)


@triton.jit
def _masked_sum_kernel(gx_ptr, gh_ptr, seed_ptr, n, M, THRESHOLD, scale, BLOCK: tl.constexpr, DTYPE: tl.constexpr,
                       ACC: tl.constexpr, BF16_BY_HAND: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    key = _key(seed_ptr)
    acc = tl.zeros((BLOCK,), dtype=ACC)
    for k in range(M):
        j = k * n + offs
        kept = (_fmix32(j.to(tl.uint32) ^ key) >> 8) >= THRESHOLD
        v = tl.load(gx_ptr + j, mask=mask, other=0.0).to(ACC)
        acc += tl.where(kept, v * scale, 0.0)
    tl.store(gh_ptr + offs, to_storage(acc, DTYPE, BF16_BY_HAND), mask=mask)


@triton.jit
def _ce_kernel(z_ptr, y_ptr, lse_ptr, rows_ptr, C, B, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    z = tl.load(z_ptr + r * C + c, mask=c < C, other=-float("inf")).to(ACC)
    mx = tl.max(z, axis=0)
    lse = mx + tl.log(tl.sum(tl.exp(z - mx), axis=0))
    y = tl.load(y_ptr + r % B)
    zy = tl.sum(tl.where(c == y, z, 0.0), axis=0)
    tl.store(lse_ptr + r, lse)
    tl.store(rows_ptr + r, (lse - zy).to(tl.float64))


@triton.jit
def _grad_kernel(z_ptr, lse_ptr, y_ptr, gl_ptr, g_ptr, R, C, B, BLOCK_C: tl.constexpr, DTYPE: tl.constexpr,
                 BF16_BY_HAND: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    lse = tl.load(lse_ptr + r)
    z = tl.load(z_ptr + r * C + c, mask=c < C, other=0.0).to(lse.dtype)
    y = tl.load(y_ptr + r % B)
    scale = tl.load(gl_ptr) / R
    g = (tl.exp(z - lse) - tl.where(c == y, 1.0, 0.0)) * scale
    tl.store(g_ptr + r * C + c, to_storage(g, DTYPE, BF16_BY_HAND), mask=c < C)


def make_x(h: torch.Tensor, seed: torch.Tensor, num_samples: int, thr: int, scale: float) -> torch.Tensor:
    """X [M B, D]: the M masked, rescaled copies of h stacked."""
    check_tensor("msdrop", "h", h)
    b, d = h.shape
    x = torch.empty(num_samples * b, d, dtype=h.dtype, device=h.device)
    n = x.numel()
    _make_x_kernel[(triton.cdiv(n, _BLOCK),)](h, x, seed, n, b, d, thr, scale, BLOCK=_BLOCK,
                                              DTYPE=TL_DTYPES[h.dtype], ACC=tl_acc_dtype(h.dtype),
                                              BF16_BY_HAND=INTERPRET)
    return x


def masked_sum(gx: torch.Tensor, seed: torch.Tensor, num_samples: int, batch: int, thr: int,
               scale: float) -> torch.Tensor:
    """dh [B, D] = sum_k keep_k s gx_k for gx [M B, D]."""
    check_tensor("msdrop", "gx", gx)
    d = gx.shape[1]
    gh = torch.empty(batch, d, dtype=gx.dtype, device=gx.device)
    n = gh.numel()
    _masked_sum_kernel[(triton.cdiv(n, _BLOCK),)](gx, gh, seed, n, num_samples, thr, scale, BLOCK=_BLOCK,
                                                  DTYPE=TL_DTYPES[gx.dtype], ACC=tl_acc_dtype(gx.dtype),
                                                  BF16_BY_HAND=INTERPRET)
    return gh


def cross_entropy_rows(logits: torch.Tensor, target: torch.Tensor, batch: int):
    """(lse [R] in the arithmetic type, per-row loss [R] float64) of logits [R, C]."""
    check_tensor("msdrop", "logits", logits)
    r, c = logits.shape
    lse = torch.empty(r, dtype=acc_dtype(logits.dtype), device=logits.device)
    rows = torch.empty(r, dtype=torch.float64, device=logits.device)
    _ce_kernel[(r,)](logits, target, lse, rows, c, batch, BLOCK_C=triton.next_power_of_2(c),
                     ACC=tl_acc_dtype(logits.dtype))
    return lse, rows


def grad_logits(logits: torch.Tensor, lse: torch.Tensor, target: torch.Tensor, grad_loss: torch.Tensor,
                batch: int) -> torch.Tensor:
    """G [R, C] = (softmax - onehot) dloss / R."""
    check_tensor("msdrop", "logits", logits)
    r, c = logits.shape
    g = torch.empty_like(logits)
    _grad_kernel[(r,)](logits, lse, target, grad_loss, g, r, c, batch, BLOCK_C=triton.next_power_of_2(c),
                       DTYPE=TL_DTYPES[logits.dtype], BF16_BY_HAND=INTERPRET)
    return g
