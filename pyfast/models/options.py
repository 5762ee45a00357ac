"""Checks of the models' options, shared by every constructor and builder in :mod:`pyfast.models`.

Each check names its owner (the class or builder), the option, what it expects and what it got, e.g.
``VisionTransformer: dim must be an integer >= 1, got -5``. A value of the wrong type (a string, a list, a bool, a
float where an integer is expected) is a ``TypeError``; a value of the right type outside the allowed range (0, -1,
nan, inf) is a ``ValueError``. The harness turns both into exit status 2 with the message (``--model-arg``).
Bools are refused wherever a number is expected: ``True`` is an ``int`` to Python, never a size to a user.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any


def int_at_least(owner: str, name: str, value: Any, minimum: int) -> int:
    """``value``, an integer (not a bool) ``>= minimum``."""
    expected = f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be {expected}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}")
    return value


def positive_int(owner: str, name: str, value: Any) -> int:
    """``value``, an integer (not a bool) ``>= 1``: a size, a count, a depth."""
    return int_at_least(owner, name, value, 1)


def _require_real(owner: str, name: str, value: Any, expected: str) -> None:
    """A real number, not a bool. Callers compare ``value`` as it is: ``float()`` would overflow on a huge int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be {expected}, got {value!r}")


def positive_number(owner: str, name: str, value: Any) -> float:
    """``value``, a finite real number (not a bool) ``> 0``: a width multiplier, a ratio, a scale."""
    expected = "a finite number > 0"
    _require_real(owner, name, value, expected)
    if not 0 < value < math.inf:  # nan fails too
        raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}")
    return value


def fraction(owner: str, name: str, value: Any, *, include_zero: bool = True, include_one: bool = False) -> float:
    """``value``, a real number (not a bool) in ``[0, 1)`` (the ends as ``include_zero`` / ``include_one`` say)."""
    expected = f"a number in {'[' if include_zero else '('}0, 1{']' if include_one else ')'}"
    _require_real(owner, name, value, expected)
    above_zero = value >= 0 if include_zero else value > 0
    below_one = value <= 1 if include_one else value < 1
    if not (above_zero and below_one):  # nan fails both
        raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}")
    return value


def probability(owner: str, name: str, value: Any) -> float:
    """``value``, a drop rate in ``[0, 1)`` (1 would drop everything)."""
    return fraction(owner, name, value)


def choice(owner: str, name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value``, one of ``choices`` and of the same type (``True`` is not the choice ``1``)."""
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(f"{owner}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def int_sequence(owner: str, name: str, value: Any, length: int | None = None) -> list[int]:
    """``value`` as a list: a non-empty list or tuple of integers >= 1 (exactly ``length`` of them if given)."""
    expected = f"a list of {length if length is not None else 'one or more'} integers >= 1"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{owner}: {name} must be {expected}, got {value!r}")
    if not value or (length is not None and len(value) != length):
        raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}")
    return [positive_int(owner, f"{name}[{i}]", v) for i, v in enumerate(value)]


def multiple_of(owner: str, name: str, value: int, divisor_name: str, divisor: int) -> None:
    """``value`` (the option ``name``) is a multiple of ``divisor`` (the option ``divisor_name``), both integers >= 1
    checked before."""
    if value % divisor:
        raise ValueError(f"{owner}: {name} ({value}) must be a multiple of {divisor_name} ({divisor})")


def mlp_width(owner: str, width_name: str, width: int, ratio_name: str, ratio: float) -> None:
    """``int(width * ratio)``, the hidden width of an MLP sized by a ratio, is >= 1 (both options checked before)."""
    if not 1 <= width * ratio < math.inf:
        raise ValueError(f"{owner}: {ratio_name} x {width_name} ({ratio} x {width}) is the MLP's hidden width and "
                         f"must be >= 1 and finite")
