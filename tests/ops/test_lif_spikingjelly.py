"""Cross-check against the outside peer: SpikingJelly's multi-step LIFNode (installed from requirements/peers.txt).

pyfast's LIF promises SpikingJelly's semantics (charge, fire, reset, detach_reset, surrogate gradients): spikes and
input gradients must agree with LIFNode(step_mode="m") on the same input.
"""

import itertools

import pytest
import torch

from pyfast.ops.lif import lif
from pyfast.testing import assert_close, lif_inputs_with_margin

neuron = pytest.importorskip("spikingjelly.activation_based.neuron", reason="pip install -r requirements/peers.txt")
surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")

SJ_SURROGATES = {"sigmoid": lambda: surrogate.Sigmoid(alpha=4.0), "atan": lambda: surrogate.ATan(alpha=2.0)}


@pytest.mark.parametrize(
    ("surrogate_name", "v_reset", "decay_input", "detach_reset"),
    list(itertools.product(SJ_SURROGATES, (0.0, None), (True, False), (False, True))),
)
def test_matches_spikingjelly_lifnode(surrogate_name, v_reset, decay_input, detach_reset):
    tau, v_th = 2.0, 1.0
    x = lif_inputs_with_margin((8, 3, 17), k=1 / tau, v_th=v_th, v_reset=v_reset, decay_input=decay_input,
                               generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))

    node = neuron.LIFNode(tau=tau, v_threshold=v_th, v_reset=v_reset, decay_input=decay_input,
                          surrogate_function=SJ_SURROGATES[surrogate_name](), detach_reset=detach_reset,
                          step_mode="m")
    x_sj = x.clone().requires_grad_()
    s_sj = node(x_sj)
    (s_sj * weights).sum().backward()

    x_pf = x.clone().requires_grad_()
    s_pf = lif(x_pf, tau=tau, v_threshold=v_th, v_reset=v_reset, decay_input=decay_input, surrogate=surrogate_name,
               detach_reset=detach_reset, backend="cpp")
    (s_pf * weights).sum().backward()

    assert torch.equal(s_pf, s_sj), "spikes differ from SpikingJelly"
    assert s_pf.sum() > 0
    assert_close(x_pf.grad, x_sj.grad, msg="input gradient differs from SpikingJelly")
