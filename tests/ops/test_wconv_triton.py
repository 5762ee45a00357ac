"""Tier 3: the Triton density-weight kernels (kernels/wconv.py, ``pyfast::wconv_weight_fwd_triton`` /
``wconv_weight_bwd_triton``) against :func:`pyfast.reference.wconv.wconv_weight_ref` and the C++ op.

Without a GPU the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1), so shapes are small; with a GPU the
same tests run compiled on CUDA tensors, and the ``cuda``-marked test adds larger shapes.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before pyfast._triton.wconv is first imported (tests/conftest.py does too)

pytest.importorskip("triton")

from pyfast import _extension
from pyfast._dtypes import acc_dtype
from pyfast.ops.wconv import pack_den, wconv, wconv_weight
from pyfast.reference.wconv import wconv_den_grad_ref, wconv_ref, wconv_weight_ref
from pyfast.testing import assert_triton_schema_matches

DEVICE = "cpu" if _extension.triton_interpret() else "cuda"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
CASES = [
    ((4, 3, 5), [0.2, 0.8]),
    ((6, 3, 3, 3), [0.7]),
    ((5, 2, 3, 7), [[0.4], [0.25, 0.15, 0.55]]),
    ((3, 4, 1, 5), [[], [0.2, 0.8]]),
    ((2, 3, 3, 3, 3), [0.6]),
    ((2, 2, 3, 5, 1), [[0.5], [0.1, 0.4], []]),
    ((300, 2, 3, 3), [0.9]),  # several backward programs
]


def _leaves(shape, den, dtype, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g).to(dtype)
    d = pack_den(den, shape[2:], dtype=acc_dtype(dtype))
    return w.to(device).requires_grad_(), d.to(device).requires_grad_()


def _check(shape, den, dtype, seed=0):
    w, d = _leaves(shape, den, dtype, seed)
    w_ref, d_ref = (t.detach().cpu().clone().requires_grad_() for t in (w, d))
    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    out = wconv_weight(w, d, backend="triton")
    ref = wconv_weight_ref(w_ref, d_ref)
    assert out.dtype == dtype and out.shape == w.shape
    assert torch.equal(out.cpu(), ref), f"{shape} {dtype}: W~ differs from the reference"
    out.backward(g.to(DEVICE))
    ref.backward(g)
    assert torch.equal(w.grad.cpu(), w_ref.grad), f"{shape} {dtype}: dW differs"
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(d.grad.cpu(), d_ref.grad, rtol=tol, atol=tol * shape[0] * shape[1] * 10)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(dtype):
    for i, (shape, den) in enumerate(CASES):
        _check(shape, den, dtype, seed=i)


def test_only_one_gradient_and_formula():
    w, d = _leaves((4, 3, 3, 5), [[0.4], [0.2, 0.9]], torch.float32)
    g = torch.randn(4, 3, 3, 5, device=DEVICE)
    gw, gd = torch.ops.pyfast.wconv_weight_bwd_triton(g, None, d.detach(), True, False)
    assert gd.shape == (0,)
    assert torch.equal(gw, wconv_weight_ref(g, d.detach()))
    gw, gd = torch.ops.pyfast.wconv_weight_bwd_triton(g, w.detach(), d.detach(), False, True)
    assert gw.shape == (0,)
    torch.testing.assert_close(gd.cpu(), wconv_den_grad_ref(g.cpu(), w.detach().cpu(), d.detach().cpu()).float(),
                               rtol=1e-5, atol=1e-5)


def test_convolution_through_triton_weight():
    x = torch.randn(2, 3, 7, 6, device=DEVICE)
    w, d = _leaves((4, 3, 3, 5), [[0.4], [0.2, 0.9]], torch.float32)
    y = wconv(x, w, d, padding="same", backend="triton")
    torch.testing.assert_close(y, wconv_ref(x, w, d, padding="same"))


@pytest.mark.skipif(not _extension.has_cpp(), reason="needs the C++ extension pyfast._C")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_cpp_op(dtype):
    for i, (shape, den) in enumerate(CASES):
        w, d = _leaves(shape, den, dtype, seed=10 + i)
        w, d = w.detach(), d.detach()
        g = torch.randn(shape).to(dtype)
        assert torch.equal(torch.ops.pyfast.wconv_weight_fwd_triton(w, d).cpu(),
                           torch.ops.pyfast.wconv_weight_fwd(w.cpu(), d.cpu()))
        tri = torch.ops.pyfast.wconv_weight_bwd_triton(g.to(DEVICE), w, d, True, True)
        cpp = torch.ops.pyfast.wconv_weight_bwd(g, w.cpu(), d.cpu(), True, True)
        assert torch.equal(tri[0].cpu(), cpp[0])
        torch.testing.assert_close(tri[1].cpu(), cpp[1], rtol=1e-5, atol=1e-5 * shape[0] * shape[1])


def test_opcheck():
    w, d = _leaves((4, 3, 3, 5), [[0.4], [0.2, 0.9]], torch.float32)
    torch.library.opcheck(torch.ops.pyfast.wconv_weight_fwd_triton.default, (w, d))
    g = torch.randn(4, 3, 3, 5, device=DEVICE)
    for need in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.pyfast.wconv_weight_bwd_triton.default, (g, w.detach(), d.detach(), *need))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    w, d = _leaves((4, 3, 3, 3), [0.7], torch.float32)
    compiled = torch.compile(lambda w, d: (wconv_weight(w, d, backend="triton") ** 2).sum(), fullgraph=True,
                             backend="aot_eager")
    compiled(w, d).backward()
    w2, d2 = (t.detach().clone().requires_grad_() for t in (w, d))
    (wconv_weight_ref(w2, d2) ** 2).sum().backward()
    torch.testing.assert_close(w.grad, w2.grad)
    torch.testing.assert_close(d.grad, d2.grad)


@pytest.mark.skipif(not _extension.has_cpp(), reason="needs the C++ extension pyfast._C (the C++ schemas)")
@pytest.mark.parametrize("name", ["wconv_weight_fwd", "wconv_weight_bwd"])
def test_schema_matches_cpp_op(name):
    assert_triton_schema_matches(name)


def test_launcher_rejects_bad_arguments():
    from pyfast._triton import wconv as kernels

    w = torch.zeros(2, 2, 3, 3)
    with pytest.raises(TypeError, match="x must be one of float32"):
        kernels.wconv_scale(w.int(), torch.ones(1), torch.empty(2, 2, 3, 3))
    with pytest.raises(ValueError, match="x must be a contiguous tensor"):
        kernels.wconv_scale(w.transpose(2, 3), torch.ones(1), torch.empty(2, 2, 3, 3))
    with pytest.raises(TypeError, match="den must be one of float32/float64, got"):
        kernels.wconv_scale(w, torch.ones(1, dtype=torch.float16), torch.empty(2, 2, 3, 3))
    with pytest.raises(ValueError, match="weight is required for grad_den"):
        torch.ops.pyfast.wconv_weight_bwd_triton(w, None, torch.ones(1), True, True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or _extension.triton_interpret(),
                    reason="needs a CUDA GPU (and TRITON_INTERPRET unset)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_larger(dtype):
    for i, (shape, den) in enumerate([((512, 512, 3, 3), [0.7]), ((128, 64, 7, 7), [0.25, 0.15, 0.55]),
                                      ((64, 32, 3, 5, 7), [[0.5], [0.2, 0.8], [0.25, 0.15, 0.55]])]):
        w, d = _leaves(shape, den, dtype, seed=20 + i)
        ref_w, ref_d = (t.detach().clone().requires_grad_() for t in (w, d))
        out = wconv_weight(w, d, backend="triton")
        ref = wconv_weight_ref(ref_w, ref_d)
        torch.testing.assert_close(out, ref)
        g = torch.randn(shape, device="cuda").to(dtype)
        out.backward(g)
        ref.backward(g)
        torch.testing.assert_close(w.grad, ref_w.grad)
        torch.testing.assert_close(d.grad, ref_d.grad, rtol=1e-4, atol=1e-4 * shape[0] * shape[1])
        if _extension.has_cuda():
            assert torch.equal(out, wconv_weight(w.detach(), d.detach(), backend="cuda"))
