"""float64 is computed in float64: every op family's C++ CPU op in float64, forward and backward, against its float64
reference at float64 rounding level.

The CPU kernels keep fast float32 approximations (polynomial exp / log / sincos, float32 constants and sums) for their
float32 and half paths; none of them may reach the float64 path. LIF did: its v_reset, alpha, k = 1/tau and v_th
reached the kernels as float32 and its d k / d v_th were summed into float32, so a float64 LIF was off by 1e-7 to
2e-7 of the outputs' scale (8.8e-6 absolute in a shared k's gradient). The other families were already at float64
rounding (at most 6e-14 of the scale here); these tests guard them.

Tolerance: |got - want| <= RTOL (|want| + max |want|) with RTOL = 1e-12. The kernels and the references round the
same maths in different orders (sums split into lanes, products regrouped, exp(-x^2/2) from x^2 or from x e), a few
hundred float64 ulps (2.2e-16 each) at most relative to the output's scale; one float32 rounding anywhere (6e-8) is
four orders of magnitude above it. The max |want| term covers outputs that cancel to near zero (a softmax gradient,
a sum of signed terms), whose error is relative to the terms, not to the result.

Mesa is the exception by design: its quantization is defined in float32 (pyfast/reference/mesa.py computes it so,
for every input dtype), and the C++ op must give the reference's bits for float64 inputs; its layer ops run the
layer itself in float64.
"""

from __future__ import annotations

import pytest
import torch

from pyfast.ops.crrelu import crrelu
from pyfast.ops.gated import gated_class_attention, gated_route_
from pyfast.ops.ghost_bn import ghost_batch_norm
from pyfast.ops.karat import karat_basis
from pyfast.ops.lif import lif, lif_decay
from pyfast.ops.mesa import mesa_dequantize, mesa_quantize
from pyfast.ops.msdrop import multi_sample_dropout_loss
from pyfast.ops.pld import pld_rows
from pyfast.ops.wconv import wconv_weight
from pyfast.reference.crrelu import crrelu_ref
from pyfast.reference.gated import gated_class_attention_ref, gated_route_ref
from pyfast.reference.ghost_bn import ghost_batch_norm_ref
from pyfast.reference.karat import karat_z_ref
from pyfast.reference.lif import lif_ref
from pyfast.reference.mesa import mesa_dequantize_ref, mesa_quantize_ref
from pyfast.reference.msdrop import msdrop_loss_ref
from pyfast.reference.pld import pld_ref
from pyfast.reference.wconv import wconv_weight_ref
from tests.markers import needs_cpp, needs_cuda

pytestmark = needs_cpp

F64 = torch.float64
RTOL = 1e-12


def assert_float64_close(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    assert got.dtype == F64, f"{name}: computed in {got.dtype}, not float64"
    scale = float(want.detach().abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL * scale, msg=lambda m: f"{name}: {m}")


def leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def check_fwd_bwd(cpp_fn, ref_fn, inputs, name, seed=0):
    """cpp_fn and ref_fn on separate leaf copies of ``inputs``: outputs, then the gradients of every input for one
    random upstream gradient, compared at float64 rounding level."""
    ours, theirs = leaves(*inputs), leaves(*inputs)
    y, y_ref = cpp_fn(*ours), ref_fn(*theirs)
    assert_float64_close(y, y_ref, f"{name} forward")
    g = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(y_ref.device)
    grads = torch.autograd.grad(y, ours, g)
    grads_ref = torch.autograd.grad(y_ref, theirs, g)
    for i, (a, b) in enumerate(zip(grads, grads_ref)):
        assert_float64_close(a, b, f"{name} grad of input {i}")


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale


# --------------------------------------------------------------------------------------------------------------
# CRReLU: exp(-x^2/2) over its whole range (the float32 path's polynomial flushes to 0 below e^-87.3, |x| > 13.2;
# float64's exp underflows past |x| = 38.6)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [False, True])
def test_crrelu(per_channel):
    x = torch.linspace(-40.0, 40.0, 8001, dtype=F64).reshape(1, 3, -1)[:, :, :2667]
    eps = torch.tensor([0.37, -1.3, 0.01], dtype=F64) if per_channel else torch.tensor([0.37], dtype=F64)
    check_fwd_bwd(lambda x, e: crrelu(x, e, 1, backend="cpp"), lambda x, e: crrelu_ref(x, e, 1), [x, eps], "crrelu")


# --------------------------------------------------------------------------------------------------------------
# LIF: hyperparameters that float32 cannot hold (tau = 3, v_th = 0.7, v_reset = 0.1, alpha = 2.3 or the triangle's
# default 0.3), every surrogate (sigmoid's exp over +-60), hard and soft reset, number and per-neuron tensor
# hyperparameters with their gradients
# --------------------------------------------------------------------------------------------------------------

SURROGATES = ["sigmoid", "atan", "triangle"]


def lif_input(T=6, N=257, seed=0):
    # Currents up to 3: a neuron crosses v_th = 0.7 by up to ~2, so alpha (h - v_th) reaches the sigmoid's tails.
    return torch.rand(T, N, generator=torch.Generator().manual_seed(seed), dtype=F64) * 3.0


@pytest.mark.parametrize("v_reset", [0.1, None], ids=["hard", "soft"])
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_lif_number_hyperparameters(surrogate, v_reset):
    alpha = None if surrogate == "triangle" else 2.3  # None: the triangle's default 0.3
    kw = dict(tau=3.0, v_threshold=0.7, v_reset=v_reset, surrogate=surrogate, alpha=alpha)
    x, v0 = lif_input(), randn(257, seed=1, scale=0.3)
    # The same spikes (no membrane within rounding of the threshold), then the membrane and the surrogate gradients.
    assert torch.equal(lif(x, v0, backend="cpp", **kw), lif_ref(x, v0, **kw)[0])
    check_fwd_bwd(lambda x, v0: lif(x, v0, return_v=True, backend="cpp", **kw)[1],
                  lambda x, v0: lif_ref(x, v0, **kw)[1], [x, v0], f"lif {surrogate} final membrane")
    check_fwd_bwd(lambda x, v0: lif(x, v0, backend="cpp", **kw), lambda x, v0: lif_ref(x, v0, **kw)[0], [x, v0],
                  f"lif {surrogate} spikes (surrogate gradient)")


@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_lif_tensor_hyperparameters(surrogate, decay_input):
    """Per-neuron tau and v_threshold, differentiable: d tau and d v_threshold were summed in float32."""
    x = lif_input(seed=2)
    tau = 1.5 + torch.rand(257, generator=torch.Generator().manual_seed(3), dtype=F64) * 3
    v_th = 0.5 + torch.rand(257, generator=torch.Generator().manual_seed(4), dtype=F64)
    kw = dict(v_reset=0.1, surrogate=surrogate, alpha=1.7, decay_input=decay_input)

    def ours(x, tau, v_th):
        s, v = lif(x, tau=tau, v_threshold=v_th, return_v=True, backend="cpp", **kw)
        return torch.cat([s.flatten(), v])

    def theirs(x, tau, v_th):
        s, v = lif_ref(x, tau=tau, v_threshold=v_th, **kw)
        return torch.cat([s.flatten(), v])

    check_fwd_bwd(ours, theirs, [x, tau, v_th], f"lif {surrogate} tensor tau / v_th")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_lif_cuda(surrogate):
    """The CUDA kernels share lif.h with the CPU ones: float64 there too, number and tensor hyperparameters."""
    x = lif_input(seed=6).cuda()
    tau = (1.5 + torch.rand(257, generator=torch.Generator().manual_seed(7), dtype=F64) * 3).cuda()
    kw = dict(v_threshold=0.7, v_reset=0.1, surrogate=surrogate, alpha=2.3)
    check_fwd_bwd(lambda x, tau: lif(x, tau=tau, return_v=True, backend="cuda", **kw)[1],
                  lambda x, tau: lif_ref(x, tau=tau, **kw)[1], [x, tau], f"lif cuda {surrogate}")


def test_lif_shared_decay_tensor():
    """A shared k (lif_decay) whose gradient is a sum over every neuron."""
    x = lif_input(seed=5)
    k = torch.tensor(0.3, dtype=F64)
    kw = dict(v_threshold=0.7, v_reset=None, surrogate="sigmoid", alpha=2.3)
    check_fwd_bwd(lambda x, k: lif_decay(x, k=k, return_v=True, backend="cpp", **kw)[1],
                  lambda x, k: lif_ref(x, tau=1.0 / k, **kw)[1], [x, k], "lif_decay shared k")


# --------------------------------------------------------------------------------------------------------------
# Gated attention: the softmax's exp over a wide score range; gradient routing and the cosh compensation
# --------------------------------------------------------------------------------------------------------------


def test_gated_class_attention():
    B, N1, C, H = 2, 17, 24, 3
    x = randn(B, N1, C, seed=1, scale=3.0)  # scores spread over tens: exp well into its tails
    gate = torch.sigmoid(randn(C, seed=2, scale=3.0))
    w = [randn(C, C, seed=3 + i, scale=C**-0.5 * 2) for i in range(4)]
    b = [randn(C, seed=7 + i, scale=0.3) for i in range(3)]
    args = [x, gate, w[0], b[0], w[1], w[2], b[1], w[3], b[2]]
    check_fwd_bwd(lambda *a: gated_class_attention(*a, H, backend="cpp"),
                  lambda *a: gated_class_attention_ref(*a, H)[0], args, "gated_class_attention")


def test_gated_route():
    g_w, g_b, g_e = randn(7, 5, seed=1), randn(7, seed=2), randn(40, seed=3)
    m_out, m_in = torch.rand(7, dtype=F64), torch.rand(5, dtype=F64)
    e = torch.linspace(-8.0, 8.0, 40, dtype=F64)  # s e crosses the clamp: cosh over its range
    kw = dict(s=3.3, s_max=400.0, clamp=20.0)
    want, want_emb = gated_route_ref([g_w, g_b], [m_out, m_out], [m_in, None], [g_e], [e], **kw)
    got = [g_w.clone(), g_b.clone()]
    got_emb = [g_e.clone()]
    gated_route_(got, [m_out, m_out], [m_in, None], got_emb, [e], backend="cpp", **kw)
    for name, a, b in zip(("weight", "bias", "embedding"), got + got_emb, want + want_emb):
        assert_float64_close(a, b, f"gated_route {name}")


# --------------------------------------------------------------------------------------------------------------
# Ghost batch norm: |mean| >> std (the shifted one-pass variance), a remainder ghost batch, running statistics
# --------------------------------------------------------------------------------------------------------------


def test_ghost_batch_norm():
    # |mean| / std up to 1e3: x - mean then carries 1e3 ulps of x's rounding in either computation (a larger ratio
    # would test the conditioning of the data, not the kernel's precision).
    x = randn(11, 3, 4, 5, seed=1) * torch.tensor([1.0, 1e-3, 30.0], dtype=F64).view(1, 3, 1, 1)
    x = x + torch.tensor([1e3, -0.5, 3.0], dtype=F64).view(1, 3, 1, 1)
    w, b = randn(3, seed=2) + 1.5, randn(3, seed=3)
    check_fwd_bwd(lambda x, w, b: ghost_batch_norm(x, None, None, w, b, True, 0.1, 1e-5, 4, backend="cpp"),
                  lambda x, w, b: ghost_batch_norm_ref(x, None, None, w, b, 4, 0.1, 1e-5)[0], [x, w, b],
                  "ghost_batch_norm")
    rm, rv = randn(3, seed=4), randn(3, seed=5).abs() + 0.5
    got_m, got_v = rm.clone(), rv.clone()
    ghost_batch_norm(x, got_m, got_v, w, b, True, 0.3, 1e-5, 4, backend="cpp")
    _, want_m, want_v = ghost_batch_norm_ref(x, rm, rv, w, b, 4, 0.3, 1e-5)
    assert_float64_close(got_m, want_m, "ghost_batch_norm running_mean")
    assert_float64_close(got_v, want_v, "ghost_batch_norm running_var")


# --------------------------------------------------------------------------------------------------------------
# Fourier-KArAt: sin / cos of scores in the tens (the float32 path reduces and evaluates its own polynomials) and the
# harmonic recurrence
# --------------------------------------------------------------------------------------------------------------


def test_karat_basis():
    B, H, N, D, r, G = 2, 2, 21, 8, 3, 5
    q, k = randn(B, H, N, D, seed=1, scale=4.0), randn(B, H, N, D, seed=2, scale=4.0)
    a, b = randn(H, r, N, G, seed=3), randn(H, r, N, G, seed=4)
    check_fwd_bwd(lambda *t: karat_basis(*t, backend="cpp"), lambda *t: karat_z_ref(*t), [q, k, a, b], "karat_basis")


# --------------------------------------------------------------------------------------------------------------
# Multi-sample dropout loss: log-sum-exp over logits spread +-60 (exp underflows in the tails)
# --------------------------------------------------------------------------------------------------------------


def test_multi_sample_dropout_loss():
    h, W, bias = randn(9, 33, seed=1, scale=3.0), randn(21, 33, seed=2, scale=3.0), randn(21, seed=3)
    target = torch.randint(0, 21, (9,), generator=torch.Generator().manual_seed(4))
    seed = torch.tensor([12345], dtype=torch.int64)
    check_fwd_bwd(lambda h, W, b: multi_sample_dropout_loss(h, W, b, target, 4, 0.3, seed=seed, backend="cpp")[0],
                  lambda h, W, b: msdrop_loss_ref(h, W, b, target, seed, 4, 0.3)[0], [h, W, bias], "msdrop")


# --------------------------------------------------------------------------------------------------------------
# Plackett-Luce distillation: exp and log of the ranked suffix sums, tau not a float32 value
# --------------------------------------------------------------------------------------------------------------


def test_pld():
    s, t = randn(7, 37, seed=1, scale=8.0), randn(7, 37, seed=2, scale=8.0)
    labels = torch.randint(0, 37, (7,), generator=torch.Generator().manual_seed(3))
    check_fwd_bwd(lambda s, t: pld_rows(s, t, labels, 0.7, backend="cpp"), lambda s, t: pld_ref(s, t, labels, 0.7),
                  [s, t], "pld")


# --------------------------------------------------------------------------------------------------------------
# Weighted convolution: products of the density (per-axis and shared den, 1-D to 3-D kernels)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel, den_numel", [((7,), 3), ((5, 3), 3), ((5, 5, 5), 2)])
def test_wconv_weight(kernel, den_numel):
    w, den = randn(4, 3, *kernel, seed=1), torch.rand(den_numel, dtype=F64) + 0.3
    check_fwd_bwd(lambda w, d: wconv_weight(w, d, backend="cpp"), wconv_weight_ref, [w, den], f"wconv {kernel}")


# --------------------------------------------------------------------------------------------------------------
# Mesa: float32 quantization by definition (the reference computes it in float32 for every dtype): the C++ op gives
# the reference's codes, estimates and float64 decodes bit for bit
# --------------------------------------------------------------------------------------------------------------


def test_mesa_float64_input_matches_the_float32_definition():
    x = randn(4, 6, 10, seed=1, scale=1e3) + 1e-9 * randn(4, 6, 10, seed=2)  # digits float32 drops
    state = (torch.ones(3), torch.zeros(3), torch.tensor([False]))
    seed = torch.tensor([99], dtype=torch.int64)
    got = mesa_quantize(x, *state, seed, dim=1, backend="cpp")
    want = mesa_quantize_ref(x, *state, seed, 1, 256, 0.9, True, True)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    decoded = mesa_dequantize(*got, dim=1, dtype=F64, backend="cpp")
    assert decoded.dtype == F64 and torch.equal(decoded, mesa_dequantize_ref(*want, 1, 256, F64))
