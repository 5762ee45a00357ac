"""Model converters: swap the layers of an existing model, in place, for pyfast's.

* :mod:`pyfast.convert.mesa` (also ``pyfast.mesa``): Linear / Conv2d / GELU / LayerNorm and timm-style attention ->
  Mesa layers that save 8-bit activations;
* :mod:`pyfast.convert.wconv` (also ``pyfast.wconv``): ``nn.Conv1d/2d/3d`` -> weighted convolutions, and back;
* :func:`convert_to_ghost_bn`: ``nn.BatchNorm1d/2d`` -> ghost batch norm (defined in :mod:`pyfast.nn.ghost_bn`).
"""

from pyfast.convert import mesa, wconv
from pyfast.nn.ghost_bn import convert_to_ghost_bn

__all__ = ["convert_to_ghost_bn", "mesa", "wconv"]
