"""Weighted convolution, Triton kernels of the density-weight op (the Triton twin of csrc/wconv/wconv_kernel.cu).

Weight W: [C_out, C_in/groups, K_0, .., K_{d-1}] viewed as [rows, taps] (taps = prod K_a, row-major). Per axis a
(K_a = 2 m_a + 1; missing axes have K = 1):
  alpha_a = [den_a[0] .. den_a[m_a-1], 1, den_a[m_a-1] .. den_a[0]],   Phi[t] = alpha_0[t_0] alpha_1[t_1] alpha_2[t_2]
  forward   W~ = W * Phi
  backward  dW = dW~ * Phi (the forward kernel applied to dW~ when d(den) is not needed);
            S[t] = sum_r dW~[r, t] W[r, t]  (one partial per program, summed by the launcher),
            dalpha_a[k] = sum_{t: t_a = k} S[t] prod_{b != a} alpha_b[t_b],   dden_a[j] = dalpha_a[j] + dalpha_a[K_a-1-j]
den: per axis (packed, axis a at offset m_0 + .. + m_{a-1}) or shared by every axis (all offsets 0). Arithmetic in
float32 (float64 for float64 weights); den arrives in that type. Phi is computed per element from den (three cached
loads), so nothing but W~ / dW is allocated.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import INTERPRET, TL_DTYPES, check_tensor, to_storage

_SCALE_BLOCK = 1024
_BWD_TILE = 2048  # elements of one backward program's [BLOCK_R, TAPS_PAD] tile


def geometry(shape, den_numel: int) -> dict:
    """K, m and den offsets of the three (padded) kernel axes, taps and rows, for a weight of ``shape``."""
    ks = list(shape[2:]) + [1] * (5 - len(shape))
    ms = [(k - 1) // 2 for k in ks]
    d = len(shape) - 2
    per_axis = den_numel == sum(ms[:d])
    offs = [sum(ms[:a]) if per_axis else 0 for a in range(3)]
    taps = ks[0] * ks[1] * ks[2]
    rows = 0 if taps == 0 else int(torch.Size(shape).numel()) // taps
    return {"K": ks, "M": ms, "OFF": offs, "taps": taps, "rows": rows, "axes": d}


@triton.jit
def _alpha(den_ptr, t, K, M, OFF, mask):
    j = tl.where(t < M, t, K - 1 - t)
    return tl.load(den_ptr + OFF + j, mask=mask & (j < M), other=1.0)  # the centre (j == M) is 1


@triton.jit
def _phi(den_ptr, tap, K0, K1, K2, M0, M1, M2, OFF0, OFF1, OFF2, mask):
    t2 = tap % K2
    t1 = (tap // K2) % K1
    t0 = tap // (K2 * K1)
    return (_alpha(den_ptr, t0, K0, M0, OFF0, mask) * _alpha(den_ptr, t1, K1, M1, OFF1, mask)
            * _alpha(den_ptr, t2, K2, M2, OFF2, mask))


@triton.jit
def _scale_kernel(in_ptr, out_ptr, den_ptr, n, TAPS, K0, K1, K2, M0, M1, M2, OFF0, OFF1, OFF2,
                  BLOCK: tl.constexpr, DTYPE: tl.constexpr, BF16_BY_HAND: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    phi = _phi(den_ptr, offs % TAPS, K0, K1, K2, M0, M1, M2, OFF0, OFF1, OFF2, mask)
    x = tl.load(in_ptr + offs, mask=mask, other=0.0).to(phi.dtype)
    tl.store(out_ptr + offs, to_storage(x * phi, DTYPE, BF16_BY_HAND), mask=mask)


@triton.jit
def _bwd_kernel(g_ptr, w_ptr, den_ptr, gw_ptr, partial_ptr, rows, TAPS, K0, K1, K2, M0, M1, M2, OFF0, OFF1, OFF2,
                BLOCK_R: tl.constexpr, TAPS_PAD: tl.constexpr, GRAD_W: tl.constexpr, DTYPE: tl.constexpr,
                BF16_BY_HAND: tl.constexpr):
    pid = tl.program_id(0)
    r = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    t = tl.arange(0, TAPS_PAD)[None, :]
    tap_ok = t < TAPS
    mask = (r < rows) & tap_ok
    offs = r * TAPS + t
    phi = _phi(den_ptr, t, K0, K1, K2, M0, M1, M2, OFF0, OFF1, OFF2, tap_ok)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(phi.dtype)
    if GRAD_W:
        tl.store(gw_ptr + offs, to_storage(g * phi, DTYPE, BF16_BY_HAND), mask=mask)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(phi.dtype)
    s = tl.sum(g * w, axis=0)
    tl.store(partial_ptr + pid * TAPS_PAD + tl.arange(0, TAPS_PAD), s)


def _geo_args(geo):
    return (*geo["K"], *geo["M"], *geo["OFF"])


def wconv_scale(x: torch.Tensor, den: torch.Tensor, out: torch.Tensor) -> None:
    """out = x * Phi (x: a weight-shaped tensor, contiguous; den: 1-D, in the arithmetic type)."""
    check_tensor("wconv", "x", x)
    check_tensor("wconv", "out", out, dtypes=None)
    check_tensor("wconv", "den", den, (torch.float32, torch.float64))
    geo = geometry(x.shape, den.numel())
    n = x.numel()
    if n == 0:
        return
    grid = (triton.cdiv(n, _SCALE_BLOCK),)
    _scale_kernel[grid](x, out, den, n, geo["taps"], *_geo_args(geo), BLOCK=_SCALE_BLOCK, DTYPE=TL_DTYPES[x.dtype],
                        BF16_BY_HAND=INTERPRET)


def den_grad_from_tap_sums(s: torch.Tensor, den: torch.Tensor, geo: dict) -> torch.Tensor:
    """d(den) from the per-tap sums S (float64 maths; returned in den's dtype)."""
    ks, ms, d = geo["K"], geo["M"], geo["axes"]
    s = s.double().reshape(ks)
    den64 = den.double()
    alphas = []
    for a in range(3):
        part = den64[geo["OFF"][a]:geo["OFF"][a] + ms[a]]
        alphas.append(torch.cat([part, torch.ones(1, dtype=torch.float64, device=den.device), part.flip(0)]))
    grad = torch.zeros(den.numel(), dtype=torch.float64, device=den.device)
    for a in range(d):
        weights = [alphas[b] if b != a else torch.ones_like(alphas[a]) for b in range(3)]
        dalpha = torch.einsum("ijk,i,j,k->" + "ijk"[a], s, *weights)
        grad[geo["OFF"][a]:geo["OFF"][a] + ms[a]] += dalpha[:ms[a]] + dalpha.flip(0)[:ms[a]]
    return grad.to(den.dtype)


def wconv_bwd(grad: torch.Tensor, weight: torch.Tensor, den: torch.Tensor, grad_w: torch.Tensor | None) -> torch.Tensor:
    """d(den) (den's dtype), and grad_w = grad * Phi in the same pass when grad_w is given."""
    check_tensor("wconv", "grad", grad)
    check_tensor("wconv", "weight", weight)
    check_tensor("wconv", "den", den, (torch.float32, torch.float64))
    if grad_w is not None:
        check_tensor("wconv", "grad_w", grad_w, dtypes=None)
    geo = geometry(grad.shape, den.numel())
    taps_pad = triton.next_power_of_2(max(geo["taps"], 1))
    block_r = max(1, _BWD_TILE // taps_pad)
    programs = triton.cdiv(geo["rows"], block_r)
    if programs == 0:
        return torch.zeros_like(den)
    partial = torch.empty((programs, taps_pad), dtype=den.dtype, device=den.device)
    _bwd_kernel[(programs,)](grad, weight, den, grad if grad_w is None else grad_w, partial, geo["rows"], geo["taps"],
                             *_geo_args(geo), BLOCK_R=block_r, TAPS_PAD=taps_pad, GRAD_W=grad_w is not None,
                             DTYPE=TL_DTYPES[grad.dtype], BF16_BY_HAND=INTERPRET)
    s = partial.double().sum(0)[:geo["taps"]]
    return den_grad_from_tap_sums(s, den, geo)
