"""Fourier-KArAt: the reference's maths, and the fused C++ (CPU) / CUDA ops against it."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from pyfast import _extension
from pyfast._dtypes import acc_dtype
from pyfast.ops.karat import karat_attention, karat_basis
from pyfast.reference.karat import fourier_basis_ref, harmonics, karat_attention_ref, karat_z_ref
from pyfast.testing import HALF_TYPES, assert_half_error_within, named
from tests.markers import needs_cpp


def _inputs(B=2, H=3, N=11, D=8, r=4, M=4, dtype=torch.float64, device="cpu", seed=0, amp=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (amp * torch.randn(B, H, N, D, generator=g, dtype=torch.float64) for _ in range(3))
    a, b = (torch.randn(H, r, N, M, generator=g, dtype=torch.float64) for _ in range(2))
    W = torch.randn(H, N, r, generator=g, dtype=torch.float64) / N
    return [t.to(device=device, dtype=dtype if t.dim() == 4 and t is not a and t is not b else
                 acc_dtype(dtype)).requires_grad_()
            for t in (q, k, v, a, b, W)]


def _grads(fn, inputs, seed=1):
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out)
    return [out, *torch.autograd.grad(out, inputs, g)]


# ----------------------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------------------


def test_reference_is_the_paper_formula_written_as_loops():
    q, k, v, a, b, W = (t.detach() for t in _inputs(B=1, H=2, N=5, D=3, r=2, M=3))
    scale = 0.7
    out = karat_attention_ref(q, k, v, a, b, W, scale, constant_term=True)
    for h in range(2):
        A = scale * q[0, h] @ k[0, h].T
        z = torch.zeros(5, 2, dtype=torch.float64)
        for kk in range(5):
            for p in range(2):
                for qq in range(5):
                    for m in range(3):  # m = 0..G with the constant term
                        z[kk, p] += a[h, p, qq, m] * torch.cos(m * A[kk, qq]) + b[h, p, qq, m] * torch.sin(m * A[kk, qq])
        sigma = z @ W[h].T  # sigma[k, :] = (W z[k, :])^T
        torch.testing.assert_close(out[0, h], sigma @ v[0, h])


def test_reference_constant_term_and_dead_sine_slot():
    q, k, v, a, b, W = _inputs(N=6, M=3)
    with torch.no_grad():
        a[..., 1:] = 0
        b[..., 1:] = 0
    out = karat_attention_ref(q, k, v, a, b, W)
    # Only m = 0 left: z[k, p] = sum_q a[p, q, 0] for every row, whatever q and k are.
    z = a[..., 0].sum(-1)  # [H, r]
    sigma_row = torch.einsum("hp,hqp->hq", z, W)  # the same attention row for every query
    torch.testing.assert_close(out, (sigma_row[None, :, None, :] @ v).expand_as(out))
    out.sum().backward()
    assert torch.count_nonzero(b.grad[..., 0]) == 0 and torch.count_nonzero(a.grad[..., 0]) > 0
    assert q.grad.abs().max() == 0  # a constant row operator does not depend on the scores
    assert torch.equal(harmonics(3, True), torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(harmonics(3, False), torch.tensor([1.0, 2.0, 3.0]))


def test_reference_basis_matches_the_angle_addition_recurrence():
    A = torch.randn(4, 5, dtype=torch.float64) * 3
    cos, sin = fourier_basis_ref(A, harmonics(5, False, dtype=torch.float64))
    c, s = torch.cos(A), torch.sin(A)
    cm, sm = c, s
    for m in range(1, 5):
        cm, sm = cm * c - sm * s, sm * c + cm * s
        torch.testing.assert_close(cos[..., m], cm)
        torch.testing.assert_close(sin[..., m], sm)


def test_reference_gradcheck_every_input():
    inputs = _inputs(B=1, H=2, N=4, D=3, r=2, M=3)
    assert torch.autograd.gradcheck(lambda *t: karat_attention_ref(*t, 0.5), inputs)
    w_base = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: karat_attention_ref(*t[:6], 0.5, base_activation="silu",
                                                                   w_base=t[6]), [*inputs, w_base])


# ----------------------------------------------------------------------------------------------------------------
# C++ (CPU) op
# ----------------------------------------------------------------------------------------------------------------


@needs_cpp
@pytest.mark.parametrize("N", [1, 13, 64, 70, 131])  # 64 is the CPU tile height: N below, at and above it
@pytest.mark.parametrize("constant_term", [True, False])
def test_cpp_matches_reference_float64(N, constant_term):
    inputs = _inputs(N=N, M=4 if constant_term else 3, amp=1.5)
    ref = _grads(lambda *t: karat_attention_ref(*t, 0.4, constant_term=constant_term), inputs)
    got = _grads(lambda *t: karat_attention(*t, 0.4, constant_term=constant_term, backend="cpp"), inputs)
    for name, x, y in zip(["out", "q", "k", "v", "a", "b", "W"], got, ref):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9, msg=named(name))


@needs_cpp
@pytest.mark.parametrize("r, D", [(20, 40), (16, 16), (3, 67)])
def test_cpp_attention_other_ranks_and_head_widths(r, D):
    # The whole attention op (basis and tail) at ranks and head widths around powers of two, against the reference.
    inputs = _inputs(B=1, H=2, N=11, D=D, r=r, M=3)
    ref = _grads(lambda *t: karat_attention_ref(*t, 0.3), inputs)
    got = _grads(lambda *t: karat_attention(*t, 0.3, backend="cpp"), inputs)
    for name, x, y in zip(["out", "q", "k", "v", "a", "b", "W"], got, ref):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9, msg=named(name))


@needs_cpp
def test_cpp_matches_reference_float32_large_scores():
    # |A| up to ~ 50: the float sincos reduces the argument in double, so large scores stay accurate.
    inputs = _inputs(N=37, D=16, M=4, dtype=torch.float32, amp=2.0)
    truth = _grads(lambda *t: karat_attention_ref(*(x.double() for x in t)), inputs)
    eager = _grads(lambda *t: karat_attention_ref(*t), inputs)
    got = _grads(lambda *t: karat_attention(*t, backend="cpp"), inputs)
    for name, x, e, t in zip(["out", "q", "k", "v", "a", "b", "W"], got, eager, truth):
        assert x.dtype == torch.float32
        # as accurate as the float32 eager reference (which uses libm's sin / cos)
        assert_half_error_within(x, t, e, name, floor=1e-6 * t.abs().max().item())


@needs_cpp
def test_cpp_float32_angles_beyond_the_fast_reduction():
    """Rows whose |scale q.k| exceed the float range reduction's limit (8192) take the double one: exact integer scores
    up to 6e5 (where the float reduction would be off by ~0.03 rad) still give sin / cos to float precision; the other
    rows stay on the fast path."""
    g = torch.Generator().manual_seed(3)
    N = 20
    q = torch.randint(1000, 3000, (1, 1, N, 1), generator=g).float()
    q[0, 0, : N // 2] = torch.randint(1, 20, (N // 2, 1), generator=g).float()  # rows below the limit
    k = torch.randint(1, 200, (1, 1, N, 1), generator=g).float()  # scores q k: integers, exact in float32
    a, b = (torch.randn(1, 3, N, 3, generator=g) for _ in range(2))
    assert (q * k.transpose(-1, -2)).abs().max() > 2e5
    got = karat_basis(q, k, a, b, 1.0, backend="cpp")
    truth = karat_z_ref(q.double(), k.double(), a.double(), b.double(), 1.0)
    torch.testing.assert_close(got.double(), truth, rtol=0, atol=2e-5 * N)


@needs_cpp
def test_cpp_float32_huge_and_non_finite_scores():
    """Scores past 2^30 (a diverging model's) are reduced exactly too: before, cos came out with the wrong sign above
    2^31 and as 6e28 at 1e20. A row with an inf or NaN score gives NaN; the other rows are unaffected. Scores are
    x * 2^j, exact in float32, from magnitudes on both sides of the reductions' limits (8192, 2^30)."""
    g = torch.Generator().manual_seed(5)
    x = torch.tensor([math.nan, math.inf, 1.5, 8192.0, 9000.0, 2.0 ** 30 - 64, 2.0 ** 30, 3e9, -3e9, 1e10, 1e12, 1e20,
                      -1e20, 3e36, -2.0 ** 30, 123.25])
    N = x.numel()
    q = x.view(1, 1, N, 1)
    k = (2.0 ** torch.randint(-3, 4, (N,), generator=g).float()).view(1, 1, N, 1)
    a, b = (torch.randn(1, 3, N, 3, generator=g) for _ in range(2))
    got = karat_basis(q, k, a, b, 1.0, backend="cpp")
    truth = karat_z_ref(q.double(), k.double(), a.double(), b.double(), 1.0)
    assert got[0, 0, :2].isnan().all()
    torch.testing.assert_close(got[0, 0, 2:].double(), truth[0, 0, 2:], rtol=0, atol=2e-6 * N)


@needs_cpp
@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_cpp_half_types_within_twice_the_eager_error(dtype):
    # The kernel's part, z and the gradients of q, k, a, b: at most 2x the error of the eager reference at dtype.
    q, k, _, a, b, _ = _inputs(N=21, D=16, M=3, dtype=dtype)
    truth = _grads(lambda *t: karat_z_ref(*(x.double() for x in t)), [q, k, a, b])
    eager = _grads(lambda *t: karat_z_ref(*t), [q, k, a, b])
    got = _grads(lambda *t: karat_basis(*t, backend="cpp"), [q, k, a, b])
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[3].dtype == torch.float32
    for name, x, e, t in zip(["z", "q", "k", "a", "b"], got, eager, truth):
        assert_half_error_within(x, t, e, name, floor=1e-3 * t.abs().max().item())


@needs_cpp
@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_cpp_half_types_attention_end_to_end(dtype):
    # z (W^T V) runs in dtype through ATen (AMP-style); everything within half precision of the float64 truth.
    inputs = _inputs(N=21, D=16, M=4, dtype=dtype)
    truth = _grads(lambda *t: karat_attention_ref(*(x.double() for x in t)), inputs)
    got = _grads(lambda *t: karat_attention(*t, backend="cpp"), inputs)
    tol = {torch.float16: 5e-3, torch.bfloat16: 2e-2}[dtype]
    for name, x, t in zip(["out", "q", "k", "v", "a", "b", "W"], got, truth):
        assert (x.double() - t).abs().max() <= tol * t.abs().max(), name


@needs_cpp
def test_cpp_op_gradcheck_every_input():
    q, k, _, a, b, _ = _inputs(B=1, H=2, N=6, D=3, r=2, M=3)
    assert torch.autograd.gradcheck(lambda *t: torch.ops.pyfast.karat_fwd(*t, 0.8), (q, k, a, b))
    for constant_term in (True, False):
        assert torch.autograd.gradcheck(lambda *t, c=constant_term: karat_attention(*t, 0.8, constant_term=c,
                                                                                    backend="cpp"),
                                        _inputs(B=1, H=2, N=5, D=3, r=2, M=3))


@needs_cpp
def test_cpp_backward_recomputes_the_forward_z():
    q, k, _, a, b, _ = (t.detach() for t in _inputs(N=70, M=3, dtype=torch.float32))
    g = torch.randn(2, 3, 70, a.shape[1])
    with_z = torch.ops.pyfast.karat_bwd(g, q, k, a, b, 0.7, True)
    without = torch.ops.pyfast.karat_bwd(g, q, k, a, b, 0.7)
    torch.testing.assert_close(with_z[4], torch.ops.pyfast.karat_fwd(q, k, a, b, 0.7), rtol=0, atol=0)
    assert without[4].numel() == 0
    for x, y in zip(with_z[:4], without[:4]):
        assert torch.equal(x, y)


@needs_cpp
def test_cpp_basis_contraction_matches_reference():
    q, k, _, a, b, _ = (t.detach() for t in _inputs(N=29, M=3, dtype=torch.float32))
    torch.testing.assert_close(karat_basis(q, k, a, b, backend="cpp"), karat_z_ref(q, k, a, b), rtol=1e-5, atol=1e-4)


@needs_cpp
def test_cpp_non_contiguous_inputs():
    B, N, H, D = 2, 9, 3, 8
    qkv = torch.randn(B, N, 3, H, D, dtype=torch.float64)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # timm's layout: views with strides of [B, N, 3, H, D]
    assert not q.is_contiguous()
    _, _, _, a, b, W = (t.detach() for t in _inputs(B=B, H=H, N=N, D=D))
    a_nc = a.transpose(0, 1).contiguous().transpose(0, 1)
    assert not a_nc.is_contiguous()
    torch.testing.assert_close(karat_attention(q, k, v, a_nc, b, W, backend="cpp"),
                               karat_attention_ref(q, k, v, a, b, W))


@needs_cpp
def test_cpp_avx2_and_baseline_loops_agree():
    code = ("import torch, pyfast; torch.manual_seed(0); q = torch.randn(2, 3, 70, 16); k = torch.randn(2, 3, 70, 16);"
            "a = torch.randn(3, 5, 70, 3); b = torch.randn(3, 5, 70, 3); g = torch.randn(2, 3, 70, 5);"
            "z = torch.ops.pyfast.karat_fwd(q, k, a, b, 0.7); r = torch.ops.pyfast.karat_bwd(g, q, k, a, b, 0.7);"
            "torch.save([z, *r], __import__('sys').argv[1])")
    outs = []
    for i, env in enumerate(({}, {"PYFAST_CPU_BASELINE": "1"})):
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"karat_isa_{os.getpid()}_{i}.pt")
        subprocess.run([sys.executable, "-c", code, path], check=True, env={**os.environ, **env})
        outs.append(torch.load(path))
        os.remove(path)
    for x, y in zip(*outs):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-4)


@needs_cpp
def test_opcheck():
    q, k, _, a, b, _ = (t.detach() for t in _inputs(N=7, M=2, dtype=torch.float32))
    g = torch.randn(2, 3, 7, 4)
    torch.library.opcheck(torch.ops.pyfast.karat_fwd, (q.requires_grad_(), k.requires_grad_(), a.requires_grad_(),
                                                       b.requires_grad_(), 0.5))
    torch.library.opcheck(torch.ops.pyfast.karat_bwd, (g, q.detach(), k.detach(), a.detach(), b.detach(), 0.5))
    torch.library.opcheck(torch.ops.pyfast.karat_bwd, (g, q.detach(), k.detach(), a.detach(), b.detach(), 0.5, True))
    q, k, v, a, b, W = _inputs(N=7, M=3, dtype=torch.float32)
    for constant_term in (True, False):
        torch.library.opcheck(torch.ops.pyfast.karat_attention, (q, k, v, a, b, W, 0.5, constant_term))
        # karat_attention_fwd / _bwd run below karat_attention's autograd (no autograd of their own)
        detached = [t.detach() for t in (q, k, v, a, b, W)]
        torch.library.opcheck(torch.ops.pyfast.karat_attention_fwd, (*detached, 0.5, constant_term))
        z = torch.ops.pyfast.karat_attention_fwd(*detached, 0.5, constant_term)[1]
        torch.library.opcheck(torch.ops.pyfast.karat_attention_bwd,
                              (torch.randn_like(q), *detached, z, 0.5, constant_term))


@needs_cpp
def test_torch_compile_fullgraph_cpu():
    inputs = _inputs(N=9, dtype=torch.float32)
    compiled = torch.compile(lambda *t: karat_attention(*t, backend="cpp"), fullgraph=True, backend="aot_eager")
    got = _grads(compiled, inputs)
    ref = _grads(lambda *t: karat_attention_ref(*t), inputs)
    for x, y in zip(got, ref):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


@needs_cpp
@pytest.mark.parametrize("N", [65, 197])
def test_fused_saves_q_k_v_and_z_only_at_most_a_fifth_of_the_reference(N):
    from pyfast.bench.harness import saved_bytes  # the benchmark's counter: distinct storages, parameters excluded

    # The shapes, ViT-Tiny at 32^2 (N = 65) and 224^2 (N = 197), at batch 2.
    B, H, D, r = 2, 3, 64, 12
    q, k, v, a, b, W = _inputs(B=B, H=H, N=N, D=D, r=r, M=4, dtype=torch.float32)
    ref = saved_bytes(lambda: karat_attention_ref(q, k, v, a, b, W), [a, b, W])
    fused = saved_bytes(lambda: karat_attention(q, k, v, a, b, W, backend="cpp"), [a, b, W])
    assert fused == 3 * q.nbytes + B * H * N * r * 4  # q, k, v and z [B, H, N, r]: no W^T V, nothing N x N
    assert fused <= ref / 5, (fused, ref)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
def test_bad_input_raises_naming_the_argument(backend):
    q, k, v, a, b, W = (t.detach() for t in _inputs(N=8, M=4, dtype=torch.float32))
    call = lambda **kw: karat_attention(**{"q": q, "k": k, "v": v, "a": a, "b": b, "W": W, "backend": backend,
                                           **kw})
    with pytest.raises(ValueError, match="sequence length N = 8 .* N = 9"):
        call(a=torch.randn(3, 4, 9, 4), b=torch.randn(3, 4, 9, 4), W=torch.randn(3, 9, 4))
    with pytest.raises(ValueError, match="G >= 1"):
        call(a=a[..., :1], b=b[..., :1])
    with pytest.raises(ValueError, match="r >= 1"):
        call(a=a[:, :0], b=b[:, :0], W=W[..., :0])
    with pytest.raises(ValueError, match="b must have a's shape"):
        call(b=b[..., :3])
    with pytest.raises(ValueError, match="W must be"):
        call(W=W[:, :, :2])
    with pytest.raises(TypeError, match="q must be float32"):
        call(q=q.to(torch.int32))
    with pytest.raises(ValueError, match="k must have q's shape"):
        call(k=k[:, :, :5])
    with pytest.raises(ValueError, match="scale must be a finite"):
        call(scale=float("nan"))
    with pytest.raises(ValueError, match="q must not be empty"):
        call(q=q[:0], k=k[:0], v=v[:0])
    with pytest.raises(ValueError, match="v must match q"):
        call(v=v.double())


@needs_cpp
def test_cpp_op_checks_direct_callers():
    q = torch.randn(1, 2, 5, 4)
    a = torch.randn(2, 3, 5, 2)
    with pytest.raises(ValueError, match="a must be"):
        torch.ops.pyfast.karat_fwd(q, q, torch.randn(2, 3, 6, 2), torch.randn(2, 3, 6, 2), 1.0)
    with pytest.raises(TypeError, match="q must be"):
        torch.ops.pyfast.karat_fwd(q.int(), q.int(), a, a, 1.0)
    with pytest.raises(ValueError, match="grad_z must be"):
        torch.ops.pyfast.karat_bwd(torch.randn(1, 2, 5, 4), q, q, a, a, 1.0)
    W = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="M >= 2 slots"):
        torch.ops.pyfast.karat_attention(q, q, q, a[..., :1], a[..., :1], W, 1.0, True)
    with pytest.raises(ValueError, match="v must match q"):
        torch.ops.pyfast.karat_attention(q, q, q.double(), a, a, W, 1.0, True)
    with pytest.raises(ValueError, match="W must be"):
        torch.ops.pyfast.karat_attention(q, q, q, a, a, W[:, :4], 1.0, True)
    z = torch.zeros(1, 2, 5, 3)
    with pytest.raises(ValueError, match="grad_out must have q's shape"):
        torch.ops.pyfast.karat_attention_bwd(q[:, :, :4], q, q, q, a, a, W, z, 1.0, True)
    with pytest.raises(ValueError, match=r"z must be \[B, H, N, r\]"):
        torch.ops.pyfast.karat_attention_bwd(q, q, q, q, a, a, W, z[..., :2], 1.0, True)


def test_info_lists_karat():
    from pyfast.info import OPS

    assert "karat" in OPS


# ----------------------------------------------------------------------------------------------------------------
# CUDA (run with pytest -m cuda on a GPU)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not _extension.has_cuda(), reason=f"needs the CUDA kernels: {_extension.cuda_reason()}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N", [17, 65, 197])
def test_cuda_matches_reference(dtype, N):
    inputs = _inputs(B=3, N=N, D=32, r=12, dtype=dtype, device="cuda")
    truth = _grads(lambda *t: karat_attention_ref(*(x.double() for x in t)), inputs)
    eager = _grads(lambda *t: karat_attention_ref(*t), inputs)
    got = _grads(lambda *t: karat_attention(*t, backend="cuda"), inputs)
    for name, x, e, t in zip(["out", "q", "k", "v", "a", "b", "W"], got, eager, truth):
        if dtype in HALF_TYPES:
            assert_half_error_within(x, t, e, name, floor=1e-3 * t.abs().max().item())
        else:
            torch.testing.assert_close(x.double(), t.double(), rtol=1e-4, atol=1e-4 * t.abs().max().item(), msg=named(name))


@pytest.mark.cuda
@pytest.mark.skipif(not _extension.has_cuda(), reason=f"needs the CUDA kernels: {_extension.cuda_reason()}")
@pytest.mark.parametrize("r, G", [(20, 3), (12, 5)])
def test_cuda_tiled_path_beyond_the_fused_kernels(r, G):
    # r > 16 or G > 4: the tiled cuBLAS path (the fused kernels hold r and G in registers), float32 against float64.
    inputs = _inputs(B=2, N=37, D=160, r=r, M=G, dtype=torch.float32, device="cuda")
    truth = _grads(lambda *t: karat_attention_ref(*(x.double() for x in t)), inputs)
    got = _grads(lambda *t: karat_attention(*t, backend="cuda"), inputs)
    for name, x, t in zip(["out", "q", "k", "v", "a", "b", "W"], got, truth):
        torch.testing.assert_close(x.double(), t.double(), rtol=1e-4, atol=1e-4 * t.abs().max().item(), msg=named(name))


@pytest.mark.parametrize("device", [
    pytest.param("cpu", marks=needs_cpp),
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not _extension.has_cuda(), reason=f"needs the CUDA kernels: {_extension.cuda_reason()}")])])
@pytest.mark.parametrize("r, G", [(1, 1), (5, 3), (12, 4), (16, 2)])
def test_basis_ops_any_rank_and_unaligned_grad_z(device, r, G):
    # The fused CUDA kernels read the coefficients and g_z as 16-byte vectors of a rank padded to a multiple of 4; a
    # g_z that is contiguous but not 16-byte aligned (a view 4 bytes into its storage) must be copied, never read
    # misaligned. The CPU kernels take the same inputs.
    q, k, _, a, b, _ = (t.detach() for t in _inputs(B=2, N=29, D=16, r=r, M=G))
    storage = torch.randn(2 * 3 * 29 * r + 1, dtype=torch.float64)
    grad_z = storage[1:].view(2, 3, 29, r)
    z_ref = karat_z_ref(q, k, a, b, 0.25)
    truth = torch.autograd.functional.vjp(lambda *t: karat_z_ref(*t, 0.25), (q, k, a, b), grad_z)[1]
    inputs = [t.float().to(device) for t in (q, k, a, b)]
    g_unaligned = storage.float().to(device)[1:].view(2, 3, 29, r)
    assert g_unaligned.data_ptr() % 16 != 0
    z = torch.ops.pyfast.karat_fwd(*inputs, 0.25)
    torch.testing.assert_close(z.double().cpu(), z_ref, rtol=1e-4, atol=1e-4 * z_ref.abs().max().item())
    got = torch.ops.pyfast.karat_bwd(g_unaligned, *inputs, 0.25, True)
    for name, x, t in zip(["q", "k", "a", "b", "z"], got, [*truth, z_ref]):
        torch.testing.assert_close(x.double().cpu(), t, rtol=1e-4, atol=1e-4 * t.abs().max().item(), msg=named(name))


@pytest.mark.cuda
@pytest.mark.skipif(not _extension.has_cuda(), reason=f"needs the CUDA kernels: {_extension.cuda_reason()}")
def test_cuda_opcheck_and_auto_backend():
    q, k, _, a, b, _ = (t.detach() for t in _inputs(N=33, M=3, dtype=torch.float32, device="cuda"))
    torch.library.opcheck(torch.ops.pyfast.karat_fwd, (q.requires_grad_(), k, a, b, 0.5))
    torch.library.opcheck(torch.ops.pyfast.karat_bwd, (torch.randn(2, 3, 33, 4, device="cuda"), q.detach(), k, a, b,
                                                       0.5, True))
    attention_inputs = _inputs(N=33, M=3, dtype=torch.float32, device="cuda")
    torch.library.opcheck(torch.ops.pyfast.karat_attention, (*attention_inputs, 0.5, True))
    detached = [t.detach() for t in attention_inputs]
    torch.library.opcheck(torch.ops.pyfast.karat_attention_fwd, (*detached, 0.5, True))
    z = torch.ops.pyfast.karat_attention_fwd(*detached, 0.5, True)[1]
    torch.library.opcheck(torch.ops.pyfast.karat_attention_bwd, (torch.randn_like(q), *detached, z, 0.5, True))
    assert karat_basis(q, k, a, b).device.type == "cuda"
