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

__all__ = [
    "IF",
    "LIF",
    "GatedClassAttention",
    "GatedClassAttentionBlock",
    "GradientRouting",
    "HardAttentionGate",
    "WeightedConv1d",
    "WeightedConv2d",
    "WeightedConv3d",
    "anneal_s",
    "mesa",
]
