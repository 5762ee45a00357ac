"""Mesa 8-bit activation storage as torch custom ops.

Primitive ops: ``torch.ops.pyfast.mesa_quantize`` / ``mesa_dequantize`` (C++ CPU and CUDA), their Triton twins
``mesa_quantize_triton`` / ``mesa_dequantize_triton``, and the public functions :func:`mesa_quantize` /
:func:`mesa_dequantize`. The maths is in :mod:`pyfast.reference.mesa` and at the top of ``csrc/mesa/mesa.h``.

Layer ops: ``pyfast::mesa_linear``, ``mesa_gelu``, ``mesa_softmax``, ``mesa_layer_norm``, ``mesa_matmul`` and
``mesa_conv2d``. Each runs its layer at full precision, quantizes what its backward needs (Softmax: its output only;
MatMul: both operands; the others: their input) and returns the codes and the new running estimates with the
result; its registered backward dequantizes and calls the ATen backward. They are ``torch.library.custom_op``s with
``register_autograd``, so ``torch.compile(fullgraph=True)`` keeps them whole.

State update: functional. The ops return the new ``clip_val`` / ``shift`` and never write their inputs (an op with
mutable arguments cannot have a registered autograd formula); :class:`pyfast.nn.mesa.Quantizer` copies them into its
buffers. Every quant op takes the same trailing arguments: ``clip_val, shift, initialized, seed, qdim, levels,
ema_decay, update, stochastic, backend`` (``backend`` resolved: ``reference``, ``cpp``, ``cuda`` or ``triton``).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from pyfast import _extension
from pyfast._dtypes import FLOAT_DTYPES
from pyfast._numbers import is_nan, is_number
from pyfast.backends import resolve
from pyfast.reference.mesa import mesa_dequantize_ref, mesa_quantize_ref

__all__ = ["mesa_dequantize", "mesa_quantize"]

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------------------------
# Primitive ops: fake kernels and Triton twins
# --------------------------------------------------------------------------------------------------------------


def _quantize_fake(x, clip_val, shift, initialized, seed, dim, levels, ema_decay, update, stochastic):
    return (torch.empty_like(x, dtype=torch.uint8, memory_format=torch.contiguous_format),
            torch.empty_like(clip_val), torch.empty_like(shift))


def _dequantize_fake(q, clip_val, shift, dim, levels, dtype):
    return torch.empty_like(q, dtype=dtype, memory_format=torch.contiguous_format)


if _extension.has_cpp():
    torch.library.register_fake("pyfast::mesa_quantize")(_quantize_fake)
    torch.library.register_fake("pyfast::mesa_dequantize")(_dequantize_fake)


# Triton twins: torch.library.custom_op rather than triton_op, for the reason given in pyfast/ops/lif.py (opcheck
# and compile under TRITON_INTERPRET=1). Same schemas as the C++ ops; tests/ops/test_mesa_triton.py checks it.
@torch.library.custom_op("pyfast::mesa_quantize_triton", mutates_args=())
def mesa_quantize_triton(x: Tensor, clip_val: Tensor, shift: Tensor, initialized: Tensor, seed: Tensor, dim: int,
                         levels: int, ema_decay: float, update: bool, stochastic: bool
                         ) -> tuple[Tensor, Tensor, Tensor]:
    from pyfast._triton import mesa as kernels  # triton is optional: imported on first use

    return kernels.quantize(x.contiguous(), clip_val.contiguous(), shift.contiguous(), initialized, seed, dim, levels,
                            ema_decay, update, stochastic)


@torch.library.custom_op("pyfast::mesa_dequantize_triton", mutates_args=())
def mesa_dequantize_triton(q: Tensor, clip_val: Tensor, shift: Tensor, dim: int, levels: int,
                           dtype: torch.dtype) -> Tensor:
    from pyfast._triton import mesa as kernels

    return kernels.dequantize(q.contiguous(), clip_val.contiguous(), shift.contiguous(), dim, levels, dtype)


mesa_quantize_triton.register_fake(_quantize_fake)
mesa_dequantize_triton.register_fake(_dequantize_fake)


def quantize_fn(backend: str):
    """The quantize implementation of a resolved backend (same signature as ``torch.ops.pyfast.mesa_quantize``)."""
    if backend == "reference":
        return mesa_quantize_ref
    if backend == "triton":
        return torch.ops.pyfast.mesa_quantize_triton
    return torch.ops.pyfast.mesa_quantize


def dequantize_fn(backend: str):
    if backend == "reference":
        return mesa_dequantize_ref
    if backend == "triton":
        return torch.ops.pyfast.mesa_dequantize_triton
    return torch.ops.pyfast.mesa_dequantize


# --------------------------------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------------------------------


def check_levels(levels) -> int:
    if not isinstance(levels, numbers.Integral) or isinstance(levels, bool):
        raise TypeError(f"mesa: levels must be an int, got {type(levels).__name__}")
    if not 2 <= levels <= 256:
        raise ValueError(f"mesa: levels must be in 2..256 (codes are stored as uint8), got {levels}")
    return int(levels)


def check_ema_decay(ema_decay) -> float:
    if not is_number(ema_decay):
        raise TypeError(f"mesa: ema_decay must be a number, got {type(ema_decay).__name__}")
    ema_decay = float(ema_decay)
    if is_nan(ema_decay) or not 0.0 <= ema_decay <= 1.0:
        raise ValueError(f"mesa: ema_decay (the momentum of the running estimates) must be in [0, 1], got {ema_decay}")
    return ema_decay


def check_groups(groups, size: int | None = None, what: str = "") -> int:
    if not isinstance(groups, numbers.Integral) or isinstance(groups, bool):
        raise TypeError(f"mesa: quant_groups must be an int, got {type(groups).__name__}")
    if groups < 1:
        raise ValueError(f"mesa: quant_groups must be >= 1, got {groups}")
    if size is not None and size % groups:
        raise ValueError(f"mesa: quant_groups ({groups}) must divide {what} ({size})")
    return int(groups)


def _check_float_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"mesa: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"mesa: {name} must be a floating-point tensor (float32/float64/float16/bfloat16), got {t.dtype}")


def _check_state(x: Tensor, clip_val, shift, dim: int) -> None:
    for name, t in (("clip_val", clip_val), ("shift", shift)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
            raise TypeError(f"mesa: {name} must be a float32 tensor, got "
                            f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.device != x.device:
            raise ValueError(f"mesa: {name} is on {t.device} but the input is on {x.device}")
    if shift.numel() != clip_val.numel():
        raise ValueError(f"mesa: shift must have clip_val's {clip_val.numel()} elements, got {shift.numel()}")
    if x.dim() == 0:
        raise ValueError("mesa: the input must have at least one dimension, got a 0-d tensor")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"mesa: dim must be in [{-x.dim()}, {x.dim() - 1}], got {dim}")
    check_groups(clip_val.numel(), x.shape[dim], f"x.shape[{dim}]")


# --------------------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------------------


def mesa_quantize(x: Tensor, clip_val: Tensor, shift: Tensor, initialized: Tensor, seed: Tensor, *, dim: int = -1,
                  levels: int = 256, ema_decay: float = 0.9, update: bool = True, stochastic: bool = True,
                  backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """Group-wise quantization of ``x`` to uint8 with running range / minimum estimates (Mesa).

    ``x`` is viewed as ``[outer, G, inner]`` around axis ``dim`` with ``G = clip_val.numel()``: ``dim=1`` and
    ``G = H`` quantizes a ``[B, H, N, D]`` tensor head by head; ``dim=-1`` splits the channels of ``[..., C]`` into
    ``G`` contiguous chunks. Per group, with r / m the range / minimum of this batch's finite values::

        alpha' = r, beta' = m                                       (initialized is False)
        alpha' = lam alpha + (1-lam) r, beta' = lam beta + (1-lam) m  (update; lam = ema_decay)
        s = (levels - 1) / alpha'
        q = round(clamp((x - beta') s + u - 1/2, 0, levels - 1))    (u ~ U[0, 1); u = 1/2 when not stochastic)

    ``u`` is a counter-based hash of ``seed`` and the element's index: the same seed gives the same codes on every
    backend.

    Args:
        x: float32/float64/float16/bfloat16 tensor, any layout.
        clip_val, shift: float32 running range alpha and minimum beta, ``G`` elements each.
        initialized: one bool; ``False`` replaces the estimates with the batch statistics.
        seed: one int64 (e.g. ``torch.randint(-2**63, 2**63 - 1, (1,))``), on x's device.
        dim: the group axis. levels: number of codes, 2..256. ema_decay: lam in [0, 1].
        update: apply the EMA (``False`` keeps the estimates, once initialized). stochastic: stochastic rounding.
        backend: ``"auto"``, ``"cpp"``, ``"cuda"``, ``"triton"`` or ``"reference"``.

    Returns:
        ``(q, clip_val', shift')``: uint8 codes of x's shape and the new estimates (inputs are not modified).
    """
    _check_float_tensor("x", x)
    _check_state(x, clip_val, shift, dim)
    levels, ema_decay = check_levels(levels), check_ema_decay(ema_decay)
    if not isinstance(initialized, torch.Tensor) or initialized.dtype != torch.bool or initialized.numel() != 1:
        raise TypeError("mesa: initialized must be a bool tensor of one element")
    if not isinstance(seed, torch.Tensor) or seed.dtype != torch.int64 or seed.numel() != 1:
        raise TypeError("mesa: seed must be an int64 tensor of one element")
    fn = quantize_fn(resolve("mesa", backend, x.device))
    return fn(x, clip_val, shift, initialized, seed, dim, levels, ema_decay, bool(update), bool(stochastic))


def mesa_dequantize(q: Tensor, clip_val: Tensor, shift: Tensor, *, dim: int = -1, levels: int = 256,
                    dtype: torch.dtype = torch.float32, backend: str = "auto") -> Tensor:
    """``x_hat = q / s + beta`` with ``s = (levels - 1) / alpha`` per group (grouping as in :func:`mesa_quantize`),
    as a contiguous tensor of q's shape in ``dtype`` (float32/float64/float16/bfloat16)."""
    if not isinstance(q, torch.Tensor) or q.dtype != torch.uint8:
        raise TypeError(f"mesa: q must be a uint8 tensor, got {q.dtype if isinstance(q, torch.Tensor) else type(q)}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"mesa: dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    _check_state(q, clip_val, shift, dim)
    levels = check_levels(levels)
    return dequantize_fn(resolve("mesa", backend, q.device))(q, clip_val, shift, dim, levels, dtype)


# --------------------------------------------------------------------------------------------------------------
# Layer ops
# --------------------------------------------------------------------------------------------------------------
# Quant arguments, in this order, at the end of every layer op: clip_val, shift, initialized, seed, qdim, levels,
# ema_decay, update, stochastic, backend.


def _quant(t, clip_val, shift, initialized, seed, qdim, levels, ema_decay, update, stochastic, backend):
    return quantize_fn(backend)(t, clip_val, shift, initialized, seed, qdim, levels, ema_decay, update, stochastic)


def _state_fake(clip_val, shift):
    return torch.empty_like(clip_val), torch.empty_like(shift)


def _q_fake(t):
    return torch.empty_like(t, dtype=torch.uint8, memory_format=torch.contiguous_format)


def _dequant(ctx, q, clip_val, shift, dtype):
    return dequantize_fn(ctx.backend)(q, clip_val, shift, ctx.qdim, ctx.levels, dtype)


def _save_quant_config(ctx, qargs):
    ctx.qdim, ctx.levels, ctx.backend = qargs[4], qargs[5], qargs[9]


_NO_QUANT_GRADS = (None,) * 10


# Linear: stores the input. dX = dY W, dW = dY^T X_hat, db = sum dY. The weight is cast to x's dtype inside (under
# autocast the module passes a half x and the float32 weight), so the saved weight is the parameter itself.
@torch.library.custom_op("pyfast::mesa_linear", mutates_args=())
def mesa_linear(x: Tensor, weight: Tensor, bias: Tensor | None, clip_val: Tensor, shift: Tensor, initialized: Tensor,
                seed: Tensor, qdim: int, levels: int, ema_decay: float, update: bool, stochastic: bool, backend: str
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    y = F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
    q, c, s = _quant(x, clip_val, shift, initialized, seed, qdim, levels, ema_decay, update, stochastic, backend)
    return y, q, c, s


@mesa_linear.register_fake
def _(x, weight, bias, clip_val, shift, *rest):
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype)), _q_fake(x), *_state_fake(
        clip_val, shift)


def _linear_setup(ctx, inputs, output):
    x, weight, bias, *qargs = inputs
    _, q, c, s = output
    ctx.save_for_backward(q, c, s, weight)
    ctx.x_dtype, ctx.has_bias = x.dtype, bias is not None
    _save_quant_config(ctx, qargs)


def _linear_backward(ctx, grad_y, *_):
    q, c, s, weight = ctx.saved_tensors
    w = weight.to(ctx.x_dtype)
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = grad_y @ w
    if ctx.needs_input_grad[1]:
        x_hat = _dequant(ctx, q, c, s, ctx.x_dtype)
        grad_w = (grad_y.reshape(-1, grad_y.shape[-1]).t() @ x_hat.reshape(-1, x_hat.shape[-1])).to(weight.dtype)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = grad_y.reshape(-1, grad_y.shape[-1]).sum(0).to(weight.dtype)
    return grad_x, grad_w, grad_b, *_NO_QUANT_GRADS


mesa_linear.register_autograd(_linear_backward, setup_context=_linear_setup)


# GELU: stores the input; backward is aten's gelu_backward at the dequantized input.
@torch.library.custom_op("pyfast::mesa_gelu", mutates_args=())
def mesa_gelu(x: Tensor, approximate: str, clip_val: Tensor, shift: Tensor, initialized: Tensor, seed: Tensor,
              qdim: int, levels: int, ema_decay: float, update: bool, stochastic: bool, backend: str
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    y = F.gelu(x, approximate=approximate)
    q, c, s = _quant(x, clip_val, shift, initialized, seed, qdim, levels, ema_decay, update, stochastic, backend)
    return y, q, c, s


@mesa_gelu.register_fake
def _(x, approximate, clip_val, shift, *rest):
    return torch.empty_like(x), _q_fake(x), *_state_fake(clip_val, shift)


def _gelu_setup(ctx, inputs, output):
    x, approximate, *qargs = inputs
    _, q, c, s = output
    ctx.save_for_backward(q, c, s)
    ctx.x_dtype, ctx.approximate = x.dtype, approximate
    _save_quant_config(ctx, qargs)


def _gelu_backward(ctx, grad_y, *_):
    q, c, s = ctx.saved_tensors
    x_hat = _dequant(ctx, q, c, s, ctx.x_dtype)
    return torch.ops.aten.gelu_backward(grad_y, x_hat, approximate=ctx.approximate), None, *_NO_QUANT_GRADS


mesa_gelu.register_autograd(_gelu_backward, setup_context=_gelu_setup)


# Softmax: stores its output only (dX = y (dY - sum(dY y)) needs nothing else).
@torch.library.custom_op("pyfast::mesa_softmax", mutates_args=())
def mesa_softmax(x: Tensor, dim: int, clip_val: Tensor, shift: Tensor, initialized: Tensor, seed: Tensor, qdim: int,
                 levels: int, ema_decay: float, update: bool, stochastic: bool, backend: str
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    y = torch.softmax(x, dim)
    q, c, s = _quant(y, clip_val, shift, initialized, seed, qdim, levels, ema_decay, update, stochastic, backend)
    return y, q, c, s


@mesa_softmax.register_fake
def _(x, dim, clip_val, shift, *rest):
    return torch.empty_like(x), _q_fake(x), *_state_fake(clip_val, shift)


def _softmax_setup(ctx, inputs, output):
    x, dim, *qargs = inputs
    _, q, c, s = output
    ctx.save_for_backward(q, c, s)
    ctx.x_dtype, ctx.dim = x.dtype, dim
    _save_quant_config(ctx, qargs)


def _softmax_backward(ctx, grad_y, *_):
    q, c, s = ctx.saved_tensors
    y_hat = _dequant(ctx, q, c, s, ctx.x_dtype)
    grad_x = torch.ops.aten._softmax_backward_data(grad_y, y_hat, ctx.dim, ctx.x_dtype)
    return grad_x, None, *_NO_QUANT_GRADS


mesa_softmax.register_autograd(_softmax_backward, setup_context=_softmax_setup)


# LayerNorm: stores the input (codes) plus the float32 mean and rstd of each row, as aten's backward takes them.
@torch.library.custom_op("pyfast::mesa_layer_norm", mutates_args=())
def mesa_layer_norm(x: Tensor, normalized_shape: list[int], weight: Tensor | None, bias: Tensor | None, eps: float,
                    clip_val: Tensor, shift: Tensor, initialized: Tensor, seed: Tensor, qdim: int, levels: int,
                    ema_decay: float, update: bool, stochastic: bool, backend: str
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    y, mean, rstd = torch.ops.aten.native_layer_norm(x, normalized_shape, weight, bias, eps)
    q, c, s = _quant(x, clip_val, shift, initialized, seed, qdim, levels, ema_decay, update, stochastic, backend)
    return y, mean, rstd, q, c, s


@mesa_layer_norm.register_fake
def _(x, normalized_shape, weight, bias, eps, clip_val, shift, *rest):
    y, mean, rstd = torch.ops.aten.native_layer_norm(x, normalized_shape, weight, bias, eps)
    return y, mean, rstd, _q_fake(x), *_state_fake(clip_val, shift)


def _layer_norm_setup(ctx, inputs, output):
    x, normalized_shape, weight, bias, _eps, *qargs = inputs
    _, mean, rstd, q, c, s = output
    ctx.save_for_backward(q, c, s, mean, rstd, weight, bias)
    ctx.x_dtype, ctx.normalized_shape = x.dtype, normalized_shape
    _save_quant_config(ctx, qargs)


def _layer_norm_backward(ctx, grad_y, *_):
    q, c, s, mean, rstd, weight, bias = ctx.saved_tensors
    x_hat = _dequant(ctx, q, c, s, ctx.x_dtype)
    mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[2],
            bias is not None and ctx.needs_input_grad[3]]
    grad_x, grad_w, grad_b = torch.ops.aten.native_layer_norm_backward(
        grad_y.contiguous(), x_hat, ctx.normalized_shape, mean, rstd, weight, bias, mask)
    return grad_x, None, grad_w, grad_b, None, *_NO_QUANT_GRADS


mesa_layer_norm.register_autograd(_layer_norm_backward, setup_context=_layer_norm_setup)


# MatMul: stores both operands, each with its own estimates; the second operand's rounding seed is seed + 1.
# dA = dY B_hat^T, dB = A_hat^T dY (summed back to the operand's shape where it was broadcast).
@torch.library.custom_op("pyfast::mesa_matmul", mutates_args=())
def mesa_matmul(a: Tensor, b: Tensor, clip_a: Tensor, shift_a: Tensor, init_a: Tensor, clip_b: Tensor,
                shift_b: Tensor, init_b: Tensor, seed: Tensor, qdim_a: int, qdim_b: int, levels: int,
                ema_decay: float, update: bool, stochastic: bool, backend: str
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    y = torch.matmul(a, b)
    quant = quantize_fn(backend)
    qa, ca, sa = quant(a, clip_a, shift_a, init_a, seed, qdim_a, levels, ema_decay, update, stochastic)
    qb, cb, sb = quant(b, clip_b, shift_b, init_b, seed + 1, qdim_b, levels, ema_decay, update, stochastic)
    return y, qa, ca, sa, qb, cb, sb


@mesa_matmul.register_fake
def _(a, b, clip_a, shift_a, init_a, clip_b, shift_b, *rest):
    return (torch.matmul(a, b), _q_fake(a), *_state_fake(clip_a, shift_a), _q_fake(b),
            *_state_fake(clip_b, shift_b))


def _matmul_setup(ctx, inputs, output):
    a, b, _, _, _, _, _, _, _, qdim_a, qdim_b, levels, _, _, _, backend = inputs
    _, qa, ca, sa, qb, cb, sb = output
    ctx.save_for_backward(qa, ca, sa, qb, cb, sb)
    ctx.a_dtype, ctx.b_dtype = a.dtype, b.dtype
    ctx.qdim_a, ctx.qdim_b, ctx.levels, ctx.backend = qdim_a, qdim_b, levels, backend


def _matmul_backward(ctx, grad_y, *_):
    qa, ca, sa, qb, cb, sb = ctx.saved_tensors
    deq = dequantize_fn(ctx.backend)
    grad_a = grad_b = None
    if ctx.needs_input_grad[0]:
        b_hat = deq(qb, cb, sb, ctx.qdim_b, ctx.levels, ctx.b_dtype)
        grad_a = (grad_y @ b_hat.transpose(-2, -1)).sum_to_size(qa.shape)
    if ctx.needs_input_grad[1]:
        a_hat = deq(qa, ca, sa, ctx.qdim_a, ctx.levels, ctx.a_dtype)
        grad_b = (a_hat.transpose(-2, -1) @ grad_y).sum_to_size(qb.shape)
    return grad_a, grad_b, *(None,) * 14


mesa_matmul.register_autograd(_matmul_backward, setup_context=_matmul_setup)


# Conv2d: stores the input; backward is aten's convolution_backward at the dequantized input. Explicit integer
# padding (the module pads non-zero modes and 'same' itself).
@torch.library.custom_op("pyfast::mesa_conv2d", mutates_args=())
def mesa_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int],
                dilation: list[int], groups: int, clip_val: Tensor, shift: Tensor, initialized: Tensor, seed: Tensor,
                qdim: int, levels: int, ema_decay: float, update: bool, stochastic: bool, backend: str
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    y = F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), stride, padding, dilation, groups)
    q, c, s = _quant(x, clip_val, shift, initialized, seed, qdim, levels, ema_decay, update, stochastic, backend)
    return y, q, c, s


@mesa_conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, clip_val, shift, *rest):
    y = F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), stride, padding, dilation, groups)
    return y, _q_fake(x), *_state_fake(clip_val, shift)


def _conv2d_setup(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups, *qargs = inputs
    _, q, c, s = output
    ctx.save_for_backward(q, c, s, weight)
    ctx.x_dtype, ctx.has_bias = x.dtype, bias is not None
    ctx.conv = (stride, padding, dilation, groups)
    _save_quant_config(ctx, qargs)


def _conv2d_backward(ctx, grad_y, *_):
    q, c, s, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv
    x_hat = _dequant(ctx, q, c, s, ctx.x_dtype)
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad_y, x_hat, weight.to(ctx.x_dtype), [weight.shape[0]] if ctx.has_bias else None, stride, padding,
        dilation, False, [0, 0], groups, mask)
    grad_w = None if grad_w is None else grad_w.to(weight.dtype)
    grad_b = None if grad_b is None else grad_b.to(weight.dtype)
    return grad_x, grad_w, grad_b, None, None, None, None, *_NO_QUANT_GRADS


mesa_conv2d.register_autograd(_conv2d_backward, setup_context=_conv2d_setup)
