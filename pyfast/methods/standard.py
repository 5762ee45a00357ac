"""``standard``: plain supervised training (cross-entropy), the baseline every other method is compared with."""

from __future__ import annotations

from pyfast.methods.base import Method
from pyfast.registry import METHODS


@METHODS.register("standard", "plain supervised training with cross-entropy (the baseline)")
class Standard(Method):
    default_model = "resnet18"
