"""Readable pure-PyTorch weighted convolution (Cammarasana & Patane, arXiv 2505.24558): the definition of correct for
every backend of the density-weight op.

A conv weight ``W`` of shape ``[C_out, C_in/groups, K_0, ..., K_{d-1}]`` (d = 1, 2 or 3 spatial axes, every K odd)
is scaled tap by tap by a separable, mirror-symmetric density before an ordinary convolution::

    alpha_a = [den_a[0], ..., den_a[m_a - 1], 1, den_a[m_a - 1], ..., den_a[0]]   (length K_a = 2 m_a + 1)
    Phi[t_0, ..., t_{d-1}] = alpha_0[t_0] * alpha_1[t_1] * ... * alpha_{d-1}[t_{d-1}]
    W_tilde = W * Phi      (broadcast over C_out and C_in/groups)
    y = conv_d(x, W_tilde, bias, stride, padding, dilation, groups)

den_a[0] is the outermost tap and the centre tap is fixed at 1. ``den`` is one 1-D tensor in one of two layouts:

* per axis (packed): ``cat(den_0, ..., den_{d-1})``, ``sum_a m_a`` values, axis 0 first (any kernel shape);
* shared: ``m`` values used on every axis, allowed when every K_a equals ``2 m + 1`` (the paper's isotropic
  ``Phi = outer(alpha, alpha)``). In 1-D both layouts are the same.

Backward (what autograd of this file computes, and what the kernels implement)::

    dW = dW_tilde * Phi
    S[t] = sum over (C_out, C_in/groups) of dW_tilde[., ., t] * W[., ., t]
    dalpha_a[k] = sum over taps t with t_a = k of S[t] * prod_{b != a} alpha_b[t_b]
    dden_a[j] = dalpha_a[j] + dalpha_a[K_a - 1 - j]   (mirrored taps; the centre gets nothing)
    shared layout: dden = sum over axes a of dden_a

Arithmetic runs in float32 for float32/float16/bfloat16 weights and in float64 for float64 weights: den is cast to
that type, Phi is the left-to-right product of the axis factors and ``W_tilde = (W * Phi)`` rounded to W's dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pyfast._dtypes import acc_dtype

# Suggested den per odd kernel size, outermost value first (the paper's README v2.0 examples, inside its suggested
# fine-tuning ranges: 3: [0.5, 1.5]; 5: [0.05, 1], [0.5, 1.5]; 7: [0.05, 0.5], [0.15, 1.0], [0.25, 1.5]).
DEFAULT_DEN: dict[int, tuple[float, ...]] = {1: (), 3: (0.7,), 5: (0.2, 0.8), 7: (0.25, 0.15, 0.55)}


def half_widths(kernel_size) -> list[int]:
    """m_a = (K_a - 1) / 2 per axis."""
    return [(k - 1) // 2 for k in kernel_size]


def den_layout(den_numel: int, kernel_size) -> str:
    """``"per_axis"`` or ``"shared"`` for a den of ``den_numel`` values and this kernel; ValueError if neither."""
    m = half_widths(kernel_size)
    if den_numel == sum(m):
        return "per_axis"
    if len(set(m)) == 1 and den_numel == m[0]:
        return "shared"
    shared = f" or {m[0]} (one den shared by every axis)" if len(m) > 1 and len(set(m)) == 1 else ""
    raise ValueError(
        f"den must have sum((K-1)/2) = {sum(m)} values for kernel {tuple(kernel_size)} (one den per axis, "
        f"concatenated){shared}, got {den_numel}"
    )


def split_den(den: torch.Tensor, kernel_size) -> list[torch.Tensor]:
    """The per-axis den vectors (views) of a packed or shared ``den``."""
    m = half_widths(kernel_size)
    if den_layout(den.numel(), kernel_size) == "shared" and len(m) > 1:
        return [den] * len(m)
    return list(torch.split(den, m))


def alpha_ref(den_axis: torch.Tensor) -> torch.Tensor:
    """alpha = [den, 1, reversed(den)] (length 2 len(den) + 1)."""
    one = torch.ones(1, dtype=den_axis.dtype, device=den_axis.device)
    return torch.cat([den_axis, one, den_axis.flip(0)])


def density_ref(den: torch.Tensor, kernel_size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Phi of shape ``kernel_size``: the outer product of the per-axis alphas, computed in ``dtype``."""
    alphas = [alpha_ref(d.to(dtype)) for d in split_den(den, kernel_size)]
    d = len(alphas)
    phi = None
    for a, alpha in enumerate(alphas):
        shaped = alpha.reshape([-1 if b == a else 1 for b in range(d)])
        phi = shaped if phi is None else phi * shaped
    return phi


def wconv_weight_ref(weight: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """W_tilde = W * Phi (see the module docstring). Differentiable in weight and den."""
    kernel_size = tuple(weight.shape[2:])
    acc = acc_dtype(weight.dtype)
    phi = density_ref(den, kernel_size, acc)
    return (weight.to(acc) * phi).to(weight.dtype)


def wconv_den_grad_ref(grad_wt: torch.Tensor, weight: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """d(den) written out as the mirrored reduction of the module docstring (float64), for tests of the formula."""
    kernel_size = tuple(weight.shape[2:])
    d = len(kernel_size)
    s = (grad_wt.double() * weight.double()).sum(dim=(0, 1))
    alphas = [alpha_ref(x.double()) for x in split_den(den, kernel_size)]
    parts = []
    for a in range(d):
        others = [alphas[b] if b != a else torch.ones_like(alphas[a]) for b in range(d)]
        weights_a = math.prod(o.reshape([-1 if b == i else 1 for b in range(d)]) for i, o in enumerate(others))
        other_axes = [b for b in range(d) if b != a]
        dalpha = (s * weights_a).sum(dim=other_axes) if other_axes else s * weights_a
        m = (kernel_size[a] - 1) // 2
        parts.append(dalpha[:m] + dalpha.flip(0)[:m])
    if den_layout(den.numel(), kernel_size) == "shared" and d > 1:
        return sum(parts).to(den.dtype)
    return torch.cat(parts).to(den.dtype)


def wconv_ref(x: torch.Tensor, weight: torch.Tensor, den: torch.Tensor, bias: torch.Tensor | None = None, stride=1,
              padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """y = conv_d(x, W * Phi, bias, ...), d = weight.dim() - 2."""
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[weight.dim() - 2]
    return conv(x, wconv_weight_ref(weight, den), bias, stride, padding, dilation, groups)
