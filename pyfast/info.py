"""``pyfast info`` (``python -m pyfast.info``): versions, build facts and which backend can serve which op family on
this machine; ``--names`` prints each family's names across the layers (:mod:`pyfast.families`).

Each row of the table is one (op, backend, device): "yes", or the one-line reason it cannot run there and what to
build or install. The reasons come from :func:`pyfast.backends.availability`, the same check that
``backend="auto"`` and explicit backends go through.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util

import torch

import pyfast
from pyfast import _extension
from pyfast.backends import availability
from pyfast.families import FAMILIES, names_table

OPS = tuple(f.name for f in FAMILIES)  # every op family with kernels
BACKEND_DEVICES = (  # (backend, device type) pairs a backend can serve
    ("cpp", "cpu"),
    ("cuda", "cuda"),
    ("triton", "cuda"),
    ("triton", "cpu"),  # Triton's interpreter, TRITON_INTERPRET=1
    ("reference", "cpu"),
    ("reference", "cuda"),
)


def _has_triton_kernels(op: str) -> bool:
    try:
        return importlib.util.find_spec(f"pyfast._triton.{op}") is not None
    except ImportError:  # pyfast._triton itself is missing or fails to import
        return False


def _reason(op: str, backend: str, device: str) -> str:
    reason = availability(backend, torch.device(device))
    if not reason and device == "cuda" and not torch.cuda.is_available():
        reason = "no CUDA device is visible"  # e.g. reference, or triton under TRITON_INTERPRET=1
    if not reason and backend == "triton" and not _has_triton_kernels(op):
        reason = f"no Triton kernels for {op} (kernels/{op}.py, installed as pyfast._triton.{op})"
    return reason


def availability_table() -> list[dict]:
    """One dict per (op, backend, device): keys op, backend, device, available (bool), reason ('' when available)."""
    rows = []
    for op in OPS:
        for backend, device in BACKEND_DEVICES:
            reason = _reason(op, backend, device)
            rows.append({"op": op, "backend": backend, "device": device, "available": not reason, "reason": reason})
    return rows


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """Versions and build facts, as printed by :func:`main`."""
    info = {"pyfast": pyfast.__version__, "torch": torch.__version__}
    info["CUDA (torch build)"] = torch.version.cuda or "none (CPU-only torch)"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        info["GPU"] = f"{name} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})"
    else:
        info["GPU"] = "none visible"
    triton = _version("triton")
    info["triton"] = f"{triton} (TRITON_INTERPRET={int(_extension.triton_interpret())})" if triton else "not installed"
    build = _extension.build_info()
    info["_C build"] = " ".join(f"{k}={v}" for k, v in build.items()) if build else "never built"
    info["_C"] = "loaded" if _extension.has_cpp() else _extension.cpp_reason()
    return info


def format_table(rows: list[dict]) -> str:
    header = ("op", "backend", "device", "available")
    lines = [(r["op"], r["backend"], r["device"], "yes" if r["available"] else f"no: {r['reason']}") for r in rows]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(3)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(line, widths)), line[3]]) for line in [header, *lines])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pyfast info", description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", action="store_true", help="each op family's names across the layers, then exit")
    args = parser.parse_args(argv)
    if args.names:
        print(names_table())
        return
    info = versions()
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key.ljust(width)}  {value}")
    print()
    print(format_table(availability_table()))


if __name__ == "__main__":
    main()
