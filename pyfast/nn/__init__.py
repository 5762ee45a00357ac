"""Thin nn.Modules over pyfast.ops."""

from pyfast.nn import mesa
from pyfast.nn.crrelu import CRReLU
from pyfast.nn.ghost_bn import GhostBatchNorm1d, GhostBatchNorm2d, convert_to_ghost_bn
from pyfast.nn.lif import IF, LIF
from pyfast.nn.msdrop import MultiSampleDropoutHead
from pyfast.nn.spectral import DropPath, SpectralGating
from pyfast.nn.wconv import WeightedConv1d, WeightedConv2d, WeightedConv3d

__all__ = [
    "IF",
    "LIF",
    "CRReLU",
    "DropPath",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "MultiSampleDropoutHead",
    "SpectralGating",
    "WeightedConv1d",
    "WeightedConv2d",
    "WeightedConv3d",
    "convert_to_ghost_bn",
    "mesa",
]
