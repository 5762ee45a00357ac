"""Thin nn.Modules over pyfast.ops."""

from pyfast.nn import mesa
from pyfast.nn.crrelu import CRReLU
from pyfast.nn.lif import IF, LIF
from pyfast.nn.wconv import WeightedConv1d, WeightedConv2d, WeightedConv3d

__all__ = ["IF", "LIF", "CRReLU", "WeightedConv1d", "WeightedConv2d", "WeightedConv3d", "mesa"]
