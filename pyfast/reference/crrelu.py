"""Readable pure-PyTorch CRReLU (Correction-Regularized ReLU, from the EAFO paper): the definition of correct for every
backend of ``crrelu_fwd`` / ``crrelu_bwd``.

    CRReLU(x) = max(0, x) + eps * x * exp(-x^2 / 2)

with eps a learnable scalar (one per module, initialised to 0.01) or, optionally, one value per channel along
``dim``. Gradients (what autograd of this file computes and what the kernels implement)::

    dL/dx   = g * (1[x > 0] + eps * (1 - x^2) * exp(-x^2 / 2))
    dL/deps = sum over the elements that use eps of g * x * exp(-x^2 / 2)

The correction term x exp(-x^2/2) is odd in x, so CRReLU(x) - ReLU(x) is odd, and eps = 0 gives ReLU exactly.
Arithmetic runs in float32 for float32/float16/bfloat16 inputs (float64 for float64); the result is rounded to x's
dtype.
"""

from __future__ import annotations

import torch

from pyfast._dtypes import acc_dtype


def eps_view(eps: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """eps shaped to broadcast against x: a scalar for one value, else ``[C]`` placed on axis ``dim``."""
    if eps.numel() == 1:
        return eps.reshape(())
    d = dim % x.dim()
    return eps.reshape([-1 if i == d else 1 for i in range(x.dim())])


def crrelu_ref(x: torch.Tensor, eps: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """CRReLU of x (any shape). ``eps``: one value, or ``x.size(dim)`` values (per channel along ``dim``)."""
    acc = acc_dtype(x.dtype)
    xa = x.to(acc)
    e = eps_view(eps.to(acc), x, dim)
    return (torch.relu(xa) + e * xa * torch.exp(-0.5 * xa * xa)).to(x.dtype)
