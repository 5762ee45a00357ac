"""Model converters: swap the layers of an existing model, in place, for pyfast's.

* :mod:`pyfast.convert.mesa` (also ``pyfast.mesa``): Linear / Conv2d / GELU / LayerNorm and timm-style attention ->
  Mesa layers that save 8-bit activations;
* :mod:`pyfast.convert.wconv` (also ``pyfast.wconv``): ``nn.Conv1d/2d/3d`` -> weighted convolutions, and back;
* :func:`convert_attention`: timm-style self-attention -> Fourier-KArAt attention (:mod:`pyfast.convert.attention`);
* :func:`convert_to_ghost_bn`: ``nn.BatchNorm1d/2d`` -> ghost batch norm (:mod:`pyfast.convert.ghost_bn`);
* :func:`convert_spikingjelly` (:mod:`pyfast.convert.spikingjelly`): SpikingJelly's multi-step LIF / IF / PLIF nodes
  -> pyfast's neurons, with SpikingJelly's state semantics. It needs SpikingJelly, so its module is imported on first
  use of the name.

Each takes ``verbose=True`` to print one line: what it converted, and what it left and why
(:mod:`pyfast.convert.report`).
"""

from pyfast.convert import mesa, wconv
from pyfast.convert.attention import convert_attention
from pyfast.convert.ghost_bn import convert_to_ghost_bn

__all__ = ["convert_attention", "convert_spikingjelly", "convert_to_ghost_bn", "mesa", "wconv"]


def __getattr__(name: str):
    # SpikingJelly is an optional peer (requirements/peers.txt): `import pyfast` neither needs nor imports it.
    if name == "convert_spikingjelly":
        from pyfast.convert.spikingjelly import convert_spikingjelly

        return convert_spikingjelly
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
