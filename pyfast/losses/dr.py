"""Dataset Reinforcement's targets and loss: sparse top-k teacher probabilities and the KL loss against them.

:func:`sparsify` keeps the k largest probabilities of each row (what ``pyfast reinforce`` stores), :func:`densify`
rebuilds a full distribution from them, :func:`dr_loss` trains a student on it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pyfast.losses._checks import REDUCTIONS, check_logits, check_probability_rows, reduce
from pyfast.losses.kd import float_logits

DENSIFY_METHODS = ("smooth", "topk")


class Sparse(NamedTuple):
    """The top-k of probability rows: ``values`` float ``[..., k]`` in descending order, ``indices`` integer
    ``[..., k]`` (their classes)."""

    values: torch.Tensor
    indices: torch.Tensor


def sparsify(p: torch.Tensor, k: int) -> Sparse:
    """The ``k`` largest entries of each row of probabilities ``p [..., C]``: ``Sparse(values [..., k], indices
    [..., k] int64)``, values in descending order (ties in any order)."""
    if not isinstance(p, torch.Tensor) or not p.is_floating_point() or p.dim() < 1:
        raise ValueError(f"p must be a floating-point tensor [..., C] of probabilities, got "
                         f"{getattr(p, 'dtype', type(p).__name__)} {tuple(getattr(p, 'shape', ()))}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= p.shape[-1]:
        raise ValueError(f"k must be an integer in [1, {p.shape[-1]}] (the number of classes), got {k!r}")
    values, indices = p.topk(k, dim=-1, sorted=True)
    return Sparse(values, indices)


def densify(sparse: Sparse | tuple[torch.Tensor, torch.Tensor], num_classes: int,
            method: str = "smooth") -> torch.Tensor:
    """Full distributions ``[..., num_classes]`` (float32, or the values' dtype if wider) from top-k ``sparse``.

    With ``r = 1 - sum(values)`` the mass the top-k leave over:

    - ``"smooth"``: the top-k classes keep their values, the other ``C - k`` share ``r`` equally. Where ``r < 0``
      (values that sum above 1), the row is ``softmax(values)`` on the top-k and 0 elsewhere, as ml-dr does. A
      ``r`` in ``[-k eps, 0)`` (eps of the values' dtype) is the rounding of a true probability vector and counts as
      ``r = 0``, so ``densify(sparsify(p, C))`` gives ``p`` back. With ``k = C`` there is no other class to take
      ``r``: values off 1 by more than rounding are renormalised to sum to 1 (uniform where they are all 0).
    - ``"topk"``: the top-k values renormalised to sum to 1, 0 elsewhere (ml-dr's ``"zeros"`` takes a softmax of the
      values instead, which flattens probabilities towards uniform; this keeps their ratios).

    Every row is a distribution: non-negative, summing to 1 (up to rounding); the top-k classes keep their values
    under ``"smooth"`` when ``r >= 0`` and ``k < C``. Values must be finite and non-negative and the classes of a
    row distinct (a repeated class would be written twice and its mass lost): anything else is a ValueError.
    """
    values, indices = sparse
    if not isinstance(values, torch.Tensor) or not values.is_floating_point() or values.dim() < 1:
        raise ValueError(f"sparse values must be a floating-point tensor [..., k], got "
                         f"{getattr(values, 'dtype', type(values).__name__)} {tuple(getattr(values, 'shape', ()))}")
    if not isinstance(indices, torch.Tensor) or indices.dtype.is_floating_point or indices.shape != values.shape:
        raise ValueError(f"sparse indices must be an integer tensor of the values' shape {tuple(values.shape)}, got "
                         f"{getattr(indices, 'dtype', type(indices).__name__)} {tuple(getattr(indices, 'shape', ()))}")
    if indices.device != values.device:
        raise ValueError(f"sparse indices are on {indices.device} but the values on {values.device}")
    k = values.shape[-1]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < max(k, 2):
        raise ValueError(f"num_classes must be an integer >= k = {k} (and >= 2), got {num_classes!r}")
    if method not in DENSIFY_METHODS:
        raise ValueError(f"method must be one of {', '.join(DENSIFY_METHODS)}, got {method!r}")
    if values.numel() and not torch.isfinite(values).all():
        raise ValueError("sparse values must be finite")
    if values.numel() and bool((values < 0).any()):
        raise ValueError(f"sparse values must be probabilities >= 0, got a minimum of {values.min().item()}")
    indices = indices.long()
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_classes):
        raise ValueError(f"sparse indices must lie in [0, {num_classes}), got [{int(indices.min())}, "
                         f"{int(indices.max())}]")
    ordered = indices.sort(-1).values
    if k > 1 and bool((ordered[..., 1:] == ordered[..., :-1]).any()):
        raise ValueError("sparse indices must name distinct classes in every row (a repeated class would lose mass)")
    v = float_logits(values)
    total = v.sum(-1, keepdim=True)
    if k == num_classes:  # every class is in the top-k: nothing to give the leftover mass to
        rounding = (total - 1).abs() <= k * torch.finfo(values.dtype).eps  # a probability vector: kept as it is
        full = torch.where(rounding, v, torch.where(total > 0, v / total.clamp_min(torch.finfo(v.dtype).tiny),
                                                    1.0 / k))
        return torch.zeros_like(full).scatter(-1, indices, full)
    if method == "topk":
        if values.numel() and bool((total <= 0).any()):
            raise ValueError("sparse values must have a positive sum in every row for method='topk'")
        return torch.zeros(*v.shape[:-1], num_classes, dtype=v.dtype, device=v.device).scatter(
            -1, indices, v / total)
    r = 1.0 - total
    r = torch.where((r < 0) & (r >= -k * torch.finfo(values.dtype).eps), 0.0, r)
    rest = r / (num_classes - k)
    smooth = rest.expand(*v.shape[:-1], num_classes).scatter(-1, indices, v)
    fallback = torch.zeros_like(smooth).scatter(-1, indices, torch.softmax(v, -1))
    return torch.where(r < 0, fallback, smooth)


def dr_loss(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``KL(target || softmax(logits))`` per sample, ``sum_c t_c (log t_c - log_softmax(logits)_c)`` (0 log 0 = 0).

    ``logits``: ``[B, C]`` (any floating dtype; computed in float32 or wider); ``target``: ``[B, C]`` probability
    rows (non-negative, summing to 1 within 1e-3), e.g. :func:`densify` 's. ``reduction="mean"`` is PyTorch's
    ``F.kl_div(log_softmax(logits), target, reduction="batchmean")`` (the sum over classes, averaged over the batch),
    ``"sum"`` sums over the batch, ``"none"`` gives ``[B]``. The target is treated as a constant (no gradient).
    """
    check_logits("logits", logits)
    if not isinstance(target, torch.Tensor) or not target.is_floating_point() or target.shape != logits.shape:
        raise ValueError(f"target must be a floating-point tensor of the logits' shape {tuple(logits.shape)}, got "
                         f"{getattr(target, 'dtype', type(target).__name__)} {tuple(getattr(target, 'shape', ()))}")
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but the logits are on {logits.device}")
    t = float_logits(target.detach())
    check_probability_rows("target", t)
    s = float_logits(logits)
    per = F.kl_div(F.log_softmax(s, 1), t.to(s.dtype), reduction="none").sum(1)
    return reduce(per, reduction)


class DRLoss(nn.Module):
    """:func:`dr_loss` as a module: ``DRLoss()(logits [B, C], target [B, C])``."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dr_loss(logits, target, self.reduction)
