"""pyfast: compiled-kernel performance backend for PyTorch.

``torch.ops.pyfast.*`` custom ops (C++/CUDA in csrc/, Triton in kernels/ as pyfast._triton), public functions in
:mod:`pyfast.ops`, modules in :mod:`pyfast.nn`. ``python -m pyfast.info`` lists which backend serves which op.
"""

from pyfast import _extension  # loads _C first: registers the C++ / CUDA ops
from pyfast import nn, ops
from pyfast.backends import BackendUnavailableError

__version__ = "0.1.0"
__all__ = ["BackendUnavailableError", "nn", "ops", "__version__"]
