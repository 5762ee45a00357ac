"""``karat``: a ViT whose attention is Fourier-KArAt (Maity et al., arXiv 2503.10632), trained as usual.

Every block's softmax attention becomes :class:`pyfast.nn.FourierKArAtAttention` (the learnable ``W Phi(A)`` row
operator over a Fourier basis of G harmonics, rank r), through the ViT's ``attention`` / ``attention_args`` model
options; the fused ``pyfast.ops.karat_attention`` never materialises the basis. ``mode`` is ``blockwise`` (the paper's
GnB, one operator per block and head) or ``universal`` (GnU, one per head shared by all blocks).
"""

from __future__ import annotations

from typing import ClassVar

from pyfast.methods.base import Method
from pyfast.registry import METHODS


@METHODS.register("karat", "Fourier-KArAt: ViT with learnable Kolmogorov-Arnold attention (G=3, r=12, blockwise)")
class KArAt(Method):
    default_model = "vit-tiny"
    model_requirement = "a pyfast ViT, vit-tiny or vit-small (its attention is built as Fourier-KArAt)"
    supported_models = ("vit-tiny", "vit-small")
    arg_defaults: ClassVar[dict] = {"G": 3, "r": 12, "mode": "blockwise", "constant_term": True}

    def check_args(self) -> None:
        for name in ("G", "r"):
            v = self.args[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"method_args: {name} must be an integer >= 1, got {v!r}")
        if self.args["mode"] not in ("blockwise", "universal"):
            raise ValueError(f"method_args: mode must be 'blockwise' or 'universal', got {self.args['mode']!r}")
        if not isinstance(self.args["constant_term"], bool):
            raise TypeError(f"method_args: constant_term must be true or false, got {self.args['constant_term']!r}")

    def model_options(self) -> dict:
        return {"attention": "karat",
                "attention_args": {k: self.args[k] for k in ("G", "r", "mode", "constant_term")}}
