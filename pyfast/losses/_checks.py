"""Input checks shared by the distillation losses: errors that name the argument and say what was expected."""

from __future__ import annotations

import torch

from pyfast._numbers import is_finite, is_number

REDUCTIONS = ("mean", "sum", "none")


def check_logits(name: str, z: torch.Tensor, num_classes: int | None = None, batch: int | None = None) -> None:
    """``z`` must be a floating [B, C] tensor (C = ``num_classes`` and B = ``batch`` when given)."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(z).__name__}")
    if not z.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of logits, got {z.dtype}")
    if z.dim() != 2 or z.shape[1] < 2:
        raise ValueError(f"{name} must have shape [B, C] with C >= 2 classes, got {tuple(z.shape)}")
    if num_classes is not None and z.shape[1] != num_classes:
        raise ValueError(f"{name} has {z.shape[1]} classes, expected {num_classes} (as the student's logits)")
    if batch is not None and z.shape[0] != batch:
        raise ValueError(f"{name} has batch {z.shape[0]}, expected {batch}")


def check_labels(y: torch.Tensor, logits: torch.Tensor) -> None:
    """``y`` must be int64 [B] with values in [0, C) (the values are read back, except while torch.compile traces:
    there the kernels check them, or the reference's gather fails)."""
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != logits.shape[:1]:
        raise ValueError(f"y must be an int64 tensor of shape [{logits.shape[0]}], got "
                         f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
    if y.device != logits.device:
        raise ValueError(f"y is on {y.device} but the logits are on {logits.device}")
    if not torch.compiler.is_compiling() and y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
        raise ValueError(f"y must hold class indices in [0, {logits.shape[1]}), got values in "
                         f"[{int(y.min())}, {int(y.max())}]")


def check_probability_rows(name: str, p: torch.Tensor) -> None:
    """The rows of ``p`` [B, C] must be finite, non-negative and sum to 1 within 1e-3. The values are read back (one
    device sync), except while torch.compile traces, where a data-dependent check would break the graph: a compiled
    step trusts the targets it is given (densify's and EpochTargetBank's rows are valid)."""
    if torch.compiler.is_compiling():
        return
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or bool(((p.sum(1) - 1).abs() > 1e-3).any()):
        raise ValueError(f"{name} rows must be finite, non-negative probabilities summing to 1 (within 1e-3)")


def check_positive(name: str, value: float) -> float:
    if not is_number(value) or not is_finite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: float) -> float:
    if not is_number(value) or not is_finite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sample losses [B] -> the requested reduction."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
