"""Mesa model converter: :func:`convert` swaps the layers of a model (a ViT, ours or timm-style) for their
:mod:`pyfast.nn.mesa` counterparts in place, so every activation they save for backward is stored as uint8.

``pyfast train --method mesa`` calls ``convert(model)`` on the freshly built model, before the optimizer is made
(parameters are moved, not copied, so an optimizer built before converting would still work).

Policy: which layer kinds to quantize, from :data:`KINDS`:

* ``linear``, ``conv2d``, ``gelu``, ``layernorm``: every ``nn.Linear`` / ``nn.Conv2d`` / ``nn.GELU`` /
  ``nn.LayerNorm`` (exact types: subclasses such as ``nn.MultiheadAttention``'s projection are left alone);
* ``matmul``, ``softmax``: inside timm-style attention modules (attributes ``qkv``: Linear(C, 3C), ``proj``: Linear,
  ``num_heads``, ``scale``; ``softmax((q @ k^T) * scale) @ v``), which are replaced by
  :class:`pyfast.nn.mesa.Attention`: the same
  parameters and state_dict keys, with ``q @ k^T``, the softmax and ``attn @ v`` quantized head by head.

The Mesa paper's DeiT policy quantizes all six (the default). ``quant_groups=None`` uses the model's ``num_heads``
(the first module that has one) for every layer whose channel count it divides, else 1.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from pyfast.nn import mesa as mnn
from pyfast.ops import mesa as mops

__all__ = ["KINDS", "convert", "is_timm_attention"]

KINDS = ("linear", "conv2d", "gelu", "layernorm", "softmax", "matmul")


def _policy(policy) -> frozenset[str]:
    if policy is None or policy == "all":
        return frozenset(KINDS)
    if isinstance(policy, str):
        policy = [policy]
    if isinstance(policy, Mapping):
        policy = [k for k, on in policy.items() if on] + [k for k in policy if k not in KINDS]
    if not isinstance(policy, Iterable):
        raise TypeError(f"mesa.convert: policy must be None, 'all', a kind, a list of kinds or a dict, got {policy!r}")
    kinds = frozenset(policy)
    unknown = sorted(kinds - set(KINDS))
    if unknown:
        raise ValueError(f"mesa.convert: unknown layer kinds {unknown} in policy; known: {KINDS}")
    return kinds


def is_timm_attention(m: nn.Module) -> bool:
    """A timm-style multi-head self-attention this module can replace (see the module docstring)."""
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)):
        return False
    heads = getattr(m, "num_heads", None)
    if not isinstance(heads, int) or heads < 1 or not isinstance(getattr(m, "scale", None), float):
        return False
    if qkv.out_features != 3 * qkv.in_features or qkv.in_features % heads:
        return False
    # Variants with extra per-head normalisation (timm's qk_norm) compute something else: leave them alone.
    return all(isinstance(getattr(m, name, nn.Identity()), nn.Identity) for name in ("q_norm", "k_norm"))


def _groups_for(size: int, groups: int) -> int:
    return groups if size % groups == 0 else 1


def _find_heads(model: nn.Module) -> int:
    for m in model.modules():
        heads = getattr(m, "num_heads", None)
        if isinstance(heads, int) and heads >= 1:
            return heads
    return 1


def _swap(m: nn.Module, kinds: frozenset[str], groups: int, quant: dict, device: torch.device) -> nn.Module | None:
    """The Mesa replacement of ``m`` (sharing its parameters), or None to keep it. ``device``: where its estimates
    live (the device of ``m``'s parameters, or of the nearest enclosing module's for a parameterless layer)."""
    t = type(m)
    if t is nn.Linear and "linear" in kinds:
        new = mnn.Linear(m.in_features, m.out_features, m.bias is not None, device="meta",
                         quant_groups=_groups_for(m.in_features, groups), **quant)
    elif t is nn.Conv2d and "conv2d" in kinds:
        new = mnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                         m.bias is not None, m.padding_mode, device="meta",
                         quant_groups=_groups_for(m.in_channels, groups), **quant)
    elif t is nn.GELU and "gelu" in kinds:
        return mnn.GELU(m.approximate, quant_groups=groups, **quant).to(device)
    elif t is nn.LayerNorm and "layernorm" in kinds and len(m.normalized_shape) >= 1:
        new = mnn.LayerNorm(m.normalized_shape, m.eps, m.elementwise_affine, m.bias is not None, device="meta",
                            quant_groups=_groups_for(m.normalized_shape[-1], groups), **quant)
    else:
        return None
    # Move the parameters themselves (same tensors: an optimizer holding them keeps working); fresh estimates.
    for name, p in m.named_parameters(recurse=False):
        setattr(new, name, p)
    new.quant.to_empty(device=device)
    new.quant.clip_val.fill_(1.0)
    new.quant.shift.zero_()
    new.quant.initialized.zero_()
    new.train(m.training)
    return new


def _device_of(m: nn.Module, default: torch.device) -> torch.device:
    """The device of ``m``'s first parameter or buffer, else ``default``."""
    for t in itertools.chain(m.parameters(), m.buffers()):
        return t.device
    return default


def _convert(module: nn.Module, kinds, groups, quant, device: torch.device) -> int:
    """Swap ``module``'s children in place; ``device``: ``module``'s own (for parameterless children)."""
    swapped = 0
    for name, child in module.named_children():
        child_device = _device_of(child, device)
        if isinstance(child, (mnn.Quantizer, mnn.Attention)) or type(child).__module__ == mnn.__name__:
            continue
        if ({"matmul", "softmax"} & kinds) and is_timm_attention(child):
            swapped += _convert(child, kinds, groups, quant, child_device)  # its qkv / proj, by policy
            new = mnn.Attention.from_timm(child, matmul="matmul" in kinds, softmax="softmax" in kinds,
                                      **quant).to(child_device)
            new.train(child.training)
            setattr(module, name, new)
            swapped += 1
            continue
        new = _swap(child, kinds, groups, quant, child_device)
        if new is not None:
            setattr(module, name, new)
            swapped += 1
        else:
            swapped += _convert(child, kinds, groups, quant, child_device)
    return swapped


def convert(model: nn.Module, policy=None, *, quant_groups: int | None = None, levels: int = 256,
            ema_decay: float = 0.9, stochastic: bool = True, backend: str = "auto") -> nn.Module:
    """Swap the layers of ``model`` named by ``policy`` for Mesa layers, in place; returns ``model``.

    Args:
        model: any module; a ViT with timm-style blocks gets its attention replaced too.
        policy: ``None`` / ``"all"`` (every kind in :data:`KINDS`), a kind, a list of kinds, or a dict
            ``{kind: bool}``.
        quant_groups: groups per quantized tensor; ``None``: the model's ``num_heads`` where it divides the channels.
        levels, ema_decay, stochastic, backend: as in :func:`pyfast.ops.mesa_quantize`.

    Parameters are moved into the new layers (the same tensors), so outputs are unchanged at full precision and
    the optimizer state carries over. A model with nothing to quantize is left exactly as it was.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"mesa.convert: model must be an nn.Module, got {type(model).__name__}")
    kinds = _policy(policy)
    groups = _find_heads(model) if quant_groups is None else mops.check_groups(quant_groups)
    quant = dict(levels=mops.check_levels(levels), ema_decay=mops.check_ema_decay(ema_decay),
                 stochastic=bool(stochastic), backend=backend)
    device = _device_of(model, torch.device("cpu"))
    converted = _convert(model, kinds, groups, quant, device)
    model.mesa_layers_converted = converted + getattr(model, "mesa_layers_converted", 0)
    if model.mesa_layers_converted == 0:
        del model.mesa_layers_converted  # leave an unquantizable model exactly as it was
    return model
