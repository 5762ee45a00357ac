"""Multi-sample dropout head: reference invariants (tier 1), the C++ CPU op against the reference (tier 2), the
module, CUDA (tier 4). The Triton twin (tier 3) is tested in test_msdrop_triton.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pyfast
from pyfast import _extension
from pyfast.ops.msdrop import multi_sample_dropout_loss
from pyfast.reference.msdrop import keep_mask, msdrop_logits_ref, msdrop_loss_ref
from tests.markers import needs_cpp

BACKENDS = ["reference", pytest.param("cpp", marks=needs_cpp)]
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# (B, D, C, M, p); the last has rows long enough that the CPU forward runs several blocks of rows (60 rows of
# D = 4096: blocks of 32 rows in float32, 16 in float64).
CASES = [(8, 5, 3, 4, 0.5), (16, 32, 10, 8, 0.3), (3, 7, 2, 1, 0.9), (33, 64, 100, 8, 0.5), (5, 9, 4, 3, 0.0),
         (15, 4096, 7, 4, 0.5)]
IDS = [f"B{b}-D{d}-C{c}-M{m}-p{p}" for b, d, c, m, p in CASES]


def _inputs(b, d, c, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype).to(device)
    w = (torch.randn(c, d, generator=g, dtype=torch.float64) / d**0.5).to(dtype).to(device)
    bias = (0.1 * torch.randn(c, generator=g, dtype=torch.float64)).to(dtype).to(device)
    y = torch.randint(0, c, (b,), generator=g).to(device)
    s = torch.tensor([1234567 + 7919 * seed], dtype=torch.int64, device=device)
    return h, w, bias, y, s


# --------------------------------------------------------------------------------------------------------------
# Tier 1: the reference
# --------------------------------------------------------------------------------------------------------------


def test_masks_are_independent_bernoulli_and_reproducible():
    s = torch.tensor([42])
    m = keep_mask(s, 8, 64, 128, 0.3)
    assert m.shape == (8, 64, 128) and m.dtype == torch.bool
    assert torch.equal(m, keep_mask(s, 8, 64, 128, 0.3))
    assert abs(m.float().mean().item() - 0.7) < 0.01
    assert (m[0] != m[1]).float().mean().item() > 0.35  # samples differ (2 p (1-p) = 0.42 expected)
    assert not torch.equal(m, keep_mask(torch.tensor([43]), 8, 64, 128, 0.3))
    assert keep_mask(s, 2, 3, 4, 0.0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_p_zero_is_plain_cross_entropy(backend):
    h, w, b, y, s = _inputs(12, 16, 5, torch.float64)
    loss, logits = multi_sample_dropout_loss(h, w, b, y, 4, 0.0, seed=s, backend=backend)
    torch.testing.assert_close(loss, F.cross_entropy(F.linear(h, w, b), y))
    torch.testing.assert_close(logits, F.linear(h, w, b).expand(4, -1, -1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_sample_is_plain_dropout(backend):
    h, w, b, y, s = _inputs(12, 16, 5, torch.float64)
    mask = keep_mask(s, 1, 12, 16, 0.4)[0]
    loss, _ = multi_sample_dropout_loss(h, w, b, y, 1, 0.4, seed=s, backend=backend)
    torch.testing.assert_close(loss, F.cross_entropy(F.linear(h * mask / 0.6, w, b), y))


def test_loss_is_the_mean_of_the_per_sample_losses():
    h, w, b, y, s = _inputs(6, 10, 4, torch.float64)
    loss, logits = msdrop_loss_ref(h, w, b, y, s, 5, 0.5)
    torch.testing.assert_close(loss, torch.stack([F.cross_entropy(z, y) for z in logits]).mean())


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    h, w, b, y, s = _inputs(5, 6, 3, torch.float64)
    leaves = [t.clone().requires_grad_() for t in (h, w, b)]
    fn = lambda h, w, b: multi_sample_dropout_loss(h, w, b, y, 3, 0.5, seed=s, backend=backend)[0]
    assert torch.autograd.gradcheck(fn, leaves)
    assert torch.autograd.gradcheck(lambda h, w: multi_sample_dropout_loss(h, w, None, y, 2, 0.3, seed=s,
                                                                           backend=backend)[0], leaves[:2])


# --------------------------------------------------------------------------------------------------------------
# Tier 2: the C++ op against the reference
# --------------------------------------------------------------------------------------------------------------


def _compare(backend, case, dtype, seed=0, device="cpu"):
    b, d, c, m, p = case
    h, w, bias, y, s = _inputs(b, d, c, dtype, seed, device)
    leaves = [t.clone().requires_grad_() for t in (h, w, bias)]
    ref = [t.detach().cpu().clone().requires_grad_() for t in (h, w, bias)]
    loss, logits = multi_sample_dropout_loss(*leaves, y, m, p, seed=s, backend=backend)
    loss_ref, logits_ref = msdrop_loss_ref(*ref[:3], y.cpu(), s.cpu(), m, p)
    assert loss.shape == () and loss.dtype == dtype and logits.shape == (m, b, c)
    assert not logits.requires_grad
    loss.backward()
    loss_ref.backward()
    tol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 2e-2 if dtype == torch.float16 else 8e-2)
    torch.testing.assert_close(logits.cpu().double(), logits_ref.double(), rtol=tol, atol=tol)
    torch.testing.assert_close(loss.cpu().double(), loss_ref.double(), rtol=tol, atol=tol)
    for name, a, r in zip(("h", "weight", "bias"), leaves, ref):
        torch.testing.assert_close(a.grad.cpu().double(), r.grad.double(), rtol=tol, atol=tol, msg=name)


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cpp_matches_reference(case, dtype):
    _compare("cpp", case, dtype)


@needs_cpp
def test_opcheck_and_only_some_gradients():
    h, w, b, y, s = _inputs(6, 8, 4)
    torch.library.opcheck(torch.ops.pyfast.msdrop_fwd.default, (h, w, b, y, s, 3, 0.5))
    torch.library.opcheck(torch.ops.pyfast.msdrop_fwd.default, (h.requires_grad_(), w, None, y, s, 2, 0.25))
    _, logits, lse = torch.ops.pyfast.msdrop_fwd(h.detach(), w, b, y, s, 3, 0.5)
    g = torch.ones(())
    for need in ((True, True, True), (True, False, False), (False, True, True)):
        torch.library.opcheck(torch.ops.pyfast.msdrop_bwd.default, (g, logits, lse, h.detach(), w, y, s, 3, 0.5, *need))
    gh, gw, gb = torch.ops.pyfast.msdrop_bwd(g, logits, lse, h.detach(), w, y, s, 3, 0.5, False, True, False)
    assert gh.shape == (0,) and gw.shape == w.shape and gb.shape == (0,)


@needs_cpp
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compile_backend):
    torch._dynamo.reset()
    h, w, b, y, s = _inputs(6, 8, 4)
    leaves = [t.clone().requires_grad_() for t in (h, w, b)]
    compiled = torch.compile(lambda h, w, b: multi_sample_dropout_loss(h, w, b, y, 4, 0.5, seed=s, backend="cpp")[0],
                             fullgraph=True, backend=compile_backend)
    compiled(*leaves).backward()
    ref = [t.clone().requires_grad_() for t in (h, w, b)]
    msdrop_loss_ref(*ref, y, s, 4, 0.5)[0].backward()
    for a, r in zip(leaves, ref):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_errors(backend):
    h, w, b, y, s = _inputs(6, 8, 4)
    call = lambda *a, **k: multi_sample_dropout_loss(*a, backend=backend, seed=k.pop("seed", s), **k)
    with pytest.raises(TypeError, match="h must be float32"):
        call(h.int(), w, b, y)
    with pytest.raises(ValueError, match=r"h must be a non-empty \[B, D\]"):
        call(h[None], w, b, y)
    with pytest.raises(ValueError, match=r"weight must be \[C, D\] with D = 8"):
        call(h, w[:, :5], b, y)
    with pytest.raises(TypeError, match="target must be an int64"):
        call(h, w, b, y.int())
    with pytest.raises(ValueError, match=r"target values must be in \[0, 4\)"):
        call(h, w, b, y + 4)
    with pytest.raises(ValueError, match=r"p must be a finite number in \[0, 1\)"):
        call(h, w, b, y, 8, 1.0)
    with pytest.raises(ValueError, match="p must be a finite number"):
        call(h, w, b, y, 8, float("nan"))
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        call(h, w, b, y, 0)
    with pytest.raises(TypeError, match="seed must be one int64"):
        call(h, w, b, y, seed=torch.tensor([1.0]))
    for bias in (b.long(), b.double()):  # an int64 bias was cast silently on the cpp backend
        with pytest.raises(TypeError, match=f"bias must have h's dtype torch.float32, got {bias.dtype}"):
            call(h, w, bias, y)


@needs_cpp
def test_the_cpp_op_rejects_a_bias_of_another_dtype():
    h, w, b, y, s = _inputs(6, 8, 4)
    for bias, name in ((b.long(), "Long"), (b.double(), "Double")):
        with pytest.raises(TypeError, match=f"msdrop: bias must have h's dtype Float, got {name}"):
            torch.ops.pyfast.msdrop_fwd(h, w, bias, y, s, 2, 0.5)


# --------------------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------------------


def test_module_eval_is_the_single_linear_and_train_has_samples():
    torch.manual_seed(0)
    head = pyfast.nn.MultiSampleDropoutHead(16, 5, num_samples=4, p=0.5)
    assert isinstance(head, torch.nn.Linear) and "num_samples=4" in repr(head)
    lin = torch.nn.Linear(16, 5)
    lin.load_state_dict(head.state_dict())
    h = torch.randn(7, 16)
    y = torch.randint(0, 5, (7,))
    head.eval()
    torch.testing.assert_close(head(h), lin(h))
    loss, logits = head(h, y)
    torch.testing.assert_close(loss, F.cross_entropy(lin(h), y))
    head.train()
    assert head(h).shape == (4, 7, 5)
    loss, logits = head(h, y)
    assert loss.shape == () and logits.shape == (4, 7, 5)
    loss.backward()
    assert head.weight.grad is not None and head.bias.grad is not None
    # Each sample's logits are an FC of a masked copy: their mean over many samples approaches FC(h).
    many = msdrop_logits_ref(h, head.weight, head.bias, torch.tensor([5]), 2000, 0.5).detach()
    torch.testing.assert_close(many.mean(0), lin(h).detach(), rtol=0, atol=0.1)
    with pytest.raises(ValueError, match="p must be"):
        pyfast.nn.MultiSampleDropoutHead(4, 2, p=1.5)


# --------------------------------------------------------------------------------------------------------------
# Tier 4: CUDA
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not _extension.has_cuda(), reason=f"needs the CUDA kernels: {_extension.cuda_reason()}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_reference(dtype):
    for i, case in enumerate(CASES):
        _compare("cuda", case, dtype, seed=i, device="cuda")
    _compare("cuda", (256, 512, 100, 8, 0.5), dtype, seed=9, device="cuda")
