"""Weighted convolution as a method wrapper: turn any model's convolutions into weighted ones and back.

* :func:`convert` replaces the ``nn.Conv1d/2d/3d`` layers of a model, in place, by ``pyfast.nn.WeightedConv*d``
  that keep the same weight and bias parameters (e.g. CIFAR VGG-16 / ResNet-18 -> their weighted variants).
* :func:`den_parameters` / :func:`param_groups`: the learnable dens for their own optimizer group (the authors
  train den with a separate AdamW, lr 1e-2, weight decay 1e-2, against lr 1e-4 for the weights).
* :func:`revert` folds the density into plain ``nn.Conv*d`` layers (weight := W * Phi): the same function, for
  export or for tools that only know nn.Conv.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from pyfast.convert.report import Report
from pyfast.nn.wconv import WEIGHTED_CONVS, WeightedConv1d, WeightedConv2d, WeightedConv3d, default_den

__all__ = ["convert", "den_parameters", "param_groups", "revert", "weighted_layers"]

WEIGHTED_TYPES = (WeightedConv1d, WeightedConv2d, WeightedConv3d)


def _den_for(den, name: str, conv: nn.Module):
    """The den argument for one layer, or ``False`` to leave the layer as it is."""
    ks = tuple(conv.kernel_size)
    if callable(den) and not isinstance(den, torch.Tensor):
        return den(name, conv)
    if den is None:
        return default_den(ks)
    if isinstance(den, Mapping):
        for key in (ks, ks[0] if len(set(ks)) == 1 else None):
            if key in den:
                return den[key]
        return default_den(ks)
    return den


def convert(model: nn.Module, den=None, *, learnable_den: bool = False, allow_negative_den: bool = False,
            backend: str = "auto", verbose: bool = False) -> nn.Module:
    """Replace every ``nn.Conv1d/2d/3d`` of ``model`` (in place) by its ``pyfast.nn.WeightedConv*d``; returns model.

    The new layer has the old one's hyperparameters, device, dtype and training mode, and *the same* ``weight`` /
    ``bias`` Parameter objects (so nothing is copied and optimizers built before still see them). Forward hooks of
    replaced layers are not carried over. Left as they are: layers whose kernel is 1 on every axis (the density is
    the identity there; e.g. ResNet's 1x1 shortcuts), layers with an even kernel size (no centre tap), subclasses of
    nn.Conv*d (their forward may differ, e.g. timm's Conv2dSame), transposed convolutions, and every other module
    (pooling layers, whose ``kernel_size`` may be an int, included). ``verbose=True`` prints one line: what was
    converted, by kernel size, and what was left and why.

    ``den``: ``None`` (the suggested den for each layer's kernel size, :func:`pyfast.nn.wconv.default_den`); one den
    for every converted layer (as ``WeightedConv2d(den=...)`` takes it); a mapping from kernel size (``3`` or
    ``(3, 5)``) to den, the suggested den for sizes not in it; or a callable ``(name, conv) -> den``, returning
    ``False`` to skip that layer. Errors name the layer.
    """
    report = Report("wconv.convert")
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            cls = WEIGHTED_CONVS.get(type(child))
            if cls is None:
                if isinstance(child, tuple(WEIGHTED_CONVS)):
                    report.leave_kind(type(child).__name__, "a subclass with its own forward")
                continue
            ks = tuple(child.kernel_size)
            if all(k == 1 for k in ks):
                report.leave_kind("1x1 conv", "its density is the identity")
                continue
            if any(k % 2 == 0 for k in ks):
                report.leave_kind("even-kernel conv", "no centre tap")
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            try:
                layer_den = _den_for(den, name, child)
                if layer_den is False:
                    report.leave(name, "skipped by den")
                    continue
                new = cls(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                          child.dilation, child.groups, child.bias is not None, child.padding_mode,
                          device=child.weight.device, dtype=child.weight.dtype, den=layer_den,
                          learnable_den=learnable_den, allow_negative_den=allow_negative_den, backend=backend)
            except (ValueError, TypeError) as err:
                raise type(err)(f"convert: layer {name!r} ({child}): {err}") from None
            new.weight = child.weight
            new.bias = child.bias
            new.train(child.training)
            setattr(parent, child_name, new)
            report.swap(f"{'x'.join(map(str, ks))} {type(child).__name__}")
    if verbose:
        print(report.line(), flush=True)
    return model


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every WeightedConv*d in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHTED_TYPES)]


def den_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable den Parameters of ``model``'s weighted convolutions (for their own optimizer group)."""
    return [m.den for _, m in weighted_layers(model) if isinstance(m.den, nn.Parameter) and m.den.requires_grad]


def param_groups(model: nn.Module, **den_options) -> list[dict]:
    """Optimizer parameter groups: every other trainable parameter, then the dens with ``den_options`` (e.g.
    ``lr=1e-2, weight_decay=1e-2``, the authors' AdamW settings for den). Groups that would be empty are left out.
    """
    dens = den_parameters(model)
    den_ids = {id(p) for p in dens}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in den_ids]
    groups = [{"params": others}] if others else []
    if dens:
        groups.append({"params": dens, **den_options})
    return groups


@torch.no_grad()
def revert(model: nn.Module) -> nn.Module:
    """Replace every WeightedConv*d of ``model`` (in place) by a plain nn.Conv*d with weight W * Phi (same outputs;
    no density left to train). Returns model."""
    plain_types = {v: k for k, v in WEIGHTED_CONVS.items()}
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) not in plain_types:
                continue
            conv = plain_types[type(child)](
                child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding, child.dilation,
                child.groups, child.bias is not None, child.padding_mode, device=child.weight.device,
                dtype=child.weight.dtype)
            conv.weight.copy_(child.weighted_weight())
            if child.bias is not None:
                conv.bias = child.bias
            conv.train(child.training)
            setattr(parent, child_name, conv)
    return model

