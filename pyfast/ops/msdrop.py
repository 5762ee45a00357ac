"""Multi-sample dropout head as torch custom ops: ``torch.ops.pyfast.msdrop_fwd`` / ``msdrop_bwd`` (C++ CPU and
CUDA) and the Triton twins ``msdrop_fwd_triton`` / ``msdrop_bwd_triton``, with fake kernels and autograd, plus the
public function :func:`multi_sample_dropout_loss`. The maths is in :mod:`pyfast.reference.msdrop` and
``csrc/msdrop/msdrop.h``.

One pass draws the M masks at once from a counter-based hash of a seed, stacks the M masked copies of h into one
[M B, D] matrix for a single GEMM with the shared weight, and reduces the M B cross-entropies to their mean. Nothing
of size M B D is kept for backward: the masks are regenerated from the seed.
"""

from __future__ import annotations

import torch

from pyfast import _extension
from pyfast._dtypes import FLOAT_DTYPES, acc_dtype
from pyfast._numbers import is_finite, is_number
from pyfast.backends import resolve
from pyfast.reference.msdrop import msdrop_loss_ref, threshold

__all__ = ["multi_sample_dropout_loss"]


# --------------------------------------------------------------------------------------------------------------
# Fake kernels and autograd of the custom ops
# --------------------------------------------------------------------------------------------------------------


def _fwd_fake(h, weight, bias, target, seed, num_samples, p):
    b, c = h.shape[0], weight.shape[0]
    return (h.new_empty(()), h.new_empty((num_samples, b, c)),
            h.new_empty((num_samples * b,), dtype=acc_dtype(h.dtype)))


def _bwd_fake(grad_loss, logits, lse, h, weight, target, seed, num_samples, p, need_grad_h, need_grad_weight,
              need_grad_bias):
    return (h.new_empty(h.shape if need_grad_h else (0,)), h.new_empty(weight.shape if need_grad_weight else (0,)),
            h.new_empty((weight.shape[0],) if need_grad_bias else (0,)))


def _setup_context(ctx, inputs, output):
    h, weight, bias, target, seed, num_samples, p = inputs
    _, logits, lse = output
    ctx.mark_non_differentiable(logits, lse)
    ctx.num_samples, ctx.p = num_samples, p
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.save_for_backward(logits, lse, h, weight, target, seed)


def _make_backward(bwd_op):
    def backward(ctx, grad_loss, _g_logits, _g_lse):
        logits, lse, h, weight, target, seed = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        gh, gw, gb = bwd_op(grad_loss, logits, lse, h, weight, target, seed, ctx.num_samples, ctx.p, need_h, need_w,
                            need_b)
        return (gh if need_h else None, gw if need_w else None, gb.to(ctx.bias_dtype) if need_b else None,
                None, None, None, None)

    return backward


if _extension.has_cpp():
    torch.library.register_fake("pyfast::msdrop_fwd")(_fwd_fake)
    torch.library.register_fake("pyfast::msdrop_bwd")(_bwd_fake)
    torch.library.register_autograd(
        "pyfast::msdrop_fwd", _make_backward(torch.ops.pyfast.msdrop_bwd), setup_context=_setup_context
    )


# Triton twins: torch.library.custom_op (not triton_op), so opcheck and torch.compile(fullgraph=True) also pass
# under TRITON_INTERPRET=1 (DESIGN.md, build facts). Same schema as the C++ ops; a test enforces the parity. The
# GEMMs are torch.mm, as in the C++ ops.


@torch.library.custom_op("pyfast::msdrop_fwd_triton", mutates_args=())
def msdrop_fwd_triton(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
                      seed: torch.Tensor, num_samples: int, p: float) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
    from pyfast._triton import msdrop as kernels  # triton is optional: imported on first use

    h = h.contiguous()
    b, c = h.shape[0], weight.shape[0]
    x = kernels.make_x(h, seed.reshape(1), num_samples, threshold(p), 1.0 / (1.0 - p))
    logits = torch.addmm(bias.to(h.dtype), x, weight.t()) if bias is not None else torch.mm(x, weight.t())
    lse, rows = kernels.cross_entropy_rows(logits, target.contiguous(), b)
    return (rows.sum() / rows.numel()).to(h.dtype), logits.view(num_samples, b, c), lse


@torch.library.custom_op("pyfast::msdrop_bwd_triton", mutates_args=())
def msdrop_bwd_triton(grad_loss: torch.Tensor, logits: torch.Tensor, lse: torch.Tensor, h: torch.Tensor,
                      weight: torch.Tensor, target: torch.Tensor, seed: torch.Tensor, num_samples: int, p: float,
                      need_grad_h: bool, need_grad_weight: bool, need_grad_bias: bool) -> tuple[torch.Tensor,
                                                                                                torch.Tensor,
                                                                                                torch.Tensor]:
    from pyfast._triton import msdrop as kernels

    h = h.contiguous()
    b, c = h.shape[0], weight.shape[0]
    acc = acc_dtype(h.dtype)
    g = kernels.grad_logits(logits.reshape(-1, c).contiguous(), lse.to(acc).contiguous(), target.contiguous(),
                            grad_loss.reshape(1).to(acc), b)
    empty = h.new_empty((0,))
    gw = gb = gh = empty
    if need_grad_weight:
        gw = torch.mm(g.t(), kernels.make_x(h, seed.reshape(1), num_samples, threshold(p), 1.0 / (1.0 - p)))
    if need_grad_bias:
        gb = g.sum(0)
    if need_grad_h:
        gh = kernels.masked_sum(torch.mm(g, weight.contiguous()), seed.reshape(1), num_samples, b, threshold(p),
                                1.0 / (1.0 - p))
    return gh, gw, gb


msdrop_fwd_triton.register_fake(_fwd_fake)
msdrop_bwd_triton.register_fake(_bwd_fake)
msdrop_fwd_triton.register_autograd(_make_backward(torch.ops.pyfast.msdrop_bwd_triton), setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------------------------


def check_hyperparameters(num_samples, p) -> None:
    """num_samples an int >= 1, p a finite number in [0, 1)."""
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"multi_sample_dropout: num_samples must be an int >= 1, got {num_samples!r}")
    if not is_number(p) or not is_finite(p) or not 0.0 <= p < 1.0:
        raise ValueError(f"multi_sample_dropout: p must be a finite number in [0, 1), got {p!r}")


def _check(h, weight, bias, target, seed, num_samples, p) -> None:
    check_hyperparameters(num_samples, p)
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"multi_sample_dropout: h must be a torch.Tensor, got {type(h).__name__}")
    if h.dtype not in FLOAT_DTYPES:
        raise TypeError(f"multi_sample_dropout: h must be float32/float64/float16/bfloat16, got {h.dtype}")
    if h.dim() != 2 or h.numel() == 0:
        raise ValueError(f"multi_sample_dropout: h must be a non-empty [B, D] (pooled features), got shape "
                         f"{tuple(h.shape)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != h.shape[1]:
        raise ValueError(f"multi_sample_dropout: weight must be [C, D] with D = {h.shape[1]}, got "
                         f"{tuple(getattr(weight, 'shape', ()))}")
    if weight.dtype != h.dtype:
        raise TypeError(f"multi_sample_dropout: weight must have h's dtype {h.dtype}, got {weight.dtype}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],)):
        raise ValueError(f"multi_sample_dropout: bias must be [C] = [{weight.shape[0]}] or None, got "
                         f"{tuple(getattr(bias, 'shape', ()))}")
    if bias is not None and bias.dtype != h.dtype:
        raise TypeError(f"multi_sample_dropout: bias must have h's dtype {h.dtype}, got {bias.dtype}")
    if not isinstance(target, torch.Tensor) or target.dtype != torch.int64:
        raise TypeError(f"multi_sample_dropout: target must be an int64 tensor of class indices, got "
                        f"{getattr(target, 'dtype', type(target).__name__)}")
    if target.shape != (h.shape[0],):
        raise ValueError(f"multi_sample_dropout: target must be [B] = [{h.shape[0]}], got {tuple(target.shape)}")
    if not isinstance(seed, torch.Tensor) or seed.dtype != torch.int64 or seed.numel() != 1:
        raise TypeError("multi_sample_dropout: seed must be one int64 tensor (or None)")
    for name, t in (("weight", weight), ("bias", bias), ("target", target), ("seed", seed)):
        if t is not None and t.device != h.device:
            raise ValueError(f"multi_sample_dropout: {name} is on {t.device} but h is on {h.device}")
    if num_samples * h.shape[0] * h.shape[1] >= 2**32:
        raise ValueError(f"multi_sample_dropout: num_samples x B x D must be < 2^32 (32-bit mask index), got "
                         f"{num_samples * h.shape[0] * h.shape[1]}")
    if not torch.compiler.is_compiling() and target.numel() and (
            int(target.min()) < 0 or int(target.max()) >= weight.shape[0]):
        raise ValueError(f"multi_sample_dropout: target values must be in [0, {weight.shape[0]}), got "
                         f"[{int(target.min())}, {int(target.max())}]")


def new_seed(device) -> torch.Tensor:
    """A fresh int64 seed for the masks, drawn from torch's generator (so torch.manual_seed reproduces it)."""
    return torch.randint(-(2**62), 2**62, (1,), device=device, dtype=torch.int64)


def multi_sample_dropout_loss(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
                              num_samples: int = 8, p: float = 0.5, *, seed: torch.Tensor | None = None,
                              backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Averaged cross-entropy of a multi-sample dropout head: ``(1/M) sum_k CE((h * mask_k / (1-p)) W^T + b, y)``.

    Args:
        h: pooled features [B, D], float32/float64/float16/bfloat16.
        weight: [C, D] in h's dtype; bias: [C] or None. Shared by the M samples.
        target: [B] int64 class indices in [0, C) (the range is checked eagerly, one device sync on a GPU; not
            under torch.compile, where the CUDA kernel clamps an out-of-range index instead of reading out of bounds).
        num_samples: M, the dropout samples (masks drawn at once); p: drop probability in [0, 1).
        seed: one int64 tensor the masks derive from (default: drawn from torch's generator each call).
        backend: ``"auto"``, ``"cpp"``, ``"cuda"``, ``"triton"`` or ``"reference"`` (see pyfast.backends).

    Returns:
        (loss, logits): loss is a 0-d tensor in h's dtype (CE averaged over samples and batch; gradients flow to h,
        weight and bias); logits [M, B, C] of every sample, detached (for metrics).
    """
    if seed is None:
        seed = new_seed(h.device if isinstance(h, torch.Tensor) else "cpu")
    _check(h, weight, bias, target, seed, num_samples, p)
    chosen = resolve("msdrop", backend, h.device)
    if chosen == "reference":
        loss, logits = msdrop_loss_ref(h, weight, bias, target, seed, num_samples, p)
        return loss, logits.detach()
    op = torch.ops.pyfast.msdrop_fwd_triton if chosen == "triton" else torch.ops.pyfast.msdrop_fwd
    loss, logits, _ = op(h, weight, bias, target, seed, num_samples, float(p))
    return loss, logits
