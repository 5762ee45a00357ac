"""Thin nn.Modules over pyfast.ops."""

from pyfast.nn import mesa
from pyfast.nn.lif import IF, LIF

__all__ = ["IF", "LIF", "mesa"]
