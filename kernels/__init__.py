"""Triton kernels of pyfast, installed as ``pyfast._triton`` (one module per op; imported lazily by pyfast.ops)."""
