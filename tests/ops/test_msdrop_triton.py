"""Tier 3: the Triton multi-sample dropout kernels (kernels/msdrop.py, ``pyfast::msdrop_fwd_triton`` /
``msdrop_bwd_triton``) against :mod:`pyfast.reference.msdrop`. Without a GPU they run in Triton's CPU interpreter."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before pyfast._triton.msdrop is first imported (tests/conftest.py too)

pytest.importorskip("triton")

from pyfast import _extension
from pyfast.ops.msdrop import multi_sample_dropout_loss
from pyfast.reference.msdrop import msdrop_loss_ref
from pyfast.testing import assert_triton_schema_matches

DEVICE = "cpu" if _extension.triton_interpret() else "cuda"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
CASES = [(8, 5, 3, 4, 0.5), (16, 32, 10, 8, 0.3), (3, 7, 2, 1, 0.9), (5, 9, 4, 3, 0.0)]


def _inputs(b, d, c, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(c, d, generator=g, dtype=torch.float64) / d**0.5).to(dtype)
    bias = (0.1 * torch.randn(c, generator=g, dtype=torch.float64)).to(dtype)
    y = torch.randint(0, c, (b,), generator=g)
    return h, w, bias, y, torch.tensor([-987654321 * (seed + 1)], dtype=torch.int64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(dtype):
    for i, (b, d, c, m, p) in enumerate(CASES):
        h, w, bias, y, s = _inputs(b, d, c, dtype, i)
        dev = [t.clone().to(DEVICE).requires_grad_() for t in (h, w, bias)]
        ref = [t.clone().requires_grad_() for t in (h, w, bias)]
        loss, logits = multi_sample_dropout_loss(*dev, y.to(DEVICE), m, p, seed=s.to(DEVICE), backend="triton")
        loss_ref, logits_ref = msdrop_loss_ref(*ref, y, s, m, p)
        loss.backward()
        loss_ref.backward()
        tol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 2e-2 if dtype == torch.float16 else 8e-2)
        torch.testing.assert_close(logits.cpu().double(), logits_ref.double(), rtol=tol, atol=tol)
        torch.testing.assert_close(loss.cpu().double(), loss_ref.double(), rtol=tol, atol=tol)
        for a, r in zip(dev, ref):
            torch.testing.assert_close(a.grad.cpu().double(), r.grad.double(), rtol=tol, atol=tol)


def test_gradcheck_opcheck_and_compile():
    h, w, b, y, s = (t.to(DEVICE) for t in _inputs(5, 6, 3, torch.float64))
    leaves = [t.clone().requires_grad_() for t in (h, w, b)]
    assert torch.autograd.gradcheck(
        lambda h, w, b: multi_sample_dropout_loss(h, w, b, y, 3, 0.5, seed=s, backend="triton")[0], leaves)
    torch.library.opcheck(torch.ops.pyfast.msdrop_fwd_triton.default, (h, w, b, y, s, 3, 0.5))
    _, logits, lse = torch.ops.pyfast.msdrop_fwd_triton(h, w, b, y, s, 3, 0.5)
    g = torch.ones((), dtype=torch.float64, device=DEVICE)
    torch.library.opcheck(torch.ops.pyfast.msdrop_bwd_triton.default, (g, logits, lse, h, w, y, s, 3, 0.5, True,
                                                                        True, True))
    torch._dynamo.reset()
    compiled = torch.compile(lambda h, w, b: multi_sample_dropout_loss(h, w, b, y, 3, 0.5, seed=s,
                                                                       backend="triton")[0],
                             fullgraph=True, backend="aot_eager")
    leaves2 = [t.clone().requires_grad_() for t in (h, w, b)]
    compiled(*leaves2).backward()
    ref = [t.clone().requires_grad_() for t in (h, w, b)]
    msdrop_loss_ref(*ref, y, s, 3, 0.5)[0].backward()
    for a, r in zip(leaves2, ref):
        torch.testing.assert_close(a.grad, r.grad)


@pytest.mark.skipif(not _extension.has_cpp(), reason="needs the C++ extension pyfast._C (the C++ schemas)")
@pytest.mark.parametrize("name", ["msdrop_fwd", "msdrop_bwd"])
def test_schema_matches_cpp_op(name):
    assert_triton_schema_matches(name)


def test_launcher_rejects_bad_arguments():
    from pyfast._triton import msdrop as kernels

    with pytest.raises(TypeError, match="h must be one of float32"):
        kernels.make_x(torch.zeros(4, 2, dtype=torch.int32), torch.tensor([1]), 2, 0, 1.0)
    with pytest.raises(ValueError, match="h must be a contiguous tensor"):
        kernels.make_x(torch.zeros(4, 4).t(), torch.tensor([1]), 2, 0, 1.0)
