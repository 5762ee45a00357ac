"""Test helpers shared by pyfast's test suite: per-dtype tolerances, the half-precision error rule, and inputs kept
away from spike thresholds.

Tolerance rule for float16/bfloat16 (DESIGN.md): a kernel's error against float32 truth may be at most twice the
error of the eager reference run at the same dtype (plus a small absolute floor for values that are exactly zero).
"""

from __future__ import annotations

import torch

# (rtol, atol) of a kernel against the reference at the same dtype, for float32 / float64.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-6, 1e-6),  # LIF hyperparameters reach the kernels as float32
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}
HALF_TYPES = (torch.float16, torch.bfloat16)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, msg: str = ""):
    """assert_close with the tolerance of ``dtype`` (default: actual's dtype), comparing in float64."""
    rtol, atol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, msg=lambda m: f"{msg}\n{m}")


def assert_triton_schema_matches(name: str) -> None:
    """``torch.ops.pyfast.<name>_triton`` has the schema of the C++ op ``torch.ops.pyfast.<name>``: the same argument
    names and types and the same return types (DESIGN.md: a Triton twin is a drop-in for the C++ op)."""
    def signature(op):
        schema = op.default._schema
        return [(a.name, str(a.type)) for a in schema.arguments], [str(r.type) for r in schema.returns]

    assert signature(getattr(torch.ops.pyfast, f"{name}_triton")) == signature(getattr(torch.ops.pyfast, name)), name


def named(name: str):
    """``msg=`` for torch.testing.assert_close that prefixes ``name`` and keeps torch's mismatch report (a plain string
    replaces it, and a failure then says which tensor but not by how much)."""
    return lambda detail: f"{name}: {detail}"


def assert_half_error_within(actual: torch.Tensor, truth: torch.Tensor, eager_same_dtype: torch.Tensor, name: str,
                             factor: float = 2.0, floor: float = 1e-3):
    """max |actual - truth| <= factor * max |eager - truth| + floor, for a half-precision kernel output ``actual``."""
    err = (actual.double() - truth.double()).abs().max().item()
    ref_err = (eager_same_dtype.double() - truth.double()).abs().max().item()
    assert err <= factor * ref_err + floor, (
        f"{name}: kernel error {err:.3g} exceeds {factor} x eager-reference error {ref_err:.3g} + {floor}"
    )


def pld_inputs(b: int, c: int, dtype: torch.dtype = torch.float64, seed: int = 0, device="cpu", ties: bool = False):
    """Student and teacher logits [B, C] and labels [B] for the Plackett-Luce distillation tests; with ``ties``,
    integer teacher logits (many equal values, -0 and +0 among them)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, c, generator=g, dtype=torch.float64) * 2
    t = torch.randn(b, c, generator=g, dtype=torch.float64) * 2
    if ties:
        t = t.round()
        t[t == 0] = torch.where(torch.rand(int((t == 0).sum()), generator=g) < 0.5, -0.0, 0.0).double()
    y = torch.randint(0, c, (b,), generator=g)
    return s.to(dtype).to(device), t.to(dtype).to(device), y.to(device)


def lif_membrane(x: torch.Tensor, v0: torch.Tensor | None, k: torch.Tensor, v_th: torch.Tensor,
                 v_reset: float | None, decay_input: bool) -> torch.Tensor:
    """The charged membrane H_t of every step ([T, *], float64), without autograd: used to place inputs."""
    x = x.double()
    k, v_th = k.double(), v_th.double()
    v_r = 0.0 if v_reset is None else v_reset
    v = torch.full_like(x[0], v_r) if v0 is None else v0.double().clone()
    hs = []
    for t in range(x.shape[0]):
        h = v + k * (x[t] - (v - v_r)) if decay_input else v - k * (v - v_r) + x[t]
        s = (h >= v_th).double()
        v = h * (1 - s) + v_r * s if v_reset is not None else h - v_th * s
        hs.append(h)
    return torch.stack(hs)


def lif_inputs_with_margin(shape, *, k, v_th, v_reset, decay_input, v0=None, margin=1e-2, scale=1.5, generator=None,
                           dtype=torch.float64, max_tries=200) -> torch.Tensor:
    """Random float64 input ``[T, *]`` whose membrane never comes within ``margin`` of the threshold.

    Spikes are discontinuous, so kernels are compared with exact spike equality only on such inputs. Neurons that
    come too close are redrawn until none do. The input is returned in ``dtype`` and the margin holds for that
    rounded input (the membrane itself is computed in float64 here).
    """
    k = torch.as_tensor(k, dtype=torch.float64)
    v_th = torch.as_tensor(v_th, dtype=torch.float64)
    x = (torch.randn(shape, dtype=torch.float64, generator=generator) * scale).to(dtype)
    for _ in range(max_tries):
        h = lif_membrane(x, v0, k, v_th, v_reset, decay_input)
        close = ((h - v_th).abs() < margin).any(dim=0)
        if not close.any():
            return x
        redraw = (torch.randn(shape, dtype=torch.float64, generator=generator) * scale).to(dtype)
        x = torch.where(close.unsqueeze(0), redraw, x)
    raise RuntimeError(f"could not place inputs {margin} away from the threshold in {max_tries} tries")
