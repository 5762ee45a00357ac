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
from pyfast.reference.mesa import check_codes, mesa_dequantize_ref, mesa_quantize_ref

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
    ``G`` contiguous chunks. Per group, with r / m the range / minimum of this batch's finite values (a group
    without any keeps its alpha and beta)::

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
    as a contiguous tensor of q's shape in ``dtype`` (float32/float64/float16/bfloat16).

    A code ``>= levels`` raises a ValueError: the C++ CPU op and the reference check while they decode; for the CUDA
    and Triton kernels, which write NaN there instead, the codes are checked here first (one device sync; not while
    torch.compile traces)."""
    if not isinstance(q, torch.Tensor) or q.dtype != torch.uint8:
        raise TypeError(f"mesa: q must be a uint8 tensor, got {q.dtype if isinstance(q, torch.Tensor) else type(q)}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"mesa: dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    _check_state(q, clip_val, shift, dim)
    levels = check_levels(levels)
    chosen = resolve("mesa", backend, q.device)
    if chosen in ("cuda", "triton") and not torch.compiler.is_compiling():
        check_codes(q, levels)
    return dequantize_fn(chosen)(q, clip_val, shift, dim, levels, dtype)


# --------------------------------------------------------------------------------------------------------------
# Layer ops
# --------------------------------------------------------------------------------------------------------------
# A layer op stores n tensors (MatMul: both operands; the others: one) and takes, after the layer's own arguments, the
# quant arguments: clip_val, shift and initialized of each stored tensor, one seed (stored tensor i rounds with
# seed + i), the group axis (qdim) of each, then levels, ema_decay, update, stochastic and backend. It returns the
# layer's outputs, then the codes and new estimates (q, clip_val', shift') of each stored tensor. Its backward
# dequantizes the stored tensors it needs and calls the ATen backward; the quant arguments get no gradient.

_QUANT_ARGS = ("Tensor clip_val, Tensor shift, Tensor initialized, Tensor seed, SymInt qdim, SymInt levels, "
               "float ema_decay, bool update, bool stochastic, str backend")


def _split_quant_args(qargs, stored: int):
    """(states, seed, qdims, levels, (ema_decay, update, stochastic), backend) of a layer op storing ``stored``
    tensors; ``states[i]`` is (clip_val, shift, initialized) of stored tensor i."""
    states = [qargs[3 * i:3 * i + 3] for i in range(stored)]
    seed, qdims = qargs[3 * stored], qargs[3 * stored + 1:4 * stored + 1]
    levels, ema_decay, update, stochastic, backend = qargs[4 * stored + 1:]
    return states, seed, qdims, levels, (ema_decay, update, stochastic), backend


def _first_arg(args, outs):
    return args[:1]


def _nothing_saved(ctx, args, outs):
    return ()


def _layer_op(name: str, args: str, layer, backward, *, save=_nothing_saved, stores=_first_arg, outputs: int = 1,
              quant_args: str = _QUANT_ARGS):
    """Registers the custom op ``pyfast::<name>(<args>, <quant_args>)``, its fake kernel and its autograd, from what
    differs between the layer ops:

    - ``layer(*layer_args)``: the layer at full precision, a tensor or a tuple of ``outputs`` tensors (it runs on
      fake tensors too: the fake kernel is the same function with fake quantization);
    - ``stores(layer_args, outs)``: the tensors to quantize (default: the layer's first argument), as many as
      ``quant_args`` has group axes;
    - ``save(ctx, layer_args, outs)``: the tensors backward needs besides the codes (it may set ctx attributes);
    - ``backward(ctx, grad_y, restore, *saved)``: the gradients of the layer arguments, ``restore(i)`` dequantizing
      stored tensor i to its dtype.

    The schema is spelled out rather than inferred from type hints, so the quant arguments are written once;
    tests/ops/test_mesa_layer_ops.py pins every layer op's schema.
    """
    n_args, n_quant_args = len(args.split(", ")), len(quant_args.split(", "))
    n_stored = quant_args.count("SymInt qdim")  # one group axis per stored tensor
    returns = ", ".join(["Tensor"] * (outputs + 3 * n_stored))

    def run(quantize_of_backend, inputs):
        layer_args, qargs = inputs[:n_args], inputs[n_args:]
        outs = layer(*layer_args)
        outs = (outs,) if isinstance(outs, Tensor) else tuple(outs)
        states, seed, qdims, levels, options, backend = _split_quant_args(qargs, n_stored)
        quantize = quantize_of_backend(backend)
        codes = []
        for i, (t, state, qdim) in enumerate(zip(stores(layer_args, outs), states, qdims, strict=True)):
            codes += quantize(t, *state, seed + i if i else seed, qdim, levels, *options)
        return (*outs, *codes)

    def setup_context(ctx, inputs, output):
        layer_args, qargs = inputs[:n_args], inputs[n_args:]
        outs, codes = output[:outputs], output[outputs:]
        _, _, ctx.qdims, ctx.levels, _, ctx.backend = _split_quant_args(qargs, n_stored)
        ctx.stored_dtypes = [t.dtype for t in stores(layer_args, outs)]
        ctx.save_for_backward(*codes, *save(ctx, layer_args, outs))

    def layer_backward(ctx, grad_y, *_):
        codes, saved = ctx.saved_tensors[:3 * n_stored], ctx.saved_tensors[3 * n_stored:]
        dequantize = dequantize_fn(ctx.backend)

        def restore(i):
            q, clip_val, shift = codes[3 * i:3 * i + 3]
            return dequantize(q, clip_val, shift, ctx.qdims[i], ctx.levels, ctx.stored_dtypes[i])

        return (*backward(ctx, grad_y, restore, *saved), *(None,) * n_quant_args)

    op = torch.library.custom_op(f"pyfast::{name}", lambda *inputs: run(quantize_fn, inputs), mutates_args=(),
                                 schema=f"({args}, {quant_args}) -> ({returns})")
    op.register_fake(lambda *inputs: run(lambda backend: _quantize_fake, inputs))
    op.register_autograd(layer_backward, setup_context=setup_context)
    return op


# Linear: stores the input. dX = dY W, dW = dY^T X_hat, db = sum dY. The weight is cast to x's dtype inside (under
# autocast the module passes a half x and the float32 weight), so the saved weight is the parameter itself.
def _linear(x, weight, bias):
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


def _linear_save(ctx, args, outs):
    x, weight, bias = args
    ctx.x_dtype, ctx.has_bias = x.dtype, bias is not None
    return (weight,)


def _linear_backward(ctx, grad_y, restore, weight):
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = grad_y @ weight.to(ctx.x_dtype)
    if ctx.needs_input_grad[1]:
        x_hat = restore(0)
        grad_w = (grad_y.reshape(-1, grad_y.shape[-1]).t() @ x_hat.reshape(-1, x_hat.shape[-1])).to(weight.dtype)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = grad_y.reshape(-1, grad_y.shape[-1]).sum(0).to(weight.dtype)
    return grad_x, grad_w, grad_b


mesa_linear = _layer_op("mesa_linear", "Tensor x, Tensor weight, Tensor? bias", _linear, _linear_backward,
                        save=_linear_save)


# GELU: stores the input; backward is aten's gelu_backward at the dequantized input.
def _gelu_save(ctx, args, outs):
    ctx.approximate = args[1]
    return ()


def _gelu_backward(ctx, grad_y, restore):
    return torch.ops.aten.gelu_backward(grad_y, restore(0), approximate=ctx.approximate), None


mesa_gelu = _layer_op("mesa_gelu", "Tensor x, str approximate",
                      lambda x, approximate: F.gelu(x, approximate=approximate), _gelu_backward, save=_gelu_save)


# Softmax: stores its output only (dX = y (dY - sum(dY y)) needs nothing else).
def _softmax_save(ctx, args, outs):
    ctx.dim = args[1]
    return ()


def _softmax_backward(ctx, grad_y, restore):
    y_hat = restore(0)
    return torch.ops.aten._softmax_backward_data(grad_y, y_hat, ctx.dim, y_hat.dtype), None


mesa_softmax = _layer_op("mesa_softmax", "Tensor x, SymInt dim", torch.softmax, _softmax_backward, save=_softmax_save,
                         stores=lambda args, outs: outs[:1])


# LayerNorm: stores the input (codes) plus the float32 mean and rstd of each row, as aten's backward takes them.
def _layer_norm_save(ctx, args, outs):
    _, normalized_shape, weight, bias, _ = args
    _, mean, rstd = outs
    ctx.normalized_shape = normalized_shape
    return mean, rstd, weight, bias


def _layer_norm_backward(ctx, grad_y, restore, mean, rstd, weight, bias):
    mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[2],
            bias is not None and ctx.needs_input_grad[3]]
    grad_x, grad_w, grad_b = torch.ops.aten.native_layer_norm_backward(
        grad_y.contiguous(), restore(0), ctx.normalized_shape, mean, rstd, weight, bias, mask)
    return grad_x, None, grad_w, grad_b, None


mesa_layer_norm = _layer_op("mesa_layer_norm", "Tensor x, SymInt[] normalized_shape, Tensor? weight, Tensor? bias, "
                            "float eps", torch.ops.aten.native_layer_norm, _layer_norm_backward,
                            save=_layer_norm_save, outputs=3)


# MatMul: stores both operands, each with its own estimates; the second operand's rounding seed is seed + 1.
# dA = dY B_hat^T, dB = A_hat^T dY (summed back to the operand's shape where it was broadcast).
def _matmul_save(ctx, args, outs):
    ctx.shapes = (args[0].shape, args[1].shape)
    return ()


def _matmul_backward(ctx, grad_y, restore):
    grad_a = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_a = (grad_y @ restore(1).transpose(-2, -1)).sum_to_size(ctx.shapes[0])
    if ctx.needs_input_grad[1]:
        grad_b = (restore(0).transpose(-2, -1) @ grad_y).sum_to_size(ctx.shapes[1])
    return grad_a, grad_b


mesa_matmul = _layer_op("mesa_matmul", "Tensor a, Tensor b", torch.matmul, _matmul_backward, save=_matmul_save,
                        stores=lambda args, outs: args[:2],
                        quant_args="Tensor clip_a, Tensor shift_a, Tensor init_a, Tensor clip_b, Tensor shift_b, "
                                   "Tensor init_b, Tensor seed, SymInt qdim_a, SymInt qdim_b, SymInt levels, "
                                   "float ema_decay, bool update, bool stochastic, str backend")


# Conv2d: stores the input; backward is aten's convolution_backward at the dequantized input. Explicit integer
# padding (the module pads non-zero modes and 'same' itself).
def _conv2d(x, weight, bias, stride, padding, dilation, groups):
    return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), stride, padding, dilation,
                    groups)


def _conv2d_save(ctx, args, outs):
    x, weight, bias, *conv = args
    ctx.x_dtype, ctx.has_bias, ctx.conv = x.dtype, bias is not None, conv
    return (weight,)


def _conv2d_backward(ctx, grad_y, restore, weight):
    stride, padding, dilation, groups = ctx.conv
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad_y, restore(0), weight.to(ctx.x_dtype), [weight.shape[0]] if ctx.has_bias else None, stride, padding,
        dilation, False, [0, 0], groups, mask)
    grad_w = None if grad_w is None else grad_w.to(weight.dtype)
    grad_b = None if grad_b is None else grad_b.to(weight.dtype)
    return grad_x, grad_w, grad_b, None, None, None, None


mesa_conv2d = _layer_op("mesa_conv2d", "Tensor x, Tensor weight, Tensor? bias, SymInt[] stride, SymInt[] padding, "
                        "SymInt[] dilation, SymInt groups", _conv2d, _conv2d_backward, save=_conv2d_save)
