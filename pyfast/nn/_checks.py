"""Argument checks shared by the nn modules' constructors and forwards.

Every error names the module and the argument, and says what was expected and what was given: TypeError for a
value of the wrong type (a string for a size, a float for an int, anything but a bool for a flag), ValueError for a
value of the right type out of range (negative or zero sizes, NaN or infinite rates, unknown choices). Numbers are
checked with comparisons only (:mod:`pyfast._numbers`), so a check that runs inside a forward traces under
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from pyfast._numbers import is_finite, is_nan, is_number
from pyfast.backends import BACKENDS


def check_int(owner: str, name: str, value, minimum: int = 1) -> int:
    """``value`` must be an int (not a bool) >= ``minimum``; returns it as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_heads(owner: str, dim: int, num_heads: int) -> None:
    """``dim`` and ``num_heads`` ints >= 1, ``dim`` a multiple of ``num_heads`` (heads of ``dim / num_heads``)."""
    check_int(owner, "dim", dim)
    check_int(owner, "num_heads", num_heads)
    if dim % num_heads:
        raise ValueError(f"{owner}: dim ({dim}) must be divisible by num_heads ({num_heads})")


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def check_number(owner: str, name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, allow_inf: bool = False) -> float:
    """``value`` must be a real number (not a bool), finite unless ``allow_inf``, never NaN, and within ``[low,
    high]`` (an end is open with ``low_open`` / ``high_open``; ``None``: unbounded); returns it as a float."""
    kind = "number" if allow_inf else "finite number"
    expected = f"a {kind}{_range_text(low, high, low_open, high_open)}"
    if not is_number(value):
        raise TypeError(f"{owner}: {name} must be {expected}, got {type(value).__name__} {value!r}")
    if (is_nan(value) or (not allow_inf and not is_finite(value))
            or (low is not None and (value <= low if low_open else value < low))
            or (high is not None and (value >= high if high_open else value > high))):
        raise ValueError(f"{owner}: {name} must be {expected}, got {value}")
    return float(value)


def check_bool(owner: str, name: str, value) -> bool:
    """``value`` must be a bool (a string such as ``"no"`` would otherwise count as True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_choice(owner: str, name: str, value, choices: Sequence[str]) -> str:
    """``value`` must be one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_backend(owner: str, backend) -> str:
    """``backend`` must name a pyfast backend (:data:`pyfast.backends.BACKENDS`): a typo fails at construction, not
    at the first forward."""
    return check_choice(owner, "backend", backend, BACKENDS)


def check_shape(owner: str, name: str, value) -> tuple[int, ...]:
    """``value`` must be a shape: a tuple, list or ``torch.Size`` of ints >= 1 (``()`` for a scalar)."""
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{owner}: {name} must be a tuple of ints >= 1, got {type(value).__name__} {value!r}")
    if any(isinstance(d, bool) or not isinstance(d, numbers.Integral) for d in value):
        raise TypeError(f"{owner}: {name} must be a tuple of ints >= 1, got {value!r}")
    if any(d < 1 for d in value):
        raise ValueError(f"{owner}: {name} must be a tuple of ints >= 1, got {tuple(value)}")
    return tuple(int(d) for d in value)


def check_tokens(owner: str, x, *, n: int | None = None, c: int | None = None, note: str = "") -> None:
    """``x`` must be a tensor of tokens ``[B, N, C]``, with ``N = n`` and ``C = c`` where given; the error says the
    expected shape, e.g. ``x must have shape [B, N, C] with C=192, got (4, 192)``. ``note`` follows the sizes."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: x must be a tensor [B, N, C], got {type(x).__name__}")
    if x.dim() == 3 and (n is None or x.shape[1] == n) and (c is None or x.shape[2] == c):
        return
    sizes = ", ".join(f"{k}={v}" for k, v in (("N", n), ("C", c)) if v is not None)
    raise ValueError(f"{owner}: x must have shape [B, N, C]{' with ' + sizes if sizes else ''}{note}, got "
                     f"{tuple(x.shape)}")
