"""Tier 3: the Triton ghost batch norm kernels (kernels/ghost_bn.py, ``pyfast::ghost_bn_fwd_triton`` /
``ghost_bn_bwd_triton``) against :mod:`pyfast.reference.ghost_bn`. Without a GPU they run in Triton's CPU
interpreter, small shapes."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before pyfast._triton.ghost_bn is first imported (tests/conftest.py too)

pytest.importorskip("triton")

from pyfast import _extension
from pyfast._dtypes import acc_dtype
from pyfast.ops.ghost_bn import ghost_batch_norm
from pyfast.reference.ghost_bn import ghost_batch_norm_loop_ref, ghost_batch_norm_ref
from pyfast.testing import assert_triton_schema_matches

DEVICE = "cpu" if _extension.triton_interpret() else "cuda"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
CASES = [((8, 3, 5, 4), 4), ((10, 4, 3, 3), 4), ((37, 7), 8), ((3, 2, 30, 40), 2)]


def _inputs(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 3).to(dtype)
    acc = acc_dtype(dtype)
    w = (1 + 0.3 * torch.randn(c, generator=g, dtype=torch.float64)).to(acc)
    b = (0.2 * torch.randn(c, generator=g, dtype=torch.float64)).to(acc)
    return x, w, b, torch.zeros(c, dtype=acc), torch.ones(c, dtype=acc)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(dtype):
    for i, (shape, ghost) in enumerate(CASES):
        x, w, b, rm, rv = _inputs(shape, dtype, i)
        ref = [t.clone().requires_grad_() for t in (x, w, b)]
        dev = [t.clone().to(DEVICE).requires_grad_() for t in (x, w, b)]
        rm_d, rv_d = rm.clone().to(DEVICE), rv.clone().to(DEVICE)
        y = ghost_batch_norm(dev[0], rm_d, rv_d, dev[1], dev[2], True, 0.1, 1e-5, ghost, backend="triton")
        y_ref, new_rm, new_rv = ghost_batch_norm_ref(*ref[:1], rm, rv, *ref[1:], ghost, 0.1, 1e-5)
        g = torch.randn(shape, generator=torch.Generator().manual_seed(i + 1)).to(dtype)
        y.backward(g.to(DEVICE))
        y_ref.backward(g)
        tol = {torch.float64: 1e-10, torch.float32: 2e-5}.get(dtype, 2e-2 if dtype == torch.float16 else 8e-2)
        torch.testing.assert_close(y.cpu().double(), y_ref.double(), rtol=tol, atol=tol)
        torch.testing.assert_close(rm_d.cpu(), new_rm, rtol=tol, atol=tol)
        torch.testing.assert_close(rv_d.cpu(), new_rv, rtol=tol, atol=tol)
        torch.testing.assert_close(dev[0].grad.cpu().double(), ref[0].grad.double(), rtol=tol, atol=10 * tol)
        n = x.numel() // shape[1]
        torch.testing.assert_close(dev[1].grad.cpu(), ref[1].grad, rtol=tol, atol=tol * n)
        torch.testing.assert_close(dev[2].grad.cpu(), ref[2].grad, rtol=tol, atol=tol * n)


def test_equals_loop_and_gradcheck():
    x, w, b, rm, rv = _inputs((10, 3, 2, 2), torch.float64, 5)
    rm2, rv2 = rm.clone(), rv.clone()
    y_loop = ghost_batch_norm_loop_ref(x, rm, rv, w, b, 4, 0.1, 1e-5)
    y = ghost_batch_norm(x.to(DEVICE), rm2.to(DEVICE), rv2.to(DEVICE), w.to(DEVICE), b.to(DEVICE), True, 0.1, 1e-5,
                         4, backend="triton")
    torch.testing.assert_close(y.cpu(), y_loop)
    leaves = [t.to(DEVICE).requires_grad_() for t in (x, w, b)]
    fn = lambda x, w, b: ghost_batch_norm(x, None, None, w, b, True, 0.1, 1e-5, 4, backend="triton")
    assert torch.autograd.gradcheck(fn, leaves)


def test_opcheck_and_compile():
    x, w, b, _, _ = _inputs((10, 4, 3, 3), torch.float32, 2)
    x, w, b = x.to(DEVICE), w.to(DEVICE), b.to(DEVICE)
    torch.library.opcheck(torch.ops.pyfast.ghost_bn_fwd_triton.default, (x, w, b, 4, 1e-5))
    _, mean, _, inv = torch.ops.pyfast.ghost_bn_fwd_triton(x, w, b, 4, 1e-5)
    g = torch.randn_like(x)
    for need in ((True, True, True), (False, True, False)):
        torch.library.opcheck(torch.ops.pyfast.ghost_bn_bwd_triton.default, (g, x, mean, inv, w, 4, *need))
    torch._dynamo.reset()
    xl = x.clone().requires_grad_()
    compiled = torch.compile(lambda v: ghost_batch_norm(v, None, None, w, b, True, 0.1, 1e-5, 4,
                                                        backend="triton").square().sum(),
                             fullgraph=True, backend="aot_eager")
    compiled(xl).backward()
    x2 = x.clone().requires_grad_()
    ghost_batch_norm_ref(x2, None, None, w, b, 4, 0.1, 1e-5)[0].square().sum().backward()
    torch.testing.assert_close(xl.grad, x2.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not _extension.has_cpp(), reason="needs the C++ extension pyfast._C (the C++ schemas)")
@pytest.mark.parametrize("name", ["ghost_bn_fwd", "ghost_bn_bwd"])
def test_schema_matches_cpp_op(name):
    assert_triton_schema_matches(name)


def test_launcher_rejects_bad_arguments():
    from pyfast._triton import ghost_bn as kernels

    with pytest.raises(TypeError, match="x must be one of float32"):
        kernels.ghost_bn_fwd(torch.zeros(4, 2, dtype=torch.int32), None, None, 2, 1e-5)
    with pytest.raises(ValueError, match="x must be a contiguous tensor"):
        kernels.ghost_bn_fwd(torch.zeros(4, 4).t(), None, None, 2, 1e-5)
