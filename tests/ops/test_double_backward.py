"""Double backward through pyfast's C++ ops raises instead of giving silently wrong second derivatives.

The backward ops are not differentiable. Before csrc/pyfast.cpp gave them torch's not-implemented autograd kernel,
a ``create_graph=True`` gradient went through them as if they were constants, with only a warning: the second
derivative of a LIF layer came out as zero and that of KArAt attention as a wrong sum. The Triton twins raise too
(torch.library.custom_op; tests/ops/test_lif_triton.py); the reference backends are plain autograd and differentiate
twice correctly.
"""

from __future__ import annotations

import pytest
import torch

from pyfast.ops import (
    crrelu,
    gated_class_attention,
    ghost_batch_norm,
    karat_attention,
    karat_basis,
    lif,
    multi_sample_dropout_loss,
    pld_rows,
    wconv_weight,
)
from tests.markers import needs_cpp

# The ops with no autograd kernel of any kind: gated_route works in place on gradients, outside any graph.
WITHOUT_AUTOGRAD = {"pyfast::gated_route"}


def _randn(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def _lif(backend):
    return lambda x: lif(x, surrogate="atan", backend=backend), _randn(4, 3, 5)


def _karat_attention(backend):
    k, v = _randn(2, 3, 7, 8), _randn(2, 3, 7, 8)
    a, b, W = _randn(3, 4, 7, 4), _randn(3, 4, 7, 4), _randn(3, 7, 4)
    return lambda q: karat_attention(q, k, v, a, b, W, backend=backend), _randn(2, 3, 7, 8)


def _karat_basis(backend):
    k, a, b = _randn(2, 3, 7, 8), _randn(3, 4, 7, 3), _randn(3, 4, 7, 3)
    return lambda q: karat_basis(q, k, a, b, backend=backend), _randn(2, 3, 7, 8)


def _wconv(backend):
    return lambda w: wconv_weight(w, [0.7], backend=backend), _randn(4, 2, 3, 3)


def _crrelu(backend):
    return lambda x: crrelu(x, torch.full((1,), 0.3, dtype=torch.float64), backend=backend), _randn(2, 3, 4)


def _ghost_bn(backend):
    return lambda x: ghost_batch_norm(x, None, None, None, None, True, 0.1, 1e-5, 2, backend=backend), _randn(6, 3, 2)


def _msdrop(backend):
    w, target, seed = _randn(3, 4), torch.tensor([0, 1, 2, 0, 1]), torch.tensor([7])
    return lambda h: multi_sample_dropout_loss(h, w, None, target, 2, 0.3, seed=seed, backend=backend)[0], _randn(5, 4)


def _pld(backend):
    teacher, labels = _randn(4, 6), torch.tensor([0, 5, 2, 3])
    return lambda student: pld_rows(student, teacher, labels, 1.0, backend=backend), _randn(4, 6)


def _gated(backend):
    C = 8
    gate = torch.sigmoid(_randn(C))
    wq, wk, wv, wp = (_randn(C, C) / C ** 0.5 for _ in range(4))
    bq, bv, bp = (_randn(C) for _ in range(3))
    return lambda x: gated_class_attention(x, gate, wq, bq, wk, wv, bv, wp, bp, 2, backend=backend), _randn(2, 4, C)


CASES = {"lif": _lif, "karat_attention": _karat_attention, "karat_basis": _karat_basis, "wconv": _wconv,
         "crrelu": _crrelu, "ghost_bn": _ghost_bn, "msdrop": _msdrop, "pld": _pld, "gated": _gated}


def _loss(case, backend):
    """(loss, x): loss(x) = sum of the squared outputs of the case's op as a function of its input x (seeded)."""
    torch.manual_seed(0)
    fn, x = CASES[case](backend)
    return (lambda x: (fn(x) ** 2).sum()), x


def _first_grad(case, backend):
    loss, x = _loss(case, backend)
    x.requires_grad_()
    (g,) = torch.autograd.grad(loss(x), [x], create_graph=True)
    return g, x


@needs_cpp
@pytest.mark.parametrize("case", CASES)
def test_double_backward_through_a_cpp_op_raises(case):
    g, x = _first_grad(case, "cpp")
    with pytest.raises(RuntimeError, match=r"derivative for pyfast::\w+ is not implemented"):
        torch.autograd.grad((g ** 2).sum(), [x])


@needs_cpp
@pytest.mark.parametrize("case", CASES)
def test_first_order_gradient_with_create_graph_still_matches(case):
    """The not-implemented kernel only guards the second backward: the first-order values are unchanged."""
    g_cpp, _ = _first_grad(case, "cpp")
    g_ref, _ = _first_grad(case, "reference")
    torch.testing.assert_close(g_cpp.detach(), g_ref.detach())


@pytest.mark.parametrize("case", CASES)
def test_reference_backend_differentiates_twice(case):
    """The contrast (and the README's advice): the references are plain autograd, their second derivatives exist
    and are not all zero."""
    g, x = _first_grad(case, "reference")
    (gg,) = torch.autograd.grad((g ** 2).sum(), [x])
    assert gg.abs().sum() > 0


@needs_cpp
def test_every_op_but_gated_route_has_an_autograd_kernel():
    """A new op registered without one (no register_autograd, not in csrc/pyfast.cpp's not-implemented list) fails
    here: torch's default for it would treat it as a constant under autograd, with only a warning."""
    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("pyfast::"))
    assert "pyfast::lif_bwd" in ops and "pyfast::karat_attention_bwd" in ops
    missing = [n for n in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "Autograd")]
    assert sorted(missing) == sorted(WITHOUT_AUTOGRAD)


@pytest.mark.parametrize("case", CASES)
def test_reference_backend_runs_under_torch_func_grad(case):
    """The README's other promise for the references: torch.func.grad gives autograd's gradient."""
    loss, x = _loss(case, "reference")
    x_ = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(loss(x_), [x_])
    torch.testing.assert_close(torch.func.grad(loss)(x), want)
