"""pyfast's modules under torch.compile(fullgraph=True, dynamic=True), and the number checks that make it possible.

With ``dynamic=True`` a float that reaches a function through a default argument or a module attribute (LIF's
threshold, ghost batch norm's momentum, KArAt's scale) is symbolic, and ``math.isnan`` / ``isfinite`` of it broke
the graph: ``fullgraph=True`` failed for LIF, IF, GhostBatchNorm2d and FourierKArAtAttention. The argument checks
now use :mod:`pyfast._numbers` (comparisons only).
"""

from __future__ import annotations

import math

import pytest
import torch

import pyfast
import pyfast.nn as pnn
from pyfast import _numbers
from tests.markers import needs_cpp

MODULES = {
    "LIF": (lambda: pnn.LIF(), (4, 2, 8)),
    "LIF-learnable": (lambda: pnn.LIF(learnable_tau=True, learnable_threshold=True, v_reset=None), (4, 2, 8)),
    "IF": (lambda: pnn.IF(), (4, 2, 8)),
    "CRReLU": (lambda: pnn.CRReLU(), (2, 4, 3, 3)),
    "GhostBatchNorm2d": (lambda: pnn.GhostBatchNorm2d(4, ghost_batch_size=2), (4, 4, 3, 3)),
    "WeightedConv2d": (lambda: pnn.WeightedConv2d(4, 4, 3, padding=1), (2, 4, 5, 5)),
    "FourierKArAtAttention": (lambda: pnn.FourierKArAtAttention(24, num_heads=3, n_tokens=7), (2, 7, 24)),
    # their forwards' shape checks (the expected [B, N, C], the channel axis) trace without a graph break
    "SpectralGating": (lambda: pnn.SpectralGating(8, 2, 3), (2, 6, 8)),
    "HardAttentionGate": (lambda: pnn.HardAttentionGate(4, channel_dim=1), (2, 4, 3, 3)),
}


@needs_cpp
@pytest.mark.parametrize("name", MODULES)
def test_module_compiles_whole_with_dynamic_shapes(name):
    make, shape = MODULES[name]
    torch.manual_seed(0)
    module = make().train()
    x = torch.randn(*shape, requires_grad=True)
    eager_out = module(x)
    (eager_grad,) = torch.autograd.grad(eager_out.square().sum(), [x])
    torch.manual_seed(0)
    module_again = make().train()  # a fresh module: ghost batch norm updates its running statistics per call
    compiled = torch.compile(module_again, fullgraph=True, dynamic=True, backend="aot_eager")
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.square().sum(), [x])
    torch.testing.assert_close(out, eager_out)
    torch.testing.assert_close(grad, eager_grad)


@needs_cpp
@pytest.mark.parametrize("fullgraph", [False, True])
def test_lif_bad_hyperparameter_still_raises_under_dynamic_compile(fullgraph):
    """The checks still run while tracing: a NaN threshold is reported with lif's own message. Without fullgraph it
    is the ValueError itself; with it, Dynamo reports the ValueError it observed inside its own error."""

    def step(x, v_threshold):
        return pyfast.ops.lif(x, v_threshold=v_threshold)

    compiled = torch.compile(step, fullgraph=fullgraph, dynamic=True, backend="aot_eager")
    assert compiled(torch.randn(3, 4), 0.5).shape == (3, 4)
    with pytest.raises(ValueError if not fullgraph else Exception, match="lif: v_threshold must be finite, got nan"):
        compiled(torch.randn(3, 4), math.nan)


@pytest.mark.parametrize("v", [0.0, -2.5, 3, 1e308, math.inf, -math.inf, math.nan])
def test_number_checks_answer_as_math_does(v):
    assert _numbers.is_nan(v) == math.isnan(v)
    assert _numbers.is_inf(v) == math.isinf(v)
    assert _numbers.is_finite(v) == math.isfinite(v)


@pytest.mark.parametrize(("v", "expected"), [(1, True), (2.5, True), (True, False), ("1", False), (None, False)])
def test_is_number_excludes_bools_and_non_numbers(v, expected):
    assert _numbers.is_number(v) == expected
