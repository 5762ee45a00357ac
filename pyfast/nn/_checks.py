"""Argument checks of the nn modules' constructors and forwards that only modules need (heads, shapes, token
tensors, backends); the general ones (sizes, rates, flags, choices) are :mod:`pyfast._checks`, with the same rules:
every error names the module and the argument, TypeError for a wrong type, ValueError for a wrong value.
"""

from __future__ import annotations

import numbers

import torch

from pyfast._checks import check_choice, check_int, check_multiple_of
from pyfast.backends import BACKENDS


def check_heads(owner: str, dim: int, num_heads: int) -> None:
    """``dim`` and ``num_heads`` ints >= 1, ``dim`` a multiple of ``num_heads`` (heads of ``dim / num_heads``)."""
    check_int(owner, "dim", dim)
    check_int(owner, "num_heads", num_heads)
    check_multiple_of(owner, "dim", dim, "num_heads", num_heads)


def check_backend(owner: str, backend) -> str:
    """``backend`` must name a pyfast backend (:data:`pyfast.backends.BACKENDS`): a typo fails at construction, not
    at the first forward."""
    return check_choice(owner, "backend", backend, BACKENDS)


def check_shape(owner: str, name: str, value) -> tuple[int, ...]:
    """``value`` must be a shape: a tuple, list or ``torch.Size`` of ints >= 1 (``()`` for a scalar)."""
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{owner}: {name} must be a tuple of ints >= 1, got {type(value).__name__} {value!r}")
    if any(isinstance(d, bool) or not isinstance(d, numbers.Integral) for d in value):
        raise TypeError(f"{owner}: {name} must be a tuple of ints >= 1, got {value!r}")
    if any(d < 1 for d in value):
        raise ValueError(f"{owner}: {name} must be a tuple of ints >= 1, got {tuple(value)}")
    return tuple(int(d) for d in value)


def check_tokens(owner: str, x, *, n: int | None = None, c: int | None = None, note: str = "") -> None:
    """``x`` must be a tensor of tokens ``[B, N, C]``, with ``N = n`` and ``C = c`` where given; the error says the
    expected shape, e.g. ``x must have shape [B, N, C] with C=192, got (4, 192)``. ``note`` follows the sizes."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: x must be a tensor [B, N, C], got {type(x).__name__}")
    if x.dim() == 3 and (n is None or x.shape[1] == n) and (c is None or x.shape[2] == c):
        return
    sizes = ", ".join(f"{k}={v}" for k, v in (("N", n), ("C", c)) if v is not None)
    raise ValueError(f"{owner}: x must have shape [B, N, C]{' with ' + sizes if sizes else ''}{note}, got "
                     f"{tuple(x.shape)}")
