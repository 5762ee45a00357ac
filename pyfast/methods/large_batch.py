"""``large-batch``: the "train longer, generalize better" regime for large batches (Hoffer, Hubara & Soudry 2017).

Three changes to plain training with a large batch B_L, relative to the small batch B_S the hyperparameters were
tuned for (``base_batch_size``):

1. Ghost batch normalization: every ``nn.BatchNorm1d/2d`` of the model becomes
   :class:`pyfast.nn.GhostBatchNorm1d/2d`, normalising each ghost batch of ``ghost_batch_size`` samples with its own
   statistics (and advancing the running statistics once per ghost batch), so the noise of batch-norm statistics
   stays that of the small batch.
2. Learning-rate adaptation (``lr_bb_fix`` of the official code): ``lr = cfg.lr * sqrt(B_L / B_S)``
   (``lr_scaling="sqrt"``, the paper's rule, which keeps the covariance of the weight update; ``"linear"`` and
   ``"none"`` are offered for comparison).
3. Regime adaptation ("train longer", ``regime_bb_fix``): ``epochs = round(cfg.epochs * B_L / B_S)`` (at least 1),
   so the large batch takes as many optimiser steps as the small one; the schedule (warm-up, cosine) stretches with
   the stage. Off with ``regime_adaptation=false``.

B_L is the run's global ``--batch-size``. The official code also clips the gradient norm at 5 and accumulates the
ghost batches' gradients chunk by chunk; neither is part of the paper's method, and the clipping is not applied
here (the vectorised ghost batch norm computes the same gradients as the chunk loop in one pass).
"""

from __future__ import annotations

import math
from typing import ClassVar

from pyfast.convert.ghost_bn import convert_to_ghost_bn
from pyfast.methods.base import Method, Stage, require_modules
from pyfast.nn.ghost_bn import GhostBatchNorm1d, GhostBatchNorm2d
from pyfast.registry import METHODS

LR_SCALINGS = {"sqrt": 0.5, "linear": 1.0, "none": 0.0}  # lr multiplier = (B_L / B_S) ** exponent


@METHODS.register("large-batch", "train longer, generalize better: ghost batch norm + sqrt lr scaling + "
                                 "epochs x B_L/B_S for large batches")
class LargeBatch(Method):
    default_model = "resnet18"
    model_requirement = "a model with BatchNorm layers (they become ghost batch norms)"
    arg_defaults: ClassVar[dict] = {"ghost_batch_size": 128, "base_batch_size": 128, "lr_scaling": "sqrt",
                                    "regime_adaptation": True}

    def check_args(self) -> None:
        for name in ("ghost_batch_size", "base_batch_size"):
            v = self.args[name]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"method_args: {name} must be an int >= 1, got {v!r}")
        if self.args["lr_scaling"] not in LR_SCALINGS:
            raise ValueError(f"method_args: lr_scaling must be one of {', '.join(LR_SCALINGS)}, got "
                             f"{self.args['lr_scaling']!r}")
        if not isinstance(self.args["regime_adaptation"], bool):
            raise TypeError(f"method_args: regime_adaptation must be true or false, got "
                            f"{self.args['regime_adaptation']!r}")

    @property
    def batch_ratio(self) -> float:
        """B_L / B_S."""
        return self.cfg.batch_size / self.args["base_batch_size"]

    def lr(self) -> float:
        """The adapted learning rate, cfg.lr * (B_L / B_S) ** {0.5, 1, 0}."""
        return self.cfg.lr * self.batch_ratio ** LR_SCALINGS[self.args["lr_scaling"]]

    def epochs(self) -> int:
        """The adapted number of epochs (cfg.epochs when regime adaptation is off)."""
        if not self.args["regime_adaptation"]:
            return self.cfg.epochs
        return max(1, round(self.cfg.epochs * self.batch_ratio))

    def prepare_model(self, model):
        model = convert_to_ghost_bn(model, self.args["ghost_batch_size"])
        return require_modules(model, (GhostBatchNorm1d, GhostBatchNorm2d), "BatchNorm1d/2d layer")

    def stages(self) -> list[Stage]:
        return [Stage("train", self.epochs())]

    def param_groups(self, model) -> list[dict]:
        lr = self.lr()
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"large-batch: the adapted learning rate must be finite and > 0, got {lr!r}")
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
