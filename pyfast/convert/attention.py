"""Attention swap: :func:`convert_attention` replaces the timm-style self-attention modules of a model (timm's
``vision_transformer.Attention``, pyfast's ViT attention) by Fourier-KArAt attention, in place, keeping their
``qkv`` / ``proj`` layers (the same parameters) and their call ``forward(x, attn_mask=None, is_causal=False)``.

KArAt learns a fixed-length row operator, so it needs the sequence length N: taken from a timm or pyfast ViT
(patches plus prefix tokens) or given as ``n_tokens``. Attention modules with parts KArAt has no counterpart for
(timm's q/k norms, a scale norm, a gate, a relative-position bias) are left, and ``verbose=True`` says which and why.
Gated class-attention (GCAB) is an architecture of its own, not a swap for these modules: build ``gcab-vit``.
"""

from __future__ import annotations

from torch import nn

from pyfast._checks import check_int
from pyfast.convert.mesa import attention_mismatch
from pyfast.convert.report import Report
from pyfast.nn.karat import FourierKArAtAttention

__all__ = ["convert_attention", "sequence_length"]


def sequence_length(model: nn.Module) -> int | None:
    """The token count N of a timm ViT (``patch_embed.num_patches + num_prefix_tokens``) or a pyfast ViT (its
    ``pos_embed``), else None."""
    patches = getattr(getattr(model, "patch_embed", None), "num_patches", None)
    if isinstance(patches, int):
        return patches + int(getattr(model, "num_prefix_tokens", 0))
    pos = getattr(model, "pos_embed", None)
    if isinstance(pos, nn.Parameter) and pos.dim() == 3:
        return pos.shape[1]
    return None


def _karat_mismatch(m: nn.Module) -> str | None:
    why = attention_mismatch(m)
    if why is not None:
        return why
    for name in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(m, name, nn.Identity()), nn.Identity):
            return f"its {name} has no Fourier-KArAt counterpart"
    if getattr(m, "gate", None) is not None:
        return "its output gate has no Fourier-KArAt counterpart"
    if not isinstance(getattr(m, "attn_drop", nn.Identity()), nn.Identity) and m.attn_drop.p:
        return "attention dropout (Fourier-KArAt never forms the attention matrix to drop from)"
    return None


def convert_attention(model: nn.Module, kind: str = "karat", *, n_tokens: int | None = None, verbose: bool = False,
                      **options) -> nn.Module:
    """Replace every timm-style self-attention of ``model`` by ``kind`` attention (``"karat"``:
    :class:`pyfast.nn.FourierKArAtAttention` with ``options`` such as ``G``, ``r``, ``mode``); returns ``model``.

    The new modules take over the old ``qkv`` and ``proj`` (and ``proj_drop``), so the projections keep their
    weights; the KArAt coefficients start fresh (``mode="universal"`` shares one set across the model).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_attention: model must be an nn.Module, got {type(model).__name__}")
    if kind != "karat":
        raise ValueError(f"convert_attention: kind must be 'karat', got {kind!r}")
    n = n_tokens if n_tokens is not None else sequence_length(model)
    if n is None:
        raise ValueError("convert_attention: pass n_tokens, the sequence length N (Fourier-KArAt is fixed-N); it is "
                         "read from a timm or pyfast ViT, not from this model")
    check_int("convert_attention", "n_tokens", n)
    shared: dict = {}
    report = Report("convert_attention")
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not (hasattr(child, "qkv") and hasattr(child, "proj")) or isinstance(child, FourierKArAtAttention):
                continue
            path = f"{parent_name}.{child_name}" if parent_name else child_name
            why = _karat_mismatch(child)
            if why is not None:
                report.leave(path, why)
                continue
            dim = child.qkv.in_features
            if child.qkv.out_features != 3 * dim or child.proj.out_features != dim:
                report.leave(path, "a head width other than dim / num_heads")
                continue
            new = FourierKArAtAttention(dim, child.num_heads, n_tokens=n, shared=shared, **options)
            new.qkv, new.proj = child.qkv, child.proj
            new.proj_drop = getattr(child, "proj_drop", nn.Identity())
            new.to(child.qkv.weight.device)
            new.train(child.training)
            setattr(parent, child_name, new)
            report.swap(type(child).__name__)
    if verbose:
        print(report.line(), flush=True)
    return model
