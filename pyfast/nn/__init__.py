"""Thin nn.Modules over pyfast.ops."""

from pyfast.nn import mesa
from pyfast.nn.gated import (
    GatedClassAttention,
    GatedClassAttentionBlock,
    GradientRouting,
    HardAttentionGate,
    anneal_s,
)
from pyfast.nn.lif import IF, LIF
from pyfast.nn.wconv import WeightedConv1d, WeightedConv2d, WeightedConv3d

# isort: off
# Last: pyfast.nn.karat registers its attention in pyfast.models.vit, and the pyfast.models package imports LIF
# from here while it loads.
from pyfast.nn.karat import FourierKArAtAttention, KArAtCoefficients
# isort: on

__all__ = [
    "IF",
    "LIF",
    "FourierKArAtAttention",
    "GatedClassAttention",
    "GatedClassAttentionBlock",
    "GradientRouting",
    "HardAttentionGate",
    "KArAtCoefficients",
    "WeightedConv1d",
    "WeightedConv2d",
    "WeightedConv3d",
    "anneal_s",
    "mesa",
]
