"""CRReLU: reference invariants (tier 1), the C++ CPU op against the reference (tier 2), CUDA (tier 4), the module.
The Triton twin (tier 3) is tested in test_crrelu_triton.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import pyfast
from pyfast import _extension
from pyfast._dtypes import acc_dtype
from pyfast.ops.crrelu import crrelu
from pyfast.reference.crrelu import crrelu_ref
from pyfast.testing import assert_half_error_within
from tests.markers import needs_cpp

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# (x shape, eps numel, dim): shared eps, per channel on axis 1 ([N, C, H, W]), channel-last tokens, odd sizes,
# one run longer than a CPU chunk, a channel axis in the middle with inner = 1 rows.
CASES = [
    ((2, 3, 5, 7), 1, 1),
    ((4, 6, 5, 5), 6, 1),
    ((3, 17, 40), 40, -1),
    ((1, 1), 1, 0),
    ((40000,), 1, 0),
    ((2, 3, 130, 129), 3, 1),
    ((300, 9), 9, 1),
]
IDS = [f"{'x'.join(map(str, s))}-C{c}" for s, c, _ in CASES]


def _leaves(shape, c, dtype, seed=0, device="cpu", scale=2.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    acc = acc_dtype(dtype)
    eps = (0.01 + 0.5 * torch.randn(c, generator=g, dtype=torch.float64)).to(acc)
    return x.to(device).requires_grad_(), eps.to(device).requires_grad_()


# --------------------------------------------------------------------------------------------------------------
# Tier 1: the reference
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
def test_eps_zero_is_relu_exactly(backend):
    x = torch.randn(4, 8, 9) * 3
    x[0, 0, :3] = torch.tensor([0.0, -0.0, 1e-30])
    for dtype in DTYPES:
        y = crrelu(x.to(dtype), torch.zeros(1), backend=backend)
        assert torch.equal(y, torch.relu(x.to(dtype))), dtype


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
def test_correction_is_odd(backend):
    x = torch.rand(1000, dtype=torch.float64) * 6
    eps = torch.tensor([0.37], dtype=torch.float64)
    f = lambda v: crrelu(v, eps, backend=backend) - torch.relu(v)
    torch.testing.assert_close(f(-x), -f(x), rtol=1e-12, atol=1e-15)  # relu(x) + c - relu(x) rounds
    torch.testing.assert_close(f(x), 0.37 * x * torch.exp(-x * x / 2), rtol=1e-15, atol=1e-15)


def test_gradient_formula():
    x, eps = _leaves((3, 4, 5), 4, torch.float64)
    g = torch.randn(3, 4, 5, dtype=torch.float64)
    crrelu_ref(x, eps, 1).backward(g)
    e = torch.exp(-x.detach() ** 2 / 2)
    ev = eps.detach().reshape(1, 4, 1)
    torch.testing.assert_close(x.grad, g * ((x.detach() > 0).double() + ev * (1 - x.detach() ** 2) * e))
    torch.testing.assert_close(eps.grad, (g * x.detach() * e).sum(dim=(0, 2)))


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
@pytest.mark.parametrize("case", [0, 1, 2], ids=IDS[:3])
def test_gradcheck_float64(backend, case):
    shape, c, dim = CASES[case]
    x, eps = _leaves(shape, c, torch.float64, seed=case)
    x = (x.detach() + 0.05 * (x.detach().abs() < 0.05).double()).requires_grad_()  # away from the ReLU kink
    assert torch.autograd.gradcheck(lambda x, e: crrelu(x, e, dim, backend=backend), (x, eps))


# --------------------------------------------------------------------------------------------------------------
# Tier 2: the C++ op against the reference
# --------------------------------------------------------------------------------------------------------------


def _compare(backend, shape, c, dim, dtype, seed=0, device="cpu"):
    x, eps = _leaves(shape, c, dtype, seed, device)
    x_ref, eps_ref = (t.detach().cpu().clone().requires_grad_() for t in (x, eps))
    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    y = crrelu(x, eps, dim, backend=backend)
    y_ref = crrelu_ref(x_ref, eps_ref, dim)
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
    y.backward(g.to(device))
    y_ref.backward(g)
    if dtype in (torch.float32, torch.float64):
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(y.cpu(), y_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(x.grad.cpu(), x_ref.grad, rtol=tol, atol=tol)
        n = x.numel() // c
        torch.testing.assert_close(eps.grad.cpu(), eps_ref.grad, rtol=10 * tol, atol=tol * n)
    else:  # half storage: the kernel's error against float64 truth is within 2x the eager reference's
        truth = crrelu_ref(x_ref.detach().double(), eps_ref.detach().double(), dim)
        assert_half_error_within(y.cpu(), truth, y_ref.detach(), f"{backend} {shape} {dtype} y")
        x64, e64 = x_ref.detach().double().requires_grad_(), eps_ref.detach().double().requires_grad_()
        crrelu_ref(x64, e64, dim).backward(g.double())
        assert_half_error_within(x.grad.cpu(), x64.grad, x_ref.grad, f"{backend} {shape} {dtype} dx")
        torch.testing.assert_close(eps.grad.cpu().double(), e64.grad, rtol=1e-2, atol=1e-2 * (x.numel() // c) ** 0.5)


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_cpp_matches_reference(case, dtype):
    shape, c, dim = CASES[case]
    _compare("cpp", shape, c, dim, dtype, seed=case)


@needs_cpp
def test_cpp_baseline_isa_matches(tmp_path):
    # The baseline x86-64 loops (PYFAST_CPU_BASELINE=1, read once per process) against the vector ones.
    script = (
        "import torch, pyfast\n"
        "x = torch.randn(3, 5, 4099, generator=torch.Generator().manual_seed(0)) * 3\n"
        "eps = torch.tensor([0.2, -0.3, 0.7, 0.0, 1.5])\n"
        "y = pyfast.ops.crrelu(x, eps, 1, backend='cpp')\n"
        "gx, ge = torch.ops.pyfast.crrelu_bwd(torch.ones_like(x), x, eps, 1, True, True)\n"
        f"torch.save((y, gx, ge), {str(tmp_path / 'out.pt')!r})\n"
    )
    env = {**os.environ, "PYFAST_CPU_BASELINE": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=os.getcwd())
    y_b, gx_b, ge_b = torch.load(tmp_path / "out.pt")
    x = torch.randn(3, 5, 4099, generator=torch.Generator().manual_seed(0)) * 3
    eps = torch.tensor([0.2, -0.3, 0.7, 0.0, 1.5])
    gx, ge = torch.ops.pyfast.crrelu_bwd(torch.ones_like(x), x, eps, 1, True, True)
    torch.testing.assert_close(y_b, crrelu(x, eps, 1, backend="cpp"), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gx_b, gx, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ge_b, ge, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_b, crrelu_ref(x, eps, 1), rtol=1e-6, atol=1e-7)


@needs_cpp
def test_cpp_non_contiguous_large_and_extreme_values():
    x = (torch.randn(64, 33, 20) * 4).transpose(0, 2)
    assert not x.is_contiguous()
    eps = torch.tensor([0.05])
    torch.testing.assert_close(crrelu(x, eps, backend="cpp"), crrelu_ref(x, eps), rtol=1e-6, atol=1e-6)
    special = torch.tensor([0.0, -0.0, 1e-20, -1e-20, 12.0, -12.0, 14.0, -14.0, 30.0, -30.0, 1e30, -1e30,
                            float("inf"), float("-inf"), float("nan")])
    y = crrelu(special, eps, backend="cpp")
    y_ref = crrelu_ref(special, eps)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-30, equal_nan=True)


# Where x^2 overflows (float32 past 1.8e19, float64 past 1.3e154) e(x) = exp(-x^2/2) is long 0: the gradient's
# correction eps (1 - x^2) e(x) must take its limit 0 (grad 1 for x > 0, 0 for x < 0; d eps 0), as autograd of the
# reference gives, not (1 - inf) * 0 = NaN. At +-inf the reference itself is NaN (inf * 0 in x e(x)): so are the
# kernels.
HUGE = (1e19, 1e30, 3e38, 1e155, 1e300)


def check_huge_inputs_match_reference(backend, dtype, device="cpu"):
    """Forward, d x and d eps of ``backend`` at +-HUGE (those finite in dtype), then with +-inf added, against the
    reference's values (NaN where it has NaN)."""
    finite = torch.tensor([v for v in HUGE if v <= torch.finfo(dtype).max], dtype=dtype)
    finite = torch.cat([finite, -finite])
    for x0 in (finite, torch.cat([finite, torch.tensor([float("inf"), float("-inf")], dtype=dtype)])):
        x, x_ref = x0.to(device, copy=True).requires_grad_(), x0.clone().requires_grad_()
        eps, eps_ref = torch.tensor([0.3], dtype=dtype, device=device).requires_grad_(), x0.new_tensor([0.3])
        eps_ref.requires_grad_()
        y, y_ref = crrelu(x, eps, backend=backend), crrelu_ref(x_ref, eps_ref)
        y.backward(torch.ones_like(y))
        y_ref.backward(torch.ones_like(y_ref))
        for name, got, want in (("y", y, y_ref), ("dx", x.grad, x_ref.grad), ("deps", eps.grad, eps_ref.grad)):
            torch.testing.assert_close(got.detach().cpu(), want, rtol=0, atol=0, equal_nan=True,
                                       msg=lambda m, name=name: f"{backend} {dtype} {name}: {m}")
    n = len(finite)  # the finite rows' limits, stated: y = relu(x), d x = 1[x > 0], d eps = 0
    x = finite.to(device, copy=True).requires_grad_()
    eps = torch.tensor([0.3], dtype=dtype, device=device).requires_grad_()
    crrelu(x, eps, backend=backend).sum().backward()
    assert x.grad.cpu().tolist() == [1.0] * (n // 2) + [0.0] * (n // 2) and eps.grad.item() == 0.0


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cpp_huge_inputs_give_the_limits(dtype):
    check_huge_inputs_match_reference("cpp", dtype)


@needs_cpp
def test_cpp_gradient_is_deterministic_and_only_one_requested():
    x = torch.randn(7, 50000) * 2
    eps = torch.tensor([0.3])
    g = torch.randn_like(x)
    gx, ge = torch.ops.pyfast.crrelu_bwd(g, x, eps, 1, True, True)
    torch.set_num_threads(1)
    try:
        _, ge1 = torch.ops.pyfast.crrelu_bwd(g, x, eps, 1, True, True)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    assert torch.equal(ge, ge1)
    gx_only, ge_none = torch.ops.pyfast.crrelu_bwd(g, x, eps, 1, True, False)
    assert ge_none.shape == (0,) and torch.equal(gx_only, gx)
    gx_none, ge_only = torch.ops.pyfast.crrelu_bwd(g, x, eps, 1, False, True)
    assert gx_none.shape == (0,) and torch.equal(ge_only, ge)
    torch.testing.assert_close(ge.double(), (g.double() * x.double() * torch.exp(-x.double() ** 2 / 2)).sum()[None],
                               rtol=1e-5, atol=1e-4)


@needs_cpp
def test_opcheck():
    for shape, c, dim in CASES[:3]:
        x, eps = _leaves(shape, c, torch.float32)
        torch.library.opcheck(torch.ops.pyfast.crrelu_fwd.default, (x, eps, dim))
        g = torch.randn(shape)
        for need in ((True, True), (True, False), (False, True)):
            torch.library.opcheck(torch.ops.pyfast.crrelu_bwd.default, (g, x.detach(), eps.detach(), dim, *need))


@needs_cpp
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_cpu(compile_backend):
    torch._dynamo.reset()
    x, eps = _leaves((4, 6, 5, 5), 6, torch.float32)
    compiled = torch.compile(lambda x, e: (crrelu(x, e, 1, backend="cpp") ** 2).sum(), fullgraph=True,
                             backend=compile_backend)
    compiled(x, eps).backward()
    x2, e2 = (t.detach().clone().requires_grad_() for t in (x, eps))
    (crrelu_ref(x2, e2, 1) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eps.grad, e2.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
def test_bad_input_errors(backend):
    x = torch.randn(2, 3, 4)
    with pytest.raises(TypeError, match="x must be float32"):
        crrelu(x.int(), torch.ones(1), backend=backend)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        crrelu([1.0], torch.ones(1), backend=backend)
    with pytest.raises(ValueError, match="x must not be empty"):
        crrelu(torch.empty(0, 3), torch.ones(1), backend=backend)
    with pytest.raises(TypeError, match="eps must be a torch.Tensor"):
        crrelu(x, 0.1, backend=backend)
    with pytest.raises(TypeError, match="eps must be a floating-point"):
        crrelu(x, torch.ones(1, dtype=torch.int64), backend=backend)
    with pytest.raises(ValueError, match=r"eps must have 1 value or x.size\(dim=1\) = 3"):
        crrelu(x, torch.ones(4), 1, backend=backend)
    with pytest.raises(ValueError, match="dim=5 is out of range"):
        crrelu(x, torch.ones(3), 5, backend=backend)
    with pytest.raises(ValueError, match="eps must be a scalar or 1-D"):
        crrelu(x, torch.ones(1, 3), backend=backend)


@needs_cpp
def test_direct_op_bad_input_errors():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="eps must have 1 or x.size"):
        torch.ops.pyfast.crrelu_fwd(x, torch.ones(5), 1)
    with pytest.raises(TypeError, match="crrelu: x must be"):
        torch.ops.pyfast.crrelu_fwd(x.int(), torch.ones(1), 1)
    with pytest.raises(ValueError, match="grad must have x's shape"):
        torch.ops.pyfast.crrelu_bwd(torch.ones(2), x, torch.ones(1), 1, True, True)


# --------------------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------------------


def test_module_is_gelu_drop_in_and_learns_eps():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), pyfast.nn.CRReLU(), torch.nn.Linear(16, 4))
    act = mlp[1]
    assert act.eps.shape == (1,) and act.eps.item() == pytest.approx(0.01)
    x = torch.randn(5, 7, 8)
    mlp(x).square().sum().backward()
    assert act.eps.grad is not None and act.eps.grad.abs().item() > 0
    h = mlp[0](x)
    torch.testing.assert_close(act(h), crrelu_ref(h, act.eps), rtol=1e-6, atol=1e-6)
    conv_act = pyfast.nn.CRReLU(0.02, per_channel=True, num_channels=6, dim=1)
    y = torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(conv_act(y), crrelu_ref(y, conv_act.eps, 1), rtol=1e-6, atol=1e-6)
    assert "num_eps=6" in repr(conv_act)
    with pytest.raises(ValueError, match="eps_init must be a finite number"):
        pyfast.nn.CRReLU(float("nan"))
    with pytest.raises(ValueError, match="needs num_channels"):
        pyfast.nn.CRReLU(per_channel=True)


# --------------------------------------------------------------------------------------------------------------
# Tier 4: CUDA
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not _extension.has_cuda(), reason=f"needs the CUDA kernels: {_extension.cuda_reason()}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_reference(dtype):
    for i, (shape, c, dim) in enumerate(CASES):
        _compare("cuda", shape, c, dim, dtype, seed=i, device="cuda")
    _compare("cuda", (64, 197, 768), 1, -1, dtype, seed=9, device="cuda")
    _compare("cuda", (64, 197, 768), 768, -1, dtype, seed=9, device="cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not _extension.has_cuda(), reason=f"needs the CUDA kernels: {_extension.cuda_reason()}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cuda_huge_inputs_give_the_limits(dtype):
    check_huge_inputs_match_reference("cuda", dtype, device="cuda")
