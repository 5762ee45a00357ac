"""Tier 3: the Triton Plackett-Luce distillation kernels (kernels/pld.py, ``pyfast::pld_fwd_triton`` /
``pld_bwd_triton``) against :mod:`pyfast.reference.pld`. Without a GPU they run in Triton's CPU interpreter."""

import functools
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before pyfast._triton.pld is first imported (tests/conftest.py too)

pytest.importorskip("triton")

from pyfast import _extension
from pyfast._dtypes import acc_dtype
from pyfast.losses import pld_loss
from pyfast.ops.pld import pld_rows
from pyfast.reference.pld import pld_ranking, pld_ref
from pyfast.testing import TOLERANCES, assert_triton_schema_matches, pld_inputs

DEVICE = "cpu" if _extension.triton_interpret() else "cuda"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
CASES = [(5, 7), (3, 1), (4, 2), (6, 33)]  # (B, C), tiny: the interpreter runs every lane in numpy


_inputs = functools.partial(pld_inputs, device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(dtype):
    acc = acc_dtype(dtype)
    for i, (b, c) in enumerate(CASES):
        for tau, ties in ((0.7, False), (2.0, True)):
            s, t, y = _inputs(b, c, dtype, seed=i, ties=ties)
            leaves = [s.clone().requires_grad_(), t.clone().requires_grad_()]
            loss, perm, lse = torch.ops.pyfast.pld_fwd_triton(*leaves, y, tau)
            ref = [x.detach().cpu().clone().requires_grad_() for x in (s, t)]
            loss_ref = pld_ref(*ref, y.cpu(), tau)
            assert loss.dtype == acc and perm.dtype == torch.int32 and lse.dtype == acc
            assert torch.equal(perm.cpu().long(), pld_ranking(t.cpu(), y.cpu()))
            rtol, atol = TOLERANCES[acc]
            torch.testing.assert_close(lse.cpu(), torch.logsumexp(t.cpu().to(acc) / tau, 1), rtol=rtol, atol=atol)
            torch.testing.assert_close(loss.cpu(), loss_ref, rtol=rtol, atol=atol)
            g = torch.randn(b, dtype=acc, generator=torch.Generator().manual_seed(i))
            (loss * g.to(DEVICE)).sum().backward()
            (loss_ref * g).sum().backward()
            rtol, atol = TOLERANCES[dtype]
            for a, r in zip(leaves, ref):
                assert a.grad.dtype == dtype
                torch.testing.assert_close(a.grad.cpu().double(), r.grad.double(), rtol=rtol, atol=atol)


def test_ties_invariants_and_out_of_range_label():
    y = torch.tensor([5, 2, 6], device=DEVICE)
    for dtype in (torch.float64, torch.float32):  # the 64-bit (rank-compressed) and 32-bit key paths
        t = torch.tensor([[1.0, 3.0, 3.0, -0.0, 0.0, 3.0, -2.0]] * 3, dtype=dtype, device=DEVICE)
        perm = torch.ops.pyfast.pld_fwd_triton(torch.zeros_like(t), t, y, 1.0)[1]
        assert perm.tolist() == [[5, 1, 2, 0, 3, 4, 6], [2, 1, 5, 0, 3, 4, 6], [6, 1, 2, 5, 0, 3, 4]]
    s, t, y = _inputs(4, 9, torch.float64)
    rows = lambda s, t: pld_rows(s, t, y, 1.0, backend="triton")
    torch.testing.assert_close(rows(s + 3.0, t), rows(s, t))
    one_hot = torch.full_like(t, -1e4).scatter(1, y[:, None], 1e4)
    torch.testing.assert_close(rows(s, one_hot), F.cross_entropy(s, y, reduction="none"))
    loss = torch.ops.pyfast.pld_fwd_triton(s, t, torch.tensor([0, 9, 2, -1], device=DEVICE), 1.0)[0]
    assert loss[[1, 3]].isnan().all() and torch.isfinite(loss[[0, 2]]).all()


def test_gradcheck_opcheck_and_compile():
    s, t, y = _inputs(3, 6, torch.float64)
    leaves = (s.clone().requires_grad_(), t.clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b: pld_rows(a, b, y, 0.8, backend="triton"), leaves)
    torch.library.opcheck(torch.ops.pyfast.pld_fwd_triton.default, (*leaves, y, 0.8))
    _, perm, lse = torch.ops.pyfast.pld_fwd_triton(s, t, y, 0.8)
    for need in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.pyfast.pld_bwd_triton.default,
                              (torch.randn(3, dtype=torch.float64, device=DEVICE), s, t, perm, lse, 0.8, *need))
    torch._dynamo.reset()
    compiled = torch.compile(lambda a: pld_loss(a, t, y, 0.8, backend="triton"), fullgraph=True, backend="aot_eager")
    a = s.clone().requires_grad_()
    compiled(a).backward()
    r = s.clone().requires_grad_()
    pld_ref(r, t, y, 0.8).mean().backward()
    torch.testing.assert_close(a.grad, r.grad)


@pytest.mark.skipif(not _extension.has_cpp(), reason="needs the C++ extension pyfast._C (the C++ schemas)")
@pytest.mark.parametrize("name", ["pld_fwd", "pld_bwd"])
def test_schema_matches_cpp_op(name):
    assert_triton_schema_matches(name)


def test_launcher_rejects_bad_arguments():
    from pyfast._triton import pld as kernels

    s, t, y = _inputs(3, 4, torch.float32)
    with pytest.raises(TypeError, match="teacher must be one of float32"):
        kernels.pld_fwd(s, t.double(), y, 1.0)
    with pytest.raises(ValueError, match="student must be a contiguous tensor"):
        kernels.pld_fwd(s.t(), t.t(), y, 1.0)
    with pytest.raises(ValueError, match=r"must be \[B, C\] of one shape"):
        kernels.pld_fwd(s, t[:, :3].contiguous(), y, 1.0)
    with pytest.raises(TypeError, match="labels must be one of int64"):
        kernels.pld_fwd(s, t, y.int(), 1.0)
