"""The floating dtypes the ops take and the dtype they compute in: one definition for the reference
(:mod:`pyfast.reference`), the ops (:mod:`pyfast.ops`) and the Triton launchers (``kernels/``, installed as
``pyfast._triton``). Imports torch only, so each of them can import it without an import cycle.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The arithmetic (accumulation) dtype for inputs of ``dtype``: float64 for float64, float32 for every other
    dtype (float16 and bfloat16 inputs are computed in float32, as the C++ and CUDA kernels do)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
