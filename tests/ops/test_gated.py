"""Tiers 1, 2 and 4 of the gated ops: the reference (gradcheck, b_k invariance), the C++ CPU kernels against it
(fp64/fp32 parity of y, attn and every gradient, half precision, odd shapes, opcheck, torch.compile), gradient
routing (values, the routing invariant, the compensation formula) and bad input. CUDA tests are marked ``cuda``."""

import os
import subprocess
import sys

import pytest
import torch

from pyfast.ops.gated import gate_compensation, gated_class_attention, gated_route_
from pyfast.reference.gated import gated_class_attention_ref, gated_route_ref
from pyfast.testing import assert_half_error_within, named
from tests.markers import needs_cpp, needs_cuda

NAMES = ("x", "gate", "wq", "bq", "wk", "wv", "bv", "wp", "bp")


def make_args(B, N1, C, H, dtype=torch.float64, bias=True, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N1, C, generator=g, dtype=torch.float64)
    gate = torch.sigmoid(3 * torch.randn(C, generator=g, dtype=torch.float64))
    ws = [torch.randn(C, C, generator=g, dtype=torch.float64) * C**-0.5 * 2 for _ in range(4)]
    bs = [torch.randn(C, generator=g, dtype=torch.float64) * 0.3 if bias else None for _ in range(3)]
    ts = [x, gate, ws[0], bs[0], ws[1], ws[2], bs[1], ws[3], bs[2]]
    ts = [None if t is None else t.to(device=device, dtype=dtype).requires_grad_() for t in ts]
    return (*ts, H)


def grads_of(y, args, gy):
    leaves = [t for t in args[:-1] if t is not None]
    return dict(zip([n for n, t in zip(NAMES, args) if t is not None],
                    torch.autograd.grad(y, leaves, gy)))


SHAPES = [(3, 7, 12, 3), (2, 1, 8, 2), (1, 65, 48, 12), (4, 5, 20, 1), (2, 33, 40, 5)]


# ---------------------------------------------------------------------------------------------------------------
# Tier 1: the reference
# ---------------------------------------------------------------------------------------------------------------


def test_reference_gradcheck():
    args = make_args(2, 5, 8, 2)
    fn = lambda *a: gated_class_attention_ref(*a, 2)[0]
    assert torch.autograd.gradcheck(fn, args[:-1])


def test_reference_key_bias_cancels_and_closed_gate_blocks_everything():
    args = make_args(2, 5, 8, 2)
    bk = torch.randn(8, dtype=torch.float64)
    y0, a0 = gated_class_attention_ref(*args)
    y1, a1 = gated_class_attention_ref(*args, bk=bk)
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(a1, a0)
    closed = list(args)
    closed[1] = torch.zeros(8, dtype=torch.float64)
    y, attn = gated_class_attention_ref(*closed)
    assert torch.equal(y, torch.zeros_like(y))  # the output gate is shut
    torch.testing.assert_close(attn, torch.full_like(attn, 1 / 5))  # no query/key signal: uniform attention


# ---------------------------------------------------------------------------------------------------------------
# Tier 2: C++ against the reference
# ---------------------------------------------------------------------------------------------------------------


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cpp_matches_reference(shape, bias, dtype):
    args = make_args(*shape, dtype=dtype, bias=bias, seed=sum(shape))
    ref_args = tuple(t.detach().clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in args)
    y, attn = gated_class_attention(*args, return_attn=True, backend="cpp")
    y_ref, attn_ref = gated_class_attention_ref(*ref_args)
    assert y.dtype == dtype and attn.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(attn, attn_ref, rtol=tol, atol=tol)
    gy = torch.randn_like(y)
    got, want = grads_of(y, args, gy), grads_of(y_ref, ref_args, gy)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=tol * 10, atol=tol * 10, msg=named(name))


@needs_cpp
def test_cpp_gradcheck():
    args = make_args(2, 4, 6, 3)
    fn = lambda *a: torch.ops.pyfast.gated_cattn_fwd(*a, 3)[0]
    assert torch.autograd.gradcheck(fn, args[:-1])


@needs_cpp
def test_cpp_non_contiguous_input():
    args = list(make_args(3, 6, 16, 4))
    x = torch.randn(6, 3, 16, dtype=torch.float64).transpose(0, 1).requires_grad_()  # [3, 6, 16], not contiguous
    args[0] = x
    y = gated_class_attention(*args, backend="cpp")
    torch.testing.assert_close(y, gated_class_attention_ref(*args)[0], rtol=1e-12, atol=1e-12)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cpp_half_error_within_twice_eager(dtype):
    args64 = make_args(4, 17, 32, 4, seed=3)
    args_h = tuple(t.detach().to(dtype).requires_grad_() if isinstance(t, torch.Tensor) else t for args in [args64]
                   for t in args)
    truth = gated_class_attention_ref(*args64)[0]
    eager = gated_class_attention_ref(*args_h)[0]
    y = gated_class_attention(*args_h, backend="cpp")
    assert y.dtype == dtype
    assert_half_error_within(y, truth, eager, "y")
    gy = torch.randn_like(truth)
    g_truth = grads_of(truth, args64, gy)
    g_eager, g_got = grads_of(eager, args_h, gy.to(dtype)), grads_of(y, args_h, gy.to(dtype))
    for name in g_truth:
        assert g_got[name].dtype == dtype
        assert_half_error_within(g_got[name], g_truth[name], g_eager[name], name)


@needs_cpp
def test_cpp_baseline_and_avx2_builds_agree():
    # The AVX2 clone is chosen at run time; PYFAST_CPU_BASELINE=1 (read once per process) forces the baseline loops.
    code = ("import torch, sys; sys.path.insert(0, '.'); from tests.ops.test_gated import make_args; "
            "import pyfast; a = make_args(3, 9, 40, 5, dtype=torch.float32); "
            "y = torch.ops.pyfast.gated_cattn_fwd(*a)[0]; y.sum().backward(); "
            "torch.save([y.detach(), a[0].grad, a[1].grad], sys.argv[1])")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    outs = []
    for i, env in enumerate(({}, {"PYFAST_CPU_BASELINE": "1"})):
        path = os.path.join(root, f".gated_build_{os.getpid()}_{i}.pt")
        subprocess.run([sys.executable, "-c", code, path], check=True, cwd=root,
                       env={**os.environ, "PYTHONPATH": root, **env})
        outs.append(torch.load(path))
        os.remove(path)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@needs_cpp
def test_opcheck():
    args = make_args(2, 5, 8, 2, dtype=torch.float32)
    torch.library.opcheck(torch.ops.pyfast.gated_cattn_fwd, args)
    nobias = make_args(2, 5, 8, 2, dtype=torch.float32, bias=False)
    torch.library.opcheck(torch.ops.pyfast.gated_cattn_fwd, nobias)
    y, attn = torch.ops.pyfast.gated_cattn_fwd(*args)
    plain = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in args)
    torch.library.opcheck(torch.ops.pyfast.gated_cattn_bwd, (torch.randn_like(y), *plain[:-1], attn.detach(), 2))
    grads, mo, mi = [torch.randn(4, 3), torch.randn(4)], [torch.rand(4), torch.rand(4)], [torch.rand(3), torch.empty(0)]
    torch.library.opcheck(torch.ops.pyfast.gated_route,
                          (grads, mo, mi, [torch.randn(5)], [torch.randn(5)], 10.0, 800.0, 50.0))


@needs_cpp
def test_torch_compile_fullgraph():
    args = make_args(2, 5, 8, 2, dtype=torch.float32)

    def step(*a):
        return gated_class_attention(*a, backend="cpp").square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(*args)
    got = torch.autograd.grad(loss, [args[0], args[1]])
    ref = torch.autograd.grad(step(*args), [args[0], args[1]])
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)

    def route(g, mo, mi, eg, e):
        gated_route_([g], [mo], [mi], [eg], [e], s=2.0, s_max=800.0, backend="cpp")
        return g, eg

    g, eg = torch.randn(4, 3), torch.randn(5)
    e, mo, mi = torch.randn(5), torch.rand(4), torch.rand(3)
    want = gated_route_ref([g], [mo], [mi], [eg], [e], 2.0, 800.0)
    out = torch.compile(route, fullgraph=True)(g.clone(), mo, mi, eg.clone(), e)
    torch.testing.assert_close(out[0], want[0][0])
    torch.testing.assert_close(out[1], want[1][0])


# ---------------------------------------------------------------------------------------------------------------
# Gradient routing
# ---------------------------------------------------------------------------------------------------------------


def test_compensation_formula_values():
    e = torch.tensor([0.0, 1.0, -2.0, 6.0], dtype=torch.float64)
    # At e = 0 the factor is s_max / s; at s = s_max = 1 it is exactly 1.
    torch.testing.assert_close(gate_compensation(e[:1], 4.0, 800.0), torch.tensor([200.0], dtype=torch.float64))
    torch.testing.assert_close(gate_compensation(e, 1.0, 1.0), torch.ones(4, dtype=torch.float64))
    # Hand value: s = 2, s_max = 800, e = 1: 400 (cosh 2 + 1) / (cosh 1 + 1).
    want = 400 * (torch.cosh(torch.tensor(2.0, dtype=torch.float64)) + 1) / (torch.cosh(torch.tensor(1.0)) + 1)
    torch.testing.assert_close(gate_compensation(e[1:2], 2.0, 800.0)[0], want.double())
    # s e beyond the clamp is clamped to +-50: at s = 800, e = 6 -> cosh(50).
    big = gate_compensation(e[3:], 800.0, 800.0)[0]
    torch.testing.assert_close(big, (torch.cosh(torch.tensor(50.0, dtype=torch.float64)) + 1)
                               / (torch.cosh(torch.tensor(6.0, dtype=torch.float64)) + 1))


@pytest.mark.parametrize("name", ["s", "s_max", "clamp"])
def test_compensation_rejects_non_finite_and_tensor_scales_naming_the_function(name):
    """gate_compensation's errors said gated_route_ (the check was shared); numbers and 0-d tensors alike raise."""
    for bad in (float("nan"), float("inf"), 0.0, torch.tensor(2.0), torch.tensor(float("nan"))):
        kwargs = {"s": 2.0, "s_max": 8.0, "clamp": 50.0, name: bad}
        with pytest.raises(ValueError, match=f"^gate_compensation: {name} must be a finite number > 0"):
            gate_compensation(torch.zeros(3), **kwargs)
        with pytest.raises(ValueError, match=f"^gated_route_: {name} must be a finite number > 0"):
            gated_route_([torch.zeros(4)], [torch.ones(4)], [None], **kwargs)


def _route_case(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (6,), (7, 6), (5, 7)]
    grads = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    mo = [torch.rand(s[0], generator=g) for s in shapes]
    mi = [torch.rand(5, generator=g), None, torch.rand(6, generator=g), torch.rand(7, generator=g)]
    embs = [torch.randn(5, generator=g).to(dtype) * 3, torch.randn(7, generator=g).to(dtype)]
    emb_grads = [torch.randn(5, generator=g).to(dtype), torch.randn(7, generator=g).to(dtype)]
    return grads, mo, mi, emb_grads, embs


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=needs_cpp), "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_route_matches_reference(backend, dtype):
    grads, mo, mi, eg, embs = _route_case(dtype)
    want, want_e = gated_route_ref(grads, mo, mi, eg, embs, 3.0, 800.0)
    grads[0] = grads[0].t().contiguous().t()  # a non-contiguous gradient is routed in place too
    gated_route_(grads, mo, mi, eg, embs, s=3.0, s_max=800.0, backend=backend)
    for a, b in zip(grads + eg, want + want_e):
        torch.testing.assert_close(a, b, rtol=1e-6 if dtype != torch.bfloat16 else 1e-2, atol=1e-6)


def test_route_binary_masks_zero_exactly_the_protected_entries():
    g = torch.randn(4, 3)
    mo, mi = torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 1.0])
    before = g.clone()
    gated_route_([g], [mo], [mi], s=1.0, s_max=1.0)
    protected = torch.outer(mo, mi).bool()
    assert torch.equal(g[protected], torch.zeros(int(protected.sum())))
    assert torch.equal(g[~protected], before[~protected])


@pytest.mark.parametrize("fn, match", [
    (lambda: gated_route_([torch.randn(4, 3)], [torch.rand(5)], [torch.rand(3)], s=1.0, s_max=8.0), "mismatched"),
    (lambda: gated_route_([torch.randn(4, 3)], [torch.rand(4)], [torch.rand(2)], s=1.0, s_max=8.0), "mismatched"),
    (lambda: gated_route_([torch.randn(4, 3)], [torch.rand(4)], [None], s=1.0, s_max=8.0), "bias"),
    (lambda: gated_route_([torch.randn(4)], [torch.rand(4)], [None], s=float("nan"), s_max=8.0), "s must"),
    (lambda: gated_route_([torch.randn(4)], [torch.rand(4)], [None], s=1.0, s_max=0.0), "s_max"),
    (lambda: gated_route_([], [], [], [torch.randn(3)], [torch.randn(4)], s=1.0, s_max=8.0), "embs"),
    (lambda: gated_route_([torch.randn(4)], [], [], s=1.0, s_max=8.0), "same length"),
])
def test_route_bad_input(fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=needs_cpp), "reference"])
def test_route_refuses_tensors_that_require_grad_and_routes_gradients(backend):
    """The routing writes in place without an autograd formula. A parameter passed instead of its gradient (a leaf
    that requires grad) was overwritten silently; it raises now, in grad mode and under torch.no_grad, as does a
    non-leaf that requires grad in grad mode. The parameters' .grad, the intended input, are routed."""
    layer = torch.nn.Linear(3, 4)
    mo, mi = torch.ones(4), torch.ones(3)
    weight = layer.weight.detach().clone()
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode), pytest.raises(RuntimeError, match=r"grads\[0\] is a leaf tensor"):
            gated_route_([layer.weight], [mo], [mi], s=1.0, s_max=1.0, backend=backend)
    with pytest.raises(RuntimeError, match=r"emb_grads\[0\] is a leaf tensor that requires grad"):
        gated_route_([], [], [], [torch.zeros(3, requires_grad=True)], [torch.zeros(3)], s=1.0, s_max=1.0,
                     backend=backend)
    assert torch.equal(layer.weight, weight)
    with pytest.raises(RuntimeError, match=r"grads\[0\] requires grad in grad mode"):
        gated_route_([layer.weight * 1], [mo], [mi], s=1.0, s_max=1.0, backend=backend)
    layer(torch.randn(2, 3)).sum().backward()
    gated_route_([layer.weight.grad, layer.bias.grad], [mo, mo], [mi, None], s=1.0, s_max=1.0, backend=backend)
    assert torch.equal(layer.weight.grad, torch.zeros(4, 3)) and torch.equal(layer.bias.grad, torch.zeros(4))


@needs_cpp
def test_route_cpp_direct_call_checks():
    with pytest.raises(ValueError, match="masks_out"):
        torch.ops.pyfast.gated_route([torch.randn(4, 3)], [torch.rand(5)], [torch.rand(3)], [], [], 1.0, 8.0, 50.0)


# ---------------------------------------------------------------------------------------------------------------
# Bad input of the class-attention
# ---------------------------------------------------------------------------------------------------------------


def _bad(i, value):
    args = list(make_args(2, 5, 8, 2, dtype=torch.float32))
    args[i] = value
    return args


@pytest.mark.parametrize("args, exc, match", [
    (_bad(0, torch.randn(2, 8)), ValueError, "x must be"),
    (_bad(0, torch.randn(2, 5, 8).int()), TypeError, "x must be"),
    (_bad(0, torch.randn(2, 0, 8)), ValueError, "x must be"),
    (_bad(1, torch.rand(7)), ValueError, "gate"),
    (_bad(2, torch.randn(8, 7)), ValueError, "wq"),
    (_bad(4, torch.randn(8, 8).long()), TypeError, "wk"),
    (_bad(6, torch.randn(4)), ValueError, "bv"),
    (_bad(9, 3), ValueError, "num_heads"),
    (_bad(9, 0), ValueError, "num_heads"),
    (_bad(7, torch.randn(8, 8, device="meta")), ValueError, "wp is on meta"),
])
def test_cattn_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        gated_class_attention(*args)


@needs_cpp
def test_cattn_cpp_direct_call_checks():
    args = _bad(1, torch.rand(7))
    with pytest.raises(ValueError, match="gate must have shape"):
        torch.ops.pyfast.gated_cattn_fwd(*args)
    with pytest.raises(ValueError, match="num_heads"):
        torch.ops.pyfast.gated_cattn_fwd(*_bad(9, 3))


def test_empty_batch():
    args = make_args(0, 5, 8, 2, dtype=torch.float32)
    y = gated_class_attention(*args)
    assert y.shape == (0, 8)
    y.sum().backward()
    assert torch.equal(args[2].grad, torch.zeros(8, 8))


# ---------------------------------------------------------------------------------------------------------------
# Tier 4: CUDA
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(128, 65, 384, 12), *SHAPES], ids=str)
def test_cuda_matches_reference(shape, dtype):
    args = make_args(*shape, dtype=dtype, seed=1, device="cuda")
    ref_args = tuple(t.detach().cpu().double().requires_grad_() if isinstance(t, torch.Tensor) else t for t in args)
    y, attn = gated_class_attention(*args, return_attn=True, backend="cuda")
    y_ref, attn_ref = gated_class_attention_ref(*ref_args)
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(y.cpu().double(), y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(attn.cpu().double(), attn_ref, rtol=tol, atol=tol)
    gy = torch.randn_like(y_ref)
    got, want = grads_of(y, args, gy.to("cuda", dtype)), grads_of(y_ref, ref_args, gy)
    for name in want:
        scale = want[name].abs().max().item() + 1
        torch.testing.assert_close(got[name].cpu().double(), want[name], rtol=tol * 10, atol=tol * 10 * scale,
                                   msg=named(name))


@pytest.mark.cuda
@needs_cuda
def test_cuda_route_and_opcheck():
    grads, mo, mi, eg, embs = (
        [t.cuda() if t is not None else None for t in ts] for ts in _route_case())
    want, want_e = gated_route_ref([g.cpu() for g in grads], [m.cpu() for m in mo],
                                   [None if m is None else m.cpu() for m in mi], [g.cpu() for g in eg],
                                   [e.cpu() for e in embs], 3.0, 800.0)
    gated_route_(grads, mo, mi, eg, embs, s=3.0, s_max=800.0, backend="cuda")
    for a, b in zip(grads + eg, want + want_e):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5)
    args = make_args(2, 5, 8, 2, dtype=torch.float32, device="cuda")
    torch.library.opcheck(torch.ops.pyfast.gated_cattn_fwd, args)
