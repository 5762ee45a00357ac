"""Checks of Python-number arguments (hyperparameters) that torch.compile traces without a graph break.

Under ``torch.compile(dynamic=True)`` a float that reaches a function through a default argument or a module
attribute is a symbolic float: ``math.isnan`` / ``isinf`` / ``isfinite`` of it break the graph (so
``fullgraph=True`` fails), while a comparison traces (Dynamo guards on its result). These helpers use comparisons
only; on plain floats they answer as the ``math`` functions do.
"""

from __future__ import annotations

import math
import numbers


def is_number(v) -> bool:
    """A real number (int or float, plain or symbolic), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def is_nan(v) -> bool:
    return not v <= math.inf  # NaN fails every comparison


def is_inf(v) -> bool:
    return v == math.inf or v == -math.inf


def is_finite(v) -> bool:
    """Neither NaN nor infinite (a NaN fails both comparisons)."""
    return -math.inf < v < math.inf
