"""``pyfast.nn.MultiSampleDropoutHead``: a classifier head (``nn.Linear``) trained with multi-sample dropout.

In training, M dropout masks are drawn at once and the shared linear layer is applied to every masked copy of the
pooled features; the loss is the average of the M cross-entropies (:func:`pyfast.ops.multi_sample_dropout_loss`,
one fused op). At eval, dropout is off and the head is the plain linear layer. A subclass of ``nn.Linear`` (same
parameters and state_dict), so it replaces a model's final ``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyfast._checks import check_int
from pyfast.nn._checks import check_backend
from pyfast.ops.msdrop import check_hyperparameters, multi_sample_dropout_loss, new_seed
from pyfast.reference.msdrop import msdrop_logits_ref

__all__ = ["MultiSampleDropoutHead"]


class MultiSampleDropoutHead(nn.Linear):
    """Linear head with M-sample dropout.

    Args:
        in_features: D, the pooled feature size; num_classes: C.
        num_samples: M dropout samples per step (the paper uses 8); p: drop probability (0.5).
        bias: as ``nn.Linear``. backend: pyfast backend for the fused loss (see :mod:`pyfast.backends`).

    ``forward(h)``: [B, D] -> training: logits of every sample [M, B, C] (differentiable, masks from a fresh seed);
    eval: ``FC(h)`` [B, C]. ``forward(h, target)``: training: ``(loss, logits)`` with the averaged cross-entropy
    from the fused op (logits [M, B, C], detached); eval: ``(F.cross_entropy(FC(h), target), FC(h))``.
    """

    def __init__(self, in_features: int, num_classes: int, num_samples: int = 8, p: float = 0.5, bias: bool = True,
                 device=None, dtype=None, *, backend: str = "auto"):
        check_int("MultiSampleDropoutHead", "in_features", in_features)
        check_int("MultiSampleDropoutHead", "num_classes", num_classes)
        check_hyperparameters(num_samples, p)
        check_backend("MultiSampleDropoutHead", backend)
        super().__init__(in_features, num_classes, bias, device, dtype)
        self.num_samples = num_samples
        self.p = p
        self.backend = backend

    def forward(self, h: torch.Tensor, target: torch.Tensor | None = None):
        if not self.training:
            logits = F.linear(h, self.weight, self.bias)
            return logits if target is None else (F.cross_entropy(logits, target), logits)
        if target is None:
            return msdrop_logits_ref(h, self.weight, self.bias, new_seed(h.device), self.num_samples, self.p)
        return multi_sample_dropout_loss(h, self.weight, self.bias, target, self.num_samples, self.p,
                                         backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_samples={self.num_samples}, p={self.p}"
