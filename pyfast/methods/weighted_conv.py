"""``weighted-conv``: convolution with a learnable spatial density (Cammarasana & Patane, arXiv 2505.24558).

Every k x k convolution (k odd, > 1) of the model becomes :class:`pyfast.nn.WeightedConv2d`: its kernel is multiplied
by the outer product of alpha = [den, 1, reversed(den)] before ATen's convolution runs. As the authors do, the dens
train in a parameter group of their own (AdamW settings ``den_lr``, ``den_weight_decay``).
"""

from __future__ import annotations

import math
from typing import ClassVar

from pyfast.convert import wconv
from pyfast.methods.base import Method, require_modules
from pyfast.registry import METHODS


@METHODS.register("weighted-conv", "weighted convolution: each kxk kernel scaled by a learnable density (den)")
class WeightedConv(Method):
    default_model = "resnet18"
    model_requirement = "a model with k x k convolutions, k odd > 1"
    arg_defaults: ClassVar[dict] = {"den": None, "learnable_den": True, "den_lr": 1e-2, "den_weight_decay": 1e-2}

    def check_args(self) -> None:
        for name in ("den_lr", "den_weight_decay"):
            v = self.args[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"method_args: {name} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.args["learnable_den"], bool):
            raise TypeError(f"method_args: learnable_den must be true or false, got {self.args['learnable_den']!r}")

    def prepare_model(self, model):
        model = wconv.convert(model, den=self.args["den"], learnable_den=self.args["learnable_den"])
        return require_modules(model, wconv.WEIGHTED_TYPES, "k x k convolution with k odd > 1")

    def param_groups(self, model) -> list[dict]:
        return wconv.param_groups(model, lr=self.args["den_lr"], weight_decay=self.args["den_weight_decay"])
