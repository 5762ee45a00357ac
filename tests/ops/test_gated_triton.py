"""Tier 3: the Triton gated kernels (kernels/gated.py, ``pyfast::gated_cattn_fwd_triton`` / ``_bwd_triton`` /
``gated_route_triton``) against the reference, and their schema parity with the C++ ops. Without a GPU they run in
Triton's CPU interpreter (small shapes); with a GPU the same tests run compiled on CUDA tensors."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before pyfast._triton.gated is first imported (tests/conftest.py does too)

pytest.importorskip("triton")

from pyfast import _extension
from pyfast.ops.gated import gated_class_attention, gated_route_
from pyfast.reference.gated import gated_class_attention_ref, gated_route_ref
from pyfast.testing import assert_triton_schema_matches, named
from tests.ops.test_gated import _route_case, grads_of, make_args

DEVICE = "cpu" if _extension.triton_interpret() else "cuda"


@pytest.mark.skipif(not _extension.has_cpp(), reason="needs _C for the C++ schemas")
def test_schemas_match_the_cpp_ops():
    for name in ("gated_cattn_fwd", "gated_cattn_bwd", "gated_route"):
        assert_triton_schema_matches(name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape, bias", [((3, 7, 12, 3), True), ((2, 1, 8, 2), False), ((2, 20, 80, 4), True)],
                         ids=str)
def test_matches_reference(shape, bias, dtype):
    args = make_args(*shape, dtype=dtype, bias=bias, seed=sum(shape), device=DEVICE)
    ref_args = tuple(t.detach().cpu().double().requires_grad_() if isinstance(t, torch.Tensor) else t for t in args)
    y, attn = gated_class_attention(*args, return_attn=True, backend="triton")
    y_ref, attn_ref = gated_class_attention_ref(*ref_args)
    assert y.dtype == dtype
    tol = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(y.cpu().double(), y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(attn.cpu().double(), attn_ref, rtol=tol, atol=tol)
    gy = torch.randn_like(y_ref)
    got, want = grads_of(y, args, gy.to(DEVICE, dtype)), grads_of(y_ref, ref_args, gy)
    for name in want:
        scale = want[name].abs().max().item() + 1
        torch.testing.assert_close(got[name].cpu().double(), want[name], rtol=tol * 10, atol=tol * 10 * scale,
                                   msg=named(name))


def test_route_matches_reference():
    grads, mo, mi, eg, embs = _route_case()
    want, want_e = gated_route_ref(grads, mo, mi, eg, embs, 3.0, 800.0)
    dev = [[None if t is None else t.to(DEVICE) for t in ts] for ts in (grads, mo, mi, eg, embs)]
    dev[0][0] = dev[0][0].t().contiguous().t()
    gated_route_(*dev, s=3.0, s_max=800.0, backend="triton")
    for a, b in zip(dev[0] + dev[3], want + want_e):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-6, atol=1e-6)


def test_opcheck_and_compile():
    args = make_args(2, 5, 8, 2, dtype=torch.float32, device=DEVICE)
    torch.library.opcheck(torch.ops.pyfast.gated_cattn_fwd_triton, args)
    grads = [torch.randn(4, 3, device=DEVICE), torch.randn(4, device=DEVICE)]
    masks = ([torch.rand(4, device=DEVICE)] * 2, [torch.rand(3, device=DEVICE), torch.empty(0, device=DEVICE)])
    torch.library.opcheck(torch.ops.pyfast.gated_route_triton,
                          (grads, *masks, [torch.randn(5, device=DEVICE)], [torch.randn(5, device=DEVICE)], 10.0,
                           800.0, 50.0))

    def step(*a):
        return gated_class_attention(*a, backend="triton").square().sum()

    loss = torch.compile(step, fullgraph=True, backend="aot_eager")(*args)
    got = torch.autograd.grad(loss, [args[0], args[2]])
    want = torch.autograd.grad(step(*args), [args[0], args[2]])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
