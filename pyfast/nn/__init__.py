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
    "GatedClassAttention", "GatedClassAttentionBlock", "GradientRouting", "HardAttentionGate", "anneal_s",
    "IF", "LIF", "WeightedConv1d", "WeightedConv2d", "WeightedConv3d", "mesa"]
