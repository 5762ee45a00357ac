"""Tier 3: the Triton CRReLU kernels (kernels/crrelu.py, ``pyfast::crrelu_fwd_triton`` / ``crrelu_bwd_triton``)
against :func:`pyfast.reference.crrelu.crrelu_ref`. Without a GPU they run in Triton's CPU interpreter, small shapes."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before pyfast._triton.crrelu is first imported (tests/conftest.py too)

pytest.importorskip("triton")

from pyfast import _extension
from pyfast._dtypes import acc_dtype
from pyfast.ops.crrelu import crrelu
from pyfast.reference.crrelu import crrelu_ref
from pyfast.testing import assert_triton_schema_matches
from tests.ops.test_crrelu import check_huge_inputs_match_reference

DEVICE = "cpu" if _extension.triton_interpret() else "cuda"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
CASES = [((2, 3, 5, 7), 1, 1), ((4, 6, 5, 5), 6, 1), ((3, 17, 40), 40, -1), ((3000,), 1, 0)]


def _leaves(shape, c, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    acc = acc_dtype(dtype)
    eps = (0.01 + 0.5 * torch.randn(c, generator=g, dtype=torch.float64)).to(acc)
    return x.to(DEVICE).requires_grad_(), eps.to(DEVICE).requires_grad_()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(dtype):
    for i, (shape, c, dim) in enumerate(CASES):
        x, eps = _leaves(shape, c, dtype, i)
        x_ref, e_ref = (t.detach().cpu().clone().requires_grad_() for t in (x, eps))
        g = torch.randn(shape, generator=torch.Generator().manual_seed(i + 1)).to(dtype)
        y = crrelu(x, eps, dim, backend="triton")
        y_ref = crrelu_ref(x_ref, e_ref, dim)
        y.backward(g.to(DEVICE))
        y_ref.backward(g)
        tol = {torch.float64: 1e-12, torch.float32: 1e-6}.get(dtype, 1e-2)
        torch.testing.assert_close(y.cpu(), y_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(x.grad.cpu(), x_ref.grad, rtol=tol, atol=tol)
        n = x.numel() // c
        torch.testing.assert_close(eps.grad.cpu(), e_ref.grad, rtol=10 * tol, atol=tol * n)


def test_eps_zero_is_relu_and_gradcheck():
    x = torch.randn(5, 64, device=DEVICE) * 3
    assert torch.equal(crrelu(x, torch.zeros(1, device=DEVICE), backend="triton"), torch.relu(x))
    x, eps = _leaves((3, 4, 5), 4, torch.float64, 7)
    x = (x.detach() + 0.05 * (x.detach().abs() < 0.05).double()).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, e: crrelu(x, e, 1, backend="triton"), (x, eps))


def test_opcheck_and_compile():
    x, eps = _leaves((4, 6, 5), 6, torch.float32, 3)
    torch.library.opcheck(torch.ops.pyfast.crrelu_fwd_triton.default, (x, eps, 1))
    g = torch.randn(4, 6, 5, device=DEVICE)
    for need in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.pyfast.crrelu_bwd_triton.default, (g, x.detach(), eps.detach(), 1, *need))
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, e: (crrelu(x, e, 1, backend="triton") ** 2).sum(), fullgraph=True,
                             backend="aot_eager")
    compiled(x, eps).backward()
    x2, e2 = (t.detach().clone().requires_grad_() for t in (x, eps))
    (crrelu_ref(x2, e2, 1) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eps.grad, e2.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not _extension.has_cpp(), reason="needs the C++ extension pyfast._C (the C++ schemas)")
@pytest.mark.parametrize("name", ["crrelu_fwd", "crrelu_bwd"])
def test_schema_matches_cpp_op(name):
    assert_triton_schema_matches(name)


def test_launcher_rejects_bad_arguments():
    from pyfast._triton import crrelu as kernels

    with pytest.raises(TypeError, match="x must be one of float32"):
        kernels.crrelu_fwd(torch.zeros(4, dtype=torch.int32), torch.ones(1), 1, 4)
    with pytest.raises(ValueError, match="x must be a contiguous tensor"):
        kernels.crrelu_fwd(torch.zeros(4, 4).t(), torch.ones(1), 1, 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_huge_inputs_give_the_limits(dtype):
    check_huge_inputs_match_reference("triton", dtype, device=DEVICE)
