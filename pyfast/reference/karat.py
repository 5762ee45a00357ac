"""Fourier-KArAt attention (Maity, Hitsman, Li, Dutta, arXiv 2503.10632): readable, materialising reference.

There is no official code; this file is the definition the fused kernels are tested against. Per batch element and
head, with ``A = Q K^T * scale`` (``scale = D^-1/2``) the pre-softmax scores ``[N, N]``, softmax is replaced by the
learnable "modular" row operator ``W Phi(A)`` (the paper's Eq. 2 and Sec. 3)::

    z[k, p]     = sum_{q=1..N} sum_{m=m0..G} a[p, q, m] cos(m A[k, q]) + b[p, q, m] sin(m A[k, q])     p = 1..r
                  (+ sum_q w_base[p, q] base(A[k, q]) with the optional base activation)
    sigma[k, :] = W z[k, :]                  W: [N, r], so sigma: [N, N], unnormalised, may be negative
    out         = sigma V                    [N, D]

Coefficients ``a, b: [H, r, N, M]`` (``M = G + 1`` harmonics m = 0..G with the constant term, ``M = G`` harmonics
m = 1..G without) and ``W: [H, N, r]`` are per head and shared by every query row k and batch element; one set per
(head, block) is the paper's "blockwise" GnB, one set shared by all blocks the "universal" GnU (module level).

Choices, where the paper is not explicit:
- The constant term m = 0 (on by default). The paper's parameter counts (Tables 1 and 13: ViT-Tiny G3B 0.76M) equal
  ``2 (G + 1) r N + r N`` per head exactly, i.e. a and b both have G + 1 harmonics; with m = 1..G the counts would
  be 0.60M. So m = 0 is kept for both: ``a[..., 0]`` adds the constant ``sum_q a[p, q, 0]`` to z, and
  ``b[..., 0]`` multiplies ``sin(0) = 0`` (it gets a zero gradient; it exists so parameter counts match the paper).
- No normalisation (the paper's l1-simplex projection hurts accuracy, Alg. 1 / Table 4) and no base activation
  (b(x) = 0 in every reported run) by default.
"""

from __future__ import annotations

import torch

from pyfast._dtypes import acc_dtype

BASE_ACTIVATIONS = {
    "silu": torch.nn.functional.silu,
    "gelu": torch.nn.functional.gelu,
    "identity": lambda x: x,
}


def harmonics(M: int, constant_term: bool, device=None, dtype=torch.float32) -> torch.Tensor:
    """The harmonic orders ``m`` of the M coefficient slots: ``0..M-1`` with the constant term, else ``1..M``."""
    start = 0 if constant_term else 1
    return torch.arange(start, start + M, device=device, dtype=dtype)


def fourier_basis_ref(A: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos(m A), sin(m A)``: ``A [..., N, N]`` -> two ``[..., N, N, M]`` tensors (materialised: the cost the fused
    kernels avoid)."""
    mA = A.unsqueeze(-1) * m
    return torch.cos(mA), torch.sin(mA)


def _scores_and_z(q, k, a, b, scale, constant_term) -> tuple[torch.Tensor, torch.Tensor]:
    """``A [B, H, N, N]`` and ``z [B, H, N, r]`` in the arithmetic dtype (float32 for half types)."""
    work = acc_dtype(q.dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    A = (q.to(work) @ k.to(work).transpose(-2, -1)) * scale
    m = harmonics(a.shape[-1], constant_term, A.device, work)
    cos, sin = fourier_basis_ref(A, m)  # [B, H, N(k), N(q), M]
    z = torch.einsum("bhkqm,hpqm->bhkp", cos, a.to(work)) + torch.einsum("bhkqm,hpqm->bhkp", sin, b.to(work))
    return A, z


def karat_z_ref(q: torch.Tensor, k: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float | None = None,
                constant_term: bool = False) -> torch.Tensor:
    """``z [B, H, N, r]`` from ``q, k [B, H, N, D]`` and ``a, b [H, r, N, M]`` (harmonic orders as in
    :func:`harmonics`). Computed in the inputs' dtype (float32 for half types, cast back)."""
    return _scores_and_z(q, k, a, b, scale, constant_term)[1].to(q.dtype)


def karat_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                        W: torch.Tensor, scale: float | None = None, constant_term: bool = True,
                        base_activation: str | None = None, w_base: torch.Tensor | None = None) -> torch.Tensor:
    """Fourier-KArAt attention, materialising ``A``, the basis ``[B, H, N, N, M]`` twice and ``sigma [B, H, N, N]``.

    Args:
        q, k, v: ``[B, H, N, D]``.
        a, b: ``[H, r, N, M]`` Fourier coefficients (``M = G + 1`` with ``constant_term``, else ``G``).
        W: ``[H, N, r]``.
        scale: multiplies ``q k^T`` (default ``D^-1/2``).
        constant_term: whether the first harmonic slot is m = 0 (see the module docstring).
        base_activation: ``None``, ``"silu"``, ``"gelu"`` or ``"identity"``: adds ``sum_q w_base[p, q] base(A[k, q])``
            to z; ``w_base: [H, r, N]``.

    Returns:
        ``out [B, H, N, D]`` in q's dtype (computed in float32 for half types).
    """
    A, z = _scores_and_z(q, k, a, b, scale, constant_term)
    work = z.dtype
    if base_activation is not None:
        z = z + torch.einsum("bhkq,hpq->bhkp", BASE_ACTIVATIONS[base_activation](A), w_base.to(work))
    sigma = torch.einsum("bhkp,hqp->bhkq", z, W.to(work))  # [B, H, N, N]: the learned attention
    return (sigma @ v.to(work)).to(q.dtype)
