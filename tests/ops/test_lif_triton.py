"""Tier 3: the Triton LIF kernels (kernels/lif.py, ``pyfast::lif_fwd_triton`` / ``lif_bwd_triton``) against
:func:`pyfast.reference.lif.lif_ref`.

Without a GPU the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set before pyfast._triton.lif is
imported), so shapes are tiny; with a GPU the same tests run compiled on CUDA tensors, and the ``cuda``-marked test
adds a larger shape. Inputs are built with a margin between the membrane and the threshold, so spikes must match
exactly; gradients are compared with autograd of the reference (same surrogate), not gradcheck.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before pyfast._triton.lif is first imported (tests/conftest.py does too)

pytest.importorskip("triton")

import pyfast
from pyfast import _extension
from pyfast._dtypes import acc_dtype
from pyfast.reference.lif import SURROGATES, lif_ref
from pyfast.testing import TOLERANCES, assert_half_error_within, assert_triton_schema_matches

DEVICE = "cpu" if _extension.triton_interpret() else "cuda"

TOL = {dtype: {"rtol": TOLERANCES[dtype][0], "atol": TOLERANCES[dtype][1]} for dtype in (torch.float32,)}
# float64 with hyperparameters exactly representable in float32 (test_other_dtypes_match_reference): no float32
# rounding anywhere, so far tighter than pyfast.testing's float64 entry.
TOL[torch.float64] = {"rtol": 1e-10, "atol": 1e-12}
# Half types (pyfast.testing's rule): the kernel's error against the float32 truth is at most 2x the eager reference's
# error at that dtype, plus a floor of 2 eps(dtype) x max(1, |truth|): the kernel rounds H to the dtype each step (half
# an ulp, carried through the recurrence), and the eager reference can be exact by luck, mostly for the few-term sums
# that are the tau / v_threshold gradients.
HALF_FLOOR_EPS = 2.0
MARGIN = {torch.float32: 1e-3, torch.float64: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}

MODES = [
    (surrogate, v_reset, decay_input, detach_reset)
    for surrogate in SURROGATES
    for v_reset in (-0.2, None)
    for decay_input in (True, False)
    for detach_reset in (False, True)
]


def _mode_id(mode):
    surrogate, v_reset, decay_input, detach_reset = mode
    return (f"{surrogate}-{'soft' if v_reset is None else 'hard'}-{'decay' if decay_input else 'nodecay'}"
            f"{'-detach' if detach_reset else ''}")


def _charge(v, x, k, v_r, decay_input):
    return v + k * (x - (v - v_r)) if decay_input else v - k * (v - v_r) + x


def _case(shape, dtype, mode, *, seed, tau_per_neuron=True, vth_per_neuron=False, with_v0=True, tau=None,
          v_th=None):
    """Inputs for one comparison: x [T, *] and v0 [*] in ``dtype`` (CPU), float32 tau / v_threshold tensors (random
    per neuron or one shared value, unless given), and the float64 membrane H [T, *] of the reference maths."""
    g = torch.Generator().manual_seed(seed)
    n_shape = shape[1:]
    if tau is None:
        tau = (1.5 + 2.0 * torch.rand(n_shape, generator=g)) if tau_per_neuron else torch.tensor(2.0)
    if v_th is None:
        v_th = (0.6 + 0.8 * torch.rand(n_shape, generator=g)) if vth_per_neuron else torch.tensor(0.9)
    x = 1.5 + 1.2 * torch.randn(shape, generator=g)
    x.view(shape[0], -1)[:, 0] = 8.0  # one neuron that always fires and one that never does, whatever the draw
    x.view(shape[0], -1)[:, -1] = -3.0
    x = x.to(dtype)
    v0 = (0.3 * torch.randn(n_shape, generator=g)).to(dtype) if with_v0 else None
    x, h = _with_margin(x, v0, tau, v_th, mode)
    return x, v0, tau, v_th, h


def _with_margin(x, v0, tau, v_th, mode):
    """x nudged, step by step, until |H - V_th| >= the dtype's margin everywhere (so no backend's rounding can flip
    a spike), and the float64 membrane H of the reference maths on it."""
    _, v_reset, decay_input, _ = mode
    x = x.clone()
    margin = MARGIN[x.dtype]
    k, th = (1.0 / tau).double(), v_th.double()  # the float32 k the op computes, in float64
    v_r = 0.0 if v_reset is None else v_reset
    coef = k if decay_input else torch.ones_like(k)
    v = v0.double() if v0 is not None else torch.full(x.shape[1:], float(v_r), dtype=torch.float64)
    hs = []
    for t in range(x.shape[0]):
        for _ in range(20):
            h = _charge(v, x[t].double(), k, v_r, decay_input)
            close = (h - th).abs() < margin
            if not close.any():
                break
            push = torch.where(h >= th, 1.0, -1.0) * 2.0 * margin / coef
            x[t] = torch.where(close, (x[t].double() + push).to(x.dtype), x[t])
        else:
            raise AssertionError("could not build inputs with a margin around the threshold")
        s = (h >= th).double()
        v = h * (1 - s) + v_r * s if v_reset is not None else h - th * s
        hs.append(h)
    return x, torch.stack(hs)


def _run(backend, x, v0, tau, v_th, mode, grad_s, grad_v, dtype=None, alpha=None):
    """Spikes, final membrane and the gradients of (x, v0, tau, v_threshold) for loss <S, grad_s> + <V, grad_v>."""
    surrogate, v_reset, decay_input, detach_reset = mode
    dtype = dtype or x.dtype
    leaves = [None if t is None else t.detach().to(DEVICE, dtype).requires_grad_() for t in (x, v0)]
    params = [p.detach().to(DEVICE, dtype if backend == "reference" else torch.float32).requires_grad_()
              for p in (tau, v_th)]
    kwargs = {"tau": params[0], "v_threshold": params[1], "v_reset": v_reset, "decay_input": decay_input,
              "surrogate": surrogate, "alpha": alpha, "detach_reset": detach_reset}
    if backend == "reference":
        spikes, v_last = lif_ref(leaves[0], leaves[1], **kwargs)
    else:
        spikes, v_last = pyfast.ops.lif(leaves[0], leaves[1], return_v=True, backend=backend, **kwargs)
    loss = (spikes * grad_s.to(DEVICE, dtype)).sum() + (v_last * grad_v.to(DEVICE, dtype)).sum()
    loss.backward()
    grads = {name: t.grad for name, t in zip(("x", "v0", "tau", "v_threshold"), leaves + params) if t is not None}
    return spikes.detach(), v_last.detach(), grads


def _loss_weights(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed + 1)
    # Representable in dtype, so every run sees the same upstream gradient.
    return torch.randn(shape, generator=g).to(dtype).float(), torch.randn(shape[1:], generator=g).to(dtype).float()


def _check_against_reference(shape, dtype, mode, seed, tol=None, **case_kwargs):
    x, v0, tau, v_th, _ = _case(shape, dtype, mode, seed=seed, **case_kwargs)
    grad_s, grad_v = _loss_weights(shape, dtype, seed)
    spikes, v_last, grads = _run("triton", x, v0, tau, v_th, mode, grad_s, grad_v)
    assert spikes.dtype == dtype and v_last.dtype == dtype
    # Truth: the reference at float32 (float64 for float64) on the same, dtype-representable, inputs.
    truth_dtype = acc_dtype(dtype)
    ref_spikes, ref_v, ref_grads = _run("reference", x, v0, tau, v_th, mode, grad_s, grad_v, dtype=truth_dtype)
    assert ref_spikes.sum() > 0 and (ref_spikes == 0).any(), "inputs should make some neurons fire and some not"
    assert torch.equal(spikes.to(truth_dtype), ref_spikes), "spikes differ from the reference"
    assert set(grads) == set(ref_grads)
    if dtype in TOL:
        tol = tol or TOL[dtype]
        torch.testing.assert_close(v_last, ref_v, **tol)
        for name in ref_grads:
            assert grads[name].shape == ref_grads[name].shape, name
            torch.testing.assert_close(grads[name].to(truth_dtype), ref_grads[name], **tol, msg=name)
        return
    # Half types: compare the kernel's error with the eager reference's error at the same dtype.
    _, eager_v, eager_grads = _run("reference", x, v0, tau, v_th, mode, grad_s, grad_v, dtype=dtype)
    for name, got, eager, truth in [("v_last", v_last, eager_v, ref_v)] + [
        (name, grads[name], eager_grads[name], ref_grads[name]) for name in ref_grads
    ]:
        assert got.shape == truth.shape, name
        floor = HALF_FLOOR_EPS * torch.finfo(dtype).eps * max(1.0, truth.abs().max().item())
        assert_half_error_within(got, truth, eager, f"{name} ({dtype})", factor=2.0, floor=floor)


# --------------------------------------------------------------------------------------------------------------
# Public function (custom op + autograd) against the reference
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES, ids=_mode_id)
def test_float32_matches_reference(mode):
    # tau per neuron with a scalar threshold, and the other way round, alternating over the modes.
    per_neuron_tau = not mode[3]
    _check_against_reference((3, 37), torch.float32, mode, seed=MODES.index(mode),
                             tau_per_neuron=per_neuron_tau, vth_per_neuron=not per_neuron_tau)


@pytest.mark.parametrize("mode", MODES, ids=_mode_id)
def test_bfloat16_matches_reference(mode):
    per_neuron_tau = not mode[2]
    _check_against_reference((3, 2, 3), torch.bfloat16, mode, seed=100 + MODES.index(mode),
                             tau_per_neuron=per_neuron_tau, vth_per_neuron=not per_neuron_tau)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_other_dtypes_match_reference(dtype, surrogate):
    # float64 runs in float64: tau = 2, 4, and threshold, v_reset and alpha of few bits, are exact in the float32 the
    # op passes them in (triangle's default alpha 0.3 is not). float16 is checked against float32 truth.
    mode = (surrogate, -0.25, True, False)
    alpha = {"sigmoid": 4.0, "atan": 2.0, "triangle": 0.375}[surrogate]
    tau, v_th = torch.tensor([2.0, 4.0, 2.0, 4.0, 2.0]), torch.tensor(0.875)
    x, v0, _, _, _ = _case((3, 5), dtype, mode, seed=7, tau=tau, v_th=v_th)
    g_s, g_v = _loss_weights((3, 5), dtype, 7)
    spikes, v_last, grads = _run("triton", x, v0, tau, v_th, mode, g_s, g_v, alpha=alpha)
    truth_dtype = acc_dtype(dtype)
    ref_spikes, ref_v, ref_grads = _run("reference", x, v0, tau, v_th, mode, g_s, g_v, dtype=truth_dtype, alpha=alpha)
    assert torch.equal(spikes.to(truth_dtype), ref_spikes)
    if dtype == torch.float64:
        assert v_last.dtype == torch.float64 and grads["x"].dtype == torch.float64
        torch.testing.assert_close(v_last, ref_v, **TOL[dtype])
        for name in ("x", "v0"):
            torch.testing.assert_close(grads[name], ref_grads[name], **TOL[dtype], msg=name)
        for name in ("tau", "v_threshold"):  # accumulated in the op's float32 per-neuron buffers
            torch.testing.assert_close(grads[name].double(), ref_grads[name], rtol=1e-6, atol=1e-7, msg=name)
    else:
        torch.testing.assert_close(v_last.float(), ref_v, rtol=1e-2, atol=1e-2)
        for name in ref_grads:
            torch.testing.assert_close(grads[name].float(), ref_grads[name].float(), rtol=2e-2, atol=2e-2, msg=name)


@pytest.mark.parametrize("mode", [MODES[0], MODES[7], MODES[13], MODES[22]], ids=_mode_id)
def test_single_time_step_and_default_v0(mode):
    _check_against_reference((1, 2, 3), torch.float32, mode, seed=200, with_v0=False)
    _check_against_reference((1, 5), torch.bfloat16, mode, seed=201, with_v0=True)


def test_several_programs():
    # N = 1100 > every BLOCK the launchers use (at most 1024): several programs, the last one masked.
    mode = ("sigmoid", 0.0, True, False)
    _check_against_reference((2, 1100), torch.float32, mode, seed=300, tau_per_neuron=True, vth_per_neuron=True)


def test_inference_stores_no_membrane():
    mode = ("atan", None, False, False)
    x, v0, tau, v_th, _ = _case((3, 2, 3), torch.float32, mode, seed=400)
    kwargs = {"v_reset": None, "decay_input": False, "surrogate": "atan"}
    with torch.no_grad():
        spikes, v_last = pyfast.ops.lif(x.to(DEVICE), v0.to(DEVICE), tau=tau.to(DEVICE), v_threshold=v_th.to(DEVICE),
                                        return_v=True, backend="triton", **kwargs)
    ref_spikes, ref_v = lif_ref(x, v0, tau=tau, v_threshold=v_th, **kwargs)
    assert torch.equal(spikes.cpu(), ref_spikes)
    torch.testing.assert_close(v_last.cpu(), ref_v, **TOL[torch.float32])
    k = (1.0 / tau).reshape(-1).to(DEVICE)
    out = torch.ops.pyfast.lif_fwd_triton(x.to(DEVICE), None, k, v_th.reshape(-1).to(DEVICE), None, False, "atan",
                                          2.0, False, False)
    assert out[1].shape == (0,), "store_h=False must not return a membrane history"


# --------------------------------------------------------------------------------------------------------------
# The custom ops directly
# --------------------------------------------------------------------------------------------------------------


def test_double_backward_raises():
    """The twin's backward op has no derivative: a second backward raises instead of treating it as a constant
    (as the C++ ops do, tests/ops/test_double_backward.py)."""
    x = torch.randn(4, 6, device=DEVICE, requires_grad=True)
    (g,) = torch.autograd.grad(pyfast.ops.lif(x, surrogate="atan", backend="triton").square().sum(), [x],
                               create_graph=True)
    with pytest.raises(RuntimeError, match="lif_bwd_triton"):
        torch.autograd.grad(g.square().sum(), [x])


def test_backward_without_stored_history_recomputes_it():
    """As the C++ op (tests/ops/test_lif.py): with store_h=False and inputs requiring grad, backward recomputes H."""
    torch.manual_seed(0)
    x, v0 = torch.randn(4, 6, device=DEVICE, requires_grad=True), torch.randn(6, device=DEVICE, requires_grad=True)
    k, v_th = torch.full((6,), 0.4, device=DEVICE, requires_grad=True), torch.full((1,), 0.8, device=DEVICE)
    grads = []
    for store_h in (True, False):
        spikes, h_seq, _ = torch.ops.pyfast.lif_fwd_triton(x, v0, k, v_th, None, True, "atan", 2.0, False, store_h)
        assert h_seq.shape == ((4, 6) if store_h else (0,))
        grads.append(torch.autograd.grad(spikes.square().sum(), [x, v0, k]))
    for with_h, without_h in zip(*grads):
        torch.testing.assert_close(without_h, with_h, rtol=0, atol=0)



def _op_args(shape, dtype, mode, seed):
    surrogate, v_reset, decay_input, detach_reset = mode
    x, v0, tau, v_th, h = _case(shape, dtype, mode, seed=seed, tau_per_neuron=True, vth_per_neuron=False)
    k = (1.0 / tau).reshape(-1).to(DEVICE)
    fwd_args = (x.to(DEVICE), v0.to(DEVICE), k, v_th.reshape(1).to(DEVICE), v_reset, decay_input, surrogate, 1.7,
                detach_reset)
    return fwd_args, h


@pytest.mark.parametrize("mode", [MODES[1], MODES[10], MODES[20]], ids=_mode_id)
def test_op_outputs(mode):
    fwd_args, h_ref = _op_args((3, 2, 3), torch.float32, mode, seed=500)
    spikes, h_seq, v_last = torch.ops.pyfast.lif_fwd_triton(*fwd_args, True)
    assert spikes.shape == h_seq.shape == (3, 2, 3) and v_last.shape == (2, 3)
    torch.testing.assert_close(h_seq.cpu().double(), h_ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(spikes, (h_seq >= fwd_args[3]).float())

    x, v0, k, v_th = fwd_args[:4]
    grad_s = torch.randn_like(spikes)
    bwd = torch.ops.pyfast.lif_bwd_triton
    full = bwd(grad_s, torch.zeros_like(v_last), h_seq, x, v0, k, v_th, *fwd_args[4:], True, True)
    no_gv = bwd(grad_s, None, h_seq, x, v0, k, v_th, *fwd_args[4:], True, True)
    for a, b in zip(full, no_gv):  # equal up to the compiler's freedom to fold the known zero (FMA contraction)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg="grad_v_last=None must act as zeros")
    assert full[2].shape == k.shape and full[3].shape == v_th.shape
    grad_x, grad_v0, grad_k, grad_v_th = bwd(grad_s, None, h_seq, x, v0, k, v_th, *fwd_args[4:], False, False)
    assert grad_k.shape == (0,) and grad_v_th.shape == (0,)
    torch.testing.assert_close(grad_x, full[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_v0, full[1], rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not _extension.has_cpp(), reason="needs the C++ extension pyfast._C")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_matches_cpp_op(dtype):
    # Same inputs through the C++ CPU op and the Triton op: the forward (H rounded to dtype, spikes, final membrane)
    # is bit-identical; the backward agrees to float32 rounding (the CPU kernel's exp is a polynomial).
    modes = MODES if dtype in (torch.float32, torch.bfloat16) else MODES[::5]
    exact = dtype in (torch.float32, torch.float64)
    tol = {"rtol": 1e-5, "atol": 1e-6} if exact else {"rtol": 1e-2, "atol": 1e-3}  # halves: an ulp of the output
    for i, mode in enumerate(modes):
        fwd_args, _ = _op_args((2, 13), dtype, mode, seed=600 + i)
        cpu_args = tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in fwd_args)
        tri = torch.ops.pyfast.lif_fwd_triton(*fwd_args, True)
        cpp = torch.ops.pyfast.lif_fwd(*cpu_args, True)
        for name, a, b in zip(("spikes", "h_seq", "v_last"), tri, cpp):
            assert torch.equal(a.cpu(), b), f"{_mode_id(mode)}: {name} differs from the C++ op"
        x, v0, k, v_th = cpu_args[:4]
        grad_s = torch.randn(x.shape).to(dtype)
        grad_v = torch.randn(v0.shape).to(dtype)
        # x is read only for dL/dk with decay_input: without decay_input it may be left out.
        for x_arg in (x, None) if not mode[2] else (x,):
            args = (grad_s, grad_v, cpp[1], x_arg, v0, k, v_th, *cpu_args[4:], True, True)
            tri_g = torch.ops.pyfast.lif_bwd_triton(*(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args))
            cpp_g = torch.ops.pyfast.lif_bwd(*args)
            for name, a, b in zip(("grad_x", "grad_v0", "grad_k", "grad_v_th"), tri_g, cpp_g):
                torch.testing.assert_close(a.cpu(), b, **tol, msg=f"{_mode_id(mode)}: {name}")


def test_opcheck():
    fwd_args, _ = _op_args((2, 2, 3), torch.float32, ("triangle", -0.2, True, False), seed=700)
    x, v0, k, v_th = (t.clone().requires_grad_() for t in fwd_args[:4])
    torch.library.opcheck(torch.ops.pyfast.lif_fwd_triton.default, (x, v0, k, v_th, *fwd_args[4:], True))
    spikes, h_seq, _ = torch.ops.pyfast.lif_fwd_triton(*fwd_args, True)
    bwd_args = (torch.randn_like(spikes), None, h_seq, fwd_args[0], None, *fwd_args[2:], True, True)
    torch.library.opcheck(torch.ops.pyfast.lif_bwd_triton.default, bwd_args)


@pytest.mark.skipif(not _extension.has_cpp(), reason="needs the C++ extension pyfast._C (the C++ schemas)")
@pytest.mark.parametrize("name", ["lif_fwd", "lif_bwd"])
def test_schema_matches_cpp_op(name):
    assert_triton_schema_matches(name)


def test_launcher_rejects_bad_arguments():
    from pyfast._triton import lif as kernels

    x = torch.zeros(2, 3)
    out = (torch.empty(2, 3), None, torch.empty(3))
    one = torch.ones(1)
    with pytest.raises(ValueError, match="surrogate"):
        kernels.lif_fwd(x, None, one, one, 0.0, True, "relu", 1.0, False, *out)
    with pytest.raises(ValueError, match="k must be a contiguous torch.float32 tensor of 1 or N = 3 elements"):
        kernels.lif_fwd(x, None, torch.ones(2), one, 0.0, True, "sigmoid", 1.0, False, *out)
    with pytest.raises(ValueError, match="v0 must be a contiguous torch.float32 tensor of 3 elements"):
        kernels.lif_fwd(x, torch.zeros(2), one, one, 0.0, True, "sigmoid", 1.0, False, *out)
    with pytest.raises(ValueError, match="spikes must be .* got a non-contiguous"):
        kernels.lif_fwd(x, None, one, one, 0.0, True, "sigmoid", 1.0, False, torch.empty(3, 2).t(), None, out[2])
    with pytest.raises(ValueError, match="grad_k must be a contiguous torch.float32"):
        kernels.lif_bwd(x, None, x, x, None, one, one, 0.0, True, "sigmoid", 4.0, False, torch.empty(2, 3),
                        torch.empty(3), torch.zeros(3, dtype=torch.float64), None)
    h = torch.zeros(2, 3)
    bwd_out = (torch.empty(2, 3), torch.empty(3), torch.zeros(3), None)
    with pytest.raises(ValueError, match="x is required for grad_k when decay_input=True"):
        kernels.lif_bwd(h, None, h, None, None, one, one, 0.0, True, "sigmoid", 4.0, False, *bwd_out)
    with pytest.raises(TypeError, match="float32/float64"):
        kernels.lif_fwd(x.int(), None, one, one, 0.0, True, "sigmoid", 1.0, False, *out)


# --------------------------------------------------------------------------------------------------------------
# Tier 4: a real GPU, larger shapes
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or _extension.triton_interpret(),
                    reason="needs a CUDA GPU (and TRITON_INTERPRET unset)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", [MODES[0], MODES[6], MODES[9], MODES[15], MODES[19], MODES[23]], ids=_mode_id)
def test_cuda_larger(mode, dtype):
    # The scalar threshold's gradient sums 8 x 8580 float32 terms, in a different order than the reference's.
    _check_against_reference((8, 4, 33, 65), dtype, mode, seed=800 + MODES.index(mode),
                             tol={"rtol": 1e-4, "atol": 1e-4})
    if _extension.has_cuda():
        # The CUDA C++ kernel on the same inputs: identical spikes, membrane history equal to rounding (FMA
        # contraction may differ between nvcc and Triton).
        fwd_args, _ = _op_args((8, 4, 33, 65), dtype, mode, seed=900)
        tri = torch.ops.pyfast.lif_fwd_triton(*fwd_args, True)
        cu = torch.ops.pyfast.lif_fwd(*fwd_args, True)
        assert torch.equal(tri[0], cu[0])
        tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
        torch.testing.assert_close(tri[1], cu[1], **tol)
        torch.testing.assert_close(tri[2], cu[2], **tol)
