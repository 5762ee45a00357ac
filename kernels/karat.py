"""Fourier-KArAt, Triton kernels of the basis contraction (the Triton twin of csrc/karat/).

Per (batch x head) and a block of BLOCK_K query rows, FlashAttention-style: stream the key blocks of BLOCK_Q columns,
compute the score tile S = scale * Q_k K_q^T with tl.dot, one cos / sin of it, the harmonics m = 2..G by the
angle-addition recurrence

    cos((m+1) x) = cos(m x) cos x - sin(m x) sin x,   sin((m+1) x) = sin(m x) cos x + cos(m x) sin x,

and contract each harmonic tile with its coefficient block on the tensor cores:

    forward   z[k, p]  += sum_q cos(m S[k, q]) a[p, q, m] + sin(m S[k, q]) b[p, q, m]
    backward  E_c = g_z a_m^T, E_s = g_z b_m^T                                 [BLOCK_K, BLOCK_Q]
              g_S       = scale * sum_m m (E_s cos(m S) - E_c sin(m S))
              g_Q[k]   += g_S K_q            (the program's own rows: a register accumulator)
              g_K[q]   += g_S^T Q_k          (atomic: every row block adds to every key block)
              g_a[p, q, m] += sum_k cos(m S) g_z,  g_b likewise with sin   (atomic over rows and batch)

Nothing of size N x N outlives a tile. Coefficients arrive packed as C [H, r, 2 G N] (C[h, p, (t G + m - 1) N + q],
t = 0 for a, 1 for b). Arithmetic in float32 (IEEE dot products, no TF32), float64 for float64 inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_K = 32
BLOCK_Q = 32


@triton.jit
def _karat_fwd_kernel(Q, K, C, Z, N, D, R, H, scale, G: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr):
    bh = tl.program_id(0)
    h = bh % H
    rows = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    d = tl.arange(0, BLOCK_D)
    p = tl.arange(0, BLOCK_R)
    L = 2 * G * N
    q_tile = tl.load(Q + bh * N * D + rows[:, None] * D + d[None, :], mask=(rows[:, None] < N) & (d[None, :] < D),
                     other=0.0)
    acc = tl.zeros((BLOCK_K, BLOCK_R), dtype=q_tile.dtype)
    for q0 in range(0, N, BLOCK_Q):
        cols = q0 + tl.arange(0, BLOCK_Q)
        k_tile = tl.load(K + bh * N * D + cols[:, None] * D + d[None, :],
                         mask=(cols[:, None] < N) & (d[None, :] < D), other=0.0)
        S = tl.dot(q_tile, tl.trans(k_tile), input_precision=PRECISION) * scale
        c1 = tl.cos(S)
        s1 = tl.sin(S)
        cm = c1
        sm = s1
        coef = C + h * R * L + p[None, :] * L + cols[:, None]  # [BLOCK_Q, BLOCK_R] view of harmonic 1's a
        cmask = (cols[:, None] < N) & (p[None, :] < R)
        for m in tl.static_range(G):
            if m > 0:
                cm, sm = cm * c1 - sm * s1, sm * c1 + cm * s1
            ca = tl.load(coef + m * N, mask=cmask, other=0.0)
            cb = tl.load(coef + (G + m) * N, mask=cmask, other=0.0)
            acc += tl.dot(cm, ca, input_precision=PRECISION) + tl.dot(sm, cb, input_precision=PRECISION)
    tl.store(Z + bh * N * R + rows[:, None] * R + p[None, :], acc, mask=(rows[:, None] < N) & (p[None, :] < R))


@triton.jit
def _karat_bwd_kernel(GZ, Q, K, C, GQ, GK, GC, N, D, R, H, scale, G: tl.constexpr, BLOCK_K: tl.constexpr,
                      BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr):
    bh = tl.program_id(0)
    h = bh % H
    rows = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    d = tl.arange(0, BLOCK_D)
    p = tl.arange(0, BLOCK_R)
    L = 2 * G * N
    qmask = (rows[:, None] < N) & (d[None, :] < D)
    q_tile = tl.load(Q + bh * N * D + rows[:, None] * D + d[None, :], mask=qmask, other=0.0)
    gz = tl.load(GZ + bh * N * R + rows[:, None] * R + p[None, :], mask=(rows[:, None] < N) & (p[None, :] < R),
                 other=0.0)
    gq = tl.zeros((BLOCK_K, BLOCK_D), dtype=q_tile.dtype)
    for q0 in range(0, N, BLOCK_Q):
        cols = q0 + tl.arange(0, BLOCK_Q)
        kmask = (cols[:, None] < N) & (d[None, :] < D)
        k_tile = tl.load(K + bh * N * D + cols[:, None] * D + d[None, :], mask=kmask, other=0.0)
        S = tl.dot(q_tile, tl.trans(k_tile), input_precision=PRECISION) * scale
        c1 = tl.cos(S)
        s1 = tl.sin(S)
        cm = c1
        sm = s1
        gS = tl.zeros((BLOCK_K, BLOCK_Q), dtype=q_tile.dtype)
        coef = h * R * L + p[None, :] * L + cols[:, None]
        cmask = (cols[:, None] < N) & (p[None, :] < R)
        for m in tl.static_range(G):
            if m > 0:
                cm, sm = cm * c1 - sm * s1, sm * c1 + cm * s1
            ca = tl.load(C + coef + m * N, mask=cmask, other=0.0)
            cb = tl.load(C + coef + (G + m) * N, mask=cmask, other=0.0)
            e_c = tl.dot(gz, tl.trans(ca), input_precision=PRECISION)
            e_s = tl.dot(gz, tl.trans(cb), input_precision=PRECISION)
            gS += (m + 1) * (e_s * cm - e_c * sm)
            tl.atomic_add(GC + coef + m * N, tl.dot(tl.trans(cm), gz, input_precision=PRECISION), mask=cmask)
            tl.atomic_add(GC + coef + (G + m) * N, tl.dot(tl.trans(sm), gz, input_precision=PRECISION), mask=cmask)
        gS = gS * scale
        gq += tl.dot(gS, k_tile, input_precision=PRECISION)
        tl.atomic_add(GK + bh * N * D + cols[:, None] * D + d[None, :],
                      tl.dot(tl.trans(gS), q_tile, input_precision=PRECISION), mask=kmask)
    tl.store(GQ + bh * N * D + rows[:, None] * D + d[None, :], gq, mask=qmask)


def _meta(q: torch.Tensor, r: int) -> dict:
    return {"BLOCK_K": BLOCK_K, "BLOCK_Q": BLOCK_Q, "BLOCK_D": max(16, triton.next_power_of_2(q.shape[-1])),
            "BLOCK_R": max(16, triton.next_power_of_2(r)),
            "PRECISION": "ieee"}


def karat_fwd(q: torch.Tensor, k: torch.Tensor, C: torch.Tensor, G: int, scale: float) -> torch.Tensor:
    """z [B, H, N, r] from contiguous q, k [B, H, N, D] and packed C [H, r, 2 G N], all in the arithmetic dtype."""
    B, H, N, D = q.shape
    r = C.shape[1]
    z = torch.empty((B, H, N, r), dtype=q.dtype, device=q.device)
    if z.numel():
        _karat_fwd_kernel[(B * H, triton.cdiv(N, BLOCK_K))](q, k, C, z, N, D, r, H, float(scale), G=G, **_meta(q, r))
    return z


def karat_bwd(gz: torch.Tensor, q: torch.Tensor, k: torch.Tensor, C: torch.Tensor, G: int,
              scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(g_q, g_k, g_C) of :func:`karat_fwd`, same layouts and dtype."""
    B, H, N, D = q.shape
    r = C.shape[1]
    gq = torch.empty_like(q)
    gk = torch.zeros_like(k)
    gC = torch.zeros_like(C)
    if gz.numel():
        _karat_bwd_kernel[(B * H, triton.cdiv(N, BLOCK_K))](gz, q, k, C, gq, gk, gC, N, D, r, H, float(scale), G=G,
                                                            **_meta(q, r))
    else:
        gq.zero_()
    return gq, gk, gC
