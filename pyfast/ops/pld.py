"""Plackett-Luce distillation as torch custom ops: ``torch.ops.pyfast.pld_fwd`` / ``pld_bwd`` (C++ CPU and CUDA) and
the Triton twins ``pld_fwd_triton`` / ``pld_bwd_triton``, with fake kernels and autograd, plus :func:`pld_rows`, the
backend dispatch behind :func:`pyfast.losses.pld_loss` (the public API). The maths is in :mod:`pyfast.reference.pld`
and at the top of ``csrc/pld/pld.h``.

One fused pass per row: softmax of the teacher, the ranking (a sort), the reverse cumulative log-sum-exp along it and
the weighted sum, without materialising the sorted [B, C] copies. The forward saves the ranking (int32 [B, C]) and
the teacher's log-normaliser [B], so the backward redoes no sort; both logits get gradients (pld_loss detaches the
teacher, so only the student's is computed there).
"""

from __future__ import annotations

import torch

from pyfast import _extension
from pyfast._dtypes import acc_dtype
from pyfast._numbers import is_finite, is_number
from pyfast.backends import resolve, warn_fallback_once
from pyfast.reference.pld import pld_ref

__all__ = ["CUDA_MAX_CLASSES", "pld_rows"]

CUDA_MAX_CLASSES = 1024  # csrc/pld/pld.h kCudaMaxClasses: the CUDA kernel sorts a row in shared memory


# --------------------------------------------------------------------------------------------------------------
# Fake kernels and autograd of the custom ops
# --------------------------------------------------------------------------------------------------------------


def _fwd_fake(student, teacher, labels, tau_t):
    b, c = student.shape
    acc = acc_dtype(student.dtype)
    return (student.new_empty((b,), dtype=acc), student.new_empty((b, c), dtype=torch.int32),
            student.new_empty((b,), dtype=acc))


def _bwd_fake(grad_loss, student, teacher, perm, teacher_lse, tau_t, need_grad_student, need_grad_teacher):
    return (student.new_empty(student.shape if need_grad_student else (0,)),
            teacher.new_empty(teacher.shape if need_grad_teacher else (0,)))


def _setup_context(ctx, inputs, output):
    student, teacher, _labels, tau_t = inputs
    _, perm, teacher_lse = output
    ctx.mark_non_differentiable(perm, teacher_lse)
    ctx.tau_t = tau_t
    ctx.save_for_backward(student, teacher, perm, teacher_lse)


def _make_backward(bwd_op):
    def backward(ctx, grad_loss, _g_perm, _g_lse):
        student, teacher, perm, teacher_lse = ctx.saved_tensors
        need_s, need_t = ctx.needs_input_grad[:2]
        gs, gt = bwd_op(grad_loss, student, teacher, perm, teacher_lse, ctx.tau_t, need_s, need_t)
        return gs if need_s else None, gt if need_t else None, None, None

    return backward


if _extension.has_cpp():
    torch.library.register_fake("pyfast::pld_fwd")(_fwd_fake)
    torch.library.register_fake("pyfast::pld_bwd")(_bwd_fake)
    torch.library.register_autograd(
        "pyfast::pld_fwd", _make_backward(torch.ops.pyfast.pld_bwd), setup_context=_setup_context
    )


# Triton twins: torch.library.custom_op (not triton_op), so opcheck and torch.compile(fullgraph=True) also pass
# under TRITON_INTERPRET=1 (DESIGN.md, build facts). Same schema as the C++ ops; a test enforces the parity.


@torch.library.custom_op("pyfast::pld_fwd_triton", mutates_args=())
def pld_fwd_triton(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                   tau_t: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from pyfast._triton import pld as kernels  # triton is optional: imported on first use

    return kernels.pld_fwd(student.contiguous(), teacher.contiguous(), labels.contiguous(), tau_t)


@torch.library.custom_op("pyfast::pld_bwd_triton", mutates_args=())
def pld_bwd_triton(grad_loss: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, perm: torch.Tensor,
                   teacher_lse: torch.Tensor, tau_t: float, need_grad_student: bool,
                   need_grad_teacher: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from pyfast._triton import pld as kernels

    acc = acc_dtype(student.dtype)
    return kernels.pld_bwd(grad_loss.to(acc).contiguous(), student.contiguous(), teacher.contiguous(),
                           perm.contiguous(), teacher_lse.to(acc).contiguous(), tau_t, need_grad_student,
                           need_grad_teacher)


pld_fwd_triton.register_fake(_fwd_fake)
pld_bwd_triton.register_fake(_bwd_fake)
pld_fwd_triton.register_autograd(_make_backward(torch.ops.pyfast.pld_bwd_triton), setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------------------
# Backend dispatch
# --------------------------------------------------------------------------------------------------------------


def _check_rows(student, teacher, labels) -> None:
    """The inputs every backend takes: floating [B, C] logits of one shape and device, int64 labels [B] in [0, C)
    (the values are read back eagerly, one device sync; not while torch.compile traces, where the kernels clamp)."""
    for name, t in (("student", student), ("teacher", teacher)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"pld: {name} must be a floating-point tensor of logits, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
    if student.dim() != 2 or student.shape[1] < 1:
        raise ValueError(f"pld: student must be [B, C] with C >= 1, got shape {tuple(student.shape)}")
    if teacher.shape != student.shape or teacher.device != student.device:
        raise ValueError(f"pld: teacher must have student's shape {tuple(student.shape)} and device {student.device}, "
                         f"got {tuple(teacher.shape)} on {teacher.device}")
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
        raise TypeError(f"pld: labels must be an int64 tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != student.shape[:1] or labels.device != student.device:
        raise ValueError(f"pld: labels must be [B] = [{student.shape[0]}] on {student.device}, got "
                         f"{tuple(labels.shape)} on {labels.device}")
    if labels.numel() and not torch.compiler.is_compiling() and (int(labels.min()) < 0 or
                                                                  int(labels.max()) >= student.shape[1]):
        raise ValueError(f"pld: labels must hold class indices in [0, {student.shape[1]}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def pld_rows(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, tau_t: float = 1.0, *,
             backend: str = "auto") -> torch.Tensor:
    """Per-row Plackett-Luce distillation loss [B] (float32; float64 for float64 logits), differentiable in both
    logits. Call :func:`pyfast.losses.pld_loss` for checked inputs and reductions; this is its backend dispatch.

    ``student`` / ``teacher``: [B, C] floating logits (of different dtypes, both are cast to the promoted one: an
    up-cast, which keeps the teacher's ranking); ``labels``: int64 [B] in [0, C); ``tau_t``: a finite number > 0
    (all checked here, for every backend). ``backend``: ``"auto"``, ``"cpp"``, ``"cuda"``, ``"triton"`` or ``"reference"`` (see
    pyfast.backends). The CUDA kernel serves C <= 1024 (:data:`CUDA_MAX_CLASSES`); above that ``"auto"`` on a CUDA
    tensor uses the reference (warning once) and an explicit ``"cuda"`` raises.
    """
    if not is_number(tau_t) or not is_finite(tau_t) or tau_t <= 0:
        raise ValueError(f"pld: tau_t must be a finite number > 0, got {tau_t!r}")
    _check_rows(student, teacher, labels)
    if student.dtype != teacher.dtype:
        common = torch.promote_types(student.dtype, teacher.dtype)
        student, teacher = student.to(common), teacher.to(common)
    chosen = resolve("pld", backend, student.device)
    if chosen == "cuda" and student.shape[1] > CUDA_MAX_CLASSES:
        if backend != "auto":
            raise ValueError(f"pld: the CUDA kernel sorts rows of at most {CUDA_MAX_CLASSES} classes in shared memory, "
                             f"got C = {student.shape[1]}; use backend='triton' or backend='reference' "
                             f"(backend='auto' does)")
        warn_fallback_once("pld", f"the CUDA kernel sorts at most {CUDA_MAX_CLASSES} classes per row, got "
                                  f"C = {student.shape[1]}")
        chosen = "reference"
    if chosen == "reference":
        return pld_ref(student, teacher, labels, tau_t)
    op = torch.ops.pyfast.pld_fwd_triton if chosen == "triton" else torch.ops.pyfast.pld_fwd
    return op(student, teacher, labels, float(tau_t))[0]
