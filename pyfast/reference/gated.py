"""Readable pure-PyTorch gated attention: the definition of correct for every backend of the gated ops.

Gated class-attention (GCAB; Cotogni et al., arXiv 2211.12292). ``x [B, N+1, C]`` holds the task token at index 0
and N patch tokens; ``m = sigmoid(s e_t) in (0, 1)^C`` is the task's gate (hard-binarised for old tasks), H heads of
``D = C / H``::

    q = (W_q (x_0 (.) m) + b_q) (.) m                  [B, C]        one query: the task token
    k = (W_k (x (.) m) + b_k) (.) m                    [B, N+1, C]
    v =  W_v (x (.) m) + b_v                           [B, N+1, C]
    A = softmax_n(q_h . k_h[n] / sqrt(D))              [B, H, N+1]   per head h
    o = concat_h(sum_n A[h, n] v_h[n])                 [B, C]
    y = (W_p (o (.) m) + b_p) (.) m                    [B, C]

``b_k`` shifts every score of a head by the same ``q_h . (m (.) b_k)_h``, which softmax ignores: y does not depend
on it (its gradient is exactly zero), so the kernels take no ``b_k``; this reference accepts one to show it.

Gradient routing (HAT, as GCAB's ``ContinualScaler.pre_step`` applies it). With ``m_pre`` the element-wise max of
the binarised masks of the finished tasks, a gated Linear ``W [out, in]`` between gates ``m_in`` and ``m_out``::

    grad_W *= 1 - outer(m_pre_out, m_pre_in)           grad_b *= 1 - m_pre_out
    grad_e *= (s_max / s) (cosh(clamp(s e, -c, c)) + 1) / (cosh(e) + 1)       (c = 50)

so weights that old tasks rely on (both ends gated open) stop moving, and the embedding gradient is rescaled to undo
the 1/s damping of the annealed sigmoid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pyfast._dtypes import acc_dtype


def gated_class_attention_ref(x: torch.Tensor, gate: torch.Tensor, wq: torch.Tensor, bq: torch.Tensor | None,
                              wk: torch.Tensor, wv: torch.Tensor, bv: torch.Tensor | None, wp: torch.Tensor,
                              bp: torch.Tensor | None, num_heads: int,
                              bk: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y [B, C], attn [B, H, N+1])`` of gated class-attention, computed as written (K and V materialised).

    x: ``[B, N+1, C]``; gate: ``[C]``; wq, wk, wv, wp: ``[C, C]`` (nn.Linear layout, out x in); biases ``[C]`` or
    None. Half inputs are computed in float32 and y is rounded back to x's dtype; attn is float32 (float64 for
    float64 input).
    """
    dtype = x.dtype
    acc = acc_dtype(dtype)
    x, gate, wq, wk, wv, wp = (t.to(acc) for t in (x, gate, wq, wk, wv, wp))
    bq, bk, bv, bp = (None if t is None else t.to(acc) for t in (bq, bk, bv, bp))
    B, N1, C = x.shape
    H, D = num_heads, C // num_heads
    xm = x * gate
    q = torch.nn.functional.linear(xm[:, 0], wq, bq) * gate
    k = torch.nn.functional.linear(xm, wk, bk) * gate
    v = torch.nn.functional.linear(xm, wv, bv)
    q = q.reshape(B, H, 1, D)
    k = k.reshape(B, N1, H, D).transpose(1, 2)
    v = v.reshape(B, N1, H, D).transpose(1, 2)
    attn = ((q @ k.transpose(-2, -1)) / math.sqrt(D)).softmax(dim=-1)  # [B, H, 1, N+1]
    o = (attn @ v).reshape(B, C)
    y = torch.nn.functional.linear(o * gate, wp, bp) * gate
    return y.to(dtype), attn.reshape(B, H, N1)


def gate_compensation_ref(e: torch.Tensor, s: float, s_max: float, clamp: float = 50.0) -> torch.Tensor:
    """The factor ``(s_max / s) (cosh(clamp(s e, +-clamp)) + 1) / (cosh(e) + 1)`` of the embedding gradient."""
    return (s_max / s) * (torch.cosh(torch.clamp(s * e, -clamp, clamp)) + 1) / (torch.cosh(e) + 1)


def routing_mask_ref(m_out: torch.Tensor, m_in: torch.Tensor | None) -> torch.Tensor:
    """``1 - outer(m_out, m_in)`` for a weight ``[out, in]``; ``1 - m_out`` for a bias (``m_in`` None)."""
    if m_in is None:
        return 1 - m_out
    return 1 - torch.outer(m_out, m_in)


def gated_route_ref(grads: Sequence[torch.Tensor], masks_out: Sequence[torch.Tensor],
                    masks_in: Sequence[torch.Tensor | None], emb_grads: Sequence[torch.Tensor],
                    embs: Sequence[torch.Tensor], s: float, s_max: float,
                    clamp: float = 50.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The routed gradients (new tensors): each ``grads[i]`` times :func:`routing_mask_ref` of its masks (computed
    in float32/float64, rounded to the gradient's dtype), each ``emb_grads[j]`` times the compensation of
    ``embs[j]``."""
    out = []
    for g, mo, mi in zip(grads, masks_out, masks_in, strict=True):
        acc = acc_dtype(g.dtype)
        mask = routing_mask_ref(mo.to(acc), None if mi is None or mi.numel() == 0 else mi.to(acc))
        out.append((g.to(acc) * mask).to(g.dtype))
    emb_out = []
    for g, e in zip(emb_grads, embs, strict=True):
        acc = acc_dtype(g.dtype)
        emb_out.append((g.to(acc) * gate_compensation_ref(e.to(acc), s, s_max, clamp)).to(g.dtype))
    return out, emb_out
