"""Models of the training harness: ``nn.Module`` networks assembled from pyfast.nn layers."""

from pyfast.models.snn import DigitsSNN, MultiStep

__all__ = ["DigitsSNN", "MultiStep"]
