"""Weighted convolution as torch custom ops: the density-weight op ``torch.ops.pyfast.wconv_weight_fwd`` /
``wconv_weight_bwd`` (C++ CPU and CUDA) and its Triton twins ``wconv_weight_fwd_triton`` / ``wconv_weight_bwd_triton``,
with fake kernels and autograd, plus the public functions :func:`wconv_weight` and :func:`wconv`.

Only the weight is pre-multiplied by the density (O(weight) work); the convolution is ATen's (oneDNN / cuDNN) on
the result, so no conv is rewritten. The maths and den layouts are in :mod:`pyfast.reference.wconv` and at the top
of ``csrc/wconv/wconv.h``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pyfast import _extension
from pyfast._dtypes import acc_dtype
from pyfast._numbers import is_number
from pyfast.backends import resolve
from pyfast.reference.wconv import den_layout, half_widths, wconv_weight_ref

__all__ = ["pack_den", "wconv", "wconv_weight"]

_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


# --------------------------------------------------------------------------------------------------------------
# Fake kernels and autograd of the custom ops
# --------------------------------------------------------------------------------------------------------------


def _fwd_fake(weight, den):
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _bwd_fake(grad, weight, den, need_grad_weight, need_grad_den):
    return (
        torch.empty_like(grad, memory_format=torch.contiguous_format) if need_grad_weight else grad.new_empty((0,)),
        den.new_empty(den.shape if need_grad_den else (0,)),
    )


def _setup_context(ctx, inputs, output):
    weight, den = inputs
    # W is needed only for d(den); Phi is recomputed from den (a few values) instead of being saved.
    ctx.save_for_backward(weight if ctx.needs_input_grad[1] else None, den)


def _make_backward(bwd_op):
    def backward(ctx, grad):
        weight, den = ctx.saved_tensors
        need_w, need_den = ctx.needs_input_grad
        grad_w, grad_den = bwd_op(grad, weight, den, need_w, need_den)
        return grad_w if need_w else None, grad_den if need_den else None

    return backward


if _extension.has_cpp():
    torch.library.register_fake("pyfast::wconv_weight_fwd")(_fwd_fake)
    torch.library.register_fake("pyfast::wconv_weight_bwd")(_bwd_fake)
    torch.library.register_autograd(
        "pyfast::wconv_weight_fwd", _make_backward(torch.ops.pyfast.wconv_weight_bwd), setup_context=_setup_context
    )


# Triton twins: torch.library.custom_op (not triton_op), so opcheck and torch.compile(fullgraph=True) also pass
# under TRITON_INTERPRET=1 (DESIGN.md, build facts). Same schema as the C++ ops; a test enforces the parity.


@torch.library.custom_op("pyfast::wconv_weight_fwd_triton", mutates_args=())
def wconv_weight_fwd_triton(weight: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    from pyfast._triton import wconv as kernels  # triton is optional: imported on first use

    weight = weight.contiguous()
    out = torch.empty_like(weight)
    kernels.wconv_scale(weight, den.to(acc_dtype(weight.dtype)).contiguous(), out)
    return out


@torch.library.custom_op("pyfast::wconv_weight_bwd_triton", mutates_args=())
def wconv_weight_bwd_triton(
    grad: torch.Tensor, weight: torch.Tensor | None, den: torch.Tensor, need_grad_weight: bool, need_grad_den: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    from pyfast._triton import wconv as kernels

    grad = grad.contiguous()
    den_acc = den.to(acc_dtype(grad.dtype)).contiguous()
    grad_w = torch.empty_like(grad) if need_grad_weight else grad.new_empty((0,))
    if not need_grad_den:
        if need_grad_weight:
            kernels.wconv_scale(grad, den_acc, grad_w)
        return grad_w, den.new_empty((0,))
    if weight is None:
        raise ValueError("wconv_weight_bwd_triton: weight is required for grad_den")
    grad_den = kernels.wconv_bwd(grad, weight.contiguous(), den_acc, grad_w if need_grad_weight else None)
    return grad_w, grad_den.to(den.dtype)


wconv_weight_fwd_triton.register_fake(_fwd_fake)
wconv_weight_bwd_triton.register_fake(_bwd_fake)
wconv_weight_fwd_triton.register_autograd(
    _make_backward(torch.ops.pyfast.wconv_weight_bwd_triton), setup_context=_setup_context
)


# --------------------------------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------------------------------


def _check_weight(weight) -> tuple[int, ...]:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"wconv: weight must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"wconv: weight must be a floating-point tensor (float32/float64/float16/bfloat16), got "
                        f"{weight.dtype}")
    if not 3 <= weight.dim() <= 5:
        raise ValueError(f"wconv: weight must be a conv weight [C_out, C_in/groups, K...] with 1 to 3 kernel axes, "
                         f"got shape {tuple(weight.shape)}")
    kernel_size = tuple(weight.shape[2:])
    check_kernel_size(kernel_size)
    return kernel_size


def check_kernel_size(kernel_size: Sequence[int]) -> None:
    """Every kernel size must be odd (the density is centred on a tap)."""
    if any(k % 2 == 0 for k in kernel_size):
        raise ValueError(f"wconv: kernel_size must be odd on every axis (the density is centred on a tap), got "
                         f"{tuple(kernel_size)}")


def pack_den(den, kernel_size: Sequence[int], *, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """den as the op takes it: one 1-D tensor, per-axis den concatenated or one den shared by every axis.

    ``den`` may be a 1-D floating tensor (either layout, see :mod:`pyfast.reference.wconv`), a sequence of numbers
    (same), or a sequence with one entry per kernel axis (each a 1-D tensor or a sequence of numbers), which is
    concatenated (differentiably). Numbers become a tensor of ``dtype`` on ``device``.
    """
    kernel_size = tuple(kernel_size)
    if isinstance(den, Sequence) and not isinstance(den, str) and not all(is_number(v) for v in den):
        if len(den) != len(kernel_size):
            raise ValueError(f"wconv: den given per axis must have one entry per kernel axis ({len(kernel_size)} for "
                             f"kernel {kernel_size}), got {len(den)}")
        parts = []
        for a, (d, m) in enumerate(zip(den, half_widths(kernel_size))):
            part = _den_tensor(d, f"den[{a}]", device, dtype)
            if part.numel() != m:
                raise ValueError(f"wconv: den[{a}] must have (K-1)/2 = {m} values for kernel size {2 * m + 1} on "
                                 f"axis {a}, got {part.numel()}")
            parts.append(part)
        devices = {p.device for p in parts}
        if len(devices) > 1:
            raise ValueError(f"wconv: the per-axis den tensors are on different devices: {sorted(map(str, devices))}")
        packed = torch.cat(parts) if parts else torch.empty(0, dtype=dtype, device=device)
    else:
        packed = _den_tensor(den, "den", device, dtype)
    try:
        den_layout(packed.numel(), kernel_size)
    except ValueError as err:
        raise ValueError(f"wconv: {err}") from None
    return packed


def _den_tensor(den, name: str, device, dtype) -> torch.Tensor:
    if isinstance(den, torch.Tensor):
        packed = den
    elif isinstance(den, Sequence) and not isinstance(den, str) and all(is_number(v) for v in den):
        packed = torch.tensor([float(v) for v in den], dtype=dtype, device=device)
    else:
        raise TypeError(f"wconv: {name} must be a tensor or a sequence of numbers (or one per kernel axis), got "
                        f"{type(den).__name__}")
    if not packed.is_floating_point():
        raise TypeError(f"wconv: {name} must be a floating-point tensor, got {packed.dtype}")
    if packed.dim() != 1:
        raise ValueError(f"wconv: {name} must be 1-D, got shape {tuple(packed.shape)}")
    return packed


def check_den_values(den: torch.Tensor, allow_negative_den: bool = False) -> None:
    """den must be finite, and >= 0 unless ``allow_negative_den``. Reads the values (a device sync on a GPU);
    skipped while torch.compile traces."""
    if torch.compiler.is_compiling() or den.numel() == 0:
        return
    d = den.detach()
    if not bool(torch.isfinite(d).all()):
        raise ValueError(f"wconv: den must be finite, got {d.tolist()}")
    if not allow_negative_den and bool((d < 0).any()):
        raise ValueError(f"wconv: den must be >= 0 (a density; pass allow_negative_den=True to allow negative "
                         f"values), got {d.tolist()}")


# --------------------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------------------


def weight_of_packed_den(weight: torch.Tensor, den: torch.Tensor, backend: str) -> torch.Tensor:
    """W * Phi for a validated weight and a den already packed by :func:`pack_den` (no value checks: the modules
    check den when it is set); ``backend`` as in :func:`wconv_weight`. The modules' and the benchmark's entry."""
    chosen = resolve("wconv", backend, weight.device)
    if den.device != weight.device:
        raise ValueError(f"wconv: den is on {den.device} but weight is on {weight.device}")
    if chosen == "reference":
        return wconv_weight_ref(weight, den)
    if chosen == "triton":
        return torch.ops.pyfast.wconv_weight_fwd_triton(weight, den)
    return torch.ops.pyfast.wconv_weight_fwd(weight, den)


def wconv_weight(weight: torch.Tensor, den, *, allow_negative_den: bool = False, backend: str = "auto"):
    """The density-weighted conv weight ``W_tilde = W * Phi`` of the weighted convolution.

    Per kernel axis a (size K_a = 2 m_a + 1, odd)::

        alpha_a = [den_a[0], ..., den_a[m_a-1], 1, den_a[m_a-1], ..., den_a[0]]     (den_a[0] outermost)
        Phi = alpha_0 (x) alpha_1 (x) ...   (outer product; 1-D: alpha, 2-D: alpha_h alpha_w^T)
        W_tilde[o, i, t] = W[o, i, t] * Phi[t]

    Args:
        weight: ``[C_out, C_in/groups, K_0, ..., K_{d-1}]``, d = 1..3, every K odd; float32/float64/float16/bfloat16.
        den: one den per axis (a sequence of d 1-D tensors / number sequences, or their concatenation), or one den
            of ``(K-1)/2`` values shared by every axis of a square/cubic kernel. Floating; may require grad.
        allow_negative_den: accept negative den values (a density is >= 0; the default rejects them).
        backend: ``"auto"``, ``"cpp"``, ``"cuda"``, ``"triton"`` or ``"reference"`` (see pyfast.backends).

    Returns:
        W_tilde, weight's shape and dtype (contiguous). Computed in float32 (float64 for float64 weights).

    Gradients: ``dW = dW_tilde * Phi``; ``d den_a[j] = dalpha_a[j] + dalpha_a[K_a-1-j]`` with
    ``dalpha_a[k] = sum_{t: t_a=k} S[t] prod_{b!=a} alpha_b[t_b]`` and ``S = sum_{o,i} dW_tilde * W`` (the centre
    tap, fixed at 1, gets none). den values are checked eagerly (one device sync on a GPU), not under torch.compile.
    """
    kernel_size = _check_weight(weight)
    den = pack_den(den, kernel_size, device=weight.device, dtype=acc_dtype(weight.dtype))
    check_den_values(den, allow_negative_den)
    return weight_of_packed_den(weight, den, backend)


def wconv(x: torch.Tensor, weight: torch.Tensor, den, bias: torch.Tensor | None = None, stride=1, padding=0,
          dilation=1, groups: int = 1, *, allow_negative_den: bool = False, backend: str = "auto") -> torch.Tensor:
    """Weighted convolution ``y = conv_d(x, W * Phi, bias, stride, padding, dilation, groups)``, d = weight.dim() - 2.

    ``x``: ``[N, C_in, *spatial]`` or unbatched ``[C_in, *spatial]`` as ``F.conv{d}d`` takes it; stride, padding
    (ints, tuples, ``"same"`` or ``"valid"``), dilation and groups as in ``F.conv{d}d``. ``weight`` and ``den`` as
    in :func:`wconv_weight`. The convolution is ATen's (oneDNN on CPU, cuDNN on CUDA) on W * Phi.
    """
    w = wconv_weight(weight, den, allow_negative_den=allow_negative_den, backend=backend)
    return _CONVS[weight.dim() - 2](x, w, bias, stride, padding, dilation, groups)
