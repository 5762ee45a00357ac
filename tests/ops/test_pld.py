"""Plackett-Luce distillation: reference invariants (tier 1), the C++ CPU op against the reference (tier 2), CUDA
(tier 4). The Triton twin (tier 3) is tested in test_pld_triton.py; pyfast.losses.pld_loss's own tests are in
tests/losses/test_kd.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pyfast._dtypes import acc_dtype
from pyfast.losses import PLDLoss, pld_loss
from pyfast.ops.pld import CUDA_MAX_CLASSES, pld_rows
from pyfast.reference.pld import pld_ranking, pld_ref
from pyfast.testing import TOLERANCES, pld_inputs
from tests.markers import needs_cpp, needs_cuda

BACKENDS = ["reference", pytest.param("cpp", marks=needs_cpp)]
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
CASES = [(5, 7), (16, 100), (3, 1000), (33, 257), (6, 2)]  # (B, C)
IDS = [f"B{b}-C{c}" for b, c in CASES]


def _op(backend):
    """Per-row losses [B] of ``backend``, differentiable in both logits."""
    return lambda s, t, y, tau: pld_rows(s, t, y, tau, backend=backend)


def brute_force_rows(s, t, y, tau):
    """The Plackett-Luce likelihood walked one choice at a time: at step k a softmax over the classes not yet
    ranked, the ranking being the label then the others by descending teacher logit (ties: lower class first)."""
    out = []
    for i in range(s.shape[0]):
        alpha = F.softmax(t[i].double() / tau, 0)
        others = sorted((c for c in range(s.shape[1]) if c != int(y[i])), key=lambda c: (-float(t[i, c]), c))
        ranking = [int(y[i]), *others]
        total = torch.zeros((), dtype=torch.float64)
        for k, c in enumerate(ranking):
            total = total - alpha[c] * F.log_softmax(s[i, ranking[k:]].double(), 0)[0]
        out.append(total)
    return torch.stack(out)


# --------------------------------------------------------------------------------------------------------------
# Tier 1: the maths, for the reference and the C++ op alike
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_the_brute_force_plackett_luce_likelihood(backend):
    for seed, ties in ((0, False), (1, True)):
        s, t, y = pld_inputs(6, 9, seed=seed, ties=ties)
        for tau in (1.0, 0.4, 2.5):
            torch.testing.assert_close(_op(backend)(s, t, y, tau), brute_force_rows(s, t, y, tau))
    torch.testing.assert_close(PLDLoss(2.5, reduction="sum", backend=backend)(s, t, y),
                               brute_force_rows(s, t, y, 2.5).sum())


@pytest.mark.parametrize("backend", BACKENDS)
def test_shift_invariant_and_cross_entropy_for_a_one_hot_teacher(backend):
    s, t, y = pld_inputs(7, 12)
    rows = _op(backend)
    torch.testing.assert_close(rows(s + 3.0, t, y, 1.0), rows(s, t, y, 1.0))
    torch.testing.assert_close(rows(s, t - 5.0, y, 1.0), rows(s, t, y, 1.0))  # softmax and ranking ignore a shift
    one_hot = torch.full_like(t, -1e4).scatter(1, y[:, None], 1e4)
    torch.testing.assert_close(rows(s, one_hot, y, 1.0), F.cross_entropy(s, y, reduction="none"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64_student_and_teacher(backend):
    rows = _op(backend)
    for b, c in ((4, 6), (3, 2), (2, 40)):
        s, t, y = pld_inputs(b, c, seed=c)
        leaves = (s.clone().requires_grad_(), t.clone().requires_grad_())
        assert torch.autograd.gradcheck(lambda a, b_, y=y: rows(a, b_, y, 0.8), leaves)
        assert torch.autograd.gradcheck(lambda a, t=t, y=y: pld_loss(a, t, y, 1.3, backend=backend), (leaves[0],))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranking_tie_rule(backend):
    # equal teacher logits rank by ascending class index; -0 equals +0; the label is first whatever its logit
    y = torch.tensor([5, 2, 6])
    expected = [[5, 1, 2, 0, 3, 4, 6], [2, 1, 5, 0, 3, 4, 6], [6, 1, 2, 5, 0, 3, 4]]
    for dtype in (torch.float64, torch.float32, torch.bfloat16):  # 64-bit and 32-bit order keys
        t = torch.tensor([[1.0, 3.0, 3.0, -0.0, 0.0, 3.0, -2.0]] * 3, dtype=dtype)
        if backend == "reference":
            perm = pld_ranking(t, y)
        else:
            perm = torch.ops.pyfast.pld_fwd(torch.zeros_like(t), t, y, 1.0)[1]
        assert perm.tolist() == expected, dtype
    s = torch.randn(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_op(backend)(s, t.double(), y, 1.0), brute_force_rows(s, t.double(), y, 1.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_and_two_classes(backend):
    # C = 1 (the op; pld_loss asks for C >= 2): one choice, nothing to rank, loss and gradients 0
    s, t, y = pld_inputs(4, 1)
    leaves = (s.clone().requires_grad_(), t.clone().requires_grad_())
    loss = pld_ref(*leaves, y) if backend == "reference" else torch.ops.pyfast.pld_fwd(*leaves, y, 1.0)[0]
    assert torch.equal(loss, torch.zeros(4, dtype=torch.float64))
    loss.sum().backward()
    assert torch.equal(leaves[0].grad, torch.zeros_like(s)) and torch.equal(leaves[1].grad, torch.zeros_like(t))
    # C = 2: the last position is certain, so L = alpha_y CE(s, y)
    s, t, y = pld_inputs(5, 2, seed=1)
    alpha_y = F.softmax(t / 0.5, 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(pld_loss(s, t, y, 0.5, "none", backend=backend),
                               alpha_y * F.cross_entropy(s, y, reduction="none"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_logits_stay_finite(backend):
    # the suffix sums run with a running max: no overflow for large logits, no underflow to log(0) for a tail far
    # below the head
    s, t, y = pld_inputs(4, 50, dtype=torch.float32)
    s = s * 60.0
    s[:, ::7] -= 500.0
    loss = pld_loss(s, t * 30, y, 0.5, "none", backend=backend)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss.double(), brute_force_rows(s.double(), t.double() * 30, y, 0.5), rtol=1e-5,
                               atol=1e-3)


# --------------------------------------------------------------------------------------------------------------
# Tier 2: the C++ op against the reference
# --------------------------------------------------------------------------------------------------------------


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(("student_scale", "teacher_scale"), [(1.0, 1.0), (1e2, 1.0), (1e30, 1.0), (1.0, 1e30),
                                                              (1e30, 1e30), (1e30, 1e-30)])
def test_reference_matches_cpp_at_any_logit_scale(student_scale, teacher_scale, dtype):
    """The reference's reverse log-sum-exp was logcumsumexp, whose backward adds log(grad) to its result: at 1e30
    student logits the gradients' weights were lost (rows summed to about the number of suffix maxima instead of 0),
    and in float32 they were 3e-5 relative off already at 1e2. The C++ kernel's scan is exact at any scale."""
    s, t, y = pld_inputs(16, 100, dtype, seed=3)
    ref = [(s * student_scale).requires_grad_(), (t * teacher_scale).requires_grad_()]
    cpp = [x.detach().clone().requires_grad_() for x in ref]
    loss_ref, loss_cpp = pld_ref(*ref, y, 0.7), torch.ops.pyfast.pld_fwd(*cpp, y, 0.7)[0]
    g = torch.rand(16, dtype=dtype, generator=torch.Generator().manual_seed(4))
    grads_ref = torch.autograd.grad((loss_ref * g).sum(), ref)
    grads_cpp = torch.autograd.grad((loss_cpp * g).sum(), cpp)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for name, want, got in zip(("loss", "student", "teacher"), (loss_cpp, *grads_cpp), (loss_ref, *grads_ref)):
        unit = want.abs().max().clamp_min(1.0)  # compare relative to the largest entry: values span 30 decades
        torch.testing.assert_close(got / unit, want / unit, rtol=rtol, atol=rtol, msg=name)
    # L is invariant to s + c per row: each row of the student's gradient sums to 0.
    torch.testing.assert_close(grads_ref[0].sum(1), torch.zeros(16, dtype=dtype), rtol=0, atol=1e-5)


def _compare(backend, b, c, dtype, seed=0, device="cpu", tau=0.7, ties=False, non_contiguous=False):
    s, t, y = pld_inputs(b, c, dtype, seed, device, ties)
    if non_contiguous:
        s, t = s.t().contiguous().t(), t.t().contiguous().t()
        assert not s.is_contiguous() or b == 1 or c == 1
    op = torch.ops.pyfast.pld_fwd if backend in ("cpp", "cuda") else torch.ops.pyfast.pld_fwd_triton
    leaves = [s.clone().requires_grad_(), t.clone().requires_grad_()]
    loss, perm, lse = op(*leaves, y, tau)
    ref = [x.detach().cpu().clone().requires_grad_() for x in (s, t)]
    loss_ref = pld_ref(*ref, y.cpu(), tau)
    acc = acc_dtype(dtype)
    assert loss.dtype == acc and perm.dtype == torch.int32 and lse.dtype == acc
    assert not perm.requires_grad and not lse.requires_grad
    assert torch.equal(perm.cpu().long(), pld_ranking(t.cpu(), y.cpu()))
    rtol, atol = TOLERANCES[acc]
    torch.testing.assert_close(lse.cpu(), torch.logsumexp(t.cpu().to(acc) / tau, 1), rtol=rtol, atol=atol)
    torch.testing.assert_close(loss.cpu(), loss_ref, rtol=rtol, atol=atol * max(1.0, c / 100))
    g = torch.randn(b, dtype=acc, generator=torch.Generator().manual_seed(seed + 1))
    (loss * g.to(device)).sum().backward()
    (loss_ref * g).sum().backward()
    for name, a, r in zip(("student", "teacher"), leaves, ref):
        assert a.grad.dtype == dtype
        rtol, atol = TOLERANCES[dtype]
        torch.testing.assert_close(a.grad.cpu().double(), r.grad.double(), rtol=rtol, atol=atol, msg=name)


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cpp_matches_reference(case, dtype):
    _compare("cpp", *case, dtype)
    _compare("cpp", *case, dtype, seed=1, tau=2.0, ties=True, non_contiguous=True)


@needs_cpp
def test_cpp_baseline_isa_matches(tmp_path):
    # The baseline x86-64 loops (PYFAST_CPU_BASELINE=1, read once per process) against the vector ones.
    script = (
        "import torch, pyfast\n"
        "g = torch.Generator().manual_seed(0)\n"
        "s, t = torch.randn(9, 300, generator=g) * 3, torch.randn(9, 300, generator=g)\n"
        "y = torch.arange(9) * 31\n"
        "loss, perm, lse = torch.ops.pyfast.pld_fwd(s, t, y, 0.5)\n"
        "gs, gt = torch.ops.pyfast.pld_bwd(torch.ones(9), s, t, perm, lse, 0.5, True, True)\n"
        f"torch.save((s, t, y, loss, perm, gs, gt), {str(tmp_path / 'out.pt')!r})\n"
    )
    env = {**os.environ, "PYFAST_CPU_BASELINE": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=os.getcwd())
    s, t, y, loss_b, perm_b, gs_b, gt_b = torch.load(tmp_path / "out.pt")
    loss, perm, lse = torch.ops.pyfast.pld_fwd(s, t, y, 0.5)
    gs, gt = torch.ops.pyfast.pld_bwd(torch.ones(9), s, t, perm, lse, 0.5, True, True)
    assert torch.equal(perm_b, perm)
    torch.testing.assert_close(loss_b, loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gs_b, gs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gt_b, gt, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss_b, pld_ref(s, t, y, 0.5), rtol=1e-5, atol=1e-5)


@needs_cpp
def test_cpp_thread_count_independent_and_partial_gradients():
    s, t, y = pld_inputs(64, 130, torch.float32, ties=True)
    loss, perm, lse = torch.ops.pyfast.pld_fwd(s, t, y, 1.0)
    g = torch.randn(64)
    gs, gt = torch.ops.pyfast.pld_bwd(g, s, t, perm, lse, 1.0, True, True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loss1, perm1, _ = torch.ops.pyfast.pld_fwd(s, t, y, 1.0)
        gs1, gt1 = torch.ops.pyfast.pld_bwd(g, s, t, perm, lse, 1.0, True, True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(loss, loss1) and torch.equal(perm, perm1) and torch.equal(gs, gs1) and torch.equal(gt, gt1)
    gs_only, none = torch.ops.pyfast.pld_bwd(g, s, t, perm, lse, 1.0, True, False)
    assert none.shape == (0,) and torch.equal(gs_only, gs)
    none, gt_only = torch.ops.pyfast.pld_bwd(g, s, t, perm, lse, 1.0, False, True)
    assert none.shape == (0,) and torch.equal(gt_only, gt)
    # every row's gradient sums to 0 over the classes (shift invariance) and the teacher's too (softmax)
    torch.testing.assert_close(gs.sum(1), torch.zeros(64), rtol=0, atol=1e-5)
    torch.testing.assert_close(gt.sum(1), torch.zeros(64), rtol=0, atol=1e-5)


@needs_cpp
def test_opcheck():
    for b, c in ((5, 7), (3, 1), (4, 33)):
        s, t, y = pld_inputs(b, c, torch.float32)
        torch.library.opcheck(torch.ops.pyfast.pld_fwd.default, (s.requires_grad_(), t, y, 0.7))
        _, perm, lse = torch.ops.pyfast.pld_fwd(s.detach(), t, y, 0.7)
        for need in ((True, True), (True, False), (False, True)):
            torch.library.opcheck(torch.ops.pyfast.pld_bwd.default, (torch.randn(b), s.detach(), t, perm, lse, 0.7,
                                                                     *need))
    s, t, y = pld_inputs(0, 5, torch.float32)  # an empty batch
    assert [x.shape for x in torch.ops.pyfast.pld_fwd(s, t, y, 1.0)] == [(0,), (0, 5), (0,)]


@needs_cpp
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compile_backend):
    torch._dynamo.reset()
    s, t, y = pld_inputs(6, 40, torch.float32)
    compiled = torch.compile(lambda a, b: pld_loss(a, b, y, 0.5, backend="cpp"), fullgraph=True,
                             backend=compile_backend)
    leaves = [s.clone().requires_grad_(), t.clone().requires_grad_()]
    loss = compiled(*leaves)
    loss.backward()
    ref = s.clone().requires_grad_()
    loss_ref = pld_ref(ref, t, y, 0.5).mean()
    loss_ref.backward()
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(leaves[0].grad, ref.grad)
    assert leaves[1].grad is None  # pld_loss detaches the teacher


@needs_cpp
def test_auto_is_cpp_on_cpu_and_mixed_dtypes_promote():
    s, t, y = pld_inputs(8, 20, torch.float32)
    assert torch.equal(pld_loss(s, t, y, reduction="none"), pld_loss(s, t, y, reduction="none", backend="cpp"))
    for s_dt, t_dt in ((torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16), (torch.float32,
                                                                                            torch.float64)):
        a, b = s.to(s_dt), t.to(t_dt)
        common = torch.promote_types(s_dt, t_dt)
        torch.testing.assert_close(pld_loss(a, b, y, reduction="none", backend="cpp"),
                                   pld_ref(a.to(common), b.to(common), y))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_errors(backend):
    s, t, y = pld_inputs(5, 7, torch.float32)
    with pytest.raises(ValueError, match="teacher has 6 classes, expected 7"):
        pld_loss(s, t[:, :6], y, backend=backend)
    with pytest.raises(ValueError, match="teacher has batch 4, expected 5"):
        pld_loss(s, t[:4], y, backend=backend)
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="tau_t must be a finite number > 0"):
            pld_loss(s, t, y, bad, backend=backend)
    with pytest.raises(ValueError, match=r"class indices in \[0, 7\), got values in \[0, 7\]"):
        pld_loss(s, t, torch.tensor([0, 1, 2, 3, 7]), backend=backend)
    with pytest.raises(ValueError, match=r"y must be an int64 tensor of shape \[5\]"):
        pld_loss(s, t, y.int(), backend=backend)
    with pytest.raises(ValueError, match="reduction must be one of"):
        pld_loss(s, t, y, reduction="avg", backend=backend)
    with pytest.raises(ValueError, match="backend must be one of"):
        pld_loss(s, t, y, backend="fast")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pld_rows_rejects_a_non_finite_or_tensor_tau_on_every_backend(backend):
    """pld_rows (the dispatch behind pld_loss, public in pyfast.ops) left tau_t to the C++ op, which rejects NaN /
    inf / <= 0 (and took a 0-d tensor); the reference returned NaN losses for tau_t=nan and finite ones for +-inf.
    Now every backend raises the C++ op's error, tensors included (as pld_loss)."""
    s, t, y = pld_inputs(5, 7, torch.float32)
    for bad in (float("nan"), float("inf"), float("-inf"), 0.0, -1.0, torch.tensor(0.5), torch.tensor(float("nan"))):
        with pytest.raises(ValueError, match="pld: tau_t must be a finite number > 0"):
            pld_rows(s, t, y, bad, backend=backend)


@needs_cpp
def test_direct_op_bad_input_errors():
    s, t, y = pld_inputs(5, 7, torch.float32)
    with pytest.raises(TypeError, match="teacher must have student's dtype"):
        torch.ops.pyfast.pld_fwd(s, t.double(), y, 1.0)
    with pytest.raises(ValueError, match="teacher must have student's shape"):
        torch.ops.pyfast.pld_fwd(s, t[:, :6], y, 1.0)
    with pytest.raises(TypeError, match="student must be float32/float64/float16/bfloat16"):
        torch.ops.pyfast.pld_fwd(s.int(), t.int(), y, 1.0)
    with pytest.raises(ValueError, match=r"student must be \[B, C\]"):
        torch.ops.pyfast.pld_fwd(s[0], t[0], y, 1.0)
    with pytest.raises(ValueError, match=r"labels must hold class indices in \[0, 7\), got -1"):
        torch.ops.pyfast.pld_fwd(s, t, torch.tensor([0, 1, -1, 3, 4]), 1.0)
    with pytest.raises(TypeError, match="labels must be int64"):
        torch.ops.pyfast.pld_fwd(s, t, y.int(), 1.0)
    with pytest.raises(ValueError, match=r"labels must be \[B\] = \[5\]"):
        torch.ops.pyfast.pld_fwd(s, t, y[:3], 1.0)
    with pytest.raises(ValueError, match="tau_t must be a finite number > 0"):
        torch.ops.pyfast.pld_fwd(s, t, y, float("nan"))
    _, perm, lse = torch.ops.pyfast.pld_fwd(s, t, y, 1.0)
    with pytest.raises(ValueError, match="perm must be int32 of student's shape"):
        torch.ops.pyfast.pld_bwd(torch.ones(5), s, t, perm.long(), lse, 1.0, True, True)
    with pytest.raises(ValueError, match=r"grad_loss must be \[B\] = \[5\]"):
        torch.ops.pyfast.pld_bwd(torch.ones(()), s, t, perm, lse, 1.0, True, True)


# --------------------------------------------------------------------------------------------------------------
# Tier 4: CUDA
# --------------------------------------------------------------------------------------------------------------



@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_reference(dtype):
    for i, case in enumerate([*CASES, (4, 1), (8, CUDA_MAX_CLASSES), (256, 100)]):
        _compare("cuda", *case, dtype, seed=i, device="cuda")
        _compare("cuda", *case, dtype, seed=i, device="cuda", tau=2.0, ties=True, non_contiguous=True)


@pytest.mark.cuda
@needs_cuda
def test_cuda_out_of_range_label_and_more_classes_than_the_kernel_sorts():
    s, t, y = pld_inputs(3, 9, torch.float32, device="cuda")
    loss = torch.ops.pyfast.pld_fwd(s, t, torch.tensor([0, 9, 2], device="cuda"), 1.0)[0]
    assert loss[1].isnan() and torch.isfinite(loss[[0, 2]]).all()
    s, t, y = pld_inputs(3, CUDA_MAX_CLASSES + 1, torch.float32, device="cuda")
    with pytest.raises(ValueError, match="sorts rows of at most 1024 classes"):
        pld_loss(s, t, y, backend="cuda")
    with pytest.warns(UserWarning, match="at most 1024 classes"):
        loss = pld_loss(s, t, y, reduction="none")
    torch.testing.assert_close(loss.cpu(), pld_ref(s.cpu(), t.cpu(), y.cpu()))


@pytest.mark.cuda
@needs_cuda
def test_cuda_op_rejects_more_classes_than_the_kernel_sorts():
    # The C++ check of the op itself (pld_loss checks first, in Python). On the GPU machines of 2026-11-26 (torch 2.11)
    # every error raised inside pyfast._C, this one among them, crashed the process (a segfault); see
    # bench/check_cpp_errors.py.
    s, t, y = pld_inputs(3, CUDA_MAX_CLASSES + 1, torch.float32, device="cuda")
    with pytest.raises(ValueError, match="sorts rows of at most 1024 classes"):
        torch.ops.pyfast.pld_fwd(s, t, y, 1.0)
