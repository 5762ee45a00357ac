"""``pyfast.nn.CRReLU``: the Correction-Regularized ReLU of EAFO, a drop-in replacement for ``nn.GELU`` / ``nn.ReLU``.

``y = max(0, x) + eps * x * exp(-x^2 / 2)`` with a learnable ``eps`` (one scalar per module, initialised to 0.01, or
one per channel). Backed by :func:`pyfast.ops.crrelu` (fused forward, and one backward pass for the gradients of x
and eps).
"""

from __future__ import annotations

import torch
from torch import nn

from pyfast._checks import check_bool, check_int, check_number
from pyfast.nn._checks import check_backend
from pyfast.ops.crrelu import crrelu

__all__ = ["CRReLU"]


class CRReLU(nn.Module):
    """CRReLU activation with a learnable correction weight ``eps``.

    Args:
        eps_init: initial value of eps (finite; the paper uses 0.01).
        per_channel: one eps per channel instead of one per module; then ``num_channels`` is required.
        num_channels: channels C (the size of axis ``dim`` of the input) for ``per_channel``.
        dim: the channel axis for ``per_channel``: 1 for ``[N, C, *]`` (convolutions), -1 for ``[..., C]`` (tokens).
        backend: pyfast backend (see :mod:`pyfast.backends`).

    Shape: any input; the output has the input's shape and dtype. ``eps`` is a Parameter of shape ``[1]`` or ``[C]``.
    """

    def __init__(self, eps_init: float = 0.01, per_channel: bool = False, num_channels: int | None = None,
                 dim: int = 1, *, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        eps_init = check_number("CRReLU", "eps_init", eps_init)
        if check_bool("CRReLU", "per_channel", per_channel):
            if num_channels is None:
                raise ValueError("CRReLU: per_channel=True needs num_channels (the size of axis dim), got None")
            size = check_int("CRReLU", "num_channels", num_channels)
        elif num_channels is not None:  # one eps would be learnt where the caller asked for C of them
            raise ValueError(f"CRReLU: num_channels={num_channels!r} is used only with per_channel=True; pass "
                             "per_channel=True for one eps per channel, or drop num_channels")
        else:
            size = 1
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"CRReLU: dim must be an int, got {type(dim).__name__}")
        check_backend("CRReLU", backend)
        self.per_channel = per_channel
        self.dim = dim
        self.backend = backend
        self.eps = nn.Parameter(torch.full((size,), eps_init, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return crrelu(x, self.eps, self.dim, backend=self.backend)

    def extra_repr(self) -> str:
        return f"num_eps={self.eps.numel()}, dim={self.dim}" if self.per_channel else "num_eps=1"
