"""Tier 3: the Triton Mesa kernels (kernels/mesa.py, ``pyfast::mesa_quantize_triton`` / ``mesa_dequantize_triton``)
against :mod:`pyfast.reference.mesa`, bit for bit.

Without a GPU the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set before pyfast._triton.mesa is
imported), so shapes are tiny; with a GPU the same tests run compiled on CUDA tensors.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before pyfast._triton.mesa is first imported (tests/conftest.py does too)

pytest.importorskip("triton")

from pyfast import _extension
from pyfast.nn import mesa
from pyfast.ops.mesa import mesa_dequantize, mesa_quantize
from pyfast.reference.mesa import mesa_dequantize_ref, mesa_quantize_ref
from pyfast.testing import assert_triton_schema_matches

DEVICE = "cpu" if _extension.triton_interpret() else "cuda"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LAYOUTS = [((2, 3, 5, 4), 1, 3), ((3, 7, 12), -1, 4), ((1, 1, 1), 0, 1)]


def _x(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2.5 + 0.7
    x.view(-1)[0] = float("nan") if x.numel() > 3 else x.view(-1)[0]  # non-finite values stay out of the statistics
    return x.to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: f"{lay[0]}-dim{lay[1]}-G{lay[2]}")
def test_triton_matches_reference_exactly(dtype, layout):
    shape, dim, groups = layout
    x = _x(shape, dtype)
    clip = (torch.rand(groups) + 0.5).to(DEVICE)
    shift = (-torch.rand(groups)).to(DEVICE)
    seed = torch.tensor([-98765432123], device=DEVICE)
    for init, update, stochastic, levels in [(False, True, True, 256), (True, True, True, 256),
                                             (True, False, False, 5), (True, True, False, 256)]:
        args = (x, clip, shift, torch.tensor([init], device=DEVICE), seed, dim, levels, 0.9, update, stochastic)
        got = torch.ops.pyfast.mesa_quantize_triton(*args)
        want = mesa_quantize_ref(*args)
        for g, w in zip(got, want):
            assert torch.equal(g, w), (init, update, stochastic, levels)
        d = torch.ops.pyfast.mesa_dequantize_triton(got[0], got[1], got[2], dim, levels, dtype)
        assert torch.equal(d, mesa_dequantize_ref(got[0], got[1], got[2], dim, levels, dtype))


def test_batch_without_finite_values_keeps_the_estimates():
    """All NaN, one group of NaN / +-inf, no elements: the groups without a finite value keep their estimates, as in
    the reference (tests/ops/test_mesa.py has the rule)."""
    mixed = torch.randn(4, 6)
    mixed[:, :3] = float("nan")
    mixed[0, 0] = float("inf")
    clip, shift = torch.tensor([2.5, 0.75], device=DEVICE), torch.tensor([-1.0, 0.25], device=DEVICE)
    seed = torch.tensor([3], device=DEVICE)
    for x in (torch.full((4, 6), float("nan")), mixed, torch.empty(0, 6)):
        for init, update in [(False, True), (True, True), (True, False)]:
            args = (x.to(DEVICE), clip, shift, torch.tensor([init], device=DEVICE), seed, -1, 256, 0.9, update, True)
            got, want = torch.ops.pyfast.mesa_quantize_triton(*args), mesa_quantize_ref(*args)
            for g, w in zip(got, want):
                assert torch.equal(g, w), (x.shape, init, update)
            assert (got[1][0].item(), got[2][0].item()) == (2.5, -1.0)


def test_dequantize_codes_past_the_levels():
    """The kernel writes NaN for a code >= levels (it cannot raise); the public function raises first."""
    clip, shift = torch.ones(2, device=DEVICE), torch.zeros(2, device=DEVICE)
    q = torch.tensor([[0, 6, 7, 200], [1, 2, 3, 4]], dtype=torch.uint8, device=DEVICE)
    out = torch.ops.pyfast.mesa_dequantize_triton(q, clip, shift, -1, 7, torch.float32)
    assert torch.isnan(out).tolist() == [[False, False, True, True], [False] * 4]
    with pytest.raises(ValueError, match=r"q holds code 200, but codes of levels = 7 are 0\.\.6"):
        mesa_dequantize(q, clip, shift, levels=7, backend="triton")


@pytest.mark.skipif(not _extension.has_cpp(), reason="needs the C++ extension pyfast._C (the C++ schemas)")
@pytest.mark.parametrize("name", ["mesa_quantize", "mesa_dequantize"])
def test_schema_matches_cpp_op(name):
    assert_triton_schema_matches(name)


def test_public_functions_opcheck_and_module():
    x = _x((2, 3, 4), torch.float32)
    state = (torch.ones(3, device=DEVICE), torch.zeros(3, device=DEVICE), torch.tensor([False], device=DEVICE))
    seed = torch.tensor([5], device=DEVICE)
    q, c, s = mesa_quantize(x, *state, seed, dim=1, backend="triton")
    assert torch.equal(q, mesa_quantize(x, *state, seed, dim=1, backend="reference")[0])
    assert mesa_dequantize(q, c, s, dim=1, backend="triton").shape == x.shape
    torch.library.opcheck(torch.ops.pyfast.mesa_quantize_triton.default, (x, *state, seed, 1, 256, 0.9, True, True))
    torch.library.opcheck(torch.ops.pyfast.mesa_dequantize_triton.default, (q, c, s, 1, 256, torch.float16))
    torch.manual_seed(0)
    lin = mesa.Linear(4, 3, quant_groups=2, backend="triton").to(DEVICE)
    ref = mesa.Linear(4, 3, quant_groups=2, backend="reference").to(DEVICE)
    ref.load_state_dict(lin.state_dict())
    xin = torch.randn(5, 4, device=DEVICE, requires_grad=True)
    torch.manual_seed(1)
    lin(xin).sum().backward()
    torch.manual_seed(1)
    ref(xin).sum().backward()
    assert torch.equal(lin.weight.grad, ref.weight.grad)  # same seed, same codes, same gradient
