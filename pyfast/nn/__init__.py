"""Thin nn.Modules over pyfast.ops."""

from pyfast.nn import mesa
from pyfast.nn.lif import IF, LIF
from pyfast.nn.wconv import WeightedConv1d, WeightedConv2d, WeightedConv3d

# Last: pyfast.nn.karat registers its attention in pyfast.models.vit, whose package imports the modules above.
from pyfast.nn.karat import FourierKArAtAttention, KArAtCoefficients  # noqa: E402  isort: skip

__all__ = ["IF", "LIF", "FourierKArAtAttention", "KArAtCoefficients", "WeightedConv1d", "WeightedConv2d", "WeightedConv3d", "mesa"]
