"""pyfast.nn.mesa layers against their nn counterparts: same forward, gradients within the quantization error,
drop-in constructor / state_dict, running estimates, uint8 saved activations, autocast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyfast import _extension
from pyfast.nn import mesa

BACKENDS = ["reference"] + (["cpp"] if _extension.has_cpp() else [])


def _saved_dtypes(fn):
    """dtypes of every tensor autograd saves while ``fn()`` runs (parameters included)."""
    dtypes = []

    def pack(t):
        dtypes.append(t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, dtypes


def _compare(m, ref, inputs, *, rel_tol):
    """Same output; every gradient (inputs and parameters) within rel_tol x its max magnitude of the nn one."""
    torch.manual_seed(0)
    xs = [x.clone().requires_grad_() for x in inputs]
    xr = [x.clone().requires_grad_() for x in inputs]
    (y, saved) = _saved_dtypes(lambda: m(*xs))
    yr = ref(*xr)
    torch.testing.assert_close(y, yr)
    gy = torch.randn_like(yr)
    y.backward(gy)
    yr.backward(gy)
    pairs = [(a.grad, b.grad) for a, b in zip(xs, xr)]
    pairs += [(p.grad, pr.grad) for p, pr in zip(m.parameters(), ref.parameters())]
    for g, gr in pairs:
        err = (g - gr).abs().max().item()
        assert err <= rel_tol * gr.abs().max().item() + 1e-6, (err, gr.abs().max().item())
    return saved


def _pair(cls, base, *args, **quant):
    torch.manual_seed(1)
    ref = base(*args)
    m = cls(*args, **quant)
    m.load_state_dict(ref.state_dict())  # an nn state_dict loads into the Mesa layer (strict)
    return m, ref


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear(backend):
    m, ref = _pair(mesa.Linear, nn.Linear, 24, 16, quant_groups=4, backend=backend)
    saved = _compare(m, ref, [torch.randn(3, 7, 24)], rel_tol=0.02)
    assert torch.uint8 in saved and saved.count(torch.float32) == 3  # weight (a parameter), clip_val, shift
    assert bool(m.quant.initialized) and m.quant.clip_val.shape == (4,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gelu_layernorm_softmax(backend):
    x = torch.randn(4, 6, 12) * 2
    m, ref = _pair(mesa.GELU, nn.GELU, quant_groups=3, backend=backend)
    _compare(m, ref, [x], rel_tol=0.03)
    m, ref = _pair(mesa.LayerNorm, nn.LayerNorm, 12, quant_groups=3, backend=backend)
    _compare(m, ref, [x], rel_tol=0.03)
    m, ref = _pair(mesa.Softmax, nn.Softmax, -1, quant_groups=2, backend=backend)
    saved = _compare(m, ref, [torch.randn(2, 2, 5, 5)], rel_tol=0.02)
    # Softmax stores its output only: one uint8 tensor and the [G] estimates, no float activation.
    assert saved.count(torch.uint8) == 1 and len(saved) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_matmul_and_conv2d(backend):
    class RefMatMul(nn.Module):
        def forward(self, a, b):
            return a @ b

    torch.manual_seed(2)
    saved = _compare(mesa.MatMul(quant_groups=3, backend=backend), RefMatMul(),
                     [torch.randn(2, 3, 5, 4), torch.randn(2, 3, 4, 6)], rel_tol=0.02)
    assert saved.count(torch.uint8) == 2
    m, ref = _pair(mesa.Conv2d, nn.Conv2d, 4, 6, 3, 1, 1, quant_groups=2, backend=backend)
    _compare(m, ref, [torch.randn(2, 4, 7, 7)], rel_tol=0.02)
    m, ref = _pair(mesa.Conv2d, nn.Conv2d, 4, 4, 3, 2, "same" if False else 2, 2, 2, True, "reflect",
                   quant_groups=4, backend=backend)
    _compare(m, ref, [torch.randn(1, 4, 9, 9)], rel_tol=0.02)


def test_estimates_follow_the_ema_and_freeze_in_eval():
    lin = mesa.Linear(6, 3, quant_groups=2, ema_decay=0.9)
    x1 = torch.randn(5, 6, requires_grad=True)
    lin(x1)
    c1 = lin.quant.clip_val.clone()
    x2 = 3 * torch.randn(5, 6, requires_grad=True)
    lin(x2)
    r2 = x2.detach().view(5, 2, 3).transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(lin.quant.clip_val, 0.9 * c1 + 0.1 * (r2.amax(1) - r2.amin(1)))
    c2 = lin.quant.clip_val.clone()
    lin.eval()
    lin(10 * x2)
    assert torch.equal(lin.quant.clip_val, c2)
    with torch.no_grad():  # nothing to save: plain nn.Linear, estimates untouched
        lin.train()
        lin(10 * x2)
    assert torch.equal(lin.quant.clip_val, c2)
    assert set(lin.state_dict()) == {"weight", "bias", "quant.clip_val", "quant.shift", "quant.initialized"}


def test_autocast_bf16_cpu():
    torch.manual_seed(0)
    lin, ref = _pair(mesa.Linear, nn.Linear, 16, 8, quant_groups=4)
    x = torch.randn(4, 16)
    xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, saved = _saved_dtypes(lambda: lin(xs))
        yr = ref(xr)
    assert y.dtype == yr.dtype == torch.bfloat16
    torch.testing.assert_close(y, yr)
    assert torch.bfloat16 not in saved  # the float32 weight is saved, not a bf16 copy; x as uint8
    y.float().sum().backward()
    yr.float().sum().backward()
    assert lin.weight.grad.dtype == torch.float32
    torch.testing.assert_close(lin.weight.grad, ref.weight.grad, rtol=0.03, atol=0.03)
    ln = mesa.LayerNorm(16, quant_groups=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ln(xs.to(torch.bfloat16))
    assert out.dtype == torch.float32


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="quant_groups"):
        mesa.Linear(10, 4, quant_groups=3)
    with pytest.raises(ValueError, match="levels"):
        mesa.GELU(levels=1)
    with pytest.raises(ValueError, match="ema_decay"):
        mesa.LayerNorm(8, ema_decay=float("nan"))
    with pytest.raises(TypeError, match="quant_groups"):
        mesa.MatMul(quant_groups=2.0)
    with pytest.raises(ValueError, match="quant_groups"):
        mesa.GELU(quant_groups=4)(torch.randn(2, 6, requires_grad=True))
    # Estimates left on another device than the input: a clear error naming both, not a kernel's pointer fault.
    with pytest.raises(ValueError, match="running estimates .* are on meta but the input is on cpu"):
        mesa.GELU().to("meta")(torch.randn(2, 6, requires_grad=True))
