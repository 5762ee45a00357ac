"""Gated attention as torch custom ops: gated class-attention ``torch.ops.pyfast.gated_cattn_fwd`` /
``gated_cattn_bwd`` and HAT gradient routing ``torch.ops.pyfast.gated_route`` (C++ CPU and CUDA), their Triton
twins ``*_triton``, fake kernels and autograd, plus the public functions :func:`gated_class_attention`,
:func:`gated_route_` and :func:`gate_compensation`.

The maths is in :mod:`pyfast.reference.gated` and at the top of ``csrc/gated/gated.h``. With a single query per head
the kernels never form K or V: the keys fold into one vector ``w[b, h] in R^C`` per head and the values into
``zp[b, h] = sum_n A[b, h, n] x[b, n]``, so the work on x is O(B N C H) instead of the O(B N C^2) of the K/V
projections, and the gate is applied to [C]-sized vectors only (no gated copy of x is ever made).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pyfast import _extension
from pyfast._dtypes import FLOAT_DTYPES, acc_dtype
from pyfast._numbers import is_finite, is_number
from pyfast.backends import resolve
from pyfast.reference.gated import gate_compensation_ref, gated_class_attention_ref, gated_route_ref

__all__ = ["gate_compensation", "gated_class_attention", "gated_route_"]


# --------------------------------------------------------------------------------------------------------------
# Fake kernels and autograd
# --------------------------------------------------------------------------------------------------------------


def _fwd_fake(x, gate, wq, bq, wk, wv, bv, wp, bp, num_heads):
    B, N1, C = x.shape
    return x.new_empty((B, C)), x.new_empty((B, num_heads, N1), dtype=acc_dtype(x.dtype))


def _bwd_fake(grad_out, x, gate, wq, bq, wk, wv, bv, wp, bp, attn, num_heads):
    def like(t, ref):
        return ref.new_empty((0,)) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)

    return [torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(gate),
            torch.empty_like(wq), like(bq, x), torch.empty_like(wk), torch.empty_like(wv), like(bv, x),
            torch.empty_like(wp), like(bp, x)]


def _route_fake(grads, masks_out, masks_in, emb_grads, embs, s, s_max, clamp):
    return None


def _setup_context(ctx, inputs, output):
    x, gate, wq, bq, wk, wv, bv, wp, bp, num_heads = inputs
    # Saved: the inputs (already alive as parameters / the block's activation) and attn [B, H, N+1]; the [B, C]-sized
    # query and value sides are recomputed by the backward.
    ctx.save_for_backward(x, gate, wq, bq, wk, wv, bv, wp, bp, output[1])
    ctx.num_heads = num_heads


def _make_backward(bwd_op):
    def backward(ctx, grad_out, grad_attn):
        x, gate, wq, bq, wk, wv, bv, wp, bp, attn = ctx.saved_tensors
        grads = bwd_op(grad_out, x, gate, wq, bq, wk, wv, bv, wp, bp, attn, ctx.num_heads)
        need = ctx.needs_input_grad
        return (*(g if need[i] else None for i, g in enumerate(grads)), None)

    return backward


if _extension.has_cpp():
    torch.library.register_fake("pyfast::gated_cattn_fwd")(_fwd_fake)
    torch.library.register_fake("pyfast::gated_cattn_bwd")(_bwd_fake)
    torch.library.register_fake("pyfast::gated_route")(_route_fake)
    torch.library.register_autograd("pyfast::gated_cattn_fwd", _make_backward(torch.ops.pyfast.gated_cattn_bwd),
                                    setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------------------
# Triton twins: the O(B C^2) GEMMs in torch (the same steps as csrc/gated/gated_host.h), the core in Triton.
# torch.library.custom_op (not triton_op), so opcheck and torch.compile(fullgraph=True) also pass under
# TRITON_INTERPRET=1 (DESIGN.md, build facts). Same schemas as the C++ ops; a test enforces the parity.
# --------------------------------------------------------------------------------------------------------------


def _query_side(x, m, wq, bq, wk, H):
    B, _, C = x.shape
    D = C // H
    xm0 = x[:, 0].to(m.dtype) * m
    q0 = torch.nn.functional.linear(xm0, wq, bq)
    r = q0 * (m * m / math.sqrt(D))
    u = torch.bmm(r.view(B, H, D).transpose(0, 1), wk.reshape(H, D, C))  # [H, B, C]
    return xm0, q0, r, u, (u * m).transpose(0, 1).contiguous()


def _value_out(z, wv, bv, H):
    B, _, C = z.shape
    o = torch.bmm(z.transpose(0, 1), wv.reshape(H, C // H, C).transpose(1, 2)).transpose(0, 1).reshape(B, C)
    return o if bv is None else o + bv


def _cast(ts, dtype):
    return [None if t is None else t.to(dtype).contiguous() for t in ts]


@torch.library.custom_op("pyfast::gated_cattn_fwd_triton", mutates_args=())
def gated_cattn_fwd_triton(x: torch.Tensor, gate: torch.Tensor, wq: torch.Tensor, bq: torch.Tensor | None,
                           wk: torch.Tensor, wv: torch.Tensor, bv: torch.Tensor | None, wp: torch.Tensor,
                           bp: torch.Tensor | None, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    from pyfast._triton import gated as kernels  # triton is optional: imported on first use

    _check_cattn(x, gate, wq, bq, wk, wv, bv, wp, bp, num_heads)
    A = acc_dtype(x.dtype)
    x = x.contiguous()
    m, wq, bq, wk, wv, bv, wp, bp = _cast((gate, wq, bq, wk, wv, bv, wp, bp), A)
    B, N1, C = x.shape
    H = num_heads
    *_, w = _query_side(x, m, wq, bq, wk, H)
    attn = x.new_empty((B, H, N1), dtype=A)
    zp = x.new_empty((B, H, C), dtype=A)
    kernels.core_fwd(x, w, attn, zp)
    og = _value_out(zp * m, wv, bv, H) * m
    return (torch.nn.functional.linear(og, wp, bp) * m).to(x.dtype), attn


@torch.library.custom_op("pyfast::gated_cattn_bwd_triton", mutates_args=())
def gated_cattn_bwd_triton(grad_out: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, wq: torch.Tensor,
                           bq: torch.Tensor | None, wk: torch.Tensor, wv: torch.Tensor, bv: torch.Tensor | None,
                           wp: torch.Tensor, bp: torch.Tensor | None, attn: torch.Tensor,
                           num_heads: int) -> list[torch.Tensor]:
    from pyfast._triton import gated as kernels

    _check_cattn(x, gate, wq, bq, wk, wv, bv, wp, bp, num_heads)
    A = acc_dtype(x.dtype)
    dtypes = [t.dtype for t in (gate, wq, wk, wv, wp)]
    x = x.contiguous()
    m, wq_, bq_, wk_, wv_, bv_, wp_, bp_, attn, gy = _cast((gate, wq, bq, wk, wv, bv, wp, bp, attn, grad_out), A)
    B, N1, C = x.shape
    H = num_heads
    D = C // H
    xm0, q0, r, u, w = _query_side(x, m, wq_, bq_, wk_, H)
    gpre = gy * m
    g_og = gpre @ wp_
    g_o = g_og * m
    g_o_h = g_o.view(B, H, D).transpose(0, 1)
    gz = torch.bmm(g_o_h, wv_.view(H, D, C)).transpose(0, 1)
    gzp = (gz * m).contiguous()
    zp, gs, gw = x.new_empty((B, H, C), dtype=A), x.new_empty((B, H, N1), dtype=A), x.new_empty((B, H, C), dtype=A)
    kernels.core_bwd1(x, attn, gzp, gs, gw, zp)
    z = zp * m
    o = _value_out(z, wv_, bv_, H)
    og = o * m
    pre = torch.nn.functional.linear(og, wp_, bp_)
    g_u = (gw * m).transpose(0, 1)
    grad_wk = torch.bmm(r.view(B, H, D).permute(1, 2, 0), g_u).reshape(C, C)
    g_r = torch.bmm(g_u, wk_.view(H, D, C).transpose(1, 2)).transpose(0, 1).reshape(B, C)
    scale = 1.0 / math.sqrt(D)
    g_q0 = g_r * (m * m * scale)
    g_xm0 = g_q0 @ wq_
    grad_m = ((gy * pre).sum(0) + (g_og * o).sum(0) + (gz * zp).sum((0, 1)) + (gw * u.transpose(0, 1)).sum((0, 1))
              + (g_r * q0).sum(0) * m * (2.0 * scale) + (g_xm0 * x[:, 0].to(A)).sum(0))
    gx = torch.empty_like(x)
    kernels.core_bwd2(attn, gs, gzp, w, (g_xm0 * m).contiguous(), gx)
    grad_wv = torch.bmm(g_o_h.transpose(1, 2), z.transpose(0, 1)).reshape(C, C)

    def bias(g, b):
        return x.new_empty((0,)) if b is None else g.to(b.dtype)

    return [gx, grad_m.to(dtypes[0]), (g_q0.t() @ xm0).to(dtypes[1]), bias(g_q0.sum(0), bq),
            grad_wk.to(dtypes[2]), grad_wv.to(dtypes[3]), bias(g_o.sum(0), bv), (gpre.t() @ og).to(dtypes[4]),
            bias(gpre.sum(0), bp)]


@torch.library.custom_op("pyfast::gated_route_triton", mutates_args=("grads", "emb_grads"))
def gated_route_triton(grads: list[torch.Tensor], masks_out: list[torch.Tensor], masks_in: list[torch.Tensor],
                       emb_grads: list[torch.Tensor], embs: list[torch.Tensor], s: float, s_max: float,
                       clamp: float) -> None:
    from pyfast._triton import gated as kernels

    _check_route(grads, masks_out, masks_in, emb_grads, embs, s, s_max, clamp)
    for g, mo, mi in zip(grads, masks_out, masks_in, strict=True):
        A = acc_dtype(g.dtype)
        c = g.contiguous()
        kernels.route(c, mo.to(A).contiguous(), None if mi.numel() == 0 else mi.to(A).contiguous())
        if c.data_ptr() != g.data_ptr():
            g.copy_(c)
    for g, e in zip(emb_grads, embs, strict=True):
        c = g.contiguous()
        kernels.compensate(c, e.to(g.dtype).contiguous(), s, s_max, clamp)
        if c.data_ptr() != g.data_ptr():
            g.copy_(c)


gated_cattn_fwd_triton.register_fake(_fwd_fake)
gated_cattn_bwd_triton.register_fake(_bwd_fake)
gated_route_triton.register_fake(_route_fake)
gated_cattn_fwd_triton.register_autograd(_make_backward(torch.ops.pyfast.gated_cattn_bwd_triton),
                                         setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------------------------------


def _check_tensor(t, name: str, shape, device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"gated_class_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"gated_class_attention: {name} must be float32/float64/float16/bfloat16, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"gated_class_attention: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"gated_class_attention: {name} is on {t.device} but x is on {device}")


def _check_cattn(x, gate, wq, bq, wk, wv, bv, wp, bp, num_heads) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"gated_class_attention: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"gated_class_attention: x must be float32/float64/float16/bfloat16, got {x.dtype}")
    if x.dim() != 3 or x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"gated_class_attention: x must be [B, N+1, C] with the task token at index 0 and C > 0, "
                         f"got shape {tuple(x.shape)}")
    C = x.shape[2]
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or C % num_heads:
        raise ValueError(f"gated_class_attention: num_heads must be a positive integer dividing C = {C}, got "
                         f"{num_heads!r}")
    _check_tensor(gate, "gate", (C,), x.device)
    for name, t in (("wq", wq), ("wk", wk), ("wv", wv), ("wp", wp)):
        _check_tensor(t, name, (C, C), x.device)
    for name, t in (("bq", bq), ("bv", bv), ("bp", bp)):
        if t is not None:
            _check_tensor(t, name, (C,), x.device)


def _check_compensation(fn: str, s, s_max, clamp) -> None:
    """s, s_max and clamp of the embedding compensation: finite numbers > 0 (``fn``: the public function)."""
    for name, v in (("s", s), ("s_max", s_max), ("clamp", clamp)):
        if not is_number(v) or not is_finite(v) or v <= 0:
            raise ValueError(f"{fn}: {name} must be a finite number > 0, got {v!r}")


def _check_route(grads, masks_out, masks_in, emb_grads, embs, s, s_max, clamp) -> None:
    _check_compensation("gated_route_", s, s_max, clamp)
    if not len(grads) == len(masks_out) == len(masks_in):
        raise ValueError(f"gated_route_: grads, masks_out and masks_in must have the same length, got {len(grads)}, "
                         f"{len(masks_out)}, {len(masks_in)}")
    if len(emb_grads) != len(embs):
        raise ValueError(f"gated_route_: emb_grads and embs must have the same length, got {len(emb_grads)} and "
                         f"{len(embs)}")
    for i, (g, mo, mi) in enumerate(zip(grads, masks_out, masks_in)):
        for name, t in ((f"grads[{i}]", g), (f"masks_out[{i}]", mo), (f"masks_in[{i}]", mi)):
            if not isinstance(t, torch.Tensor) or t.dtype not in FLOAT_DTYPES:
                raise TypeError(f"gated_route_: {name} must be a floating tensor, got "
                                f"{getattr(t, 'dtype', type(t).__name__)}")
            if t.device != g.device:
                raise ValueError(f"gated_route_: {name} is on {t.device} but grads[{i}] is on {g.device}")
        bias = mi.numel() == 0
        if g.dim() != (1 if bias else 2):
            raise ValueError(f"gated_route_: grads[{i}] must be a weight [out, in] (or a bias [out] with an empty "
                             f"masks_in[{i}]), got shape {tuple(g.shape)}")
        if tuple(mo.shape) != (g.shape[0],) or (not bias and tuple(mi.shape) != (g.shape[1],)):
            raise ValueError(f"gated_route_: masks of grads[{i}] {tuple(g.shape)} must be [out] and [in] (mismatched "
                             f"widths), got {tuple(mo.shape)} and {tuple(mi.shape)}")
    for j, (g, e) in enumerate(zip(emb_grads, embs)):
        if not isinstance(g, torch.Tensor) or g.dtype not in FLOAT_DTYPES:
            raise TypeError(f"gated_route_: emb_grads[{j}] must be a floating tensor")
        if not isinstance(e, torch.Tensor) or tuple(e.shape) != tuple(g.shape) or e.device != g.device:
            raise ValueError(f"gated_route_: embs[{j}] must be a tensor of emb_grads[{j}]'s shape {tuple(g.shape)} on "
                             f"{g.device}")


def _check_writable(name: str, tensors) -> None:
    """The routing writes ``tensors`` in place and has no autograd formula. A leaf that requires grad is a parameter,
    not a gradient: torch's in-place ops refuse it in grad mode, and under torch.no_grad (where routing runs) it
    would be overwritten silently, so it is refused in both. In grad mode any tensor that requires grad is refused:
    autograd would not see the change."""
    for i, t in enumerate(tensors):
        if t.requires_grad and t.is_leaf:
            raise RuntimeError(f"gated_route_: {name}[{i}] is a leaf tensor that requires grad (a parameter, not a "
                               f"gradient), which the routing would overwrite in place; pass its gradient (p.grad)")
        if t.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(f"gated_route_: {name}[{i}] requires grad in grad mode, but the routing writes it in "
                               f"place without an autograd formula; route under torch.no_grad()")


# --------------------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------------------


def gated_class_attention(x: torch.Tensor, gate: torch.Tensor, wq: torch.Tensor, bq: torch.Tensor | None,
                          wk: torch.Tensor, wv: torch.Tensor, bv: torch.Tensor | None, wp: torch.Tensor,
                          bp: torch.Tensor | None, num_heads: int, *, return_attn: bool = False,
                          backend: str = "auto"):
    """Gated class-attention (GCAB): the task token ``x[:, 0]`` attends to all N+1 tokens, every stage gated by m::

        q = (W_q (x_0 . m) + b_q) . m,   k = (W_k (x . m)) . m,   v = W_v (x . m) + b_v
        A = softmax_n(q_h . k_h[n] / sqrt(D)),   y = (W_p (concat_h sum_n A[h, n] v_h[n] . m) + b_p) . m

    Args:
        x: ``[B, N+1, C]``, the task token at index 0; float32/float64/float16/bfloat16.
        gate: ``[C]``, m = sigmoid(s e_t) (or its binarised form for an old task); differentiable.
        wq, wk, wv, wp: ``[C, C]`` (nn.Linear layout); bq, bv, bp: ``[C]`` or None. There is no b_k: a key bias
            shifts all scores of a head equally, so softmax removes it (its gradient would be exactly zero).
        num_heads: H, dividing C (head dim D = C / H).
        return_attn: also return ``attn [B, H, N+1]`` (float32; float64 for float64 x).
        backend: ``"auto"``, ``"cpp"``, ``"cuda"``, ``"triton"`` or ``"reference"`` (see pyfast.backends).

    Returns:
        ``y [B, C]`` in x's dtype (and attn). Gradients flow to x, gate and every weight and bias. The kernels never
        form K, V or a gated copy of x (see the module docstring); half inputs are computed in float32.
    """
    _check_cattn(x, gate, wq, bq, wk, wv, bv, wp, bp, num_heads)
    chosen = resolve("gated", backend, x.device)
    if chosen == "reference":
        y, attn = gated_class_attention_ref(x, gate, wq, bq, wk, wv, bv, wp, bp, num_heads)
    elif chosen == "triton":
        y, attn = torch.ops.pyfast.gated_cattn_fwd_triton(x, gate, wq, bq, wk, wv, bv, wp, bp, num_heads)
    else:
        y, attn = torch.ops.pyfast.gated_cattn_fwd(x, gate, wq, bq, wk, wv, bv, wp, bp, num_heads)
    return (y, attn) if return_attn else y


def gated_route_(grads: Sequence[torch.Tensor], masks_out: Sequence[torch.Tensor],
                 masks_in: Sequence[torch.Tensor | None], emb_grads: Sequence[torch.Tensor] = (),
                 embs: Sequence[torch.Tensor] = (), *, s: float, s_max: float, clamp: float = 50.0,
                 backend: str = "auto") -> None:
    """HAT gradient routing, in place, over every gated parameter in one call::

        grads[i] *= 1 - outer(masks_out[i], masks_in[i])     (a weight [out, in])
        grads[i] *= 1 - masks_out[i]                         (a bias [out]: masks_in[i] None)
        emb_grads[j] *= (s_max / s) (cosh(clamp(s e_j, -clamp, clamp)) + 1) / (cosh(e_j) + 1),   e_j = embs[j]

    ``grads`` / ``emb_grads`` are gradients (``p.grad``), written in place: a leaf tensor that requires grad (a
    parameter itself) raises a RuntimeError, and so does any tensor that requires grad in grad mode (the routing has
    no autograd formula). ``masks_*`` are the accumulated binarised masks of the finished tasks (m_pre); the
    compensation undoes the 1/s damping of the annealed ``sigmoid(s e)`` (HAT, as GCAB applies it). s, s_max,
    clamp: finite and > 0. Computed in float32 (float64 for float64 gradients).
    """
    masks_in = [g.new_empty((0,)) if mi is None else mi for g, mi in zip(grads, masks_in)]
    grads, masks_out, emb_grads, embs = list(grads), list(masks_out), list(emb_grads), list(embs)
    _check_route(grads, masks_out, masks_in, emb_grads, embs, s, s_max, clamp)
    _check_writable("grads", grads)
    _check_writable("emb_grads", emb_grads)
    device = grads[0].device if grads else emb_grads[0].device if emb_grads else torch.device("cpu")
    chosen = resolve("gated", backend, device)
    if chosen == "reference":
        new, new_emb = gated_route_ref(grads, masks_out, masks_in, emb_grads, embs, s, s_max, clamp)
        with torch.no_grad():
            for g, n in zip(grads + emb_grads, new + new_emb):
                g.copy_(n)
    elif chosen == "triton":
        torch.ops.pyfast.gated_route_triton(grads, masks_out, masks_in, emb_grads, embs, float(s), float(s_max),
                                            float(clamp))
    else:
        torch.ops.pyfast.gated_route(grads, masks_out, masks_in, emb_grads, embs, float(s), float(s_max),
                                     float(clamp))


def gate_compensation(e: torch.Tensor, s: float, s_max: float, clamp: float = 50.0) -> torch.Tensor:
    """The embedding-gradient factor ``(s_max / s) (cosh(clamp(s e, +-clamp)) + 1) / (cosh(e) + 1)`` (reference)."""
    _check_compensation("gate_compensation", s, s_max, clamp)
    return gate_compensation_ref(e, s, s_max, clamp)
