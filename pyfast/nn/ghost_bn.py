"""``pyfast.nn.GhostBatchNorm1d/2d``: ghost batch normalization as drop-in ``nn.BatchNorm1d/2d``.

Each is a subclass of the matching ``nn.BatchNorm*d`` (same constructor plus ``ghost_batch_size``, the same
parameters and buffers, so ``state_dict`` loads both ways and ``isinstance(m, nn.BatchNorm2d)`` holds). In training
the batch is normalised per ghost batch of ``ghost_batch_size`` samples and the running statistics advance once per
ghost batch (:func:`pyfast.ops.ghost_batch_norm`); ``num_batches_tracked`` counts those updates, as a loop of
BatchNorm calls over the chunks would. Eval is plain batch norm with the running statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from pyfast._checks import check_int
from pyfast.nn._checks import check_backend
from pyfast.ops.ghost_bn import check_hyperparameters, ghost_batch_norm, ghost_count

__all__ = ["GhostBatchNorm1d", "GhostBatchNorm2d"]


class _GhostMixin:
    """The ghost part shared by GhostBatchNorm1d/2d (placed before nn.BatchNorm*d in the bases): ``nn.BatchNorm*d``'s
    constructor plus ``ghost_batch_size`` and ``backend``, checked before nn.BatchNorm*d allocates anything."""

    def __init__(self, num_features: int, ghost_batch_size: int = 128, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None, *,
                 backend: str = "auto"):
        owner = type(self).__name__
        check_int(owner, "num_features", num_features)
        check_hyperparameters(ghost_batch_size, momentum, eps)
        check_backend(owner, backend)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.ghost_batch_size = ghost_batch_size
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if self.momentum is None:
            raise ValueError(f"{type(self).__name__}: momentum=None (cumulative average) is not supported")
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats:
            return ghost_batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False,
                                    self.momentum, self.eps, self.ghost_batch_size, backend=self.backend)
        update = self.training and self.track_running_stats
        y = ghost_batch_norm(x, self.running_mean if update else None, self.running_var if update else None,
                             self.weight, self.bias, True, self.momentum, self.eps, self.ghost_batch_size,
                             backend=self.backend)
        if update:
            self.num_batches_tracked.add_(ghost_count(x.shape[0], self.ghost_batch_size))
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"


class GhostBatchNorm1d(_GhostMixin, nn.BatchNorm1d):
    """Ghost batch norm over [N, C] or [N, C, L]; ``nn.BatchNorm1d``'s arguments plus ``ghost_batch_size``."""


class GhostBatchNorm2d(_GhostMixin, nn.BatchNorm2d):
    """Ghost batch norm over [N, C, H, W]; ``nn.BatchNorm2d``'s arguments plus ``ghost_batch_size``."""
