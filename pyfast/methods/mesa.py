"""``mesa``: memory-saving Transformer training with 8-bit activation storage (Mesa, Pan et al., arXiv 2111.11124).

The model is built as usual, then :func:`pyfast.mesa.convert` swaps its Linear, GELU, Softmax, LayerNorm, MatMul (the
attention's two products) and Conv2d layers for versions that save their activations for backward as head-wise
uint8 codes with running range estimates; the forward is unchanged, the backward dequantizes.
"""

from __future__ import annotations

from typing import ClassVar

from pyfast.convert import mesa
from pyfast.methods.base import Method, require_modules
from pyfast.nn.mesa import Quantizer
from pyfast.registry import METHODS


@METHODS.register("mesa", "Mesa: ViT training with activations saved as 8-bit codes (about 1/4 of fp32 memory)")
class Mesa(Method):
    default_model = "vit-tiny"
    model_requirement = ("a model with layers Mesa quantizes (Linear, Conv2d, GELU, LayerNorm, Softmax, timm-style "
                         "attention)")
    arg_defaults: ClassVar[dict] = {"policy": "all", "levels": 256, "stochastic": True}

    def check_args(self) -> None:
        levels = self.args["levels"]
        if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 256:
            raise ValueError(f"method_args: levels must be an integer in 2..256, got {levels!r}")
        if not isinstance(self.args["stochastic"], bool):
            raise TypeError(f"method_args: stochastic must be true or false, got {self.args['stochastic']!r}")

    def prepare_model(self, model):
        model = mesa.convert(model, policy=self.args["policy"], levels=self.args["levels"],
                             stochastic=self.args["stochastic"])
        return require_modules(model, Quantizer, f"layer that Mesa's policy {self.args['policy']!r} quantizes")
