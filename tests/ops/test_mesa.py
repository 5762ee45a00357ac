"""Mesa quantize / dequantize: reference invariants (tier 1), C++ CPU kernels against the reference, bit for bit
(tier 2), opcheck and torch.compile of the primitive and layer ops, bad input, and the CUDA kernels (tier 4).

The Triton twins (tier 3) are tested in test_mesa_triton.py, the layers in tests/nn/test_mesa_modules.py.
"""

from __future__ import annotations

import pytest
import torch

import pyfast
from pyfast import _extension
from pyfast.ops.mesa import mesa_dequantize, mesa_quantize
from pyfast.reference.mesa import hash_uniform, mesa_dequantize_ref, mesa_quantize_ref
from tests.markers import needs_cpp

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# (shape, dim, groups): head-wise [B, H, N, D], channel chunks of [..., C], a 2-D input, odd sizes, one group.
LAYOUTS = [((2, 3, 5, 4), 1, 3), ((3, 7, 12), -1, 4), ((5, 6), -1, 1), ((2, 6, 3, 3), 1, 2), ((1, 1, 1), 0, 1)]


def _state(groups, init=False, device="cpu", clip=None, shift=None):
    clip = torch.ones(groups) if clip is None else torch.as_tensor(clip, dtype=torch.float32)
    shift = torch.zeros(groups) if shift is None else torch.as_tensor(shift, dtype=torch.float32)
    return clip.to(device), shift.to(device), torch.tensor([init], device=device)


def _seed(v=1234567890123, device="cpu"):
    return torch.tensor([v], dtype=torch.int64, device=device)


def _x(shape, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 2.5 + 0.7).to(dtype).to(device)


# ---------------------------------------------------------------------------------------------------------------
# Tier 1: the reference
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("levels", [256, 16, 2])
def test_round_trip_error_inside_range(stochastic, levels):
    x = _x((4, 3, 6, 5))
    q, clip, shift = mesa_quantize_ref(x, *_state(3), _seed(), 1, levels, 0.9, True, stochastic)
    x_hat = mesa_dequantize_ref(q, clip, shift, 1, levels, torch.float32)
    step = (clip / (levels - 1)).view(1, 3, 1, 1)
    err = (x_hat - x).abs()
    bound = step * (1.0 if stochastic else 0.5)
    assert (err <= bound * (1 + 1e-5) + 1e-6).all(), (err / step).max()
    assert int(q.max()) <= levels - 1
    # The first call takes the batch range and minimum of each head.
    heads = x.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(shift, heads.amin(1), rtol=0, atol=0)
    torch.testing.assert_close(clip, heads.amax(1) - heads.amin(1), rtol=0, atol=0)


def test_exact_clamping_outside_range():
    """Values above beta + alpha get the top code and below beta the bottom code: no wrap-around modulo 256."""
    clip, shift, init = _state(2, init=True, clip=[1.0, 2.0], shift=[0.0, -1.0])
    x = torch.tensor([[5.0, -3.0], [1000.0, -1000.0], [0.5, 0.0], [float("inf"), float("-inf")]])  # [4, C=2], G=2
    q, c, s = mesa_quantize_ref(x, clip, shift, init, _seed(), -1, 256, 0.9, False, True)
    assert torch.equal(c, clip) and torch.equal(s, shift)  # update=False keeps the estimates
    assert q.tolist()[0] == [255, 0] and q.tolist()[1] == [255, 0] and q.tolist()[3] == [255, 0]
    x_hat = mesa_dequantize_ref(q, c, s, -1, 256, torch.float32)
    assert x_hat[0].tolist() == [1.0, -1.0]  # beta + alpha and beta exactly
    # 256 would wrap to 0 in uint8 arithmetic: the largest in-range codes must be 254 / 255, not small.
    x_edge = torch.tensor([[1.0 - 1e-7, 0.999]])
    q_edge, _, _ = mesa_quantize_ref(x_edge, *_state(1, True), _seed(), -1, 256, 0.9, False, False)
    assert q_edge.tolist() == [[255, 255]]


def test_ema_update_values():
    lam = 0.9
    x1 = _x((8, 6), seed=1)
    _, c1, s1 = mesa_quantize_ref(x1, *_state(2), _seed(), -1, 256, lam, True, True)
    x2 = _x((8, 6), seed=2) * 3
    init = torch.tensor([True])
    _, c2, s2 = mesa_quantize_ref(x2, c1, s1, init, _seed(), -1, 256, lam, True, True)
    g2 = x2.double().view(8, 2, 3).transpose(0, 1).reshape(2, -1)
    r2, m2 = g2.amax(1) - g2.amin(1), g2.amin(1)
    torch.testing.assert_close(c2.double(), lam * c1.double() + (1 - lam) * r2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s2.double(), lam * s1.double() + (1 - lam) * m2, rtol=1e-6, atol=1e-6)
    # No update once initialized: the estimates stay; not initialized: the batch statistics whatever update says.
    _, c3, s3 = mesa_quantize_ref(x2, c1, s1, init, _seed(), -1, 256, lam, False, True)
    assert torch.equal(c3, c1) and torch.equal(s3, s1)
    _, c4, _ = mesa_quantize_ref(x2, c1, s1, torch.tensor([False]), _seed(), -1, 256, lam, False, True)
    torch.testing.assert_close(c4.double(), r2, rtol=1e-6, atol=1e-6)


def test_non_finite_values_stay_out_of_the_statistics():
    x = torch.tensor([[1.0, float("nan"), 3.0, float("inf")], [-2.0, 0.0, float("-inf"), 2.0]])
    q, c, s = mesa_quantize_ref(x, *_state(1), _seed(), 0, 256, 0.9, True, False)
    assert c.tolist() == [5.0] and s.tolist() == [-2.0]
    assert q[0, 1] == 0 and q[0, 3] == 255 and q[1, 2] == 0  # NaN -> 0, +inf -> top, -inf -> bottom
    # No finite value: the estimates stay (test_batch_without_finite_values_keeps_the_estimates has every case).
    q, c, s = mesa_quantize_ref(torch.full((3,), float("nan")), *_state(1, clip=[2.5], shift=[-1.0]), _seed(), 0, 256,
                                0.9, True, False)
    assert c.tolist() == [2.5] and s.tolist() == [-1.0] and q.tolist() == [0, 0, 0]


def test_seeded_determinism_and_unbiased_rounding():
    x = _x((3, 4, 8))
    a = mesa_quantize_ref(x, *_state(4), _seed(7), -1, 256, 0.9, True, True)[0]
    b = mesa_quantize_ref(x, *_state(4), _seed(7), -1, 256, 0.9, True, True)[0]
    c = mesa_quantize_ref(x, *_state(4), _seed(8), -1, 256, 0.9, True, True)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    u = hash_uniform(_seed(7), 1 << 16)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0 and abs(float(u.mean()) - 0.5) < 0.01
    # Stochastic rounding is unbiased: the mean over seeds of x_hat approaches x (4 levels make the step coarse).
    acc = torch.zeros_like(x, dtype=torch.float64)
    n = 200
    for k in range(n):
        q, cl, sh = mesa_quantize_ref(x, *_state(4), _seed(k), -1, 4, 0.9, True, True)
        acc += mesa_dequantize_ref(q, cl, sh, -1, 4, torch.float64)
    step = float(cl.max()) / 3
    assert (acc / n - x.double()).abs().max() < 0.25 * step


# ---------------------------------------------------------------------------------------------------------------
# Tier 2: C++ CPU kernels, bit for bit against the reference
# ---------------------------------------------------------------------------------------------------------------


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: f"{lay[0]}-dim{lay[1]}-G{lay[2]}")
def test_cpp_matches_reference_exactly(dtype, layout):
    shape, dim, groups = layout
    x = _x(shape, dtype)
    clip, shift, _ = _state(groups, clip=torch.rand(groups) + 0.5, shift=-torch.rand(groups))
    for init in (False, True):
        for update in (False, True):
            for stochastic in (False, True):
                for levels in (256, 7):
                    args = (x, clip, shift, torch.tensor([init]), _seed(-987654321987), dim, levels, 0.9, update,
                            stochastic)
                    got = torch.ops.pyfast.mesa_quantize(*args)
                    want = mesa_quantize_ref(*args)
                    for g, w in zip(got, want):
                        assert torch.equal(g, w), (init, update, stochastic, levels)
                    d_got = torch.ops.pyfast.mesa_dequantize(got[0], got[1], got[2], dim, levels, dtype)
                    assert torch.equal(d_got, mesa_dequantize_ref(got[0], got[1], got[2], dim, levels, dtype))


def _with_non_finite() -> torch.Tensor:
    """[3, 74] (2 groups of 37: two 16-wide vector steps and a tail per row) with NaN / inf inside the vector steps,
    including a row whose true extremes sit next to them."""
    x = _x((3, 74))
    x[0, 5], x[1, 17], x[2, 40], x[2, 3] = float("nan"), float("inf"), float("-inf"), 50.0
    return x


@needs_cpp
def test_cpp_non_finite_empty_and_non_contiguous():
    x = torch.tensor([[1.0, float("nan"), 3.0, float("inf")], [-2.0, 0.0, float("-inf"), 2.0]])
    for args in [(x, *_state(1), _seed(), 0, 256, 0.9, True, True),
                 (x.t(), *_state(2, True), _seed(), -1, 256, 0.9, True, True),  # non-contiguous
                 (torch.empty(0, 6), *_state(3), _seed(), -1, 256, 0.9, True, True),
                 (_with_non_finite(), *_state(2), _seed(), -1, 256, 0.9, True, False)]:  # in the vector loops
        for g, w in zip(torch.ops.pyfast.mesa_quantize(*args), mesa_quantize_ref(*args)):
            assert torch.equal(g, w)


@needs_cpp
def test_public_functions_and_backends():
    x = _x((2, 3, 4, 5))
    state = _state(3)
    out = {b: mesa_quantize(x, *state, _seed(), dim=1, backend=b) for b in ("reference", "cpp")}
    for a, b in zip(out["reference"], out["cpp"]):
        assert torch.equal(a, b)
    q, c, s = out["cpp"]
    for dtype in DTYPES:
        x_hat = mesa_dequantize(q, c, s, dim=1, dtype=dtype)
        assert x_hat.dtype == dtype and x_hat.shape == x.shape
    assert torch.equal(state[0], torch.ones(3))  # inputs untouched: the op is functional


# ---------------------------------------------------------------------------------------------------------------
# A batch without finite values; codes past the levels
# ---------------------------------------------------------------------------------------------------------------


def _batches_without_finite_values():
    """[4, 6] in two groups of 3 along dim -1: all NaN; group 0 NaN / +-inf and group 1 finite; no elements."""
    mixed = _x((4, 6))
    mixed[:, :3] = float("nan")
    mixed[0, 0], mixed[1, 1] = float("inf"), float("-inf")
    return [torch.full((4, 6), float("nan")), mixed, torch.empty(0, 6)], [(0, 1), (0,), (0, 1)]


@pytest.mark.parametrize("update", [False, True])
@pytest.mark.parametrize("init", [False, True])
def test_batch_without_finite_values_keeps_the_estimates(init, update):
    """A group that sees no finite value keeps its clip_val / shift (whether initialized or not, update or not): a first
    batch of NaNs used to set clip 0, after which every batch quantized to one code (test below). The C++ kernel
    gives the reference's bits."""
    clip, shift, initialized = _state(2, init=init, clip=[2.5, 0.75], shift=[-1.0, 0.25])
    for x, empty_groups in zip(*_batches_without_finite_values()):
        args = (x, clip, shift, initialized, _seed(), -1, 256, 0.9, update, True)
        q, c, s = mesa_quantize_ref(*args)
        for g in empty_groups:
            assert (c[g].item(), s[g].item()) == (clip[g].item(), shift[g].item()), (x.shape, g)
        if _extension.has_cpp():
            for got, want in zip(torch.ops.pyfast.mesa_quantize(*args), (q, c, s)):
                assert torch.equal(got, want)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
def test_a_first_batch_of_nans_does_not_collapse_later_codes(backend):
    clip, shift, initialized = _state(1)
    _, c, s = mesa_quantize(torch.full((2, 5), float("nan")), clip, shift, initialized, _seed(), backend=backend)
    x = torch.linspace(0.5, 2.0, 10).view(2, 5)  # in the kept range [0, 1] and above it
    q, _, _ = mesa_quantize(x, c, s, torch.tensor([True]), _seed(), update=False, stochastic=False, backend=backend)
    assert c.tolist() == [1.0] and s.tolist() == [0.0]
    assert len(q.unique()) > 1  # with clip 0 (s = inf) every code was 255


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
def test_dequantize_rejects_codes_past_the_levels(backend):
    """A code >= levels (quantized with more levels, or not by Mesa) decoded past the range without a word; now a
    ValueError naming q and levels. [2, 40] in 2 groups: the bad code sits inside a row and at its end."""
    clip, shift, _ = _state(2, clip=[1.0, 2.0], shift=[0.0, -1.0])
    q = torch.randint(0, 7, (2, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    direct = torch.ops.pyfast.mesa_dequantize if backend == "cpp" else mesa_dequantize_ref
    for decode in (lambda t: mesa_dequantize(t, clip, shift, levels=7, dtype=torch.float64, backend=backend),
                   lambda t: direct(t, clip, shift, -1, 7, torch.float64)):
        good = decode(q)
        assert good.shape == q.shape and bool(torch.isfinite(good).all())
        for where in [(1, 3), (0, 39)]:
            bad = q.clone()
            bad[where] = 200
            with pytest.raises(ValueError, match=r"q holds code 200, but codes of levels = 7 are 0\.\.6"):
                decode(bad)
    # 255 is a valid code at the default 256 levels.
    assert mesa_dequantize(torch.full((2, 4), 255, dtype=torch.uint8), clip, shift, backend=backend)[0, 0] == 1.0


# ---------------------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument
# ---------------------------------------------------------------------------------------------------------------


@needs_cpp
def test_bad_input():
    x = _x((2, 6))
    st = _state(3)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        mesa_quantize(torch.ones(2, 6, dtype=torch.int32), *st, _seed())
    with pytest.raises(ValueError, match="quant_groups"):
        mesa_quantize(_x((2, 7)), *st, _seed())
    for levels in (1, 257):
        with pytest.raises(ValueError, match="levels"):
            mesa_quantize(x, *st, _seed(), levels=levels)
    with pytest.raises(TypeError, match="levels"):
        mesa_quantize(x, *st, _seed(), levels=8.0)
    with pytest.raises(ValueError, match="ema_decay"):
        mesa_quantize(x, *st, _seed(), ema_decay=float("nan"))
    with pytest.raises(ValueError, match="ema_decay"):
        mesa_quantize(x, *st, _seed(), ema_decay=1.5)
    with pytest.raises(TypeError, match="clip_val must be a float32"):
        mesa_quantize(x, st[0].double(), st[1], st[2], _seed())
    with pytest.raises(TypeError, match="seed"):
        mesa_quantize(x, *st, torch.tensor([1]).int())
    with pytest.raises(ValueError, match="dim"):
        mesa_quantize(x, *st, _seed(), dim=2)
    with pytest.raises(TypeError, match="q must be a uint8"):
        mesa_dequantize(x, st[0], st[1])
    # Direct calls of the C++ op are checked too.
    with pytest.raises(ValueError, match="levels"):
        torch.ops.pyfast.mesa_quantize(x, *st, _seed(), -1, 300, 0.9, True, True)
    with pytest.raises(ValueError, match="groups"):
        torch.ops.pyfast.mesa_quantize(_x((2, 7)), *st, _seed(), -1, 256, 0.9, True, True)
    with pytest.raises(TypeError, match="dtype"):
        torch.ops.pyfast.mesa_quantize(torch.ones(2, 6, dtype=torch.int64), *st, _seed(), -1, 256, 0.9, True, True)
    with pytest.raises(ValueError, match="ema_decay"):
        torch.ops.pyfast.mesa_quantize(x, *st, _seed(), -1, 256, float("nan"), True, True)


# ---------------------------------------------------------------------------------------------------------------
# opcheck and torch.compile
# ---------------------------------------------------------------------------------------------------------------


@needs_cpp
def test_opcheck_primitive_ops():
    x = _x((2, 3, 4, 5))
    args = (x, *_state(3), _seed(), 1, 256, 0.9, True, True)
    torch.library.opcheck(torch.ops.pyfast.mesa_quantize.default, args)
    q, c, s = torch.ops.pyfast.mesa_quantize(*args)
    torch.library.opcheck(torch.ops.pyfast.mesa_dequantize.default, (q, c, s, 1, 256, torch.bfloat16))


def _quant_args(t, groups, qdim, backend="cpp"):
    return (*_state(groups), _seed(), qdim, 256, 0.9, True, True, backend)


@needs_cpp
def test_opcheck_layer_ops():
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, requires_grad=True)

    x = rnd(2, 5, 6)
    cases = [
        (torch.ops.pyfast.mesa_linear.default, (x, rnd(4, 6), rnd(4), *_quant_args(x, 3, -1))),
        (torch.ops.pyfast.mesa_gelu.default, (x, "tanh", *_quant_args(x, 2, -1))),
        (torch.ops.pyfast.mesa_softmax.default, (rnd(2, 3, 4, 4), -1, *_quant_args(x, 3, 1))),
        (torch.ops.pyfast.mesa_layer_norm.default, (x, [6], rnd(6), rnd(6), 1e-5, *_quant_args(x, 2, -1))),
        (torch.ops.pyfast.mesa_conv2d.default,
         (rnd(2, 4, 5, 5), rnd(6, 2, 3, 3), rnd(6), [1, 1], [1, 1], [1, 1], 2, *_quant_args(x, 2, 1))),
    ]
    a, b = rnd(2, 3, 4, 5), rnd(2, 3, 5, 4)
    sa, sb = _state(3), _state(3)
    cases.append((torch.ops.pyfast.mesa_matmul.default,
                  (a, b, *sa, *sb, _seed(), 1, 1, 256, 0.9, True, True, "cpp")))
    for op, args in cases:
        torch.library.opcheck(op, args)


@needs_cpp
def test_torch_compile_fullgraph_mesa_mlp():
    from pyfast.nn import mesa

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(mesa.LayerNorm(8, quant_groups=2), mesa.Linear(8, 16, quant_groups=2),
                              mesa.GELU(quant_groups=4), mesa.Linear(16, 8, quant_groups=4))
    x = torch.randn(3, 5, 8, requires_grad=True)
    torch.manual_seed(1)
    eager = mlp(x)
    eager.square().sum().backward()
    grads = [p.grad.clone() for p in mlp.parameters()]
    for p in mlp.parameters():
        p.grad = None
    for m in mlp.modules():
        if isinstance(m, mesa.Quantizer):
            m.initialized.zero_()
    compiled = torch.compile(mlp, fullgraph=True)
    torch.manual_seed(1)
    # Inductor draws random numbers with its own generator unless told to fall back to eager's: the rounding seeds
    # (torch.randint per layer) must be eager's for the gradients to match bit for bit.
    with torch._inductor.config.patch(fallback_random=True):
        out = compiled(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager)
    for p, g in zip(mlp.parameters(), grads):
        torch.testing.assert_close(p.grad, g)
    assert bool(mlp[1].quant.initialized)


# ---------------------------------------------------------------------------------------------------------------
# Tier 4: CUDA
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not _extension.has_cuda(), reason=_extension.cuda_reason() or "no CUDA")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS + [((16, 6, 65, 64), 1, 6), ((64, 65, 384), -1, 6)],
                         ids=lambda lay: f"{lay[0]}-dim{lay[1]}-G{lay[2]}")
def test_cuda_matches_reference(dtype, layout):
    shape, dim, groups = layout
    x = _x(shape, dtype, device="cuda")
    clip, shift, _ = _state(groups, device="cuda")
    for init in (False, True):
        for stochastic in (False, True):
            args = (x, clip, shift, torch.tensor([init], device="cuda"), _seed(device="cuda"), dim, 256, 0.9, True,
                    stochastic)
            q, c, s = torch.ops.pyfast.mesa_quantize(*args)
            q_ref, c_ref, s_ref = mesa_quantize_ref(*args)
            assert torch.equal(c, c_ref) and torch.equal(s, s_ref)
            diff = (q.int() - q_ref.int()).abs()
            # Same bits by construction (no FMA contraction, IEEE division); tolerate a stray off-by-one code.
            assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) <= 1e-4
            d = torch.ops.pyfast.mesa_dequantize(q_ref, c, s, dim, 256, dtype)
            assert torch.equal(d, mesa_dequantize_ref(q_ref, c, s, dim, 256, dtype))


@pytest.mark.cuda
@pytest.mark.skipif(not _extension.has_cuda(), reason=_extension.cuda_reason() or "no CUDA")
def test_cuda_batch_without_finite_values_keeps_the_estimates():
    for x, empty_groups in zip(*_batches_without_finite_values()):
        for init, update in [(False, True), (True, True), (True, False)]:
            state = _state(2, init=init, clip=[2.5, 0.75], shift=[-1.0, 0.25], device="cuda")
            args = (x.cuda(), *state, _seed(device="cuda"), -1, 256, 0.9, update, True)
            _, c, s = torch.ops.pyfast.mesa_quantize(*args)
            _, c_ref, s_ref = mesa_quantize_ref(*args)
            assert torch.equal(c, c_ref) and torch.equal(s, s_ref), (x.shape, init, update)
            assert all((c[g].item(), s[g].item()) == (state[0][g].item(), state[1][g].item()) for g in empty_groups)


@pytest.mark.cuda
@pytest.mark.skipif(not _extension.has_cuda(), reason=_extension.cuda_reason() or "no CUDA")
def test_cuda_dequantize_codes_past_the_levels():
    """The CUDA kernel writes NaN for a code >= levels (raising would need a sync); the public function raises."""
    clip, shift, _ = _state(2, device="cuda")
    q = torch.tensor([[0, 6, 7, 200], [1, 2, 3, 4]], dtype=torch.uint8, device="cuda")
    out = torch.ops.pyfast.mesa_dequantize(q, clip, shift, -1, 7, torch.float32)
    assert torch.isnan(out).tolist() == [[False, False, True, True], [False] * 4]
    with pytest.raises(ValueError, match=r"q holds code 200, but codes of levels = 7 are 0\.\.6"):
        mesa_dequantize(q, clip, shift, levels=7)


@pytest.mark.cuda
@pytest.mark.skipif(not _extension.has_cuda(), reason=_extension.cuda_reason() or "no CUDA")
def test_cuda_opcheck_and_module():
    x = _x((2, 3, 4, 5), device="cuda")
    args = (x, *_state(3, device="cuda"), _seed(device="cuda"), 1, 256, 0.9, True, True)
    torch.library.opcheck(torch.ops.pyfast.mesa_quantize.default, args)
    lin = pyfast.nn.mesa.Linear(5, 7, quant_groups=5).cuda()
    xg = x.clone().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = lin(xg)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert lin.weight.grad.dtype == torch.float32 and bool(lin.quant.initialized)
