"""CRReLU as torch custom ops: ``torch.ops.pyfast.crrelu_fwd`` / ``crrelu_bwd`` (C++ CPU and CUDA) and the Triton
twins ``crrelu_fwd_triton`` / ``crrelu_bwd_triton``, with fake kernels and autograd, plus the public function
:func:`crrelu`. The maths is in :mod:`pyfast.reference.crrelu` and at the top of ``csrc/crrelu/crrelu.h``.

The forward saves only x; the backward recomputes exp(-x^2/2) and returns grad_x and grad_eps from one pass.
"""

from __future__ import annotations

import torch

from pyfast import _extension
from pyfast._dtypes import FLOAT_DTYPES, acc_dtype
from pyfast.backends import resolve
from pyfast.reference.crrelu import crrelu_ref

__all__ = ["crrelu"]


# --------------------------------------------------------------------------------------------------------------
# Fake kernels and autograd of the custom ops
# --------------------------------------------------------------------------------------------------------------


def _fwd_fake(x, eps, dim):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _bwd_fake(grad, x, eps, dim, need_grad_x, need_grad_eps):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format) if need_grad_x else x.new_empty((0,)),
        torch.empty_like(eps) if need_grad_eps else eps.new_empty((0,)),
    )


def _setup_context(ctx, inputs, output):
    x, eps, dim = inputs
    ctx.dim = dim
    ctx.save_for_backward(x, eps)


def _make_backward(bwd_op):
    def backward(ctx, grad):
        x, eps = ctx.saved_tensors
        need_x, need_eps = ctx.needs_input_grad[:2]
        grad_x, grad_eps = bwd_op(grad, x, eps, ctx.dim, need_x, need_eps)
        return grad_x if need_x else None, grad_eps if need_eps else None, None

    return backward


if _extension.has_cpp():
    torch.library.register_fake("pyfast::crrelu_fwd")(_fwd_fake)
    torch.library.register_fake("pyfast::crrelu_bwd")(_bwd_fake)
    torch.library.register_autograd(
        "pyfast::crrelu_fwd", _make_backward(torch.ops.pyfast.crrelu_bwd), setup_context=_setup_context
    )


def layout(x: torch.Tensor, eps: torch.Tensor, dim: int) -> tuple[int, int]:
    """(C, inner) of x viewed as [outer, C, inner] around ``dim`` for an eps of C values (C = 1: inner = numel)."""
    if eps.numel() == 1:
        return 1, x.numel()
    d = dim % x.dim()
    inner = 1
    for s in x.shape[d + 1:]:
        inner *= s
    return eps.numel(), inner


# Triton twins: torch.library.custom_op (not triton_op), so opcheck and torch.compile(fullgraph=True) also pass
# under TRITON_INTERPRET=1 (DESIGN.md, build facts). Same schema as the C++ ops; a test enforces the parity.


@torch.library.custom_op("pyfast::crrelu_fwd_triton", mutates_args=())
def crrelu_fwd_triton(x: torch.Tensor, eps: torch.Tensor, dim: int) -> torch.Tensor:
    from pyfast._triton import crrelu as kernels  # triton is optional: imported on first use

    c, inner = layout(x, eps, dim)
    return kernels.crrelu_fwd(x.contiguous(), eps.to(acc_dtype(x.dtype)).contiguous().reshape(-1), c, inner)


@torch.library.custom_op("pyfast::crrelu_bwd_triton", mutates_args=())
def crrelu_bwd_triton(grad: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, dim: int, need_grad_x: bool,
                      need_grad_eps: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from pyfast._triton import crrelu as kernels

    c, inner = layout(x, eps, dim)
    gx, geps = kernels.crrelu_bwd(grad.contiguous(), x.contiguous(), eps.to(acc_dtype(x.dtype)).contiguous()
                                  .reshape(-1), c, inner, need_grad_x, need_grad_eps)
    return (gx if need_grad_x else x.new_empty((0,)),
            geps.to(eps.dtype).reshape(eps.shape) if need_grad_eps else eps.new_empty((0,)))


crrelu_fwd_triton.register_fake(_fwd_fake)
crrelu_bwd_triton.register_fake(_bwd_fake)
crrelu_fwd_triton.register_autograd(_make_backward(torch.ops.pyfast.crrelu_bwd_triton), setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------------------------


def _check(x, eps, dim) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"crrelu: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"crrelu: x must be float32/float64/float16/bfloat16, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"crrelu: x must not be empty, got shape {tuple(x.shape)}")
    if not isinstance(eps, torch.Tensor):
        raise TypeError(f"crrelu: eps must be a torch.Tensor (a learnable scalar or per-channel vector), got "
                        f"{type(eps).__name__}")
    if not eps.is_floating_point():
        raise TypeError(f"crrelu: eps must be a floating-point tensor, got {eps.dtype}")
    if eps.device != x.device:
        raise ValueError(f"crrelu: eps is on {eps.device} but x is on {x.device}")
    if eps.dim() > 1:
        raise ValueError(f"crrelu: eps must be a scalar or 1-D, got shape {tuple(eps.shape)}")
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"crrelu: dim must be an int, got {type(dim).__name__}")
    if eps.numel() != 1:
        if not -x.dim() <= dim < x.dim():
            raise ValueError(f"crrelu: dim={dim} is out of range for x of shape {tuple(x.shape)}")
        if x.shape[dim] != eps.numel():
            raise ValueError(f"crrelu: eps must have 1 value or x.size(dim={dim}) = {x.shape[dim]} values, got "
                             f"{eps.numel()}")


def crrelu(x: torch.Tensor, eps: torch.Tensor, dim: int = 1, *, backend: str = "auto") -> torch.Tensor:
    """CRReLU (Correction-Regularized ReLU): ``y = max(0, x) + eps * x * exp(-x^2 / 2)``.

    Args:
        x: any non-empty shape; float32/float64/float16/bfloat16.
        eps: the learnable correction weight: one value (shape ``[]`` or ``[1]``), or ``x.size(dim)`` values (one per
            channel along ``dim``). Floating; may require grad. Its values are not checked (a parameter, not a
            hyperparameter; the module checks its initial value).
        dim: the channel axis of a per-channel eps (1 for ``[N, C, *]``, -1 for ``[..., C]``); ignored for one value.
        backend: ``"auto"``, ``"cpp"``, ``"cuda"``, ``"triton"`` or ``"reference"`` (see pyfast.backends).

    Returns:
        y, x's shape and dtype (contiguous), computed in float32 (float64 for float64 inputs).

    Gradients (one fused pass, exp recomputed from x): ``dx = g (1[x > 0] + eps (1 - x^2) e)``,
    ``d eps = sum g x e`` over the elements using that eps, ``e = exp(-x^2/2)``. At x = 0 the ReLU part has
    gradient 0 (as ``torch.relu``).
    """
    _check(x, eps, dim)
    chosen = resolve("crrelu", backend, x.device)
    if chosen == "reference":
        return crrelu_ref(x, eps, dim)
    if chosen == "triton":
        return torch.ops.pyfast.crrelu_fwd_triton(x, eps, dim)
    return torch.ops.pyfast.crrelu_fwd(x, eps, dim)
