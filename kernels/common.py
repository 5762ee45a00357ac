"""Helpers shared by the Triton kernels and their launchers (installed as ``pyfast._triton.common``).

Storage rounding: Triton's CPU interpreter truncates float32 -> bfloat16 (a GPU rounds to nearest even). Under it the
kernels round bfloat16 by hand (:func:`to_storage` with ``BF16_BY_HAND=INTERPRET``), so the interpreter stores the
same values (and LIF the same spikes) as the C++ kernels and a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pyfast._dtypes import FLOAT_DTYPES, acc_dtype
from pyfast._extension import triton_interpret

# Whether the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, read when kernels are decorated).
INTERPRET = triton_interpret()

TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
             torch.bfloat16: tl.bfloat16}


def tl_acc_dtype(dtype: torch.dtype):
    """The Triton arithmetic dtype for inputs of ``dtype`` (:func:`pyfast._dtypes.acc_dtype`: tl.float64 for float64,
    tl.float32 otherwise)."""
    return TL_DTYPES[acc_dtype(dtype)]


def check_tensor(op: str, name: str, t, dtypes=FLOAT_DTYPES, shape=None) -> None:
    """The raw-pointer kernels read ``t`` as a dense array of one of ``dtypes`` (None: any dtype) and, if ``shape``
    is given, of that shape: anything else is an error naming ``op`` and the argument, never a misread."""
    if not isinstance(t, torch.Tensor) or not t.is_contiguous():
        raise ValueError(f"{op}: {name} must be a contiguous tensor")
    if dtypes is not None and t.dtype not in dtypes:
        names = "/".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{op}: {name} must be one of {names}, got {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


@triton.jit
def to_storage(v, DTYPE: tl.constexpr, BF16_BY_HAND: tl.constexpr):
    """``v`` converted to the storage dtype ``DTYPE``; bfloat16 rounded to nearest even by hand if ``BF16_BY_HAND``."""
    if DTYPE == tl.bfloat16 and BF16_BY_HAND:
        bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
        # NaN (v != v) becomes the canonical bfloat16 NaN: rounding its bits could carry it into inf.
        out = tl.where(v != v, 0x7FC0, rounded).to(tl.uint16).to(tl.bfloat16, bitcast=True)  # noqa: PLR0124
    else:
        out = v.to(DTYPE)
    return out
