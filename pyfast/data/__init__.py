"""Datasets for the training harness, returned as in-memory torch tensors."""

from pyfast.data.digits import Split, load_digits

__all__ = ["Split", "load_digits"]
