"""The fused Fourier-KArAt CUDA kernels' per-thread code (csrc/karat/karat_fused.h), emulated on the CPU.

tests/csrc/karat_fused_emulation.cpp runs karat_fused.h's functions for every thread index in turn (the CUDA launch
runs them in parallel; no thread reads what another writes, and partial sums over the parts of a row or column go
to separate slices), built here with the system C++ compiler and called
through ctypes. So the fused kernels' arithmetic and indexing are checked against the reference on any machine; the
CUDA tier (tests/ops/test_karat.py, ``-m cuda``) runs the real kernels.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F

from pyfast.reference.karat import karat_z_ref

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CXX = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


@pytest.fixture(scope="module")
def emulation(tmp_path_factory):
    if CXX is None:
        pytest.fail("no C++ compiler (c++ / g++ / $CXX) to build the emulation")
    lib = tmp_path_factory.mktemp("karat_fused") / "libkarat_fused_emulation.so"
    subprocess.run([CXX, "-O2", "-std=c++20", "-shared", "-fPIC", "-I", os.path.join(REPO, "csrc"),
                    os.path.join(REPO, "tests", "csrc", "karat_fused_emulation.cpp"), "-o", str(lib)], check=True)
    so = ctypes.CDLL(str(lib))
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    so.karat_fused_fwd.argtypes = [ptr, ptr, i64, i64, i64, ctypes.c_int, i64, f32, i64, ptr]
    so.karat_fused_bwd.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, ctypes.c_int, i64, f32, i64, ptr, ptr, ptr]
    so.karat_sincos.argtypes = [ptr, i64, ctypes.c_int, ptr, ptr]
    return so


def _case(B, H, N, D, r, G, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, N, D, generator=g, dtype=torch.float64) for _ in range(2))
    a, b = (torch.randn(H, r, N, G, generator=g, dtype=torch.float64) for _ in range(2))
    return q, k, a, b, torch.randn(B, H, N, r, generator=g, dtype=torch.float64)


def _rank_padded(x: torch.Tensor) -> torch.Tensor:
    """``[..., r] -> [..., R4]`` float32, zeros past r, R4 = r rounded up to 4: the fused kernels' rank layout."""
    r = x.shape[-1]
    return F.pad(x.float(), (0, -r % 4)).contiguous()


def _pack_keys(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Key-major coefficients ``Ck [H, N, 2 G, R4]``, ``Ck[h, q, t G + m - 1, p] = (b if t else a)[h, p, q, m - 1]``."""
    H, _, N, G = a.shape
    return _rank_padded(torch.stack((a, b), 2).permute(0, 3, 2, 4, 1)).view(H, N, 2 * G, -1)


def _ptr(t: torch.Tensor) -> int:
    assert t.is_contiguous() and t.dtype == torch.float32
    return t.data_ptr()


@pytest.mark.parametrize("B, H, N, D, r, G, parts", [(2, 3, 13, 40, 5, 3, 1), (2, 3, 13, 40, 5, 3, 3),
                                                     (1, 2, 33, 64, 16, 4, 4), (2, 1, 7, 100, 1, 1, 2),
                                                     (1, 1, 1, 3, 12, 2, 1)])
def test_fused_kernels_match_the_reference(emulation, B, H, N, D, r, G, parts):
    q, k, a, b, gz = _case(B, H, N, D, r, G)
    scale = D ** -0.5
    q64, k64, a64, b64 = (t.clone().requires_grad_() for t in (q, k, a, b))
    z_ref = karat_z_ref(q64, k64, a64, b64, scale)
    gq_ref, gk_ref, ga_ref, gb_ref = torch.autograd.grad(z_ref, (q64, k64, a64, b64), gz)

    qf, kf, gzf = (t.float().contiguous() for t in (q, k, gz))
    S, ST = (qf @ kf.transpose(-1, -2)).contiguous(), (kf @ qf.transpose(-1, -2)).contiguous()  # cuBLAS's part
    Ck, gz_vec = _pack_keys(a, b), _rank_padded(gzf)
    # NaN-filled outputs: an element no thread writes stays NaN and fails the comparisons below.
    z_part = torch.full((parts, B, H, N, r), math.nan)
    emulation.karat_fused_fwd(_ptr(ST), _ptr(Ck), B * H, N, r, G, H, scale, parts, _ptr(z_part))
    gST, z_again = torch.full((B, H, N, N), math.nan), torch.full((parts, B, H, N, r), math.nan)
    gC_part = torch.full((parts * B, 2, H, r, N, G), math.nan)
    emulation.karat_fused_bwd(_ptr(gz_vec), _ptr(S), _ptr(ST), _ptr(Ck), B * H, N, r, G, H, scale, parts, _ptr(gST),
                              _ptr(z_again), _ptr(gC_part))
    gS = gST.transpose(-1, -2)
    z = z_part.sum(0)  # as karat_cuda.cpp adds the parts
    ga, gb = gC_part.sum(0)  # over the parts and the batch, as karat_cuda.cpp adds them: [2, H, r, N, G]

    tol = dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z.double(), z_ref.detach(), **tol)
    assert torch.equal(z_again, z_part)  # the backward's recomputed z is the forward's, bit for bit
    torch.testing.assert_close((gS @ kf).double(), gq_ref, **tol)  # g_q = gS K
    torch.testing.assert_close((gS.transpose(-1, -2) @ qf).double(), gk_ref, **tol)  # g_k = gS^T Q
    torch.testing.assert_close(ga.double(), ga_ref, **tol)
    torch.testing.assert_close(gb.double(), gb_ref, **tol)


@pytest.mark.parametrize("exact", [False, True], ids=["sincos_any", "exact_reduction_alone"])
def test_sincos_of_every_float_magnitude(emulation, exact):
    """The kernels' sincos (karat.h sincos_any: a float, a double and an exact Payne-Hanek reduction, by |x|), and the
    exact reduction alone (below 2^30 too, where sincos_any does not use it), against libm in float64, for random
    mantissas at every float exponent, subnormals to the largest, both signs, and across the reductions' limits
    (8192, 2^25, 2^30). Before the exact reduction, cos came out with the wrong sign above 2^31 and as 6e28 at 1e20."""
    g = torch.Generator().manual_seed(11)
    exponents = torch.arange(-149, 128, dtype=torch.float64).repeat_interleave(24)
    mantissas = 1 + torch.rand(exponents.numel(), generator=g, dtype=torch.float64)
    signs = torch.where(torch.rand(exponents.numel(), generator=g) < 0.5, -1.0, 1.0).double()
    limits = torch.tensor([8192.0, 2.0 ** 25, 2.0 ** 30], dtype=torch.float64)
    edges = torch.cat([limits, torch.nextafter(limits.float(), torch.tensor(0.0)).double(),
                       torch.nextafter(limits.float(), torch.tensor(math.inf)).double(), torch.tensor([0.0])])
    x = torch.cat([signs * mantissas * 2.0 ** exponents, edges, -edges]).float()
    x = x[torch.isfinite(x)].contiguous()
    s, c = torch.empty_like(x), torch.empty_like(x)
    emulation.karat_sincos(_ptr(x), x.numel(), int(exact), _ptr(s), _ptr(c))
    xd = x.double()
    torch.testing.assert_close(s.double(), torch.sin(xd), rtol=0, atol=3e-7)
    torch.testing.assert_close(c.double(), torch.cos(xd), rtol=0, atol=3e-7)
    assert (x.abs() > 2.0 ** 30).sum() > 1000  # the exact reduction was exercised

    special = torch.tensor([math.inf, -math.inf, math.nan])
    s, c = torch.empty_like(special), torch.empty_like(special)
    emulation.karat_sincos(_ptr(special), 3, int(exact), _ptr(s), _ptr(c))
    assert s.isnan().all() and c.isnan().all()
