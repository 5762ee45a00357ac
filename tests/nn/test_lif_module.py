"""pyfast.nn.LIF / IF: the modules agree with the functional op and the reference, and their parameters learn."""

import math

import pytest
import torch

import pyfast
from pyfast.reference.lif import lif_ref


def test_lif_module_matches_reference_and_reprs():
    x = torch.randn(6, 4, 9) * 2
    layer = pyfast.nn.LIF(tau=3.0, v_threshold=0.8, v_reset=None, surrogate="atan", return_v=True)
    spikes, v = layer(x)
    s_ref, v_ref = lif_ref(x, tau=3.0, v_threshold=0.8, v_reset=None, surrogate="atan")
    assert torch.equal(spikes, s_ref)
    torch.testing.assert_close(v, v_ref)
    assert "tau=3" in repr(layer) and "surrogate='atan'" in repr(layer)


def test_if_module_is_lif_without_leak_and_conserves_charge():
    # Soft-reset IF: total input = final membrane + threshold * spikes.
    x = torch.rand(40, 3, 5, dtype=torch.float64)
    spikes, v = pyfast.nn.IF(v_threshold=0.6, v_reset=None, return_v=True)(x)
    torch.testing.assert_close(x.sum(0), v + 0.6 * spikes.sum(0))
    assert "tau=inf" in repr(pyfast.nn.IF())


def test_learnable_parameters_per_channel_get_the_reference_gradients():
    # [T, B, C] input with one tau and one threshold per channel.
    torch.manual_seed(0)
    x = torch.randn(5, 6, 4) * 2
    layer = pyfast.nn.LIF(tau=2.5, learnable_tau=True, learnable_threshold=True, param_shape=(4,))
    weights = torch.randn(5, 6, 4)
    (layer(x) * weights).sum().backward()

    w = layer.w.detach().clone().requires_grad_()
    th = layer.v_threshold.detach().clone().requires_grad_()
    s_ref, _ = lif_ref(x, tau=1 / torch.sigmoid(w), v_threshold=th)
    (s_ref * weights).sum().backward()
    torch.testing.assert_close(layer.w.grad, w.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.v_threshold.grad, th.grad, rtol=1e-4, atol=1e-5)
    assert torch.sigmoid(layer.w).detach().allclose(torch.full((4,), 1 / 2.5))


def test_learnable_threshold_that_became_non_positive_is_an_error():
    layer = pyfast.nn.LIF(learnable_threshold=True)
    with torch.no_grad():
        layer.v_threshold.fill_(-0.1)
    with pytest.raises(ValueError, match="v_threshold"):
        layer(torch.randn(3, 4))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"tau": 0.5}, "tau"), ({"tau": math.nan}, "tau"), ({"v_threshold": 0.0}, "v_threshold"),
     ({"tau": 1.0, "learnable_tau": True}, "learnable_tau")],
)
def test_bad_module_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        pyfast.nn.LIF(**kwargs)


def test_parameters_on_another_device_than_the_input_is_a_clear_error():
    layer = pyfast.nn.LIF(learnable_tau=True).to("meta")
    with pytest.raises(ValueError, match="k is on meta"):
        layer(torch.randn(3, 4))
