"""CRReLU, Triton kernels: forward and backward (the Triton twin of csrc/crrelu/crrelu_kernel.cu).

  e(x) = exp(-x^2 / 2)
  forward   y = max(0, x) + eps x e(x)
  backward  dL/dx = g (1[x > 0] + eps (1 - x^2) e(x)),   dL/deps = sum g x e(x) over the elements that use eps

x is contiguous and viewed as [outer, C, inner] with C = eps.numel(); element i uses eps[(i // inner) % C].
Arithmetic in float32 (float64 for float64 inputs); eps arrives in that type. d(eps): for a shared eps each program
writes its partial sum and the launcher adds the partials in float64 (deterministic); per channel, the programs add
their terms with atomics into a float64 buffer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import INTERPRET, TL_DTYPES, check_tensor, to_storage

_BLOCK = 1024


@triton.jit
def _fwd_kernel(x_ptr, y_ptr, eps_ptr, n, C, INNER, BLOCK: tl.constexpr, DTYPE: tl.constexpr,
                BF16_BY_HAND: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    eps = tl.load(eps_ptr + (offs // INNER) % C, mask=mask, other=0.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(eps.dtype)
    e = tl.exp(-0.5 * x * x)
    y = tl.where(x > 0, x, 0.0) + eps * x * e
    tl.store(y_ptr + offs, to_storage(y, DTYPE, BF16_BY_HAND), mask=mask)


@triton.jit
def _bwd_kernel(g_ptr, x_ptr, eps_ptr, gx_ptr, geps_ptr, partial_ptr, n, C, INNER, BLOCK: tl.constexpr,
                GRAD_X: tl.constexpr, GRAD_EPS: tl.constexpr, SHARED: tl.constexpr, DTYPE: tl.constexpr,
                BF16_BY_HAND: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    c = (offs // INNER) % C
    eps = tl.load(eps_ptr + c, mask=mask, other=0.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(eps.dtype)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(eps.dtype)
    e = tl.exp(-0.5 * x * x)
    if GRAD_X:
        # (1 - x^2) e as e - x (x e): no (1 - inf) * 0 = NaN where x^2 overflows (csrc/crrelu/crrelu.h, grad_x).
        gx = g * (tl.where(x > 0, 1.0, 0.0) + eps * (e - x * (x * e)))
        tl.store(gx_ptr + offs, to_storage(gx, DTYPE, BF16_BY_HAND), mask=mask)
    if GRAD_EPS:
        term = tl.where(mask, g * x * e, 0.0)
        if SHARED:
            tl.store(partial_ptr + pid, tl.sum(term, axis=0))
        else:
            tl.atomic_add(geps_ptr + c, term.to(tl.float64), mask=mask)


def crrelu_fwd(x: torch.Tensor, eps: torch.Tensor, C: int, inner: int) -> torch.Tensor:
    """y = CRReLU(x); eps: [C] in the arithmetic type."""
    check_tensor("crrelu", "x", x)
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        _fwd_kernel[(triton.cdiv(n, _BLOCK),)](x, y, eps, n, C, inner, BLOCK=_BLOCK, DTYPE=TL_DTYPES[x.dtype],
                                               BF16_BY_HAND=INTERPRET)
    return y


def crrelu_bwd(grad: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, C: int, inner: int, need_grad_x: bool,
               need_grad_eps: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(grad_x or None, grad_eps [C] float64 or None)."""
    check_tensor("crrelu", "grad", grad)
    check_tensor("crrelu", "x", x)
    n = x.numel()
    gx = torch.empty_like(x) if need_grad_x else None
    geps = torch.zeros(C, dtype=torch.float64, device=x.device) if need_grad_eps else None
    if n == 0 or not (need_grad_x or need_grad_eps):
        return gx, geps
    programs = triton.cdiv(n, _BLOCK)
    shared = C == 1
    partial = torch.empty(programs if need_grad_eps and shared else 1, dtype=eps.dtype, device=x.device)
    _bwd_kernel[(programs,)](grad, x, eps, x if gx is None else gx, partial if geps is None else geps, partial, n, C,
                             inner, BLOCK=_BLOCK, GRAD_X=need_grad_x, GRAD_EPS=need_grad_eps, SHARED=shared,
                             DTYPE=TL_DTYPES[x.dtype], BF16_BY_HAND=INTERPRET)
    if need_grad_eps and shared:
        geps += partial.double().sum()
    return gx, geps
