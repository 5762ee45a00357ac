"""Thin nn.Modules over pyfast.ops."""

from pyfast.nn import mesa
from pyfast.nn.crrelu import CRReLU
from pyfast.nn.gated import (
    GatedClassAttention,
    GatedClassAttentionBlock,
    GradientRouting,
    HardAttentionGate,
    anneal_s,
)
from pyfast.nn.ghost_bn import GhostBatchNorm1d, GhostBatchNorm2d
from pyfast.nn.karat import FourierKArAtAttention, KArAtCoefficients
from pyfast.nn.lif import IF, LIF
from pyfast.nn.msdrop import MultiSampleDropoutHead
from pyfast.nn.spectral import DropPath, SpectralGating
from pyfast.nn.wconv import WeightedConv1d, WeightedConv2d, WeightedConv3d

__all__ = [
    "IF",
    "LIF",
    "CRReLU",
    "DropPath",
    "FourierKArAtAttention",
    "GatedClassAttention",
    "GatedClassAttentionBlock",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GradientRouting",
    "HardAttentionGate",
    "KArAtCoefficients",
    "MultiSampleDropoutHead",
    "SpectralGating",
    "WeightedConv1d",
    "WeightedConv2d",
    "WeightedConv3d",
    "anneal_s",
    "mesa",
]
