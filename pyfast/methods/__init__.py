"""Training-method wrappers of ``pyfast train``, registered in :data:`pyfast.registry.METHODS`."""

from pyfast.methods import distill, gated, iir_snn, karat, mesa, standard, weighted_conv  # noqa: F401  (registration)
from pyfast.methods.base import Method, Stage

__all__ = ["Method", "Stage"]
