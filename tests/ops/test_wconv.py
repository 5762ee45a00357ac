"""Weighted convolution: reference invariants (tier 1), the C++ CPU density-weight op against the reference (tier 2),
CUDA (tier 4). The Triton twin (tier 3) is tested in test_wconv_triton.py, the modules in tests/nn/."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pyfast
from pyfast import _extension
from pyfast._dtypes import acc_dtype
from pyfast.ops.wconv import pack_den, wconv, wconv_weight
from pyfast.reference.wconv import (
    DEFAULT_DEN,
    alpha_ref,
    density_ref,
    wconv_den_grad_ref,
    wconv_ref,
    wconv_weight_ref,
)
from pyfast.testing import TOLERANCES
from tests.markers import needs_cpp

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# (weight shape, den): 1-D, 2-D, 3-D, square with a shared den, square with separate dens, non-square, 1 on an axis.
WEIGHT_CASES = [
    ((4, 3, 5), [0.2, 0.8]),
    ((6, 3, 3, 3), [0.7]),
    ((6, 3, 5, 5), [[0.1, 0.6], [0.3, 0.9]]),
    ((5, 2, 3, 7), [[0.4], [0.25, 0.15, 0.55]]),
    ((3, 4, 1, 5), [[], [0.2, 0.8]]),
    ((2, 3, 3, 3, 3), [0.6]),
    ((2, 2, 3, 5, 1), [[0.5], [0.1, 0.4], []]),
]
CASE_IDS = ["x".join(map(str, s)) for s, _ in WEIGHT_CASES]


def _leaves(shape, den, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    d = pack_den(den, shape[2:], dtype=acc_dtype(dtype))
    return w, d.detach().clone().requires_grad_()


# --------------------------------------------------------------------------------------------------------------
# Tier 1: the reference
# --------------------------------------------------------------------------------------------------------------


def test_density_is_separable_symmetric_with_centre_one():
    den = torch.tensor([0.3, 1.4], dtype=torch.float64)
    alpha = alpha_ref(den)
    assert alpha.tolist() == [0.3, 1.4, 1.0, 1.4, 0.3]
    phi = density_ref(den, (5, 5), torch.float64)
    torch.testing.assert_close(phi, torch.outer(alpha, alpha), rtol=0, atol=0)
    assert phi[2, 2] == 1.0
    torch.testing.assert_close(phi, phi.flip(0))
    torch.testing.assert_close(phi, phi.t())
    cube = density_ref(den, (5, 5, 5), torch.float64)
    torch.testing.assert_close(cube, torch.einsum("i,j,k->ijk", alpha, alpha, alpha))
    # Separate dens per axis on a non-square kernel.
    phi = density_ref(torch.tensor([0.5, 0.2, 0.9], dtype=torch.float64), (3, 5), torch.float64)
    torch.testing.assert_close(phi, torch.outer(alpha_ref(den.new_tensor([0.5])), alpha_ref(den.new_tensor([0.2, 0.9]))))


def test_ones_density_is_plain_convolution_and_1x1_is_identity():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(wconv_ref(x, w, torch.ones(1, dtype=torch.float64), padding=1),
                               F.conv2d(x, w, padding=1))
    w1 = torch.randn(4, 3, 1, 1)
    assert torch.equal(wconv_weight_ref(w1, torch.empty(0)), w1)


def test_den_gradient_formula_matches_autograd():
    for shape, den in WEIGHT_CASES:
        w, d = _leaves(shape, den, torch.float64, seed=1)
        g = torch.randn(shape, dtype=torch.float64)
        (wconv_weight_ref(w, d) * g).sum().backward()
        torch.testing.assert_close(wconv_den_grad_ref(g, w.detach(), d.detach()), d.grad, msg=str(shape))


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
def test_gradcheck_float64_weight_and_den(backend):
    for shape, den in WEIGHT_CASES[:4] + WEIGHT_CASES[5:6]:
        w, d = _leaves(shape, den, torch.float64, seed=2)
        assert torch.autograd.gradcheck(lambda w, d: wconv_weight(w, d, backend=backend), (w, d))
    # Through the convolution: x, W, den and bias.
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    w, d = _leaves((3, 2, 3, 5), [[0.4], [0.3, 0.8]], torch.float64, seed=3)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, d, b: wconv(x, w, d, b, padding="same", backend=backend),
                                    (x, w, d, b))


@needs_cpp
def test_centre_tap_is_fixed_at_one():
    # The centre tap is never scaled and den has no entry for it: W~ there is W, whatever den.
    w = torch.randn(4, 3, 5, 7)
    for den in ([[0.0, 0.0], [0.0, 0.0, 0.0]], [[3.0, 2.0], [0.5, 7.0, 0.1]]):
        wt = wconv_weight(w, den, backend="cpp")
        assert torch.equal(wt[..., 2, 3], w[..., 2, 3])
    # Gradient reaches the other taps only: moving only the centre tap's weight leaves d(den) untouched.
    w, d = _leaves((4, 3, 3, 3), [0.7], torch.float64, seed=4)
    g = torch.zeros(4, 3, 3, 3, dtype=torch.float64)
    g[..., 1, 1] = 1.0
    wconv_weight(w, d, backend="cpp").backward(g)
    assert d.grad.abs().max() == 0


# --------------------------------------------------------------------------------------------------------------
# Tier 2: the C++ op against the reference
# --------------------------------------------------------------------------------------------------------------


def _compare(backend, shape, den, dtype, seed=0):
    w, d = _leaves(shape, den, dtype, seed)
    w_ref, d_ref = _leaves(shape, den, dtype, seed)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    out = wconv_weight(w, d, backend=backend)
    ref = wconv_weight_ref(w_ref, d_ref)
    assert out.dtype == dtype and out.shape == w.shape and out.is_contiguous()
    # Same float32 (float64) arithmetic in the same order: bit-identical.
    assert torch.equal(out, ref), f"{backend} {shape} {dtype}: W~ differs from the reference"
    out.backward(g)
    ref.backward(g)
    assert torch.equal(w.grad, w_ref.grad), f"{backend} {shape} {dtype}: dW differs"
    assert d.grad.dtype == d.dtype and d.grad.shape == d.shape
    # d(den) sums many products in another order: float32 accumulation against the reference's.
    tol = {torch.float64: (1e-10, 1e-10)}.get(dtype, (2e-5, 2e-4))
    torch.testing.assert_close(d.grad, d_ref.grad, rtol=tol[0], atol=tol[1] * shape[0] * shape[1])


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "den"), WEIGHT_CASES, ids=CASE_IDS)
def test_cpp_weight_op_matches_reference(shape, den, dtype):
    _compare("cpp", shape, den, dtype)


@needs_cpp
def test_cpp_large_weight_several_chunks():
    # 512 x 64 x 3 x 3: many tiles and backward chunks (the parallel partial sums of d(den)).
    _compare("cpp", (512, 64, 3, 3), [0.7], torch.float32, seed=5)
    _compare("cpp", (64, 16, 7, 7), [0.25, 0.15, 0.55], torch.float64, seed=6)


@needs_cpp
def test_cpp_non_contiguous_weight_and_only_one_gradient():
    w = torch.randn(3, 3, 4, 6).transpose(0, 1)[..., 1:4, :5]  # [3, 3, 3, 5], non-contiguous
    d = torch.tensor([0.6, 0.2, 0.9])
    assert not w.is_contiguous()
    assert torch.equal(wconv_weight(w, d, backend="cpp"), wconv_weight_ref(w, d))
    g = torch.randn(3, 3, 3, 5)
    gw, gd = torch.ops.pyfast.wconv_weight_bwd(g, None, d, True, False)
    assert gd.shape == (0,)
    assert torch.equal(gw, g * density_ref(d, (3, 5)))
    gw, gd = torch.ops.pyfast.wconv_weight_bwd(g, w, d, False, True)
    assert gw.shape == (0,) and gd.shape == (3,)
    torch.testing.assert_close(gd, wconv_den_grad_ref(g, w, d), rtol=1e-5, atol=1e-5)


CONV_CASES = [  # (x shape, weight shape, den, conv kwargs)
    ((2, 4, 9), (6, 4, 5), [0.2, 0.8], {"padding": 2}),
    ((2, 4, 9), (6, 2, 3), [0.7], {"stride": 2, "groups": 2, "dilation": 2}),
    ((2, 3, 8, 7), (5, 3, 3, 3), [0.7], {"padding": 1, "bias": True}),
    ((2, 3, 9, 8), (4, 3, 3, 3), [0.5], {"stride": 2, "padding": "valid"}),
    ((1, 4, 10, 9), (4, 2, 5, 5), [[0.1, 0.6], [0.3, 0.9]], {"padding": "same", "dilation": (1, 2), "groups": 2}),
    ((2, 6, 8, 8), (6, 1, 3, 3), [0.9], {"padding": 1, "groups": 6, "bias": True}),  # depthwise
    ((2, 3, 9, 11), (4, 3, 3, 5), [[0.4], [0.25, 0.75]], {"padding": "same", "bias": True}),  # non-square
    ((1, 2, 5, 6, 7), (3, 2, 3, 3, 3), [0.6], {"padding": 1, "stride": (1, 2, 2)}),
    ((1, 2, 6, 5, 6), (2, 2, 3, 1, 5), [[0.3], [], [0.2, 0.7]], {"padding": "same", "bias": True}),
    ((3, 7, 7), (2, 3, 3, 3), [0.8], {"padding": 1}),  # unbatched input
]


@needs_cpp
@pytest.mark.parametrize(("x_shape", "w_shape", "den", "kw"), CONV_CASES, ids=[str(i) for i in range(len(CONV_CASES))])
def test_cpp_convolution_matches_reference(x_shape, w_shape, den, kw):
    kw = dict(kw)
    use_bias = kw.pop("bias", False)
    g = torch.Generator().manual_seed(len(x_shape) + w_shape[0])
    tensors = {"x": torch.randn(x_shape, generator=g), "w": torch.randn(w_shape, generator=g)}
    tensors["d"] = pack_den(den, w_shape[2:])
    if use_bias:
        tensors["b"] = torch.randn(w_shape[0], generator=g)
    runs = {}
    for backend in ("reference", "cpp"):
        leaves = {k: v.clone().requires_grad_() for k, v in tensors.items()}
        fn = wconv_ref if backend == "reference" else lambda *a, **k: wconv(*a, backend="cpp", **k)
        y = fn(leaves["x"], leaves["w"], leaves["d"], leaves.get("b"), **kw)
        y.backward(torch.ones_like(y) + 0.1 * torch.arange(y.numel()).reshape(y.shape) % 3)
        runs[backend] = (y, {k: v.grad for k, v in leaves.items()})
    y, grads = runs["cpp"]
    y_ref, grads_ref = runs["reference"]
    assert torch.equal(y, y_ref)
    for k in grads_ref:
        torch.testing.assert_close(grads[k], grads_ref[k], rtol=1e-5, atol=1e-4, msg=k)


@needs_cpp
def test_opcheck():
    w, d = _leaves((4, 3, 3, 5), [[0.4], [0.2, 0.9]], torch.float32)
    torch.library.opcheck(torch.ops.pyfast.wconv_weight_fwd.default, (w, d))
    g = torch.randn(4, 3, 3, 5)
    for need in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.pyfast.wconv_weight_bwd.default, (g, w.detach(), d.detach(), *need))
    w3, d3 = _leaves((2, 2, 3, 3, 3), [0.6], torch.float64)
    torch.library.opcheck(torch.ops.pyfast.wconv_weight_fwd.default, (w3, d3))


@needs_cpp
def test_torch_compile_fullgraph_cpu():
    torch._dynamo.reset()

    def step(x, w, d, b):
        return wconv(x, w, d, b, padding=1, backend="cpp").relu().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 6, 6)
    w, d = _leaves((4, 3, 3, 3), [0.7], torch.float32)
    b = torch.zeros(4, requires_grad=True)
    loss = compiled(x, w, d, b)
    loss.backward()
    w2, d2 = _leaves((4, 3, 3, 3), [0.7], torch.float32)
    ref = wconv_ref(x, w2, d2, b.detach(), padding=1).relu().sum()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(w.grad, w2.grad)
    torch.testing.assert_close(d.grad, d2.grad, rtol=1e-5, atol=1e-4)


@needs_cpp
def test_torch_compile_inductor_cpu():
    torch._dynamo.reset()
    w, d = _leaves((4, 3, 3, 3), [0.7], torch.float32)
    compiled = torch.compile(lambda w, d: (wconv_weight(w, d, backend="cpp") * 2).sum(), fullgraph=True)
    compiled(w, d).backward()
    w2, d2 = _leaves((4, 3, 3, 3), [0.7], torch.float32)
    (wconv_weight_ref(w2, d2) * 2).sum().backward()
    torch.testing.assert_close(w.grad, w2.grad)
    torch.testing.assert_close(d.grad, d2.grad)


# --------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
def test_bad_input_raises_naming_the_argument(backend):
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        wconv_weight(torch.randn(4, 3, 4, 3), [0.5], backend=backend)
    with pytest.raises(ValueError, match=r"den must have sum\(\(K-1\)/2\) = 2 values .* or 1 \(one den shared.*got 3"):
        wconv_weight(w, [0.5, 0.6, 0.7], backend=backend)
    with pytest.raises(ValueError, match=r"den must have sum\(\(K-1\)/2\) = 3 values for kernel \(3, 5\)"):
        wconv_weight(torch.randn(4, 3, 3, 5), [0.5], backend=backend)
    with pytest.raises(ValueError, match=r"den\[1\] must have \(K-1\)/2 = 2 values"):
        wconv_weight(torch.randn(4, 3, 3, 5), [[0.5], [0.2]], backend=backend)
    with pytest.raises(ValueError, match="one entry per kernel axis"):
        wconv_weight(w, [[0.5]], backend=backend)
    with pytest.raises(ValueError, match="den must be >= 0"):
        wconv_weight(w, [-0.5], backend=backend)
    assert wconv_weight(w, [-0.5], allow_negative_den=True, backend=backend).shape == w.shape
    with pytest.raises(ValueError, match="den must be finite"):
        wconv_weight(w, [float("nan")], backend=backend)
    with pytest.raises(ValueError, match="den must be finite"):
        wconv_weight(w, torch.tensor([float("inf")]), allow_negative_den=True, backend=backend)
    with pytest.raises(TypeError, match="weight must be a floating-point tensor"):
        wconv_weight(w.int(), [0.5], backend=backend)
    with pytest.raises(TypeError, match="den must be a floating-point tensor"):
        wconv_weight(w, torch.tensor([1]), backend=backend)
    with pytest.raises(TypeError, match="den must be a tensor or a sequence"):
        wconv_weight(w, 0.5, backend=backend)
    with pytest.raises(ValueError, match="weight must be a conv weight"):
        wconv_weight(torch.randn(4, 3), [], backend=backend)
    with pytest.raises(ValueError, match="den must be 1-D"):
        wconv_weight(w, torch.ones(1, 1), backend=backend)


@needs_cpp
def test_cpp_op_checks_direct_callers():
    d = torch.ones(1)
    with pytest.raises(ValueError, match="kernel size must be odd"):
        torch.ops.pyfast.wconv_weight_fwd(torch.randn(2, 2, 2, 3), d)
    with pytest.raises(ValueError, match="den must have 2 values"):
        torch.ops.pyfast.wconv_weight_fwd(torch.randn(2, 2, 3, 3), torch.ones(3))
    with pytest.raises(TypeError, match="must be a floating dtype"):
        torch.ops.pyfast.wconv_weight_fwd(torch.ones(2, 2, 3, 3, dtype=torch.int32), d)
    with pytest.raises(ValueError, match="weight is required for grad_den"):
        torch.ops.pyfast.wconv_weight_bwd(torch.randn(2, 2, 3, 3), None, d, True, True)
    with pytest.raises(ValueError, match="weight must have grad's shape"):
        torch.ops.pyfast.wconv_weight_bwd(torch.randn(2, 2, 3, 3), torch.randn(2, 3, 3, 3), d, True, True)


def test_empty_weight():
    w = torch.randn(0, 3, 3, 3, requires_grad=True)
    d = torch.tensor([0.5], requires_grad=True)
    for backend in ("reference",) + (("cpp",) if _extension.has_cpp() else ()):
        out = wconv_weight(w, d, backend=backend)
        assert out.shape == w.shape
        out.sum().backward()
        assert d.grad is not None and d.grad.item() == 0


def test_default_den_fits_its_kernel_size():
    for k, den in DEFAULT_DEN.items():
        assert len(den) == (k - 1) // 2 and all(v >= 0 for v in den)


# --------------------------------------------------------------------------------------------------------------
# Tier 4: CUDA
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not _extension.has_cuda(), reason=f"needs the CUDA kernels: {_extension.cuda_reason()}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_reference(dtype):
    for shape, den in WEIGHT_CASES + [((512, 256, 3, 3), [0.7]), ((64, 32, 7, 7), [0.25, 0.15, 0.55])]:
        w, d = _leaves(shape, den, dtype)
        w, d = w.detach().cuda().requires_grad_(), d.detach().cuda().requires_grad_()
        w_ref, d_ref = (t.detach().clone().requires_grad_() for t in (w, d))
        g = torch.randn(shape, device="cuda").to(dtype)
        out = wconv_weight(w, d, backend="cuda")
        ref = wconv_weight_ref(w_ref, d_ref)
        torch.testing.assert_close(out, ref, rtol=TOLERANCES[dtype][0], atol=0)
        out.backward(g)
        ref.backward(g)
        torch.testing.assert_close(w.grad, w_ref.grad, rtol=TOLERANCES[dtype][0], atol=0)
        scale = float(shape[0] * shape[1])
        torch.testing.assert_close(d.grad, d_ref.grad, rtol=1e-4, atol=1e-4 * scale)
    x = torch.randn(8, 16, 32, 32, device="cuda")
    w = torch.randn(32, 16, 3, 3, device="cuda")
    torch.testing.assert_close(wconv(x, w, [0.7], padding=1, backend="cuda"), wconv_ref(x, w, torch.tensor([0.7],
                               device="cuda"), padding=1), rtol=1e-4, atol=1e-4)
    assert pyfast.ops.wconv_weight(w, [0.7]).device.type == "cuda"
