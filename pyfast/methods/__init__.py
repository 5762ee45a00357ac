"""Training-method wrappers of ``pyfast train``, registered in :data:`pyfast.registry.METHODS`."""

from pyfast.methods import iir_snn, large_batch, mesa, slots, standard, weighted_conv  # noqa: F401  (registration)
from pyfast.methods.base import Method, MethodUnavailableError, Stage

__all__ = ["Method", "MethodUnavailableError", "Stage"]
