"""pyfast: compiled-kernel performance backend for PyTorch.

``torch.ops.pyfast.*`` custom ops (C++/CUDA in csrc/, Triton in kernels/ as pyfast._triton), public functions in
:mod:`pyfast.ops`, modules in :mod:`pyfast.nn`. ``python -m pyfast.info`` lists which backend serves which op.
"""

# _extension first: loading _C registers the C++ / CUDA ops that ops/ and nn/ wrap.
from pyfast import _extension, nn, ops, wconv  # noqa: F401
from pyfast.backends import BackendUnavailableError

__version__ = "0.1.0"
__all__ = ["BackendUnavailableError", "__version__", "nn", "ops", "wconv"]
