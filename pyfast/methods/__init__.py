"""Training-method wrappers of ``pyfast train``, registered in :data:`pyfast.registry.METHODS`."""

from pyfast.methods import (  # noqa: F401  (registration)
    distill,
    gated,
    iir_snn,
    karat,
    large_batch,
    mesa,
    reinforced,
    standard,
    weighted_conv,
)
from pyfast.methods.base import Method, Stage

__all__ = ["Method", "Stage"]
