"""Fourier-KArAt attention modules: a drop-in for a timm-style ViT attention layer (``pyfast.models.vit``).

``FourierKArAtAttention`` replaces ``softmax(q k^T / sqrt(D))`` by the learnable row operator ``W Phi(A)`` of
:func:`pyfast.ops.karat_attention` (maths and the paper-vs-spec choices in :mod:`pyfast.reference.karat`). The ViT of
:mod:`pyfast.models.vit` registers it as the attention kind ``"karat"``, so ``vit-tiny --model-arg attention=karat``
(and ``--model-arg 'attention_args={G: 1, mode: universal}'``) builds a KArAt ViT.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pyfast._checks import check_bool, check_choice, check_int, check_number
from pyfast.nn._checks import check_backend, check_heads, check_tokens
from pyfast.ops.karat import karat_attention
from pyfast.reference.karat import BASE_ACTIVATIONS

__all__ = ["FourierKArAtAttention", "KArAtCoefficients"]

MODES = ("blockwise", "universal")


class KArAtCoefficients(nn.Module):
    """The learnable operator of one head group: ``a, b [H, r, N, M]`` and ``W [H, N, r]`` (``M = G + 1`` with the
    constant term m = 0, else ``G``), plus ``w_base [H, r, N]`` when a base activation is used.

    Parameters per head: ``2 M r N + r N`` (ViT-Tiny G3B at N = 197: 0.766M over 12 blocks x 3 heads, the paper's
    0.76M). Init: ``a, b ~ N(0, 1)`` (the paper's Table 6); the paper does not give W's init, so
    ``W ~ N(0, 1 / (r M N^2))``, which makes ``sigma = W z`` about ``1/N`` in size at init, like a softmax row, and
    keeps ``out = sigma V`` at the scale of V.
    """

    def __init__(self, num_heads: int, n_tokens: int, G: int = 3, r: int = 12, constant_term: bool = True,
                 base_activation: str | None = None):
        super().__init__()
        for name, v in (("num_heads", num_heads), ("n_tokens", n_tokens), ("G", G), ("r", r)):
            check_int("FourierKArAtAttention", name, v)
        check_bool("FourierKArAtAttention", "constant_term", constant_term)
        if base_activation is not None and base_activation not in BASE_ACTIVATIONS:
            raise ValueError(f"FourierKArAtAttention: base_activation must be None or one of "
                             f"{sorted(BASE_ACTIVATIONS)}, got {base_activation!r}")
        self.G, self.r, self.n_tokens, self.constant_term = G, r, n_tokens, constant_term
        self.base_activation = base_activation
        M = G + 1 if constant_term else G
        self.a = nn.Parameter(torch.randn(num_heads, r, n_tokens, M))
        self.b = nn.Parameter(torch.randn(num_heads, r, n_tokens, M))
        self.W = nn.Parameter(torch.randn(num_heads, n_tokens, r) / (n_tokens * math.sqrt(r * M)))
        self.w_base = (nn.Parameter(torch.randn(num_heads, r, n_tokens) / math.sqrt(n_tokens))
                       if base_activation is not None else None)

    def extra_repr(self) -> str:
        return (f"heads={self.a.shape[0]}, n_tokens={self.n_tokens}, G={self.G}, r={self.r}, "
                f"constant_term={self.constant_term}, base_activation={self.base_activation}")


class FourierKArAtAttention(nn.Module):
    """Multi-head Fourier-KArAt attention: ``[B, N, C] -> [B, N, C]`` with ``num_heads`` heads of ``C / num_heads``.

    Same constructor as the timm-style :class:`pyfast.models.vit.Attention` (``qkv``, ``proj``, ``num_heads``,
    ``scale``), plus:

    Args:
        G: harmonics per score (paper: 3 for Tiny/Small, 1 for Base).
        r: rank of the modular operator ``W Phi`` (paper: 12).
        mode: ``"blockwise"`` (own coefficients, the paper's GnB) or ``"universal"`` (GnU: one set shared by every
            universal KArAt attention built with the same ``shared`` dict and sizes, i.e. all blocks of a ViT).
        n_tokens: the sequence length N the coefficients are sized for (KArAt is fixed-N); a ViT passes its own.
        constant_term: include the harmonic m = 0 (default True, see :mod:`pyfast.reference.karat`).
        base_activation: ``None`` (the paper's runs), ``"silu"``, ``"gelu"`` or ``"identity"``: adds
            ``sum_q w_base[p, q] base(A[k, q])`` to z; this term materialises ``A`` ``[B, H, N, N]`` (not the basis).
        shared: the dict universal mode keeps its coefficients in (one per model).
        backend: backend of :func:`pyfast.ops.karat_attention`.

    ``attn_drop`` is accepted for the timm signature and applied to nothing: there is no attention matrix to drop
    (sigma is never formed), so it must be 0.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, *, G: int = 3, r: int = 12, mode: str = "blockwise",
                 n_tokens: int | None = None, constant_term: bool = True, base_activation: str | None = None,
                 shared: dict | None = None, backend: str = "auto"):
        super().__init__()
        owner = "FourierKArAtAttention"
        check_heads(owner, dim, num_heads)
        check_bool(owner, "qkv_bias", qkv_bias)
        check_number(owner, "proj_drop", proj_drop, low=0.0, high=1.0)
        check_choice(owner, "mode", mode, MODES)
        check_backend(owner, backend)
        if shared is not None and not isinstance(shared, dict):
            raise TypeError(f"{owner}: shared must be a dict (one per model) or None, got {type(shared).__name__}")
        if n_tokens is None:
            raise ValueError("FourierKArAtAttention: n_tokens (the sequence length N the coefficients are sized for) "
                             "is required; pyfast.models.vit passes it")
        if attn_drop:
            raise ValueError(f"FourierKArAtAttention: attn_drop must be 0 (sigma is never materialised), got "
                             f"{attn_drop!r}")
        self.num_heads, self.mode, self.backend = num_heads, mode, backend
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        make = lambda: KArAtCoefficients(num_heads, n_tokens, G, r, constant_term, base_activation)
        if mode == "universal":
            shared = {} if shared is None else shared
            key = ("karat", num_heads, n_tokens, G, r, constant_term, base_activation)
            if key not in shared:
                shared[key] = make()
            self.coef = shared[key]
        else:
            self.coef = make()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """``x [B, N, C] -> [B, N, C]``. ``attn_mask`` / ``is_causal`` are taken for the call of timm's attention
        (its blocks pass them) and must be ``None`` / ``False``: the row operator has no masked form."""
        if attn_mask is not None or is_causal:
            raise ValueError("FourierKArAtAttention: attn_mask and is_causal are not supported (the learned row "
                             "operator W Phi(A) has no masked form)")
        check_tokens("FourierKArAtAttention", x, c=self.qkv.in_features)
        B, N, C = x.shape
        if N != self.coef.n_tokens:
            raise ValueError(f"FourierKArAtAttention: the sequence length N = {N} does not match the coefficients' "
                             f"n_tokens = {self.coef.n_tokens} (KArAt is fixed-N)")
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        c = self.coef
        out = karat_attention(q, k, v, c.a, c.b, c.W, self.scale, constant_term=c.constant_term,
                              backend=self.backend)
        if c.base_activation is not None:
            A = (q @ k.transpose(-2, -1)) * self.scale
            zb = torch.einsum("bhkq,hpq->bhkp", BASE_ACTIVATIONS[c.base_activation](A), c.w_base.to(A.dtype))
            out = out + zb @ (c.W.to(v.dtype).transpose(-1, -2) @ v)
        x = out.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))
