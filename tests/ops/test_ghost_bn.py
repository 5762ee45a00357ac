"""Ghost batch norm: reference invariants (tier 1), the C++ CPU op against the reference (tier 2), the modules,
CUDA (tier 4). The Triton twin (tier 3) is tested in test_ghost_bn_triton.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyfast
from pyfast import _extension
from pyfast._dtypes import acc_dtype
from pyfast.ops.ghost_bn import ghost_batch_norm
from pyfast.reference.ghost_bn import ghost_batch_norm_loop_ref, ghost_batch_norm_ref, running_update
from pyfast.testing import named
from tests.markers import needs_cpp

BACKENDS = ["reference", pytest.param("cpp", marks=needs_cpp)]
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# (x shape, ghost batch size): divisible, remainder ghost, B >= N (one ghost), [N, C], [N, C, L], big spatial maps
# (several channel blocks), a channel with |mean| >> std.
CASES = [((8, 3, 5, 4), 4), ((10, 4, 3, 3), 4), ((6, 5, 2, 2), 16), ((37, 7), 8), ((9, 6, 11), 3),
         ((4, 3, 70, 70), 2), ((12, 40, 4, 4), 5)]
IDS = ["x".join(map(str, s)) + f"-B{b}" for s, b in CASES]


def _inputs(shape, dtype=torch.float32, seed=0, affine=True):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2
         + torch.randn((1, c) + (1,) * (len(shape) - 2), generator=g, dtype=torch.float64) * 3).to(dtype)
    acc = acc_dtype(dtype)
    w = (1 + 0.3 * torch.randn(c, generator=g, dtype=torch.float64)).to(acc) if affine else None
    b = (0.2 * torch.randn(c, generator=g, dtype=torch.float64)).to(acc) if affine else None
    rm = torch.randn(c, generator=g, dtype=torch.float64).to(acc)
    rv = (0.5 + torch.rand(c, generator=g, dtype=torch.float64)).to(acc)
    return x, w, b, rm, rv


# --------------------------------------------------------------------------------------------------------------
# Tier 1: the reference
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_ghost_equals_batchnorm2d(backend):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5, momentum=0.2)
    gbn = pyfast.nn.GhostBatchNorm2d(5, ghost_batch_size=16, momentum=0.2, backend=backend)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    gbn.load_state_dict(bn.state_dict())
    x = torch.randn(16, 5, 6, 7) * 2 + 1
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = bn(x1), gbn(x2)
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gbn.weight.grad, bn.weight.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gbn.bias.grad, bn.bias.grad, rtol=1e-5, atol=1e-4)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(gbn, name), getattr(bn, name), rtol=1e-6, atol=1e-6, msg=named(name))
    bn.eval()
    gbn.eval()
    torch.testing.assert_close(gbn(x), bn(x))  # eval: the running statistics, plain batch norm


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_vectorised_equals_per_chunk_loop(backend, case):
    shape, ghost = CASES[case]
    x, w, b, rm, rv = _inputs(shape, torch.float64, seed=case)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    ws = [w.clone().requires_grad_() for _ in range(2)]
    bs = [b.clone().requires_grad_() for _ in range(2)]
    rms, rvs = [rm.clone(), rm.clone()], [rv.clone(), rv.clone()]
    y_loop = ghost_batch_norm_loop_ref(xs[0], rms[0], rvs[0], ws[0], bs[0], ghost, 0.1, 1e-5)
    y = ghost_batch_norm(xs[1], rms[1], rvs[1], ws[1], bs[1], True, 0.1, 1e-5, ghost, backend=backend)
    torch.testing.assert_close(y, y_loop, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rms[1], rms[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rvs[1], rvs[0], rtol=1e-12, atol=1e-12)
    g = torch.randn(shape, dtype=torch.float64)
    y_loop.backward(g)
    y.backward(g)
    for name, a, ref in (("x", xs[1], xs[0]), ("weight", ws[1], ws[0]), ("bias", bs[1], bs[0])):
        torch.testing.assert_close(a.grad, ref.grad, rtol=1e-9, atol=1e-9, msg=named(name))


def test_closed_form_running_update_is_the_ema_loop():
    r0 = torch.randn(4, dtype=torch.float64)
    stats = torch.randn(5, 4, dtype=torch.float64)
    r = r0.clone()
    for s in stats:
        r = 0.7 * r + 0.3 * s
    torch.testing.assert_close(running_update(r0, stats, 0.3), r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    x, w, b, _, _ = _inputs((7, 3, 2, 3), torch.float64, seed=3)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    fn = lambda x, w, b: ghost_batch_norm(x, None, None, w, b, True, 0.1, 1e-5, 3, backend=backend)
    assert torch.autograd.gradcheck(fn, leaves)
    fn_noaffine = lambda x: ghost_batch_norm(x, None, None, None, None, True, 0.1, 1e-5, 4, backend=backend)
    assert torch.autograd.gradcheck(fn_noaffine, (leaves[0],))


# --------------------------------------------------------------------------------------------------------------
# Tier 2: the C++ op against the reference
# --------------------------------------------------------------------------------------------------------------


def _compare(backend, shape, ghost, dtype, seed=0, device="cpu", affine=True):
    x, w, b, rm, rv = _inputs(shape, dtype, seed, affine)
    ref_leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    leaves = [t.clone().to(device).requires_grad_() if t is not None else None for t in (x, w, b)]
    rm_d, rv_d = rm.clone().to(device), rv.clone().to(device)
    y = ghost_batch_norm(leaves[0], rm_d, rv_d, leaves[1], leaves[2], True, 0.1, 1e-5, ghost, backend=backend)
    y_ref, new_rm, new_rv = ghost_batch_norm_ref(ref_leaves[0], rm, rv, ref_leaves[1], ref_leaves[2], ghost, 0.1,
                                                 1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    y.backward(g.to(device))
    y_ref.backward(g)
    tol = {torch.float64: 1e-10, torch.float32: 2e-5}.get(dtype, 2e-2 if dtype == torch.float16 else 8e-2)
    torch.testing.assert_close(y.cpu().double(), y_ref.double(), rtol=tol, atol=tol)
    torch.testing.assert_close(rm_d.cpu(), new_rm, rtol=tol, atol=tol)
    torch.testing.assert_close(rv_d.cpu(), new_rv, rtol=tol, atol=tol)
    torch.testing.assert_close(leaves[0].grad.cpu().double(), ref_leaves[0].grad.double(), rtol=tol, atol=tol * 10)
    if affine:
        n = x.numel() // x.shape[1]
        torch.testing.assert_close(leaves[1].grad.cpu(), ref_leaves[1].grad, rtol=tol, atol=tol * n)
        torch.testing.assert_close(leaves[2].grad.cpu(), ref_leaves[2].grad, rtol=tol, atol=tol * n)


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_cpp_matches_reference(case, dtype):
    shape, ghost = CASES[case]
    _compare("cpp", shape, ghost, dtype, seed=case)


@needs_cpp
def test_cpp_no_affine_and_non_contiguous():
    _compare("cpp", (10, 4, 3, 3), 4, torch.float32, affine=False)
    x = (torch.randn(6, 5, 4, 8) * 3).permute(0, 1, 3, 2)
    assert not x.is_contiguous()
    y = ghost_batch_norm(x, None, None, None, None, True, 0.1, 1e-5, 4, backend="cpp")
    y_ref, _, _ = ghost_batch_norm_ref(x, None, None, None, None, 4, 0.1, 1e-5)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    x_cl = torch.randn(8, 3, 5, 5).to(memory_format=torch.channels_last)
    y = ghost_batch_norm(x_cl, None, None, None, None, True, 0.1, 1e-5, 4, backend="cpp")
    torch.testing.assert_close(y, ghost_batch_norm_ref(x_cl, None, None, None, None, 4, 0.1, 1e-5)[0], rtol=1e-5,
                               atol=1e-5)


@needs_cpp
def test_cpp_large_mean_is_accurate():
    # One-pass variance shifted by the ghost's first value: |mean| = 1e4 with std 1 keeps float32 accuracy.
    x = torch.randn(32, 3, 8, 8, dtype=torch.float64) + 1e4
    y = ghost_batch_norm(x.float(), None, None, None, None, True, 0.1, 1e-5, 8, backend="cpp")
    y_ref, _, _ = ghost_batch_norm_ref(x, None, None, None, None, 8, 0.1, 1e-5)
    torch.testing.assert_close(y.double(), y_ref, rtol=0, atol=5e-3)


@needs_cpp
def test_cpp_running_update_repeated_and_in_half_buffers():
    # Float32 and float16 running buffers (the update runs in float32 and rounds into float16) over calls that reuse
    # the cached EMA weights (same ghost counts) and one that needs new ones (a remainder ghost).
    x, w, b, rm, rv = _inputs((10, 4, 3, 3), torch.float32)
    bufs = {torch.float32: (rm.clone(), rv.clone()), torch.float16: (rm.half(), rv.half())}
    ref_m, ref_v = rm.clone(), rv.clone()
    for n in (10, 10, 7):
        for run_m, run_v in bufs.values():
            ghost_batch_norm(x[:n], run_m, run_v, w, b, True, 0.2, 1e-5, 4, backend="cpp")
        _, ref_m, ref_v = ghost_batch_norm_ref(x[:n], ref_m, ref_v, w, b, 4, 0.2, 1e-5)
        for dtype, (run_m, run_v) in bufs.items():
            tol = 2e-5 if dtype == torch.float32 else 2e-3
            assert run_m.dtype == dtype and run_v.dtype == dtype
            torch.testing.assert_close(run_m.float(), ref_m, rtol=tol, atol=tol)
            torch.testing.assert_close(run_v.float(), ref_v, rtol=tol, atol=tol)


@needs_cpp
def test_opcheck():
    x, w, b, _, _ = _inputs((10, 4, 3, 3), torch.float32)
    torch.library.opcheck(torch.ops.pyfast.ghost_bn_fwd.default, (x, w, b, 4, 1e-5))
    torch.library.opcheck(torch.ops.pyfast.ghost_bn_fwd.default, (x.requires_grad_(), None, None, 3, 1e-5))
    _, mean, _, inv = torch.ops.pyfast.ghost_bn_fwd(x.detach(), w, b, 4, 1e-5)
    g = torch.randn_like(x)
    for need in ((True, True, True), (True, False, False), (False, True, True)):
        torch.library.opcheck(torch.ops.pyfast.ghost_bn_bwd.default, (g, x.detach(), mean, inv, w, 4, *need))


@needs_cpp
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_module(compile_backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    gbn = pyfast.nn.GhostBatchNorm2d(4, ghost_batch_size=3, backend="cpp")
    ref = pyfast.nn.GhostBatchNorm2d(4, ghost_batch_size=3, backend="reference")
    ref.load_state_dict(gbn.state_dict())
    x = torch.randn(10, 4, 5, 5)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    compiled = torch.compile(lambda v: gbn(v).square().sum(), fullgraph=True, backend=compile_backend)
    compiled(x1).backward()
    ref(x2).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(gbn, name), getattr(ref, name), msg=named(name))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_errors(backend):
    x = torch.randn(8, 3, 4, 4)
    c = torch.zeros(3)
    call = lambda *a, **k: ghost_batch_norm(*a, backend=backend, **k)
    with pytest.raises(TypeError, match="x must be float32"):
        call(x.int(), c, c.clone(), training=True)
    with pytest.raises(ValueError, match=r"x must be \[N, C, \*\]"):
        call(torch.randn(5), None, None, training=True)
    with pytest.raises(ValueError, match="x must not be empty"):
        call(torch.randn(0, 3, 2, 2), None, None, training=True)
    with pytest.raises(ValueError, match="running_mean must have shape"):
        call(x, torch.zeros(4), torch.ones(4), training=True)
    with pytest.raises(ValueError, match="both be given or both be None"):
        call(x, c, None, training=True)
    with pytest.raises(ValueError, match="ghost_batch_size must be an int >= 1"):
        call(x, None, None, training=True, ghost_batch_size=0)
    with pytest.raises(ValueError, match="momentum must be a finite number"):
        call(x, None, None, training=True, momentum=float("nan"))
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        call(x, None, None, training=True, eps=float("inf"))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        call(torch.randn(9, 3), None, None, training=True, ghost_batch_size=4)  # remainder ghost of 1 sample
    with pytest.raises(ValueError, match="momentum=None"):
        pyfast.nn.GhostBatchNorm2d(3, momentum=None)


@needs_cpp
def test_direct_op_bad_input_errors():
    with pytest.raises(ValueError, match="ghost_batch_size must be >= 1"):
        torch.ops.pyfast.ghost_bn_fwd(torch.randn(4, 3), None, None, 0, 1e-5)
    with pytest.raises(ValueError, match="weight must have shape"):
        torch.ops.pyfast.ghost_bn_fwd(torch.randn(4, 3), torch.ones(2), None, 2, 1e-5)


# --------------------------------------------------------------------------------------------------------------
# The modules
# --------------------------------------------------------------------------------------------------------------


def test_modules_are_drop_in_and_state_dict_compatible():
    bn = nn.BatchNorm1d(6)
    gbn = pyfast.nn.GhostBatchNorm1d(6, ghost_batch_size=4)
    assert isinstance(gbn, nn.BatchNorm1d)
    assert set(gbn.state_dict()) == set(bn.state_dict())
    gbn.load_state_dict(bn.state_dict())
    bn.load_state_dict(gbn.state_dict())
    assert "ghost_batch_size=4" in repr(gbn)
    x = torch.randn(10, 6, 3)
    gbn(x)  # ghosts of 4, 4 and 2 samples: three running-statistics updates
    assert gbn.num_batches_tracked.item() == 3
    gbn.eval()
    torch.testing.assert_close(gbn(x), F.batch_norm(x, gbn.running_mean, gbn.running_var, gbn.weight, gbn.bias))


def test_no_running_stats_uses_ghost_stats_in_eval():
    gbn = pyfast.nn.GhostBatchNorm2d(3, ghost_batch_size=2, track_running_stats=False, affine=False).eval()
    x = torch.randn(4, 3, 2, 2)
    y_ref, _, _ = ghost_batch_norm_ref(x, None, None, None, None, 2, 0.1, 1e-5)
    torch.testing.assert_close(gbn(x), y_ref)


def test_convert_to_ghost_bn_keeps_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5),
                          nn.BatchNorm1d(5))
    model(torch.randn(8, 3, 8, 8))  # move the running statistics
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pyfast.convert.convert_to_ghost_bn(model, 4)
    assert isinstance(model[1], pyfast.nn.GhostBatchNorm2d) and isinstance(model[5], pyfast.nn.GhostBatchNorm1d)
    assert model[1].ghost_batch_size == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


# --------------------------------------------------------------------------------------------------------------
# Tier 4: CUDA
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not _extension.has_cuda(), reason=f"needs the CUDA kernels: {_extension.cuda_reason()}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_reference(dtype):
    for i, (shape, ghost) in enumerate(CASES):
        _compare("cuda", shape, ghost, dtype, seed=i, device="cuda")
    _compare("cuda", (256, 64, 16, 16), 32, dtype, seed=9, device="cuda")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_eval_takes_statistics_of_another_dtype(dtype):
    # A float32 module applied to float64 data: F.batch_norm refused the mixed dtypes with a RuntimeError (found by
    # the fuzz tier); the statistics and affine parameters are used in x's arithmetic dtype.
    x = torch.randn(4, 3, 5, dtype=torch.float64).to(dtype)
    mean, var, w, b = torch.randn(3), torch.rand(3) + 0.5, torch.randn(3), torch.randn(3)
    y = ghost_batch_norm(x, mean, var, w, b, False, 0.1, 1e-5, 2)
    expected = torch.nn.functional.batch_norm(x.double(), mean.double(), var.double(), w.double(), b.double(), False,
                                              0.0, 1e-5)
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), expected, rtol=1e-2 if dtype != torch.float64 else 1e-7,
                               atol=1e-2 if dtype != torch.float64 else 1e-7)
