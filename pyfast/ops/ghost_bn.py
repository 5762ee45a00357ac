"""Ghost batch normalization as torch custom ops: ``torch.ops.pyfast.ghost_bn_fwd`` / ``ghost_bn_bwd`` (C++ CPU and
CUDA) and the Triton twins ``ghost_bn_fwd_triton`` / ``ghost_bn_bwd_triton``, with fake kernels and autograd, plus
the public function :func:`ghost_batch_norm` (``F.batch_norm``'s signature plus ``ghost_batch_size``).

The ops are functional: they return the per-ghost statistics [G, C], and :func:`ghost_batch_norm` applies the
closed-form running-statistics update (all G EMA steps at once, O(G C) work) and writes it into the running buffers,
as ``F.batch_norm`` does. The maths is in :mod:`pyfast.reference.ghost_bn` and ``csrc/ghost_bn/ghost_bn.h``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pyfast import _extension
from pyfast._dtypes import FLOAT_DTYPES, acc_dtype
from pyfast._numbers import is_finite, is_number
from pyfast.backends import resolve
from pyfast.reference.ghost_bn import ghost_batch_norm_ref, ghost_counts, num_ghosts

__all__ = ["ghost_batch_norm"]


# --------------------------------------------------------------------------------------------------------------
# Fake kernels and autograd of the custom ops
# --------------------------------------------------------------------------------------------------------------


def _fwd_fake(x, weight, bias, ghost_batch_size, eps):
    g = -(-x.shape[0] // ghost_batch_size)
    stats = x.new_empty((g, x.shape[1]), dtype=acc_dtype(x.dtype))
    return (torch.empty_like(x, memory_format=torch.contiguous_format), stats, torch.empty_like(stats),
            torch.empty_like(stats))


def _bwd_fake(grad, x, mean, invstd, weight, ghost_batch_size, need_grad_x, need_grad_weight, need_grad_bias):
    c = x.shape[1]
    acc = acc_dtype(x.dtype)
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format) if need_grad_x else x.new_empty((0,)),
        x.new_empty((c,) if need_grad_weight else (0,), dtype=acc),
        x.new_empty((c,) if need_grad_bias else (0,), dtype=acc),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, ghost_batch_size, _ = inputs
    _, mean, var, invstd = output
    ctx.mark_non_differentiable(mean, var, invstd)
    ctx.ghost_batch_size = ghost_batch_size
    ctx.weight_dtype = None if weight is None else weight.dtype
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.save_for_backward(x, mean, invstd, weight)


def _make_backward(bwd_op):
    def backward(ctx, grad, _g_mean, _g_var, _g_invstd):
        x, mean, invstd, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx, gw, gb = bwd_op(grad, x, mean, invstd, weight, ctx.ghost_batch_size, need_x, need_w, need_b)
        return (gx if need_x else None, gw.to(ctx.weight_dtype) if need_w else None,
                gb.to(ctx.bias_dtype) if need_b else None, None, None)

    return backward


if _extension.has_cpp():
    torch.library.register_fake("pyfast::ghost_bn_fwd")(_fwd_fake)
    torch.library.register_fake("pyfast::ghost_bn_bwd")(_bwd_fake)
    torch.library.register_autograd(
        "pyfast::ghost_bn_fwd", _make_backward(torch.ops.pyfast.ghost_bn_bwd), setup_context=_setup_context
    )


# Triton twins: torch.library.custom_op (not triton_op), so opcheck and torch.compile(fullgraph=True) also pass
# under TRITON_INTERPRET=1 (DESIGN.md, build facts). Same schema as the C++ ops; a test enforces the parity.


@torch.library.custom_op("pyfast::ghost_bn_fwd_triton", mutates_args=())
def ghost_bn_fwd_triton(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                        ghost_batch_size: int, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                     torch.Tensor]:
    from pyfast._triton import ghost_bn as kernels  # triton is optional: imported on first use

    acc = acc_dtype(x.dtype)
    w = None if weight is None else weight.to(acc).contiguous()
    b = None if bias is None else bias.to(acc).contiguous()
    return kernels.ghost_bn_fwd(x.contiguous(), w, b, ghost_batch_size, eps)


@torch.library.custom_op("pyfast::ghost_bn_bwd_triton", mutates_args=())
def ghost_bn_bwd_triton(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
                        weight: torch.Tensor | None, ghost_batch_size: int, need_grad_x: bool, need_grad_weight: bool,
                        need_grad_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from pyfast._triton import ghost_bn as kernels

    acc = acc_dtype(x.dtype)
    w = None if weight is None else weight.to(acc).contiguous()
    gx, sdy, sdyxmu = kernels.ghost_bn_bwd(grad.contiguous(), x.contiguous(), mean.to(acc).contiguous(),
                                           invstd.to(acc).contiguous(), w, ghost_batch_size, need_grad_x)
    gw = (sdyxmu.double() * invstd.double()).sum(0).to(acc) if need_grad_weight else x.new_empty((0,), dtype=acc)
    gb = sdy.double().sum(0).to(acc) if need_grad_bias else x.new_empty((0,), dtype=acc)
    return gx if need_grad_x else x.new_empty((0,)), gw, gb


ghost_bn_fwd_triton.register_fake(_fwd_fake)
ghost_bn_bwd_triton.register_fake(_bwd_fake)
ghost_bn_fwd_triton.register_autograd(_make_backward(torch.ops.pyfast.ghost_bn_bwd_triton),
                                      setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------------------------


def check_hyperparameters(ghost_batch_size, momentum, eps) -> None:
    """ghost_batch_size an int >= 1, momentum a finite number in [0, 1] (None, the cumulative average of
    nn.BatchNorm, is not supported), eps a finite number > 0."""
    if not isinstance(ghost_batch_size, int) or isinstance(ghost_batch_size, bool) or ghost_batch_size < 1:
        raise ValueError(f"ghost_batch_norm: ghost_batch_size must be an int >= 1, got {ghost_batch_size!r}")
    if not is_number(momentum) or not is_finite(momentum) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ghost_batch_norm: momentum must be a finite number in [0, 1] (momentum=None, the "
                         f"cumulative average, is not supported), got {momentum!r}")
    if not is_number(eps) or not is_finite(eps) or eps <= 0:
        raise ValueError(f"ghost_batch_norm: eps must be a finite number > 0, got {eps!r}")


def _check(x, running_mean, running_var, weight, bias) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"ghost_batch_norm: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"ghost_batch_norm: x must be float32/float64/float16/bfloat16, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"ghost_batch_norm: x must be [N, C, *], got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"ghost_batch_norm: x must not be empty, got shape {tuple(x.shape)}")
    c = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"ghost_batch_norm: {name} must be a floating-point tensor or None, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.shape != (c,):
            raise ValueError(f"ghost_batch_norm: {name} must have shape [C] = [{c}], got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"ghost_batch_norm: {name} is on {t.device} but x is on {x.device}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("ghost_batch_norm: running_mean and running_var must both be given or both be None")


def ghost_batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                     weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
                     momentum: float = 0.1, eps: float = 1e-5, ghost_batch_size: int = 128, *,
                     backend: str = "auto") -> torch.Tensor:
    """Ghost batch normalization of ``x`` [N, C, *]; ``F.batch_norm``'s arguments plus ``ghost_batch_size``.

    Training (``training=True``): the batch is cut into G = ceil(N / ghost_batch_size) ghost batches (the last one is
    smaller when ghost_batch_size does not divide N), each normalised with its own mean and biased variance over its
    samples and spatial positions: ``y = (x - mu_g) / sqrt(var_g + eps) * weight + bias``. If running statistics are
    given they are updated in place once per ghost batch (EMA with momentum, unbiased variance), computed in closed
    form ``r_G = (1 - m)^G r_0 + sum_g m (1 - m)^{G-g} s_g``: the same buffers as a loop of ``F.batch_norm`` over the
    chunks. Eval (``training=False``): plain batch norm with the running statistics (``F.batch_norm``).

    Args:
        x: [N, C, *], float32/float64/float16/bfloat16 (computed in float32, float64 for float64).
        running_mean, running_var: [C] buffers or both None.
        weight, bias: [C] or None.
        training, momentum, eps: as ``F.batch_norm`` (momentum must be a number in [0, 1]).
        ghost_batch_size: B, samples per ghost batch (B >= N: ordinary batch norm).
        backend: ``"auto"``, ``"cpp"``, ``"cuda"``, ``"triton"`` or ``"reference"`` (see pyfast.backends).

    Returns:
        y, x's shape and dtype. Gradients flow to x, weight and bias (per-ghost batch-norm backward).

    Raises ValueError when a ghost batch has a single value per channel in training (its variance is undefined, as
    ``nn.BatchNorm`` refuses such a batch).
    """
    _check(x, running_mean, running_var, weight, bias)
    check_hyperparameters(ghost_batch_size, momentum, eps)
    if not training:
        if running_mean is None:
            raise ValueError("ghost_batch_norm: training=False needs running_mean and running_var")
        # The buffers and affine parameters in x's arithmetic dtype: F.batch_norm refuses float64 x with float32
        # statistics (a float32 module applied to float64 data), which the training path accepts.
        acc = acc_dtype(x.dtype)
        rm, rv, w, b = (None if t is None else t.to(acc) for t in (running_mean, running_var, weight, bias))
        return F.batch_norm(x, rm, rv, w, b, False, 0.0, eps)
    n, spatial = x.shape[0], math.prod(x.shape[2:])
    smallest = (n - (num_ghosts(n, ghost_batch_size) - 1) * ghost_batch_size) * spatial  # the last ghost batch
    if smallest < 2:
        raise ValueError(f"ghost_batch_norm: every ghost batch needs more than 1 value per channel in training; "
                         f"N={n} with ghost_batch_size={ghost_batch_size} leaves a ghost batch of "
                         f"{smallest} value(s) per channel (choose another ghost_batch_size or batch size)")
    chosen = resolve("ghost_bn", backend, x.device)
    if chosen == "reference":
        y, new_mean, new_var = ghost_batch_norm_ref(x, running_mean, running_var, weight, bias, ghost_batch_size,
                                                    momentum, eps)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.copy_(new_mean)
                running_var.copy_(new_var)
        return y
    op = torch.ops.pyfast.ghost_bn_fwd_triton if chosen == "triton" else torch.ops.pyfast.ghost_bn_fwd
    y, mean, var, _ = op(x, weight, bias, ghost_batch_size, eps)
    if running_mean is not None:
        _update_running(running_mean, running_var, mean, var, n, spatial, ghost_batch_size, momentum)
    return y


# (N, spatial size, ghost batch size, momentum, dtype, device) -> the weights of _update_running; a training run sees
# one or two keys.
_EMA_WEIGHTS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _ema_weights(n: int, spatial: int, ghost_batch_size: int, momentum: float, dtype: torch.dtype,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two [G] vectors: the EMA weights m (1 - m)^(G-1-g) of the ghost means, and the same times m_g / (m_g - 1) (the
    unbiasing factor, m_g the ghost's values per channel) for the ghost variances. Cached outside torch.compile:
    building them costs more than the update itself."""
    key = (n, spatial, ghost_batch_size, momentum, dtype, device)
    weights = None if torch.compiler.is_compiling() else _EMA_WEIGHTS.get(key)
    if weights is None:
        counts = ghost_counts(n, spatial, ghost_batch_size)
        g = len(counts)
        ema = [momentum * (1.0 - momentum) ** (g - 1 - i) for i in range(g)]
        both = torch.tensor([ema, [e * c / (c - 1) for e, c in zip(ema, counts)]], dtype=dtype, device=device)
        weights = (both[0], both[1])
        if not torch.compiler.is_compiling():  # under compile the tensor is a constant of the graph
            if len(_EMA_WEIGHTS) >= 64:
                _EMA_WEIGHTS.clear()
            _EMA_WEIGHTS[key] = weights
    return weights


def _update_running(running_mean, running_var, mean, var, n, spatial, ghost_batch_size, momentum) -> None:
    """The closed form of :func:`pyfast.reference.ghost_bn.running_update` for both buffers, one in-place
    ``addmv_`` each: ``r <- (1 - m)^G r + stats^T w`` with the [G] weights of :func:`_ema_weights`, in the
    statistics' dtype (float32, float64 for float64 inputs)."""
    w_mean, w_var = _ema_weights(n, spatial, ghost_batch_size, momentum, mean.dtype, mean.device)
    decay = (1.0 - momentum) ** w_mean.shape[0]
    with torch.no_grad():
        for buf, stats, w in ((running_mean, mean, w_mean), (running_var, var, w_var)):
            if buf.dtype == stats.dtype:
                buf.addmv_(stats.t(), w, beta=decay)
            else:  # e.g. the float16 buffers of a half module: the update runs in the statistics' dtype
                buf.copy_(torch.addmv(buf.to(stats.dtype), stats.t(), w, beta=decay))


def ghost_count(n: int, ghost_batch_size: int) -> int:
    """How many ghost batches (running-statistics updates) a batch of n samples makes."""
    return num_ghosts(n, ghost_batch_size)
