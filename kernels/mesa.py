"""Mesa group-wise 8-bit activation storage, Triton kernels (the Triton twin of csrc/mesa/mesa_kernel.cu).

Grouping: x is viewed as [outer, G, inner] around its group axis; group g owns x[:, g, :]. Per group, from the finite
values of the batch (r = max - min, m = min), float32, no FMA:
  not initialized: alpha' = r, beta' = m;  update: alpha' = lam alpha + (1-lam) r, beta' = lam beta + (1-lam) m;
  otherwise, and for a group without finite values, the estimates stay.
Quantize: s = (L-1) / alpha', t = (x - beta') s [+ (u - 1/2)], q = round_half_even(min(max(t, 0), L-1)) with
max(t, 0) written t > 0 ? t : 0 (NaN -> 0). u is the counter-based hash of (seed, linear index) defined in
pyfast/reference/mesa.py, so the codes equal the C++ kernels' and the reference's bit for bit.
Dequantize: x_hat = q / s + beta; a code above L-1 decodes to NaN (the kernel cannot raise; pyfast.ops.mesa's
mesa_dequantize checks the codes first).

Three launches per quantize: partial min / max per (chunk, group) over a 2-D grid, one program that folds the partials
into the new estimates, and the element-wise codes (coalesced over the linear index). No full-size temporary.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import INTERPRET, TL_DTYPES, to_storage

_BLOCK = 128 if INTERPRET else 1024
# Elements of one group per reduction program: 4096 keeps a ViT activation's min / max spread over hundreds of programs,
# where 2^16 left most of a large GPU idle (bench/RESULTS.md, "Launch choices").
_CHUNK = 1 << 12


@triton.jit
def _div(a, b, INTERPRET: tl.constexpr):
    # IEEE division: numpy's in the interpreter; on a GPU div_rn (plain '/' may lower to an approximate divide).
    if INTERPRET:
        out = a / b
    else:
        out = tl.math.div_rn(a, b)
    return out


@triton.jit
def _h32(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _minmax_kernel(x_ptr, mins_ptr, maxs_ptr, G, inner, M, chunk, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    g = tl.program_id(1)
    start = c.to(tl.int64) * chunk
    end = tl.minimum(start + chunk, M)
    mn = tl.full([BLOCK], float("inf"), tl.float32)
    mx = tl.full([BLOCK], float("-inf"), tl.float32)
    for off in range(start, end, BLOCK):
        m = off + tl.arange(0, BLOCK).to(tl.int64)
        mask = m < end
        o = m // inner
        idx = (o * G + g) * inner + (m - o * inner)
        v = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        fin = mask & (tl.abs(v) <= 3.4028234663852886e38)
        mn = tl.minimum(mn, tl.where(fin, v, float("inf")))
        mx = tl.maximum(mx, tl.where(fin, v, float("-inf")))
    n_chunks = tl.num_programs(0)
    tl.store(mins_ptr + g * n_chunks + c, tl.min(mn, axis=0))
    tl.store(maxs_ptr + g * n_chunks + c, tl.max(mx, axis=0))


@triton.jit
def _finalize_kernel(mins_ptr, maxs_ptr, n_chunks, clip_ptr, shift_ptr, init_ptr, clip_out_ptr, shift_out_ptr, G,
                     lam, one_minus, UPDATE: tl.constexpr, BLOCK_C: tl.constexpr):
    g = tl.program_id(0)
    mn = tl.full([BLOCK_C], float("inf"), tl.float32)
    mx = tl.full([BLOCK_C], float("-inf"), tl.float32)
    for off in range(0, n_chunks, BLOCK_C):
        c = off + tl.arange(0, BLOCK_C)
        mask = c < n_chunks
        mn = tl.minimum(mn, tl.load(mins_ptr + g * n_chunks + c, mask=mask, other=float("inf")))
        mx = tl.maximum(mx, tl.load(maxs_ptr + g * n_chunks + c, mask=mask, other=float("-inf")))
    lo = tl.min(mn, axis=0)
    hi = tl.max(mx, axis=0)
    empty = ~(lo <= hi)
    m = lo
    r = hi - lo
    clip = tl.load(clip_ptr + g)
    shift = tl.load(shift_ptr + g)
    if UPDATE:
        # lam and one_minus are float32 kernel arguments on a GPU; in the interpreter Python floats, which numpy
        # (NEP 50) rounds to float32 when they meet the float32 estimates: the same products either way.
        new_clip = clip * lam + r * one_minus
        new_shift = shift * lam + m * one_minus
    else:
        new_clip = clip
        new_shift = shift
    init = tl.load(init_ptr) != 0
    # A group without finite values keeps its estimates (see csrc/mesa/mesa.h).
    tl.store(clip_out_ptr + g, tl.where(empty, clip, tl.where(init, new_clip, r)))
    tl.store(shift_out_ptr + g, tl.where(empty, shift, tl.where(init, new_shift, m)))


@triton.jit
def _quantize_kernel(x_ptr, q_ptr, clip_ptr, shift_ptr, seed_ptr, numel, G, inner, lm1, STOCHASTIC: tl.constexpr,
                     INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = i < numel
    g = (i // inner) % G
    beta = tl.load(shift_ptr + g, mask=mask, other=0.0)
    s = _div(tl.full([BLOCK], lm1, tl.float32), tl.load(clip_ptr + g, mask=mask, other=1.0), INTERPRET)
    x = tl.load(x_ptr + i, mask=mask, other=0.0).to(tl.float32)
    t = (x - beta) * s
    if STOCHASTIC:
        seed = tl.load(seed_ptr) + tl.zeros([BLOCK], tl.int64)  # block-shaped: no scalar overflow warnings
        seed_lo = (seed & 0xFFFFFFFF).to(tl.uint32)
        seed_hi = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
        key = _h32(seed_lo ^ _h32(seed_hi ^ 0x9E3779B9))
        i_lo = (i & 0xFFFFFFFF).to(tl.uint32)
        i_hi = (i >> 32).to(tl.uint32)
        h = _h32(_h32(i_lo ^ key) + i_hi * 0x85EBCA6B)
        t = t + ((h >> 8).to(tl.float32) * 5.9604644775390625e-08 - 0.5)
    t = tl.where(t > 0.0, t, 0.0)
    t = tl.where(t < lm1, t, lm1)
    r = (t + 8388608.0) - 8388608.0  # round half to even (0 <= t < 2^22)
    tl.store(q_ptr + i, r.to(tl.uint8), mask=mask)


@triton.jit
def _dequantize_kernel(q_ptr, out_ptr, clip_ptr, shift_ptr, numel, G, inner, lm1, DTYPE: tl.constexpr,
                       INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = i < numel
    g = (i // inner) % G
    beta = tl.load(shift_ptr + g, mask=mask, other=0.0)
    s = _div(tl.full([BLOCK], lm1, tl.float32), tl.load(clip_ptr + g, mask=mask, other=1.0), INTERPRET)
    q = tl.load(q_ptr + i, mask=mask, other=0).to(tl.float32)
    x = tl.where(q > lm1, float("nan"), _div(q, s, INTERPRET) + beta)
    tl.store(out_ptr + i, to_storage(x, DTYPE, INTERPRET), mask=mask)


def _grouping(shape, dim: int, groups: int) -> tuple[int, int]:
    dim = dim % len(shape)
    outer = 1
    for s in shape[:dim]:
        outer *= s
    inner = shape[dim] // groups
    for s in shape[dim + 1:]:
        inner *= s
    return outer, inner


# enable_fp_fusion=False: no multiply-add contraction, so a GPU rounds every step like the C++ kernels.
_LAUNCH = {} if INTERPRET else {"enable_fp_fusion": False}


def quantize(x, clip_val, shift, initialized, seed, dim, levels, ema_decay, update, stochastic):
    """(q, clip_val', shift') for contiguous x; see the module docstring."""
    groups = clip_val.numel()
    outer, inner = _grouping(x.shape, dim, groups)
    M = outer * inner
    n_chunks = max(1, triton.cdiv(M, _CHUNK))
    mins = torch.empty((groups, n_chunks), dtype=torch.float32, device=x.device)
    maxs = torch.empty_like(mins)
    q = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    clip_out, shift_out = torch.empty_like(clip_val), torch.empty_like(shift)
    _minmax_kernel[(n_chunks, groups)](x, mins, maxs, groups, inner, M, _CHUNK, BLOCK=_BLOCK, **_LAUNCH)
    _finalize_kernel[(groups,)](
        mins, maxs, n_chunks, clip_val, shift, initialized.view(torch.uint8), clip_out, shift_out, groups,
        float(ema_decay), 1.0 - float(ema_decay), UPDATE=bool(update), BLOCK_C=64, **_LAUNCH)
    if x.numel():
        grid = (triton.cdiv(x.numel(), _BLOCK),)
        _quantize_kernel[grid](x, q, clip_out, shift_out, seed, x.numel(), groups, inner, float(levels - 1),
                               STOCHASTIC=bool(stochastic), INTERPRET=INTERPRET, BLOCK=_BLOCK, **_LAUNCH)
    return q, clip_out, shift_out


def dequantize(q, clip_val, shift, dim, levels, dtype):
    groups = clip_val.numel()
    _, inner = _grouping(q.shape, dim, groups)
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    if q.numel():
        grid = (triton.cdiv(q.numel(), _BLOCK),)
        _dequantize_kernel[grid](q, out, clip_val, shift, q.numel(), groups, inner, float(levels - 1),
                                 DTYPE=TL_DTYPES[dtype], INTERPRET=INTERPRET, BLOCK=_BLOCK, **_LAUNCH)
    return out
