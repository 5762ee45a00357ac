"""Checks of Python arguments (sizes, rates, flags, choices), shared by the modules' constructors (:mod:`pyfast.nn`)
and the model builders (:mod:`pyfast.models`).

Every error names its owner (the class or builder), the argument, what it expects and what it got, e.g.
``VisionTransformer: dim must be an int >= 1, got -5``. A value of the wrong type (a string for a size, a float for
an int, anything but a bool for a flag) is a ``TypeError``; a value of the right type out of range (0, -1, NaN,
infinity) is a ``ValueError``; the training harness turns both into exit status 2 with the message. Bools are
refused wherever a number is expected: ``True`` is an ``int`` to Python, never a size to a user. Numbers are
compared (:mod:`pyfast._numbers`) before anything else, so a check inside a forward traces under
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from pyfast._numbers import is_finite, is_nan, is_number


def check_int(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value``, an int (not a bool) ``>= minimum``: a size, a count, a depth."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}, got {value}")
    return int(value)


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def check_number(owner: str, name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, allow_inf: bool = False):
    """``value``, a real number (not a bool), never NaN, finite unless ``allow_inf``, within ``[low, high]`` (an end
    is open with ``low_open`` / ``high_open``; ``None``: unbounded). Returned as a float (an int too large for one
    is a ValueError)."""
    kind = "number" if allow_inf else "finite number"
    expected = f"a {kind}{_range_text(low, high, low_open, high_open)}"
    if not is_number(value):
        raise TypeError(f"{owner}: {name} must be {expected}, got {type(value).__name__} {value!r}")
    if (is_nan(value) or (not allow_inf and not is_finite(value))
            or (low is not None and (value <= low if low_open else value < low))
            or (high is not None and (value >= high if high_open else value > high))):
        raise ValueError(f"{owner}: {name} must be {expected}, got {value}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{owner}: {name} must be {expected} that a float can hold, got {value}") from None


def check_positive(owner: str, name: str, value: Any):
    """``value``, a finite number > 0: a width multiplier, a ratio, a scale."""
    return check_number(owner, name, value, low=0, low_open=True)


def check_rate(owner: str, name: str, value: Any):
    """``value``, a drop rate in ``[0, 1)`` (1 would drop everything)."""
    return check_number(owner, name, value, low=0, high=1, high_open=True)


def check_bool(owner: str, name: str, value: Any) -> bool:
    """``value``, a bool (a string such as ``"no"`` would otherwise count as True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_choice(owner: str, name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value``, one of ``choices`` and of the same type (``True`` is not the choice ``1``)."""
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(f"{owner}: {name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_int_sequence(owner: str, name: str, value: Any, length: int | None = None) -> list[int]:
    """``value`` as a list: a non-empty list or tuple of ints >= 1 (exactly ``length`` of them if given)."""
    expected = f"a list of {length if length is not None else 'one or more'} ints >= 1"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{owner}: {name} must be {expected}, got {type(value).__name__} {value!r}")
    if not value or (length is not None and len(value) != length):
        raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}")
    return [check_int(owner, f"{name}[{i}]", v) for i, v in enumerate(value)]


def check_multiple_of(owner: str, name: str, value: int, divisor_name: str, divisor: int) -> None:
    """``value`` (the argument ``name``) is a multiple of ``divisor`` (the argument ``divisor_name``), both ints >= 1
    checked before."""
    if value % divisor:
        raise ValueError(f"{owner}: {name} ({value}) must be a multiple of {divisor_name} ({divisor})")


def check_mlp_width(owner: str, width_name: str, width: int, ratio_name: str, ratio: float) -> None:
    """``int(width * ratio)``, the hidden width of an MLP sized by a ratio, is >= 1 (both checked before)."""
    if not 1 <= width * ratio < math.inf:
        raise ValueError(f"{owner}: {ratio_name} x {width_name} ({ratio} x {width}) is the MLP's hidden width and "
                         f"must be >= 1 and finite")
