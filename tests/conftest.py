"""Shared test setup. Without a CUDA device, Triton kernels run in Triton's CPU interpreter; TRITON_INTERPRET is read
when a kernel is decorated, so it is set here, before any test module imports pyfast._triton."""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
