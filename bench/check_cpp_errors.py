"""Do errors raised inside pyfast._C reach Python as exceptions, or crash the process?

On the GPU machines of 2026-11-26 (torch 2.11, Python 3.12, the extension built there with /opt/gcc/bin/g++) every
TORCH_CHECK_VALUE failing inside an op of pyfast._C ended the process with a segmentation fault, on CPU tensors as
on CUDA ones, while torch's own errors were raised normally; on this project's CPU machines (torch 2.14) the same
calls raise ValueError. Each case runs in its own interpreter, so a crash is reported (rc -11) instead of ending the
check; a one-op extension built on the spot with setup.py's flags, and what the build linked against, tell a
toolchain mismatch from a bug of ours.

    python bench/check_cpp_errors.py        # exit status 1 if any case crashed or did not raise
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (device needed, statement that must raise ValueError from C++)
CASES = {
    "karat_fwd, k of the wrong shape (CPU kernel)": (
        "cpu", ("q = torch.randn(2, 3, 5, 8); a = torch.randn(3, 4, 5, 2)\n"
                "torch.ops.pyfast.karat_fwd(q, q[:, :, :4], a, a, 1.0)")),
    "pld_fwd, teacher of the wrong shape (CPU kernel)": (
        "cpu", "torch.ops.pyfast.pld_fwd(torch.randn(3, 5), torch.randn(3, 6), torch.tensor([0, 1, 2]), 1.0)"),
    "karat_fwd, k of the wrong shape (CUDA kernel)": (
        "cuda", ("q = torch.randn(2, 3, 5, 8, device='cuda'); a = torch.randn(3, 4, 5, 2, device='cuda')\n"
                 "torch.ops.pyfast.karat_fwd(q, q[:, :, :4], a, a, 1.0)")),
    "pld_fwd, more classes than the kernel sorts (CUDA kernel)": (
        "cuda", ("s = torch.randn(3, 1025, device='cuda')\n"
                 "torch.ops.pyfast.pld_fwd(s, s, torch.tensor([0, 1, 2], device='cuda'), 1.0)")),
}

# The same kind of check in a one-op extension built here, now, with setup.py's C++ flags (torch's JIT build): if
# its error crashes too, the toolchain or torch build is at fault, not pyfast's code.
MINIMAL_OP = r"""
#include <torch/library.h>
at::Tensor check_only(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 99, "minimal: x must be 99-d, got ", x.sizes());
  return x;
}
TORCH_LIBRARY(pyfast_minimal, m) { m.def("check_only(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(pyfast_minimal, CPU, m) { m.impl("check_only", &check_only); }
"""


def setup_cxx_flags() -> list[str]:
    """setup.py's CXX_FLAGS (read from its source: importing setup.py would run the build)."""
    with open(os.path.join(REPO_ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CXX_FLAGS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError("setup.py has no CXX_FLAGS")


CASES["a one-op extension built now with setup.py's flags (CPU kernel)"] = (
    "cpu", ("import tempfile\n"
            "from torch.utils.cpp_extension import load_inline\n"
            f"load_inline('pyfast_minimal', {MINIMAL_OP!r}, extra_cflags={setup_cxx_flags()!r},\n"
            "            build_directory=tempfile.mkdtemp(), is_python_module=False)\n"
            "torch.ops.pyfast_minimal.check_only(torch.zeros(2))"))

PROBE = """
import torch, pyfast
try:
{body}
except ValueError as err:
    print('ValueError:', str(err).splitlines()[0][:100])
else:
    print('no error raised')
    raise SystemExit(3)
"""


def run_case(body: str) -> tuple[int, str]:
    code = PROBE.format(body="\n".join("    " + line for line in body.splitlines()))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          env=env)
    return done.returncode, (done.stdout.strip() or done.stderr.strip()[-200:])


def toolchain() -> None:
    import torch

    from pyfast import _extension

    print("torch", torch.__version__, "| python", sys.version.split()[0], "| build", _extension.build_info())
    print("LDSHARED:", sysconfig.get_config_var("LDSHARED"))
    cxx = os.environ.get("CXX") or shutil.which("c++") or "c++"
    version = subprocess.run([cxx, "--version"], check=False, capture_output=True, text=True).stdout.splitlines()
    print("C++ compiler", cxx, ":", version[0] if version else "?")
    so = getattr(_extension._C, "__file__", None)
    if so and shutil.which("ldd"):
        libs = subprocess.run(["ldd", so], check=False, capture_output=True, text=True).stdout.splitlines()
        print("_C links:", *[line.strip() for line in libs if any(n in line for n in ("stdc++", "gcc_s", "gomp"))],
              sep="\n  ")


def main() -> int:
    import torch

    failed = 0
    for name, (device, body) in CASES.items():
        if device == "cuda" and not torch.cuda.is_available():
            print(f"{name}: not run (no CUDA device)")
            continue
        rc, what = run_case(body)
        ok = rc == 0
        failed += not ok
        print(f"{name}: {'raised' if ok else 'FAILED'} (rc {rc}) {what}")
    toolchain()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
