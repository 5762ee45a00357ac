"""pyfast: compiled-kernel performance backend for PyTorch.

``torch.ops.pyfast.*`` custom ops (C++/CUDA in csrc/, Triton in kernels/ as pyfast._triton), public functions in
:mod:`pyfast.ops`, modules in :mod:`pyfast.nn`, losses in :mod:`pyfast.losses`, model converters in
:mod:`pyfast.convert` (``pyfast.mesa`` and ``pyfast.wconv`` for short). The training harness is
:mod:`pyfast.harness`, the ``pyfast`` command :mod:`pyfast.cli`. ``pyfast info`` lists which backend serves which op.
"""

# _extension first: loading _C registers the C++ / CUDA ops that ops/ and nn/ wrap.
from pyfast import _extension, convert, losses, nn, ops  # noqa: F401
from pyfast.backends import BackendUnavailableError
from pyfast.convert import mesa, wconv

__version__ = "0.1.0"
__all__ = ["BackendUnavailableError", "__version__", "convert", "losses", "mesa", "nn", "ops", "wconv"]
