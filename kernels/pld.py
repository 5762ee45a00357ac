"""Plackett-Luce distillation, Triton kernels (the Triton twin of csrc/pld/pld_kernel.cu; maths in csrc/pld/pld.h).

One program per row, the whole row in registers (BLOCK = the next power of two >= C). Per row, tau = tau_t:
  forward   teacher_lse = log sum_c exp(t_c / tau), alpha_c = exp(t_c / tau - teacher_lse)
            ranking pi: the label, then descending t, equal t by ascending class (-0 = +0, NaN above +inf): tl.sort
            of packed uint64 (descending order key << 32 | class). 32-bit order keys are packed directly; float64
            keys are first replaced by their rank among the row's keys (a sort and a binary search with tl.gather),
            which keeps their order and ties and fits 32 bits.
            z = s[pi], a = alpha[pi]; log Z_k = log sum_{j >= k} exp(z_j) by a reverse associative scan of
            (max, sum of exp) pairs; L = sum_k a_k (log Z_k - z_k).
  backward  dL/dz_j = exp(z_j + logsumexp_{k <= j}(log a_k - log Z_k)) - a_j (a forward scan of the same pairs),
            dL/dt_c = alpha_c (l(c) - L) / tau; both scattered back through pi.
Arithmetic in float32 (float64 for float64 inputs); tau arrives as a one-element tensor of that type (a Python float
argument would be float32). An out-of-range label gives a NaN loss for its row, as in the CUDA kernel.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import triton
import triton.language as tl

from pyfast._dtypes import acc_dtype

from .common import INTERPRET, TL_DTYPES, check_tensor, to_storage


@triton.jit
def _lse_add(m1, s1, m2, s2):
    """(m, s) stands for log(s) + m; the empty sum is s = 0."""
    m = tl.maximum(m1, m2)
    e1 = tl.where(s1 == 0, 0.0, s1 * tl.exp(m1 - m))
    e2 = tl.where(s2 == 0, 0.0, s2 * tl.exp(m2 - m))
    return m, e1 + e2


@triton.jit
def _descending_key(t, cls, valid, y, UINT: tl.constexpr, NAN_BITS: tl.constexpr, SIGN: tl.constexpr,
                    ONES: tl.constexpr):
    """~order_key(t) of pld.h (ascending in it = descending t, -0 = +0, NaN first), 0 for the label, all ones for the
    padding. Complements are written as XOR with all ones (the interpreter cannot invert unsigned tensors)."""
    ones = tl.full(t.shape, ONES, UINT)
    bits = tl.where(t == 0, 0.0, t).to(UINT, bitcast=True)
    bits = tl.where(t != t, tl.full(t.shape, NAN_BITS, UINT), bits)  # noqa: PLR0124  (the NaN test)
    key = tl.where((bits & SIGN) != 0, bits ^ ones, bits | SIGN)
    desc = tl.where(cls == y, tl.zeros_like(key), key ^ ones)
    return tl.where(valid, desc, ones)


@triton.jit
def _ranking(t, cls, valid, y, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr, IS_F64: tl.constexpr):
    """The classes in ranking order (int32 [BLOCK]; positions >= C hold padding)."""
    if IS_F64:
        desc = _descending_key(t, cls, valid, y, tl.uint64, 0x7FF8000000000000, 0x8000000000000000,
                               0xFFFFFFFFFFFFFFFF)
        srt = tl.sort(desc, 0)
        pos = tl.zeros([BLOCK], dtype=tl.int32)  # how many keys of the row are smaller: a rank that keeps ties
        for i in tl.static_range(LOG2_BLOCK):
            step = BLOCK >> (i + 1)
            probe = tl.gather(srt, pos + (step - 1), 0)
            pos = tl.where(probe < desc, pos + step, pos)
        rank = pos.to(tl.uint64)
    else:
        rank = _descending_key(t, cls, valid, y, tl.uint32, 0x7FC00000, 0x80000000, 0xFFFFFFFF).to(tl.uint64)
    packed = tl.sort((rank << 32) | cls.to(tl.uint64), 0)
    return (packed & 0xFFFFFFFF).to(tl.int32)


@triton.jit
def _fwd_kernel(s_ptr, t_ptr, y_ptr, tau_ptr, loss_ptr, perm_ptr, lse_ptr, C, BLOCK: tl.constexpr,
                LOG2_BLOCK: tl.constexpr, IS_F64: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cls = tl.arange(0, BLOCK)
    valid = cls < C
    tau = tl.load(tau_ptr)
    acc = tau.dtype
    t = tl.load(t_ptr + row * C + cls, mask=valid, other=0.0).to(acc)
    u = tl.where(valid, t / tau, -float("inf"))
    mx = tl.max(u, 0)
    lse = mx + tl.log(tl.sum(tl.where(valid, tl.exp(u - mx), 0.0), 0))
    y = tl.load(y_ptr + row)
    perm = _ranking(t, cls, valid, y, BLOCK, LOG2_BLOCK, IS_F64)
    tl.store(perm_ptr + row * C + cls, perm, mask=valid)
    z = tl.load(s_ptr + row * C + perm, mask=valid, other=0.0).to(acc)
    a = tl.exp(tl.load(t_ptr + row * C + perm, mask=valid, other=0.0).to(acc) / tau - lse)
    m, ssum = tl.associative_scan((tl.where(valid, z, -float("inf")), tl.where(valid, 1.0, 0.0).to(acc)), 0,
                                  _lse_add, reverse=True)
    loss = tl.sum(tl.where(valid, a * ((m - z) + tl.log(ssum)), 0.0), 0)
    tl.store(loss_ptr + row, tl.where((y >= 0) & (y < C), loss, float("nan")))
    tl.store(lse_ptr + row, lse)


@triton.jit
def _bwd_kernel(g_ptr, s_ptr, t_ptr, perm_ptr, lse_ptr, tau_ptr, gs_ptr, gt_ptr, C, BLOCK: tl.constexpr,
                DTYPE: tl.constexpr, BF16_BY_HAND: tl.constexpr, GRAD_S: tl.constexpr, GRAD_T: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK)
    valid = k < C
    tau = tl.load(tau_ptr)
    acc = tau.dtype
    g = tl.load(g_ptr + row)
    perm = tl.load(perm_ptr + row * C + k, mask=valid, other=0)
    z = tl.load(s_ptr + row * C + perm, mask=valid, other=0.0).to(acc)
    la = tl.load(t_ptr + row * C + perm, mask=valid, other=0.0).to(acc) / tau - tl.load(lse_ptr + row)
    a = tl.exp(la)
    one = tl.where(valid, 1.0, 0.0).to(acc)
    m, ssum = tl.associative_scan((tl.where(valid, z, -float("inf")), one), 0, _lse_add, reverse=True)
    log_z = m + tl.log(ssum)
    if GRAD_S:
        pm, ps = tl.associative_scan((tl.where(valid, la - log_z, -float("inf")), one), 0, _lse_add)
        gz = g * (tl.exp(z + pm + tl.log(ps)) - a)
        tl.store(gs_ptr + row * C + perm, to_storage(gz, DTYPE, BF16_BY_HAND), mask=valid)
    if GRAD_T:
        l = log_z - z
        total = tl.sum(tl.where(valid, a * l, 0.0), 0)
        gt = (g / tau) * a * (l - total)
        tl.store(gt_ptr + row * C + perm, to_storage(gt, DTYPE, BF16_BY_HAND), mask=valid)


def _quiet():
    """The interpreter also computes the masked lanes (log 0, -inf - -inf of the padding), which numpy reports; the
    stores never use them, and a GPU reports nothing."""
    return np.errstate(divide="ignore", invalid="ignore") if INTERPRET else contextlib.nullcontext()


def _tau(tau_t: float, dtype: torch.dtype, device) -> torch.Tensor:
    return torch.tensor([tau_t], dtype=acc_dtype(dtype), device=device)


def _check_pair(student, teacher):
    check_tensor("pld", "student", student)
    check_tensor("pld", "teacher", teacher, (student.dtype,))
    if student.dim() != 2 or teacher.shape != student.shape or student.shape[1] < 1:
        raise ValueError(f"pld: student and teacher must be [B, C] of one shape with C >= 1, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")


def pld_fwd(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, tau_t: float):
    """(loss [B], perm int32 [B, C], teacher_lse [B]); loss and teacher_lse in float32 (float64 for float64)."""
    _check_pair(student, teacher)
    check_tensor("pld", "labels", labels, (torch.int64,))
    b, c = student.shape
    acc = acc_dtype(student.dtype)
    loss = torch.empty(b, dtype=acc, device=student.device)
    lse = torch.empty(b, dtype=acc, device=student.device)
    perm = torch.empty(b, c, dtype=torch.int32, device=student.device)
    if b:
        block = triton.next_power_of_2(c)
        with _quiet():
            _fwd_kernel[(b,)](student, teacher, labels, _tau(tau_t, student.dtype, student.device), loss, perm, lse, c,
                              BLOCK=block, LOG2_BLOCK=block.bit_length() - 1, IS_F64=student.dtype == torch.float64)
    return loss, perm, lse


def pld_bwd(grad_loss: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, perm: torch.Tensor,
            teacher_lse: torch.Tensor, tau_t: float, need_grad_student: bool, need_grad_teacher: bool):
    """(grad_student, grad_teacher), [B, C] in the inputs' dtype; shape [0] when not requested."""
    _check_pair(student, teacher)
    check_tensor("pld", "perm", perm, (torch.int32,))
    acc = acc_dtype(student.dtype)
    check_tensor("pld", "grad_loss", grad_loss, (acc,))
    check_tensor("pld", "teacher_lse", teacher_lse, (acc,))
    b, c = student.shape
    gs = torch.empty_like(student) if need_grad_student else student.new_empty((0,))
    gt = torch.empty_like(teacher) if need_grad_teacher else teacher.new_empty((0,))
    if b and (need_grad_student or need_grad_teacher):
        with _quiet():
            _bwd_kernel[(b,)](grad_loss, student, teacher, perm, teacher_lse,
                              _tau(tau_t, student.dtype, student.device), gs, gt, c, BLOCK=triton.next_power_of_2(c),
                              DTYPE=TL_DTYPES[student.dtype], BF16_BY_HAND=INTERPRET, GRAD_S=need_grad_student,
                              GRAD_T=need_grad_teacher)
    return gs, gt
