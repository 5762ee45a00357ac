"""LIF op: reference invariants (tier 1), C++ CPU kernels against the reference (tier 2), CUDA kernels (tier 4).

The Triton twin (tier 3) is tested in test_lif_triton.py.
"""

from __future__ import annotations

import itertools
import math
import sys
import warnings

import pytest
import torch

import pyfast
from pyfast import _extension, backends
from pyfast.ops.lif import lif, lif_decay
from pyfast.reference.lif import DEFAULT_ALPHA, SURROGATES, lif_ref, surrogate_grad_h
from pyfast.testing import HALF_TYPES, assert_close, assert_half_error_within, lif_inputs_with_margin

RESETS = (0.0, -0.3, None)  # hard to 0, hard to a negative value, soft
CONFIGS = list(itertools.product(SURROGATES, RESETS, (True, False), (False, True)))
CONFIG_IDS = [f"{s}-reset{r}-decay{d}-detach{dt}" for s, r, d, dt in CONFIGS]


def _case(shape, dtype, surrogate, v_reset, decay_input, seed=0, margin=2e-2, per_neuron_tau=True, device="cpu"):
    """Inputs with a margin from the threshold, v0, a per-neuron tau and a scalar threshold, all requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    n_shape = shape[1:]
    tau = 1.0 + 3.0 * torch.rand(n_shape if per_neuron_tau else (), dtype=torch.float64, generator=gen)
    v_th = torch.tensor(0.8, dtype=torch.float64)
    v0 = (torch.rand(n_shape, dtype=torch.float64, generator=gen) * 0.6 - 0.3).to(dtype)
    # Hyperparameters reach the kernels in float32: place the inputs with those exact values.
    k32 = (1.0 / tau.float()).double()
    x = lif_inputs_with_margin(shape, k=k32, v_th=v_th.float().double(), v_reset=v_reset, decay_input=decay_input,
                               v0=v0.double(), margin=margin, generator=gen, dtype=dtype)
    return {
        "x": x.to(device).requires_grad_(),
        "v0": v0.to(device).requires_grad_(),
        "tau": tau.float().to(device).requires_grad_(),
        "v_threshold": v_th.float().to(device).requires_grad_(),
    }


def _half_case(shape, dtype, surrogate, v_reset, device="cpu"):
    """Half-precision case with number hyperparameters, so the eager reference really computes in ``dtype`` (a
    float32 tensor tau would promote it to float32). The kernels keep the membrane in ``dtype`` between steps."""
    case = _case(shape, dtype, surrogate, v_reset, True, margin=0.08, per_neuron_tau=False, device=device)
    case["tau"] = case["tau"].item()
    case["v_threshold"] = case["v_threshold"].item()
    return case


def _run(fn, case, grads, **kw):
    """Spikes, final membrane and the gradients of a random loss of both w.r.t. every input of ``case``."""
    extra = {} if fn is lif_ref else {"return_v": True}  # lif_ref always returns (spikes, final membrane)
    spikes, v = fn(case["x"], case["v0"], tau=case["tau"], v_threshold=case["v_threshold"], **extra, **kw)
    g_s, g_v = grads
    loss = (spikes.double() * g_s).sum() + (v.double() * g_v).sum()
    named = {k: t for k, t in case.items() if isinstance(t, torch.Tensor) and t.requires_grad}
    out = torch.autograd.grad(loss, list(named.values()))
    return spikes, v, dict(zip(named, out))


def _loss_weights(shape, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, dtype=torch.float64, generator=gen), torch.randn(shape[1:], dtype=torch.float64,
                                                                                generator=gen)


# ---------------------------------------------------------------------------------------------------- tier 1


def test_reference_if_soft_reset_conserves_charge():
    # IF neuron (k = 0, decay_input=False), soft reset: every unit of input charge is either still in the membrane or
    # was removed by a spike, sum_t X_t = V_T + V_th * (number of spikes).
    x = torch.rand(50, 7, dtype=torch.float64)
    spikes, v = lif_ref(x, tau=math.inf, v_threshold=0.7, v_reset=None, decay_input=False)
    torch.testing.assert_close(x.sum(0), v + 0.7 * spikes.sum(0))
    assert spikes.sum() > 0


def test_reference_constant_input_fires_periodically():
    # IF neuron, hard reset, constant input 0.3 and threshold 1: H = 0.3, 0.6, 0.9, 1.2 -> spike every 4th step.
    spikes, _ = lif_ref(torch.full((12, 1), 0.3, dtype=torch.float64), tau=math.inf, decay_input=False)
    assert spikes.flatten().tolist() == [0, 0, 0, 1] * 3


@pytest.mark.parametrize("surrogate", SURROGATES)
def test_reference_surrogates_are_derivatives_of_smooth_steps(surrogate):
    # Each surrogate is the derivative of a smooth step function of H: check against autograd of that function.
    alpha = DEFAULT_ALPHA[surrogate]
    h = torch.linspace(-1.0, 3.0, 401, dtype=torch.float64, requires_grad=True)
    v_th = 0.9
    if surrogate == "sigmoid":
        step = torch.sigmoid(alpha * (h - v_th))
    elif surrogate == "atan":
        step = torch.atan(math.pi / 2 * alpha * (h - v_th)) / math.pi + 0.5
    else:  # triangle in z = h / v_th - 1: integral of alpha * max(0, 1 - |z|) dz, times dz/dh = 1 / v_th
        z = h / v_th - 1
        zc = z.clamp(-1, 1)
        step = alpha * (zc - zc * zc.abs() / 2)
    (grad,) = torch.autograd.grad(step.sum(), h)
    torch.testing.assert_close(surrogate_grad_h(h.detach(), torch.tensor(v_th, dtype=torch.float64), surrogate, alpha),
                               grad)


def test_reference_membrane_gradcheck_without_spikes():
    # Below threshold (no spike, reset detached) the neuron is a linear filter and the surrogate BPTT is the exact
    # derivative: gradcheck the final membrane in x, v0 and tau.
    x = torch.rand(5, 4, dtype=torch.float64, requires_grad=True) * 0.1
    v0 = torch.rand(4, dtype=torch.float64, requires_grad=True) * 0.1
    tau = torch.tensor([1.5, 2.0, 3.0, 8.0], dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(
        lambda x, v0, tau: lif_ref(x, v0, tau=tau, v_threshold=100.0, detach_reset=True)[1], (x, v0, tau)
    )


# ---------------------------------------------------------------------------------------------------- tier 2


@pytest.mark.parametrize(("surrogate", "v_reset", "decay_input", "detach_reset"), CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_matches_reference(dtype, surrogate, v_reset, decay_input, detach_reset):
    shape = (6, 3, 5)
    case = _case(shape, dtype, surrogate, v_reset, decay_input)
    kw = dict(v_reset=v_reset, decay_input=decay_input, surrogate=surrogate, detach_reset=detach_reset)
    grads = _loss_weights(shape)
    s_ref, v_ref, g_ref = _run(lif_ref, case, grads, **kw)
    s, v, g = _run(lif, case, grads, backend="cpp", **kw)
    assert s.dtype == dtype and s.shape == shape
    assert torch.equal(s, s_ref), "spikes differ from the reference"
    assert_close(v, v_ref, msg="final membrane")
    for name in g_ref:
        # tau and v_threshold are float32 parameters: their gradients are float32 sums over all neurons and steps.
        assert_close(g[name], g_ref[name], dtype=dtype if name in ("x", "v0") else torch.float32,
                     msg=f"grad of {name}")


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("v_reset", [0.0, None])
def test_cpp_half_precision_error_within_twice_eager(dtype, surrogate, v_reset):
    shape = (8, 4, 9)
    case = _half_case(shape, dtype, surrogate, v_reset)
    kw = dict(v_reset=v_reset, surrogate=surrogate)
    grads = _loss_weights(shape)
    truth_case = {k: (t.detach().float().requires_grad_() if k in ("x", "v0") else t) for k, t in case.items()}
    s_true, v_true, g_true = _run(lif_ref, truth_case, grads, **kw)
    _, v_eager, g_eager = _run(lif_ref, case, grads, **kw)
    s, v, g = _run(lif, case, grads, backend="cpp", **kw)
    assert s.dtype == dtype
    assert torch.equal(s.float(), s_true), "spikes differ from float32 truth"
    assert_half_error_within(v, v_true, v_eager, "final membrane")
    for name in g_true:
        assert_half_error_within(g[name], g_true[name], g_eager[name], f"grad of {name}")


@pytest.mark.parametrize("shape", [(1, 7), (1, 2, 3), (3, 1), (5, 129), (2, 3, 1, 5)])
def test_cpp_odd_shapes_and_single_step(shape):
    case = _case(shape, torch.float32, "atan", 0.0, True)
    grads = _loss_weights(shape)
    s_ref, v_ref, g_ref = _run(lif_ref, case, grads, surrogate="atan")
    s, v, g = _run(lif, case, grads, surrogate="atan", backend="cpp")
    assert torch.equal(s, s_ref)
    assert_close(v, v_ref)
    for name in g_ref:
        assert_close(g[name], g_ref[name], msg=name)


def test_cpp_non_contiguous_input_and_per_channel_parameters():
    # x as [T, B, C] seen through a transpose; tau and v_threshold per channel ([C] broadcast over B).
    base = _case((4, 6, 5), torch.float32, "sigmoid", 0.0, True, per_neuron_tau=False)
    x = base["x"].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()  # [4, 6, 5], strides permuted
    assert not x.is_contiguous()
    tau = torch.tensor([1.5, 2.0, 2.5, 3.0, 4.0], requires_grad=True)
    v_th = torch.tensor([0.7, 0.8, 0.9, 1.0, 1.1], requires_grad=True)
    outs = []
    for fn, kw in ((lif_ref, {}), (lif, {"backend": "cpp", "return_v": True})):
        s, v = fn(x, tau=tau, v_threshold=v_th, **kw)
        outs.append((s, v, *torch.autograd.grad((s * torch.arange(5.0)).sum() + v.sum(), [x, tau, v_th])))
    for a, b in zip(*outs):
        assert_close(a, b)


def test_cpp_gradient_of_learnable_decay_reaches_parameter():
    # PLIF-style k = sigmoid(w): gradients pass through lif_decay's k without the 1/tau detour.
    x = torch.randn(6, 10) * 2
    w = torch.zeros(10, requires_grad=True)
    s = lif_decay(x, k=torch.sigmoid(w), backend="cpp")
    (g,) = torch.autograd.grad((s * torch.linspace(-1, 1, 10)).sum(), w)
    s_ref, _ = lif_ref(x, tau=1 / torch.sigmoid(w))
    (g_ref,) = torch.autograd.grad((s_ref * torch.linspace(-1, 1, 10)).sum(), w)
    assert_close(g, g_ref)
    assert g.abs().sum() > 0


def test_lif_decay_checks_a_tensor_k_unless_it_is_in_range_by_construction():
    """k_in_range=True (pyfast.nn.LIF's sigmoid / clamp decays) skips the value check of a tensor k, a device sync
    on a GPU; the result is the same as with the check."""
    x = torch.randn(3, 4)
    k = torch.full((4,), 0.5)
    with pytest.raises(ValueError, match="k must lie in"):
        lif_decay(x, k=k + 1.0)
    lif_decay(x, k=k + 1.0, k_in_range=True)  # trusted, not read
    assert torch.equal(lif_decay(x, k=k, k_in_range=True), lif_decay(x, k=k))


def test_inference_does_not_store_membrane_history():
    x = torch.randn(4, 8)
    with torch.no_grad():
        spikes, h_seq, _ = torch.ops.pyfast.lif_fwd(x, None, torch.tensor([0.5]), torch.tensor([1.0]), 0.0, True,
                                                    "sigmoid", 4.0, False, False)
    assert h_seq.numel() == 0
    assert torch.equal(spikes, lif_ref(x)[0])


def _op_args(requires_grad):
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=requires_grad)
    v0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=requires_grad)
    k = torch.rand(12, requires_grad=requires_grad)
    v_th = torch.tensor([0.9], requires_grad=requires_grad)
    return x, v0, k, v_th


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("v_reset", [0.0, None])
def test_opcheck_lif_fwd(surrogate, v_reset):
    x, v0, k, v_th = _op_args(True)
    torch.library.opcheck(torch.ops.pyfast.lif_fwd.default,
                          (x, v0, k, v_th, v_reset, True, surrogate, 2.0, False, True))
    torch.library.opcheck(torch.ops.pyfast.lif_fwd.default,
                          (x.detach(), None, k.detach(), v_th.detach(), v_reset, False, surrogate, 2.0, True, False))


def test_opcheck_lif_bwd():
    x, v0, k, v_th = _op_args(False)
    _, h_seq, _ = torch.ops.pyfast.lif_fwd(x, v0, k, v_th, 0.0, True, "sigmoid", 4.0, False, True)
    g = torch.randn_like(x)
    for args in (
        (g, torch.randn_like(v0), h_seq, x, v0, k, v_th, 0.0, True, "sigmoid", 4.0, False, True, True),
        (g, None, h_seq, None, None, k, v_th, None, False, "triangle", 0.3, True, False, False),
    ):
        torch.library.opcheck(torch.ops.pyfast.lif_bwd.default, args)


def test_torch_compile_fullgraph_small_snn():
    torch.manual_seed(0)
    lin1, lin2 = torch.nn.Linear(6, 16), torch.nn.Linear(16, 3)
    neuron = pyfast.nn.LIF(learnable_tau=True, backend="cpp")

    def snn(x):  # x: [T, B, 6]
        return lin2(neuron(lin1(x))).mean(0)

    x = torch.randn(4, 5, 6)
    compiled = torch.compile(snn, fullgraph=True)
    eager_out = snn(x)
    eager_grads = torch.autograd.grad(eager_out.sum(), [lin1.weight, neuron.w])
    out = compiled(x)
    grads = torch.autograd.grad(out.sum(), [lin1.weight, neuron.w])
    torch.testing.assert_close(out, eager_out)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"x": torch.ones(3, 4, dtype=torch.int32)}, TypeError, "x"),
        ({"x": torch.ones(0, 4)}, ValueError, "T >= 1"),
        ({"x": torch.tensor(1.0)}, ValueError, "[T, *]"),
        ({"tau": 0.5}, ValueError, "tau"),
        ({"tau": float("nan")}, ValueError, "tau"),
        ({"tau": torch.tensor([2.0, 0.5, 3.0, 4.0])}, ValueError, "tau"),
        ({"tau": torch.ones(5) * 2}, ValueError, "tau"),
        ({"tau": math.inf}, ValueError, "decay_input=False"),
        ({"tau": torch.tensor(math.inf)}, ValueError, "decay_input=False"),
        ({"tau": torch.tensor([2.0, math.inf, 3.0, 4.0])}, ValueError, "decay_input=False"),
        ({"tau": torch.tensor(math.nan)}, ValueError, "tau must be >= 1"),
        ({"tau": "2"}, TypeError, "tau"),
        ({"v_threshold": 0.0}, ValueError, "v_threshold"),
        ({"v_threshold": -1.0}, ValueError, "v_threshold"),
        ({"v_threshold": torch.tensor(float("nan"))}, ValueError, "v_threshold"),
        ({"v_threshold": torch.tensor(math.inf)}, ValueError, "v_threshold must be finite"),
        ({"v_threshold": math.inf}, ValueError, "v_threshold must be finite"),
        ({"v_threshold": torch.tensor(1, dtype=torch.int64)}, TypeError, "v_threshold"),
        ({"v_reset": float("inf")}, ValueError, "v_reset"),
        ({"v_reset": float("nan")}, ValueError, "v_reset must be finite"),
        ({"v_reset": torch.tensor(0.0)}, TypeError, "v_reset must be a number, got Tensor"),
        ({"v0": torch.zeros(3)}, ValueError, "v0"),
        ({"v0": torch.zeros(4, dtype=torch.float64)}, TypeError, "v0"),
        ({"v0": torch.zeros(4, device="meta")}, ValueError, "v0"),
        ({"tau": torch.full((4,), 2.0, device="meta")}, ValueError, "tau"),
        ({"surrogate": "relu"}, ValueError, "surrogate"),
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"alpha": float("nan")}, ValueError, "alpha"),
        ({"alpha": torch.tensor(2.0)}, TypeError, "alpha must be a number, got Tensor"),
        ({"backend": "fast"}, ValueError, "backend"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, error, needle):
    kw = {"x": torch.ones(3, 4)} | kwargs
    x = kw.pop("x")
    v0 = kw.pop("v0", None)
    with pytest.raises(error, match=None) as info:
        lif(x, v0, **kw)
    assert needle in str(info.value)


def test_tensor_tau_and_k_follow_the_rules_of_numbers():
    """tau=inf (k = 0) with decay_input=True scales the input by 0: the number raised, a tensor with an inf entry
    returned zeros; now both raise, and lif_decay's k = 0 as well. With decay_input=False (an IF neuron) tensors and
    numbers give the same spikes."""
    x = torch.rand(6, 4) * 2
    for tau in (torch.tensor(math.inf), torch.tensor([2.0, math.inf, 3.0, 4.0]),
                torch.full((4,), math.inf, requires_grad=True)):
        with pytest.raises(ValueError, match=r"tau has k=0 \(tau=inf\) entries: .* decay_input=False"):
            lif(x, tau=tau)
    for k in (0.0, torch.tensor(0.0), torch.tensor([0.5, 0.0, 0.5, 0.5])):
        with pytest.raises(ValueError, match=r"k=0 .*decay_input=False"):
            lif_decay(x, k=k)
    want = lif(x, tau=math.inf, decay_input=False)
    assert want.any()
    for tau in (torch.tensor(math.inf), torch.full((4,), math.inf)):
        assert torch.equal(lif(x, tau=tau, decay_input=False), want)
    for k in (0.0, torch.zeros(4)):
        assert torch.equal(lif_decay(x, k=k, decay_input=False), want)


def test_bad_arguments_to_the_raw_op_raise_value_and_type_errors():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="k must have 1 or N=4"):
        torch.ops.pyfast.lif_fwd(x, None, torch.ones(3), torch.ones(1), 0.0, True, "sigmoid", 4.0, False, True)
    with pytest.raises(TypeError, match="k must be float32/float64/float16/bfloat16, got Long"):
        torch.ops.pyfast.lif_fwd(x, None, torch.ones(1, dtype=torch.int64), torch.ones(1), 0.0, True, "sigmoid",
                                 4.0, False, True)
    with pytest.raises(ValueError, match="surrogate"):
        torch.ops.pyfast.lif_fwd(x, None, torch.ones(1), torch.ones(1), 0.0, True, "step", 4.0, False, True)
    with pytest.raises(ValueError, match="T >= 1"):
        torch.ops.pyfast.lif_fwd(x[:0], None, torch.ones(1), torch.ones(1), 0.0, True, "sigmoid", 4.0, False, True)
    with pytest.raises(TypeError, match="floating"):
        torch.ops.pyfast.lif_fwd(x.int(), None, torch.ones(1), torch.ones(1), 0.0, True, "sigmoid", 4.0, False, True)


@pytest.mark.parametrize("decay_input", [True, False])
def test_backward_without_stored_history_recomputes_it(decay_input):
    """A caller that asks for no history while an input requires grad (store_h=False) still gets the gradients of
    every input: backward recomputes H from the saved x."""
    torch.manual_seed(0)
    x, v0 = torch.randn(5, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    k, v_th = torch.full((4,), 0.4, requires_grad=True), torch.full((1,), 0.8, requires_grad=True)
    g = torch.randn(5, 4)
    grads = []
    for store_h in (True, False):
        spikes, h_seq, v_last = torch.ops.pyfast.lif_fwd(x, v0, k, v_th, 0.0, decay_input, "atan", 2.0, False,
                                                         store_h)
        assert h_seq.shape == ((5, 4) if store_h else (0,))
        grads.append(torch.autograd.grad((spikes * g).sum() + v_last.square().sum(), [x, v0, k, v_th]))
    for with_h, without_h in zip(*grads):
        torch.testing.assert_close(without_h, with_h, rtol=0, atol=0)


@pytest.mark.parametrize("surrogate", SURROGATES)
def test_reference_works_under_torch_func_transforms(surrogate):
    """The reference's surrogate spike is an autograd.Function in the setup_context form, so torch.func.grad and
    torch.vmap run it (the README points users of torch.func to backend="reference")."""
    torch.manual_seed(0)
    x, tau = torch.randn(2, 5, 6), torch.tensor(1.7)

    def loss(x, tau):
        return lif(x, tau=tau, surrogate=surrogate, backend="reference").square().sum()

    g_x, g_tau = torch.func.grad(loss, argnums=(0, 1))(x, tau)
    x_, tau_ = x.clone().requires_grad_(), tau.clone().requires_grad_()
    want_x, want_tau = torch.autograd.grad(loss(x_, tau_), [x_, tau_])
    torch.testing.assert_close(g_x, want_x)
    torch.testing.assert_close(g_tau, want_tau)
    per_sample = torch.vmap(lambda t: lif(t, surrogate=surrogate, backend="reference"), in_dims=1, out_dims=1)(x)
    torch.testing.assert_close(per_sample, lif(x, surrogate=surrogate, backend="reference"))


def test_gradient_through_vmap_matches_a_loop():
    """Under torch.vmap pyfast.ops.lif cannot see that its input requires grad; the vmap fallback records the op per
    sample with store_h=False, and backward recomputes H (this raised 'backward needs the membrane history')."""
    x = torch.randn(3, 4, 5, requires_grad=True)
    (batched,) = torch.autograd.grad(torch.vmap(lambda t: lif(t, surrogate="atan"))(x).square().sum(), [x])
    (looped,) = torch.autograd.grad(torch.stack([lif(t, surrogate="atan") for t in x]).square().sum(), [x])
    torch.testing.assert_close(batched, looped)


# ------------------------------------------------------------------------------------------- backend choice


def test_auto_backend_on_cpu_is_cpp(monkeypatch):
    monkeypatch.delenv("PYFAST_BACKEND", raising=False)
    assert backends.resolve("lif", "auto", torch.device("cpu")) == "cpp"
    monkeypatch.setenv("PYFAST_BACKEND", "reference")
    assert backends.resolve("lif", "auto", torch.device("cpu")) == "reference"
    monkeypatch.setenv("PYFAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="PYFAST_BACKEND"):
        backends.resolve("lif", "auto", torch.device("cpu"))


def test_missing_extension_falls_back_with_one_warning_and_explicit_request_fails(monkeypatch):
    monkeypatch.delenv("PYFAST_BACKEND", raising=False)
    monkeypatch.setattr(_extension, "_C", None)
    monkeypatch.setattr(_extension, "_C_ERROR", "pyfast._C failed to load (test): built for torch 0.0")
    monkeypatch.setattr(backends, "_warned", set())
    x = torch.randn(4, 3)
    with pytest.warns(UserWarning, match="built for torch 0.0"):
        s = lif(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lif(x)  # warned once only
    assert torch.equal(s, lif_ref(x)[0])
    with pytest.raises(backends.BackendUnavailableError, match="pip install --no-build-isolation|built for torch"):
        lif(x, backend="cpp")


def test_cuda_backend_on_cpu_tensor_is_a_clear_error():
    with pytest.raises(backends.BackendUnavailableError, match="CUDA tensors"):
        lif(torch.randn(2, 3), backend="cuda")


def test_hyperparameter_constants_are_cached_up_to_a_bound_and_never_dropped(monkeypatch):
    """Number hyperparameters become cached tensors (float32; float64 for float64 x); past the bound new values get
    fresh ones and the cached ones stay (a CUDA graph captured earlier may still read them)."""
    lif_module = sys.modules["pyfast.ops.lif"]  # (pyfast.ops.lif, the attribute, is the function)

    monkeypatch.setattr(lif_module, "_CONSTANTS", {})
    monkeypatch.setattr(lif_module, "_MAX_CONSTANTS", 3)
    x = torch.randn(4, 6)
    for tau in (1.5, 2.5, 3.5, 4.5):
        torch.testing.assert_close(lif(x, tau=tau), lif_ref(x, tau=tau)[0])
    f32 = torch.float32
    assert set(lif_module._CONSTANTS) == {(1.0 / 1.5, x.device, f32), (1.0 / 2.5, x.device, f32), (1.0, x.device, f32)}
    kept = lif_module._CONSTANTS[(1.0, x.device, f32)]
    assert lif_module._constant(1.0, x) is kept
    assert lif_module._constant(1.0, x.double()).dtype == torch.float64  # a float64 x gets float64 constants


def test_no_constant_is_cached_while_a_cuda_graph_is_captured(monkeypatch):
    """Under capture the constant's fill runs only at replay: a value first seen then is not cached (here the capture
    is simulated; the CUDA test below captures a real graph)."""
    lif_module = sys.modules["pyfast.ops.lif"]  # (pyfast.ops.lif, the attribute, is the function)

    monkeypatch.setattr(lif_module, "_CONSTANTS", {})
    monkeypatch.setattr(lif_module, "_capturing", lambda device: True)
    x = torch.randn(4, 6)
    torch.testing.assert_close(lif(x, tau=1.75), lif_ref(x, tau=1.75)[0])
    assert lif_module._CONSTANTS == {}
    # Nor are tensor hyperparameters range-checked then (the check's device sync would end the capture with an
    # error): the documented exception, as under torch.compile.
    lif(x, v_threshold=torch.full((6,), -1.0))
    lif(x, tau=torch.full((6,), math.inf))
    monkeypatch.setattr(lif_module, "_capturing", lambda device: False)
    with pytest.raises(ValueError, match="v_threshold must be finite and > 0"):
        lif(x, v_threshold=torch.full((6,), -1.0))
    with pytest.raises(ValueError, match="decay_input=False"):
        lif(x, tau=torch.full((6,), math.inf))


# ---------------------------------------------------------------------------------------------------- tier 4


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
def test_cuda_graph_capture_with_a_new_tau_then_an_eager_call_before_replay():
    """A tau first seen inside torch.cuda.graph: the eager call after capture (before any replay) must not read a
    constant whose fill was only captured."""
    torch.manual_seed(0)
    x = torch.randn(6, 4096, device="cuda")
    tau = 1.0 + 1.0 / 7.0  # a value no other test uses
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = lif(x, tau=tau, v_threshold=0.37, backend="cuda")
    eager = lif(x, tau=tau, v_threshold=0.37, backend="cuda")
    want = lif(x.cpu(), tau=tau, v_threshold=0.37, backend="cpp")
    assert torch.equal(eager.cpu(), want)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured.cpu(), want)
    # A learnable threshold (a tensor, range-checked with a device sync in eager calls) captures too.
    layer = pyfast.nn.LIF(learnable_threshold=True, param_shape=(4096,), backend="cuda").cuda()
    with torch.no_grad():
        layer.v_threshold.fill_(0.37)
        eager = layer(x)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = layer(x)
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("surrogate", "v_reset", "decay_input", "detach_reset"), CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("shape", [(5, 3, 7), (4, 64, 33)])  # odd N: scalar path; N % 8 == 0: vector path
def test_cuda_matches_reference(shape, surrogate, v_reset, decay_input, detach_reset, dtype):
    case = _case(shape, dtype, surrogate, v_reset, decay_input, device="cuda")
    kw = dict(v_reset=v_reset, decay_input=decay_input, surrogate=surrogate, detach_reset=detach_reset)
    grads = tuple(g.cuda() for g in _loss_weights(shape))
    s_ref, v_ref, g_ref = _run(lif_ref, case, grads, **kw)
    s, v, g = _run(lif, case, grads, backend="cuda", **kw)
    assert torch.equal(s, s_ref)
    assert_close(v, v_ref)
    for name in g_ref:
        # tau and v_threshold are float32 parameters: their gradients are float32 sums over all neurons and steps.
        assert_close(g[name], g_ref[name], dtype=dtype if name in ("x", "v0") else torch.float32, msg=name)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("surrogate", SURROGATES)
# Odd N: one neuron per thread; even N: two per backward thread, eight per forward thread when N % 8 == 0.
@pytest.mark.parametrize("shape", [(5, 3, 7), (8, 4, 9), (11, 16, 64)])
def test_cuda_half_precision_error_within_twice_eager(shape, dtype, surrogate):
    case = _half_case(shape, dtype, surrogate, 0.0, device="cuda")
    grads = tuple(g.cuda() for g in _loss_weights(shape))
    truth_case = {k: (t.detach().float().requires_grad_() if k in ("x", "v0") else t) for k, t in case.items()}
    s_true, v_true, g_true = _run(lif_ref, truth_case, grads, surrogate=surrogate)
    _, v_eager, g_eager = _run(lif_ref, case, grads, surrogate=surrogate)
    s, v, g = _run(lif, case, grads, surrogate=surrogate, backend="cuda")
    assert torch.equal(s.float(), s_true)
    assert_half_error_within(v, v_true, v_eager, "final membrane")
    for name in g_true:
        assert_half_error_within(g[name], g_true[name], g_eager[name], f"grad of {name}")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("shape", [(5, 3, 7), (9, 4, 9)])  # odd N: one neuron per backward thread; even N: two
def test_cuda_half_learnable_tau_and_threshold_match_cpp(shape, dtype):
    # Per-neuron tau and a threshold that require grad take the backward variants with the tau and threshold sums;
    # the CUDA and CPU kernels both round H to the storage dtype and compute in float32, so they agree closely.
    case = _case(shape, dtype, "atan", 0.0, True, margin=0.08)
    grads = _loss_weights(shape)
    s_cpu, v_cpu, g_cpu = _run(lif, case, grads, surrogate="atan", backend="cpp")
    cuda_case = {k: t.detach().cuda().requires_grad_() for k, t in case.items()}
    s, v, g = _run(lif, cuda_case, tuple(t.cuda() for t in grads), surrogate="atan", backend="cuda")
    assert torch.equal(s.cpu(), s_cpu)
    torch.testing.assert_close(v.cpu(), v_cpu, rtol=1e-2, atol=1e-2)
    for name in g_cpu:
        torch.testing.assert_close(g[name].cpu(), g_cpu[name], rtol=1e-2, atol=1e-2 * g_cpu[name].abs().max().item(),
                                   msg=name)


@pytest.mark.cuda
@cuda
def test_cuda_opcheck_and_compile():
    x, v0, k, v_th = (t.detach().cuda().requires_grad_() for t in _op_args(True))
    torch.library.opcheck(torch.ops.pyfast.lif_fwd.default, (x, v0, k, v_th, 0.0, True, "atan", 2.0, False, True))
    neuron = pyfast.nn.LIF(learnable_tau=True, learnable_threshold=True, backend="cuda").cuda()
    lin = torch.nn.Linear(8, 8).cuda()
    inp = torch.randn(4, 16, 8, device="cuda")
    compiled = torch.compile(lambda t: neuron(lin(t)).sum(), fullgraph=True)
    out = compiled(inp)
    out.backward()
    assert neuron.w.grad is not None and neuron.v_threshold.grad is not None
    torch.testing.assert_close(out, neuron(lin(inp)).sum())


@pytest.mark.cuda
@cuda
def test_cuda_runs_on_the_current_stream_and_large_inputs():
    x = torch.randn(16, 1 << 20, device="cuda") * 2
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        s = lif(x, backend="cuda")
    stream.synchronize()
    assert torch.equal(s, lif_ref(x)[0])


def test_cpu_baseline_and_avx2_loops_agree(tmp_path):
    # The CPU loops are compiled twice (baseline x86-64 and AVX2+FMA, chosen at run time); PYFAST_CPU_BASELINE=1
    # forces the baseline. Both must give the same spikes and (to rounding) the same gradients.
    import os
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(
        "import sys, torch, pyfast\n"
        "torch.manual_seed(0)\n"
        "x = (torch.randn(6, 1000) * 2).requires_grad_()\n"
        "tau = torch.full((1000,), 2.0, requires_grad=True)\n"
        "out = {}\n"
        "for sur in ('sigmoid', 'atan', 'triangle'):\n"
        "    s = pyfast.ops.lif(x, tau=tau, surrogate=sur, backend='cpp')\n"
        "    gx, gt = torch.autograd.grad((s * torch.linspace(-1, 1, 1000)).sum(), [x, tau])\n"
        "    out[sur] = (s, gx, gt)\n"
        "torch.save(out, sys.argv[1])\n"
    )
    results = []
    for baseline in (False, True):
        env = {k: v for k, v in os.environ.items() if k != "PYFAST_CPU_BASELINE"}
        if baseline:
            env["PYFAST_CPU_BASELINE"] = "1"
        path = tmp_path / f"out{int(baseline)}.pt"
        subprocess.run([sys.executable, str(script), str(path)], check=True, env=env)
        results.append(torch.load(path))
    for sur in results[0]:
        s_a, gx_a, gt_a = results[0][sur]
        s_b, gx_b, gt_b = results[1][sur]
        assert torch.equal(s_a, s_b), sur
        torch.testing.assert_close(gx_a, gx_b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gt_a, gt_b, rtol=1e-4, atol=1e-5)
