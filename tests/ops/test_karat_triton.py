"""Tier 3: the Triton Fourier-KArAt kernels (kernels/karat.py, ``pyfast::karat_fwd_triton`` / ``karat_bwd_triton``)
against :mod:`pyfast.reference.karat` and the C++ op.

Without a GPU the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1), so shapes are small; with a GPU the
same tests run compiled on CUDA tensors.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before pyfast._triton.karat is first imported (tests/conftest.py does too)

pytest.importorskip("triton")

from pyfast import _extension
from pyfast._dtypes import acc_dtype
from pyfast.ops.karat import karat_attention, karat_basis
from pyfast.reference.karat import karat_attention_ref, karat_z_ref
from pyfast.testing import HALF_TYPES, assert_half_error_within, assert_triton_schema_matches, named

DEVICE = "cpu" if _extension.triton_interpret() else "cuda"


def _inputs(B=2, H=2, N=11, D=8, r=3, M=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    acc = acc_dtype(dtype)
    q, k, v = (torch.randn(B, H, N, D, generator=g).to(dtype) for _ in range(3))
    a, b = (torch.randn(H, r, N, M, generator=g).to(acc) for _ in range(2))
    W = (torch.randn(H, N, r, generator=g) / N).to(acc)
    return [t.to(DEVICE).requires_grad_() for t in (q, k, v, a, b, W)]


def _grads(fn, inputs):
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    return [out, *torch.autograd.grad(out, inputs, g)]


@pytest.mark.parametrize("N", [5, 32, 45])  # below, at and above the 32-row / 32-column blocks
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(N, dtype):
    inputs = _inputs(N=N, dtype=dtype)
    ref = _grads(lambda *t: karat_attention_ref(*t, 0.6), inputs)
    got = _grads(lambda *t: karat_attention(*t, 0.6, backend="triton"), inputs)
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    for name, x, y in zip(["out", "q", "k", "v", "a", "b", "W"], got, ref):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol * max(1.0, y.abs().max().item()), msg=named(name))


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_half_types_within_twice_the_eager_error(dtype):
    q, k, _, a, b, _ = _inputs(N=13, D=16, M=2, dtype=dtype)
    truth = _grads(lambda *t: karat_z_ref(*(x.double() for x in t)), [q, k, a, b])
    eager = _grads(lambda *t: karat_z_ref(*t), [q, k, a, b])
    got = _grads(lambda *t: karat_basis(*t, backend="triton"), [q, k, a, b])
    assert got[0].dtype == dtype
    for name, x, e, t in zip(["z", "q", "k", "a", "b"], got, eager, truth):
        assert_half_error_within(x, t, e, name, floor=1e-3 * t.abs().max().item())


@pytest.mark.skipif(not _extension.has_cpp(), reason="needs the C++ extension pyfast._C")
def test_matches_cpp_op():
    """Triton twin against the compiled op of the same device (the C++ kernels on CPU, the CUDA ones on a GPU)."""
    q, k, _, a, b, _ = (t.detach() for t in _inputs(N=40, r=5, M=4))
    gz = torch.randn(2, 2, 40, 5, device=DEVICE)
    torch.testing.assert_close(torch.ops.pyfast.karat_fwd_triton(q, k, a, b, 0.3),
                               torch.ops.pyfast.karat_fwd(q, k, a, b, 0.3), rtol=1e-4, atol=1e-4)
    for x, y in zip(torch.ops.pyfast.karat_bwd_triton(gz, q, k, a, b, 0.3, True),
                    torch.ops.pyfast.karat_bwd(gz, q, k, a, b, 0.3, True)):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    assert torch.ops.pyfast.karat_bwd_triton(gz, q, k, a, b, 0.3)[4].numel() == 0
    inputs = _inputs(N=9, r=3, M=3)
    for x, y in zip(_grads(lambda *t: karat_attention(*t, backend="triton"), inputs),
                    _grads(lambda *t: karat_attention(*t, backend="cpp" if DEVICE == "cpu" else "cuda"), inputs)):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


def test_opcheck():
    q, k, _, a, b, _ = _inputs(N=7, r=2, M=2)
    torch.library.opcheck(torch.ops.pyfast.karat_fwd_triton.default, (q, k, a, b, 0.5))
    gz = torch.randn(2, 2, 7, 2, device=DEVICE)
    torch.library.opcheck(torch.ops.pyfast.karat_bwd_triton.default, (gz, q.detach(), k.detach(), a.detach(),
                                                                      b.detach(), 0.5, True))
    q, k, v, a, b, W = _inputs(N=7, r=2, M=3)
    torch.library.opcheck(torch.ops.pyfast.karat_attention_fwd_triton.default, (q, k, v, a, b, W, 0.5, True))
    z = torch.ops.pyfast.karat_attention_fwd_triton(q, k, v, a, b, W, 0.5, True)[1]
    torch.library.opcheck(torch.ops.pyfast.karat_attention_bwd_triton.default,
                          (torch.randn_like(q), *(t.detach() for t in (q, k, v, a, b, W)), z, 0.5, True))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    inputs = _inputs(N=6)
    compiled = torch.compile(lambda *t: karat_attention(*t, backend="triton"), fullgraph=True, backend="aot_eager")
    for x, y in zip(_grads(compiled, inputs), _grads(lambda *t: karat_attention_ref(*t), inputs)):
        torch.testing.assert_close(x, y, rtol=2e-4, atol=2e-4)


@pytest.mark.skipif(not _extension.has_cpp(), reason="needs the C++ extension pyfast._C (the C++ schemas)")
@pytest.mark.parametrize("name", ["karat_fwd", "karat_bwd", "karat_attention_fwd", "karat_attention_bwd"])
def test_schema_matches_cpp_op(name):
    assert_triton_schema_matches(name)
