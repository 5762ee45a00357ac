"""Mesa layer ops (pyfast::mesa_linear, mesa_gelu, mesa_softmax, mesa_layer_norm, mesa_matmul, mesa_conv2d), which
pyfast/ops/mesa.py registers from one template: their schemas (what callers and saved graphs depend on) and
torch.compile(fullgraph=True) of every layer, with static and dynamic shapes, against eager.

Opcheck of every layer op and the reference comparisons are in test_mesa.py; the modules in
tests/nn/test_mesa_modules.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from pyfast.nn import mesa
from tests.markers import needs_cpp

_QUANT = ("Tensor clip_val, Tensor shift, Tensor initialized, Tensor seed, SymInt qdim, SymInt levels, "
          "float ema_decay, bool update, bool stochastic, str backend")
_OPTIONS = "SymInt levels, float ema_decay, bool update, bool stochastic, str backend"
SCHEMAS = {
    "mesa_linear": f"(Tensor x, Tensor weight, Tensor? bias, {_QUANT}) -> (Tensor, Tensor, Tensor, Tensor)",
    "mesa_gelu": f"(Tensor x, str approximate, {_QUANT}) -> (Tensor, Tensor, Tensor, Tensor)",
    "mesa_softmax": f"(Tensor x, SymInt dim, {_QUANT}) -> (Tensor, Tensor, Tensor, Tensor)",
    "mesa_layer_norm": f"(Tensor x, SymInt[] normalized_shape, Tensor? weight, Tensor? bias, float eps, {_QUANT}) -> "
                       f"(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "mesa_matmul": f"(Tensor a, Tensor b, Tensor clip_a, Tensor shift_a, Tensor init_a, Tensor clip_b, Tensor shift_b, "
                   f"Tensor init_b, Tensor seed, SymInt qdim_a, SymInt qdim_b, {_OPTIONS}) -> "
                   f"(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "mesa_conv2d": f"(Tensor x, Tensor weight, Tensor? bias, SymInt[] stride, SymInt[] padding, SymInt[] dilation, "
                   f"SymInt groups, {_QUANT}) -> (Tensor, Tensor, Tensor, Tensor)",
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_layer_op_schema(name):
    assert str(getattr(torch.ops.pyfast, name).default._schema) == f"pyfast::{name}{SCHEMAS[name]}"


def _rnd(*shape):
    return torch.randn(*shape, requires_grad=True)


LAYERS = {
    "linear": lambda: (mesa.Linear(6, 4, quant_groups=2), (_rnd(2, 5, 6),)),
    "gelu": lambda: (mesa.GELU(approximate="tanh", quant_groups=3), (_rnd(2, 5, 6),)),
    "softmax": lambda: (mesa.Softmax(dim=-1, quant_groups=3), (_rnd(2, 3, 4, 4),)),
    "layer_norm": lambda: (mesa.LayerNorm(6, quant_groups=2), (_rnd(2, 5, 6),)),
    "matmul": lambda: (mesa.MatMul(quant_groups=3), (_rnd(2, 3, 4, 5), _rnd(2, 3, 5, 4))),
    "matmul_broadcast": lambda: (mesa.MatMul(), (_rnd(2, 3, 4, 5), _rnd(5, 4))),
    "conv2d": lambda: (mesa.Conv2d(4, 6, 3, padding=1, groups=2, quant_groups=2), (_rnd(2, 4, 5, 5),)),
}


def _run(layer, inputs):
    """The output and the gradients of the inputs and parameters, seeds drawn after torch.manual_seed(1)."""
    leaves = [*inputs, *layer.parameters()]
    for t in leaves:
        t.grad = None
    torch.manual_seed(1)
    # Inductor draws random numbers with its own generator unless told to fall back to eager's: the rounding seeds
    # (torch.randint per layer) must be eager's for the gradients to match bit for bit.
    with torch._inductor.config.patch(fallback_random=True):
        y = layer(*inputs)
    y.square().sum().backward()
    return y.detach(), [t.grad for t in leaves]


@needs_cpp
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_torch_compile_fullgraph_matches_eager(name, dynamic):
    torch.manual_seed(0)
    layer, inputs = LAYERS[name]()
    state = copy.deepcopy(layer.state_dict())
    y, grads = _run(layer, inputs)
    layer.load_state_dict(state)  # the compiled run starts from the same running estimates
    y_compiled, grads_compiled = _run(torch.compile(layer, fullgraph=True, dynamic=dynamic), inputs)
    torch.testing.assert_close(y_compiled, y)
    for got, want in zip(grads_compiled, grads, strict=True):
        torch.testing.assert_close(got, want)
