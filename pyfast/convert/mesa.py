"""Mesa model converter: :func:`convert` swaps the layers of a model (a ViT, ours or timm-style) for their
:mod:`pyfast.nn.mesa` counterparts in place, so every activation they save for backward is stored as uint8.

``pyfast train --method mesa`` calls ``convert(model)`` on the freshly built model, before the optimizer is made
(parameters are moved, not copied, so an optimizer built before converting would still work).

Policy: which layer kinds to quantize, from :data:`KINDS`:

* ``linear``, ``conv2d``, ``gelu``, ``layernorm``: every ``nn.Linear`` / ``nn.Conv2d`` / ``nn.GELU`` /
  ``nn.LayerNorm``, and the subclasses known to compute the same (timm's ``LayerNorm``, timm's and torchvision's
  ``LayerNorm2d``); other subclasses (their forward may differ) are left and reported;
* ``matmul``, ``softmax``: inside timm-style attention modules (timm's ``vision_transformer.Attention``, pyfast's ViT
  attention: :func:`attention_mismatch` says what else is refused, e.g. Swin's relative-position attention), which
  are replaced by :class:`pyfast.nn.mesa.Attention`: the same parameters, state_dict keys and call, with ``q @ k^T``,
  the softmax and ``attn @ v`` quantized head by head.

Mesa's layers are a transformer's. In a CNN the batch norms and activations (ReLU, SiLU) keep their own float32
copies of the activations, so converting a ResNet stores no less (a timm / torchvision ResNet-18 at 32x32: 1.03x the
unconverted saved bytes, since the quantized conv inputs come beside the ReLU outputs); ``verbose=True`` names these
layers. torchvision's ``nn.MultiheadAttention`` is left too (its projections run inside
``F.multi_head_attention_forward``).

The Mesa paper's DeiT policy quantizes all six (the default). ``quant_groups=None`` uses the model's ``num_heads``
(the first module that has one) for every layer whose channel count it divides, else 1.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from pyfast.convert.report import Report
from pyfast.nn import mesa as mnn
from pyfast.ops import mesa as mops

__all__ = ["KINDS", "attention_mismatch", "convert", "is_timm_attention"]

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


# The submodules a timm-style attention may have besides qkv and proj (timm's vision_transformer.Attention), and the
# arguments of its forward: anything else (a relative-position bias, rotary embeddings, a window mask) computes
# something :class:`pyfast.nn.mesa.Attention` does not, and the module is left as it is.
_TIMM_ATTENTION_PARTS = {"qkv", "proj", "attn_drop", "proj_drop", "q_norm", "k_norm", "norm", "gate"}
_TIMM_ATTENTION_ARGS = {"x", "attn_mask", "is_causal"}


def attention_mismatch(m: nn.Module) -> str | None:
    """Why ``m`` is not a timm-style multi-head self-attention :class:`pyfast.nn.mesa.Attention` can replace, or
    None if it is one: ``qkv`` Linear(C, 3 H D), ``proj`` Linear, ``num_heads`` H, ``scale``, no parameter or buffer
    of its own, no submodule but timm's parts, and a ``forward(x, attn_mask=None, is_causal=False)`` or a part of
    it."""
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)):
        return "no Linear qkv and proj"
    heads = getattr(m, "num_heads", None)
    if not isinstance(heads, int) or heads < 1 or not isinstance(getattr(m, "scale", None), float):
        return "no int num_heads and float scale"
    if qkv.out_features % (3 * heads):
        return f"qkv's {qkv.out_features} outputs are not 3 x num_heads ({heads}) x a head width"
    own = [n for n, _ in itertools.chain(m.named_parameters(recurse=False), m.named_buffers(recurse=False))]
    if own:
        return f"timm-style attention with its own parameters or buffers: {', '.join(own)}"
    extra = sorted({name for name, _ in m.named_children()} - _TIMM_ATTENTION_PARTS)
    if extra:
        return f"timm-style attention with other parts: {', '.join(extra)}"
    try:
        args = set(inspect.signature(m.forward).parameters)
    except (TypeError, ValueError):
        return "a forward whose arguments cannot be read"
    if not args <= _TIMM_ATTENTION_ARGS:
        return f"a forward taking {', '.join(sorted(args - _TIMM_ATTENTION_ARGS))}"
    return None


def is_timm_attention(m: nn.Module) -> bool:
    """A timm-style multi-head self-attention this module can replace (:func:`attention_mismatch` gives why not)."""
    return attention_mismatch(m) is None


# Subclasses whose forward is their base class's (on the same layout, or the channels-last view of NCHW), named by
# module path so that neither library is imported here: they are converted like their base.
_EQUIVALENT = {
    "timm.layers.norm.LayerNorm": "layernorm",
    "timm.layers.norm.LayerNorm2d": "layernorm2d",
    "torchvision.models.convnext.LayerNorm2d": "layernorm2d",
}
_EXACT = {nn.Linear: "linear", nn.Conv2d: "conv2d", nn.GELU: "gelu", nn.LayerNorm: "layernorm"}
# Common layers outside Mesa's six kinds: counted in the report, not listed one by one.
_NOT_MESA = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Softmax, nn.Conv1d,
             nn.Conv3d, nn.ConvTranspose2d, nn.MaxPool2d)
_POLICY_KIND = {"linear": "linear", "conv2d": "conv2d", "gelu": "gelu", "layernorm": "layernorm",
                "layernorm2d": "layernorm"}


def _layer_kind(m: nn.Module) -> str | None:
    """Which Mesa layer replaces ``m`` (a policy kind, or ``"layernorm2d"``), or None."""
    t = type(m)
    return _EXACT.get(t) or _EQUIVALENT.get(f"{t.__module__}.{t.__qualname__}")


def _groups_for(size: int, groups: int) -> int:
    return groups if size % groups == 0 else 1


def _find_heads(model: nn.Module) -> int:
    for m in model.modules():
        heads = getattr(m, "num_heads", None)
        if isinstance(heads, int) and heads >= 1:
            return heads
    return 1


def _swap(m: nn.Module, kind: str, groups: int, quant: dict, device: torch.device) -> nn.Module:
    """The Mesa replacement of ``m`` (a layer of ``kind``, sharing its parameters). ``device``: where its estimates
    live (the device of ``m``'s parameters, or of the nearest enclosing module's for a parameterless layer)."""
    if kind == "linear":
        new = mnn.Linear(m.in_features, m.out_features, m.bias is not None, device="meta",
                         quant_groups=_groups_for(m.in_features, groups), **quant)
    elif kind == "conv2d":
        new = mnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                         m.bias is not None, m.padding_mode, device="meta",
                         quant_groups=_groups_for(m.in_channels, groups), **quant)
    elif kind == "gelu":
        return mnn.GELU(m.approximate, quant_groups=groups, **quant).to(device)
    else:  # layernorm / layernorm2d
        cls = mnn.LayerNorm2d if kind == "layernorm2d" else mnn.LayerNorm
        new = cls(m.normalized_shape, m.eps, m.elementwise_affine, m.bias is not None, device="meta",
                  quant_groups=_groups_for(m.normalized_shape[-1], groups), **quant)
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


def _convert(module: nn.Module, kinds, groups, quant, device: torch.device, report: Report, prefix: str) -> None:
    """Swap ``module``'s children in place; ``device``: ``module``'s own (for parameterless children)."""
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        child_device = _device_of(child, device)
        if isinstance(child, (mnn.Quantizer, mnn.Attention)) or type(child).__module__ == mnn.__name__:
            continue
        has_qkv = hasattr(child, "qkv") and hasattr(child, "proj")
        if {"matmul", "softmax"} & kinds and has_qkv:
            why = attention_mismatch(child)
            if why is None:
                _convert(child, kinds, groups, quant, child_device, report, f"{path}.")  # its qkv / proj, by policy
                new = mnn.Attention.from_timm(child, matmul="matmul" in kinds, softmax="softmax" in kinds,
                                              **quant).to(child_device)
                new.train(child.training)
                setattr(module, name, new)
                report.swap("attention")
                continue
            report.leave(path, why)
        kind = _layer_kind(child)
        if kind is not None and _POLICY_KIND[kind] in kinds and (kind != "layernorm" or child.normalized_shape):
            setattr(module, name, _swap(child, kind, groups, quant, child_device))
            report.swap(type(child).__name__)
        elif isinstance(child, nn.MultiheadAttention):
            report.leave(path, "nn.MultiheadAttention: its projections run inside F.multi_head_attention_forward")
        elif isinstance(child, tuple(_EXACT)) and kind is None:
            report.leave(path, f"a subclass of {next(t for t in _EXACT if isinstance(child, t)).__name__} with its "
                               "own forward")
            _convert(child, kinds, groups, quant, child_device, report, f"{path}.")
        elif isinstance(child, _NOT_MESA):
            report.leave_kind(type(child).__name__, "not a Mesa layer")
        else:
            _convert(child, kinds, groups, quant, child_device, report, f"{path}.")


def convert(model: nn.Module, policy=None, *, quant_groups: int | None = None, levels: int = 256,
            ema_decay: float = 0.9, stochastic: bool = True, backend: str = "auto", verbose: bool = False) -> nn.Module:
    """Swap the layers of ``model`` named by ``policy`` for Mesa layers, in place; returns ``model``.

    Args:
        model: any module; a ViT with timm-style blocks gets its attention replaced too.
        policy: ``None`` / ``"all"`` (every kind in :data:`KINDS`), a kind, a list of kinds, or a dict
            ``{kind: bool}``.
        quant_groups: groups per quantized tensor; ``None``: the model's ``num_heads`` where it divides the channels.
        levels, ema_decay, stochastic, backend: as in :func:`pyfast.ops.mesa_quantize`.
        verbose: print one line saying what was converted and what was left, and why.

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
    report = Report("mesa.convert")
    _convert(model, kinds, groups, quant, device, report, "")
    if verbose:
        print(report.line(), flush=True)
    model.mesa_layers_converted = report.total + getattr(model, "mesa_layers_converted", 0)
    if model.mesa_layers_converted == 0:
        del model.mesa_layers_converted  # leave an unquantizable model exactly as it was
    return model
