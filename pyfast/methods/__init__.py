"""Training-method wrappers of ``pyfast train``, registered in :data:`pyfast.registry.METHODS` (which imports each
method module on its first lookup; see :mod:`pyfast.methods.base` for the interface)."""

from pyfast.methods.base import Method, Stage

__all__ = ["Method", "Stage"]
