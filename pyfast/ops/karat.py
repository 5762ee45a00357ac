"""Fourier-KArAt attention as torch custom ops: the basis contraction ``torch.ops.pyfast.karat_fwd`` / ``karat_bwd``
and the whole attention ``karat_attention`` (``karat_attention_fwd``, which also returns z', for its autograd) /
``karat_attention_bwd`` (C++ CPU and CUDA kernels), their Triton twins (``*_triton``), with fake kernels and
autograd, plus the public functions :func:`karat_basis` and :func:`karat_attention`.

The expensive part of ``W Phi(A) V`` is ``z = Phi(A) . coef``, a GEMM whose 2 G N long K-dimension is generated from
the scores; the kernels fuse it with ``A = scale q k^T`` and never materialise ``A`` or the basis (backward
recomputes them tile by tile from q and k, the only activations the op saves). The rest is small:
``sigma V = (z W^T) V = z (W^T V)`` is evaluated as ``z @ (W^T V)`` with ``W^T V: [B, H, r, D]``, so the ``N x N``
attention matrix ``sigma`` is never formed either. The whole attention is one op whose backward saves q, k, v and the
small ``z' = z + c0`` ``[B, H, N, r]`` only.
The maths is in :mod:`pyfast.reference.karat` and at the top of ``csrc/karat/karat.h``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyfast import _extension
from pyfast._dtypes import FLOAT_DTYPES, acc_dtype
from pyfast._numbers import is_finite, is_number
from pyfast.backends import resolve
from pyfast.reference.karat import karat_attention_ref, karat_z_ref

__all__ = ["karat_attention", "karat_basis"]


# --------------------------------------------------------------------------------------------------------------
# Fake kernels and autograd of the custom ops
# --------------------------------------------------------------------------------------------------------------


def _fwd_fake(q, k, a, b, scale):
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], a.shape[1]))


def _bwd_fake(grad_z, q, k, a, b, scale, recompute_z=False):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(a, memory_format=torch.contiguous_format),
            torch.empty_like(b, memory_format=torch.contiguous_format),
            _fwd_fake(q, k, a, b, scale) if recompute_z else q.new_empty((0,)))


def _setup_context(ctx, inputs, output):
    q, k, a, b, scale = inputs
    # q and k only (plus the coefficients, which are parameters): A and the basis are recomputed in backward.
    ctx.save_for_backward(q, k, a, b)
    ctx.scale = scale


def _make_backward(bwd_op):
    def backward(ctx, grad_z):
        q, k, a, b = ctx.saved_tensors
        gq, gk, ga, gb, _ = bwd_op(grad_z, q, k, a, b, ctx.scale)
        return gq, gk, ga, gb, None

    return backward


if _extension.has_cpp():
    torch.library.register_fake("pyfast::karat_fwd")(_fwd_fake)
    torch.library.register_fake("pyfast::karat_bwd")(_bwd_fake)
    torch.library.register_autograd("pyfast::karat_fwd", _make_backward(torch.ops.pyfast.karat_bwd),
                                    setup_context=_setup_context)


def pack_coef(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``a, b [H, r, N, G] -> C [H, r, 2 G N]`` with ``C[h, p, (t G + m - 1) N + q] = (b if t else a)[h, p, q, m-1]``:
    the kernels' K-dimension order (cos block, then sin block; harmonic-major, q contiguous)."""
    H, r, N, G = a.shape
    return torch.stack((a, b), 2).permute(0, 1, 2, 4, 3).to(dtype).contiguous().view(H, r, 2 * G * N)


def unpack_coef(gC: torch.Tensor, shape, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse layout of :func:`pack_coef`: ``[H, r, 2 G N] -> (g_a, g_b) [H, r, N, G]`` in ``dtype``."""
    H, r, N, G = shape
    g = gC.view(H, r, 2, G, N).permute(0, 1, 2, 4, 3)
    return g[:, :, 0].to(dtype).contiguous(), g[:, :, 1].to(dtype).contiguous()


# Triton twins: torch.library.custom_op (not triton_op), so opcheck and torch.compile(fullgraph=True) also pass
# under TRITON_INTERPRET=1 (DESIGN.md, build facts). Same schema as the C++ ops; a test enforces the parity.


@torch.library.custom_op("pyfast::karat_fwd_triton", mutates_args=())
def karat_fwd_triton(q: torch.Tensor, k: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    from pyfast._triton import karat as kernels  # triton is optional: imported on first use

    acc = acc_dtype(q.dtype)
    z = kernels.karat_fwd(q.to(acc).contiguous(), k.to(acc).contiguous(), pack_coef(a, b, acc), a.shape[-1], scale)
    return z.to(q.dtype)


@torch.library.custom_op("pyfast::karat_bwd_triton", mutates_args=())
def karat_bwd_triton(grad_z: torch.Tensor, q: torch.Tensor, k: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                     scale: float, recompute_z: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from pyfast._triton import karat as kernels

    acc = acc_dtype(q.dtype)
    q_acc, k_acc, C = q.to(acc).contiguous(), k.to(acc).contiguous(), pack_coef(a, b, acc)
    gq, gk, gC = kernels.karat_bwd(grad_z.to(acc).contiguous(), q_acc, k_acc, C, a.shape[-1], scale)
    ga, gb = unpack_coef(gC, a.shape, a.dtype)
    # z by a second pass of the forward kernel (the C++ ops fold it into the backward tiles)
    z = kernels.karat_fwd(q_acc, k_acc, C, a.shape[-1], scale).to(q.dtype) if recompute_z else q.new_empty((0,))
    return gq.to(q.dtype), gk.to(k.dtype), ga, gb.to(b.dtype), z


karat_fwd_triton.register_fake(_fwd_fake)
karat_bwd_triton.register_fake(_bwd_fake)
karat_fwd_triton.register_autograd(_make_backward(torch.ops.pyfast.karat_bwd_triton), setup_context=_setup_context)


# The whole attention as one op per kernel family, so that autograd saves q, k, v and z' [B, H, N, r] only: backward
# rebuilds U = W^T V (a small GEMM) instead of keeping U [B, H, r, D] and a batch-expanded copy of W alive between
# forward and backward, and takes z' = z + c0 (r / D of q's size) from the forward instead of recomputing z (that took
# 18 % of the CPU basis backward at ViT-Tiny shape). pyfast::karat_attention (with karat_attention_fwd, which also
# returns z', for its autograd) and karat_attention_bwd are C++ ops, one kernel for CPU and CUDA
# (csrc/karat/karat_attention.cpp: batched GEMMs around the basis ops, no Python on the hot path); the Triton twins
# below are the same composition in Python around the Triton basis ops.


def _harmonic_slots(a, b, constant_term: bool):
    """a, b restricted to the harmonics m = 1..G (slot 0 is the m = 0 constant term when there is one)."""
    return (a[..., 1:], b[..., 1:]) if constant_term else (a, b)


def _with_constant_term(z_basis, a, constant_term: bool, acc):
    """z' = z + c0 in the accumulation dtype, c0[p] = sum_q a[..., p, q, 0] when there is a constant term."""
    z = z_basis.to(acc)
    return z + a[..., 0].to(acc).sum(-1)[None, :, None, :] if constant_term else z


def _attention_forward(q, k, v, a, b, W, scale: float, constant_term: bool, fwd_op):
    # The tail out = z (W^T V) runs in the accumulation dtype (float32 for half inputs) and rounds once at the end:
    # in half, U = W^T V sums N products into half and z U sums r more (on a GPU with half reductions too).
    acc = acc_dtype(q.dtype)
    z = _with_constant_term(fwd_op(q, k, *_harmonic_slots(a, b, constant_term), scale), a, constant_term, acc)
    out = z @ (W.to(acc).transpose(-1, -2) @ v.to(acc))
    return out.to(q.dtype), z.to(q.dtype)  # z' = z + c0 for the backward


def _attention_backward(grad_out, q, k, v, a, b, W, z, scale: float, constant_term: bool, bwd_op):
    # The tail's gradients in the accumulation dtype, as its forward (float32 for half inputs).
    acc = acc_dtype(q.dtype)
    Wa, va, grad_out = W.to(acc), v.to(acc), grad_out.to(acc)
    U = Wa.transpose(-1, -2) @ va  # [B, H, r, D]
    grad_z_acc = grad_out @ U.transpose(-1, -2)  # [B, H, N, r]
    grad_z = grad_z_acc.to(q.dtype)  # the basis op's dtype
    gq, gk, ga, gb, _ = bwd_op(grad_z, q, k, *_harmonic_slots(a, b, constant_term), scale, False)
    if constant_term:
        ga0 = grad_z_acc.sum((0, 2)).to(a.dtype)[:, :, None, None].expand(*a.shape[:3], 1)  # dz / da[..., 0] = 1
        ga = torch.cat((ga0, ga), -1)
        gb = F.pad(gb, (1, 0))  # b[..., 0] multiplies sin(0) = 0
    grad_U = z.to(acc).transpose(-1, -2) @ grad_out  # z'^T g_out [B, H, r, D]
    gv = (Wa @ grad_U).to(v.dtype)
    gW = (va @ grad_U.transpose(-1, -2)).sum(0).to(W.dtype)  # [H, N, r]
    return gq, gk, gv, ga, gb, gW


def _attention_fake(q, k, v, a, b, W, scale, constant_term):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _attention_fwd_fake(q, k, v, a, b, W, scale, constant_term):
    return _attention_fake(q, k, v, a, b, W, scale, constant_term), q.new_empty((*q.shape[:3], a.shape[1]))


def _attention_bwd_fake(grad_out, q, k, v, a, b, W, z, scale, constant_term):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v, a, b, W))


def _attention_setup_context(ctx, inputs, output):
    q, k, v, a, b, W, scale, constant_term = inputs
    ctx.save_for_backward(q, k, v, a, b, W, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.scale, ctx.constant_term = scale, constant_term


def _make_attention_backward(bwd_op):
    def backward(ctx, grad_out, _grad_z):
        q, k, v, a, b, W, z = ctx.saved_tensors
        return (*bwd_op(grad_out, q, k, v, a, b, W, z, ctx.scale, ctx.constant_term), None, None)

    return backward


@torch.library.custom_op("pyfast::karat_attention_fwd_triton", mutates_args=())
def karat_attention_fwd_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                               W: torch.Tensor, scale: float, constant_term: bool
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    return _attention_forward(q, k, v, a, b, W, scale, constant_term, torch.ops.pyfast.karat_fwd_triton)


@torch.library.custom_op("pyfast::karat_attention_bwd_triton", mutates_args=())
def karat_attention_bwd_triton(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               a: torch.Tensor, b: torch.Tensor, W: torch.Tensor, z: torch.Tensor, scale: float,
                               constant_term: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                             torch.Tensor, torch.Tensor]:
    return _attention_backward(grad_out, q, k, v, a, b, W, z, scale, constant_term,
                               torch.ops.pyfast.karat_bwd_triton)


karat_attention_fwd_triton.register_fake(_attention_fwd_fake)
karat_attention_bwd_triton.register_fake(_attention_bwd_fake)
karat_attention_fwd_triton.register_autograd(_make_attention_backward(torch.ops.pyfast.karat_attention_bwd_triton),
                                             setup_context=_attention_setup_context)


def _attention_triton(q, k, v, a, b, W, scale: float, constant_term: bool) -> torch.Tensor:
    return torch.ops.pyfast.karat_attention_fwd_triton(q, k, v, a, b, W, scale, constant_term)[0]


# pyfast::karat_attention runs the C++ ops (CPU or CUDA by the tensors' device), karat_attention_fwd_triton the
# Triton ones.
_ATTENTION = {"triton": _attention_triton}
if _extension.has_cpp():
    torch.library.register_fake("pyfast::karat_attention")(_attention_fake)
    torch.library.register_fake("pyfast::karat_attention_fwd")(_attention_fwd_fake)
    torch.library.register_fake("pyfast::karat_attention_bwd")(_attention_bwd_fake)
    # autograd of pyfast::karat_attention: C++ (csrc/karat/karat_attention.cpp), the same as the Triton twin's above
    _ATTENTION["cpp"] = _ATTENTION["cuda"] = torch.ops.pyfast.karat_attention


# --------------------------------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------------------------------


def _check_float(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"karat: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"karat: {name} must be float32, float64, float16 or bfloat16, got {x.dtype}")


def _check_scale(scale, D: int) -> float:
    if scale is None:
        return D ** -0.5
    if not is_number(scale) or not is_finite(scale):
        raise ValueError(f"karat: scale must be a finite number, got {scale!r}")
    return float(scale)


def _check_qk(q, k) -> tuple[int, int, int, int]:
    _check_float(q, "q")
    _check_float(k, "k")
    if q.dim() != 4:
        raise ValueError(f"karat: q must be [B, H, N, D], got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"karat: k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if k.dtype != q.dtype:
        raise TypeError(f"karat: k must have q's dtype {q.dtype}, got {k.dtype}")
    if k.device != q.device:
        raise ValueError(f"karat: k is on {k.device} but q is on {q.device}")
    if q.numel() == 0:
        raise ValueError(f"karat: q must not be empty, got shape {tuple(q.shape)}")
    return tuple(q.shape)


def _check_coef(q, a, b, min_m: int) -> None:
    H, N = q.shape[1], q.shape[2]
    for name, c in (("a", a), ("b", b)):
        _check_float(c, name)
        if c.device != q.device:
            raise ValueError(f"karat: {name} is on {c.device} but q is on {q.device}")
    if a.dim() != 4 or a.shape[0] != H or a.shape[1] < 1:
        raise ValueError(f"karat: a must be [H, r, N, M] with H = {H} heads and r >= 1, got shape {tuple(a.shape)}")
    if a.shape[2] != N:
        raise ValueError(f"karat: the sequence length N = {N} of q does not match the coefficients' N = "
                         f"{a.shape[2]} (a: [H, r, N, M] = {tuple(a.shape)}); KArAt coefficients are per token")
    if a.shape[3] < min_m:
        raise ValueError(f"karat: a must have at least {min_m} harmonic slot(s) on its last axis (G >= 1), got shape "
                         f"{tuple(a.shape)}")
    if b.shape != a.shape:
        raise ValueError(f"karat: b must have a's shape {tuple(a.shape)}, got {tuple(b.shape)}")


# --------------------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------------------


def karat_basis(q: torch.Tensor, k: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float | None = None, *,
                backend: str = "auto") -> torch.Tensor:
    """The Fourier-KArAt basis contraction, harmonics ``m = 1..G``, without materialising the basis::

        A = scale q k^T,   z[b, h, k, p] = sum_{q, m} a[h, p, q, m] cos(m A[b, h, k, q]) + b[h, p, q, m] sin(m A[...])

    Args:
        q, k: ``[B, H, N, D]``, float32/float64/float16/bfloat16 (same dtype).
        a, b: ``[H, r, N, G]`` coefficients of harmonics 1..G (any floating dtype).
        scale: multiplies ``q k^T``; default ``D^-1/2``.
        backend: ``"auto"``, ``"cpp"``, ``"cuda"``, ``"triton"`` or ``"reference"`` (see pyfast.backends).

    Returns:
        ``z [B, H, N, r]`` in q's dtype, computed in float32 (float64 for float64 q). Backward saves q and k only.
    """
    _check_qk(q, k)
    _check_coef(q, a, b, 1)
    scale = _check_scale(scale, q.shape[-1])
    chosen = resolve("karat", backend, q.device)
    if chosen == "reference":
        return karat_z_ref(q, k, a, b, scale)
    if chosen == "triton":
        return torch.ops.pyfast.karat_fwd_triton(q, k, a, b, scale)
    return torch.ops.pyfast.karat_fwd(q, k, a, b, scale)


def karat_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                    W: torch.Tensor, scale: float | None = None, *, constant_term: bool = True,
                    backend: str = "auto") -> torch.Tensor:
    """Fourier-KArAt attention ``out = sigma V`` with the learned row operator ``sigma[k, :] = (W z[k, :])^T``::

        A = scale q k^T
        z[k, p] = sum_{q} sum_{m=m0..G} a[p, q, m] cos(m A[k, q]) + b[p, q, m] sin(m A[k, q])     (per batch, head)
        out = (z W^T) V = z (W^T V)

    Args:
        q, k, v: ``[B, H, N, D]`` (same dtype and device).
        a, b: ``[H, r, N, M]``: ``M = G + 1`` slots for m = 0..G with ``constant_term`` (the default; the paper's
            parameter counts imply it, see :mod:`pyfast.reference.karat`), ``M = G`` slots for m = 1..G without.
        W: ``[H, N, r]``.
        scale: multiplies ``q k^T``; default ``D^-1/2``.
        constant_term: whether slot 0 is the harmonic m = 0 (adds ``sum_q a[p, q, 0]``; ``b[..., 0]`` multiplies
            ``sin 0 = 0`` and gets a zero gradient).
        backend: as in :func:`karat_basis`; ``"reference"`` runs the materialising reference end to end.

    Returns:
        ``out [B, H, N, D]`` in q's dtype. Saved for backward: q, k, v and z ``[B, H, N, r]`` (plus the
        parameters); never ``A``, the basis, ``sigma`` or ``W^T V`` (backward recomputes ``A`` and the basis tile by
        tile from q and k, and ``W^T V`` with one GEMM).
    """
    _, H, N, D = _check_qk(q, k)
    _check_float(v, "v")
    if v.shape != q.shape or v.dtype != q.dtype or v.device != q.device:
        raise ValueError(f"karat: v must match q (shape {tuple(q.shape)}, {q.dtype}, {q.device}), got shape "
                         f"{tuple(v.shape)}, {v.dtype}, {v.device}")
    if not isinstance(constant_term, bool):
        raise TypeError(f"karat: constant_term must be a bool, got {constant_term!r}")
    _check_coef(q, a, b, 2 if constant_term else 1)
    _check_float(W, "W")
    r = a.shape[1]
    if W.shape != (H, N, r):
        raise ValueError(f"karat: W must be [H, N, r] = [{H}, {N}, {r}], got shape {tuple(W.shape)}")
    if W.device != q.device:
        raise ValueError(f"karat: W is on {W.device} but q is on {q.device}")
    scale = _check_scale(scale, D)
    chosen = resolve("karat", backend, q.device)
    if chosen == "reference":
        return karat_attention_ref(q, k, v, a, b, W, scale, constant_term)
    return _ATTENTION[chosen](q, k, v, a, b, W, scale, constant_term)
