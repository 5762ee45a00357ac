"""Which compiled pieces are present: the C++/CUDA extension ``pyfast._C`` and Triton.

Every backend decision in pyfast goes through :func:`has_cpp`, :func:`has_cuda` and :func:`has_triton`; the
``*_reason`` functions say, in one line, why a piece is missing (what to build or install).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path

import torch

_C = None
_C_ERROR: str | None = None


def _load_c() -> None:
    global _C, _C_ERROR
    try:
        from pyfast import _C as c_module  # the import registers the ops

        _C = c_module
    except ImportError as err:
        _C_ERROR = f"pyfast._C failed to load ({err})"
        info = build_info()
        if info and info.get("TORCH_VERSION") not in (None, torch.__version__):
            _C_ERROR += f": built for torch {info['TORCH_VERSION']}, running {torch.__version__}"
        _C_ERROR += "; rebuild with `pip install --no-build-isolation -e .`"


def build_info() -> dict:
    """What setup.py recorded when it built _C (torch version, CUDA on/off, arch list); {} if never built."""
    try:
        from pyfast import _build_info
    except ImportError:
        return {}
    return {k: v for k, v in vars(_build_info).items() if k.isupper()}


def has_cpp() -> bool:
    """The compiled extension is loaded (CPU kernels, and CUDA kernels if it was built with them)."""
    return _C is not None


def cpp_reason() -> str:
    return "" if has_cpp() else (_C_ERROR or "pyfast._C is not built")


def has_cuda() -> bool:
    """CUDA kernels are compiled into _C and a CUDA device is visible."""
    return has_cpp() and bool(build_info().get("WITH_CUDA")) and torch.cuda.is_available()


def cuda_reason() -> str:
    if not has_cpp():
        return cpp_reason()
    if not build_info().get("WITH_CUDA"):
        return "_C was built without CUDA kernels (no CUDA toolkit at build time, or PYFAST_BUILD_CUDA=0)"
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    return ""


def triton_interpret() -> bool:
    """Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1, read when kernels are decorated)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def has_triton(device: torch.device | str | None = None) -> bool:
    """Triton is installed and can run on ``device``: a CUDA GPU, or the CPU under TRITON_INTERPRET=1."""
    if not _triton_importable():
        return False
    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type == "cuda":
        return torch.cuda.is_available() or triton_interpret()
    return dev.type == "cpu" and triton_interpret()


def triton_reason(device: torch.device | str | None = None) -> str:
    if not _triton_importable():
        return "triton is not installed (pip install triton)"
    if has_triton(device):
        return ""
    return "no CUDA device is visible and TRITON_INTERPRET=1 is not set (set it to run Triton on the CPU)"


def _alias_source_kernels() -> None:
    """Make the top-level kernels/ importable as pyfast._triton in a source checkout that was built in place
    (``setup.py build_ext --inplace``) rather than installed: an install maps it so, and nothing else may import it
    as a top-level ``kernels``. The kernels/ beside the imported pyfast/ wins over any other mapping, so a second
    checkout (a git worktree on PYTHONPATH) never runs the Triton kernels of the editable install's checkout."""
    kernels = Path(__file__).resolve().parent.parent / "kernels"
    if not (kernels / "__init__.py").is_file():
        return
    installed = importlib.util.find_spec("pyfast._triton")
    if installed is not None and installed.origin and Path(installed.origin).resolve().parent == kernels:
        return
    spec = importlib.util.spec_from_file_location(
        "pyfast._triton", kernels / "__init__.py", submodule_search_locations=[str(kernels)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["pyfast._triton"] = module
    spec.loader.exec_module(module)
    sys.modules["pyfast"]._triton = module  # what the import system does for a submodule it loads itself


_load_c()
_alias_source_kernels()
