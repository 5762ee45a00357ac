"""Backend resolution: which implementation of an op serves a call.

``backend="auto"`` picks from static facts only (DESIGN.md):
  CUDA tensor -> ``cuda`` if compiled, else ``triton``, else ``reference``;
  CPU tensor  -> ``cpp`` if compiled, else ``reference``.
Inside ``with use_backend(name):`` (the training harness's ``--backend``), ``auto`` means ``name``; otherwise the
``PYFAST_BACKEND`` environment variable replaces ``auto``. ``auto`` falling back to ``reference`` warns once
with the reason; an explicitly requested backend that cannot run raises :class:`BackendUnavailableError` saying
what to build or install.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

from pyfast import _extension

BACKENDS = ("auto", "reference", "cpp", "cuda", "triton")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend is not available on this machine or for this device."""


_warned: set[tuple[str, str]] = set()
_default: list[str] = []  # stack of use_backend() overrides of "auto"


@contextlib.contextmanager
def use_backend(backend: str):
    """Within the block, calls with ``backend="auto"`` use ``backend`` (``"auto"``: no override)."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _default.append(backend)
    try:
        yield
    finally:
        _default.pop()


def warn_fallback_once(op: str, reason: str) -> None:
    """Warn that ``op`` falls back to the slow reference implementation because of ``reason`` (one line saying what
    is missing); each (op, reason) pair warns once per process."""
    if (op, reason) not in _warned:
        _warned.add((op, reason))
        warnings.warn(f"pyfast.{op}: falling back to the slow reference implementation: {reason}", stacklevel=3)


def availability(backend: str, device: torch.device) -> str:
    """'' if ``backend`` can run on ``device``, else the reason it cannot."""
    if backend == "reference":
        return ""
    if backend == "cpp":
        if device.type != "cpu":
            return f"the cpp backend runs on CPU tensors, got a tensor on {device}"
        return _extension.cpp_reason()
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got a tensor on {device}"
        return _extension.cuda_reason()
    if backend == "triton":
        return _extension.triton_reason(device)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve(op: str, backend: str, device: torch.device) -> str:
    """The concrete backend that serves ``op`` for a tensor on ``device``."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto" and _default:
        backend = _default[-1]
    if backend == "auto":
        backend = os.environ.get("PYFAST_BACKEND", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"PYFAST_BACKEND must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        reason = availability(backend, device)
        if reason:
            raise BackendUnavailableError(f"pyfast.{op}: backend={backend!r} is unavailable: {reason}")
        return backend
    candidates = ("cuda", "triton") if device.type == "cuda" else ("cpp",)
    reasons = []
    for candidate in candidates:
        reason = availability(candidate, device)
        if not reason:
            return candidate
        reasons.append(f"{candidate}: {reason}")
    warn_fallback_once(op, "; ".join(reasons))
    return "reference"
