"""Do errors raised inside pyfast._C reach Python as exceptions, or crash the process?

On the GPU machines of 2026-11-26 (torch 2.11, Python 3.12, the extension built there with /opt/gcc/bin/g++) every
TORCH_CHECK_VALUE failing inside an op of pyfast._C ended the process with a segmentation fault, on CPU tensors as
on CUDA ones, while torch's own errors were raised normally; on this project's CPU machines (torch 2.14) the same
calls raise ValueError. Each case runs in its own interpreter, so a crash is reported (rc -11) instead of ending the
check; a one-op extension built on the spot with setup.py's flags (and variants without some of them), and what
the build linked against, tell a toolchain mismatch from a bug of ours.

    python bench/check_cpp_errors.py        # exit status 1 if any case crashed or did not raise
"""

from __future__ import annotations

import ast
import concurrent.futures
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


def setup_flags(name: str) -> list[str]:
    """setup.py's CXX_FLAGS or LINK_FLAGS (read from its source: importing setup.py would run the build)."""
    with open(os.path.join(REPO_ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"setup.py has no {name}")


# Exit status of a one-op case whose extension does not build with its flags (torch 2.14's headers need C++20, so
# the C++17 variant cannot build there): reported, not counted as a failure.
NOT_BUILT = 4
# The cases that build a one-op extension (the first one with setup.py's own flags).
MINIMAL_CASES: list[str] = []


def minimal_op_case(cflags: list[str], ldflags: list[str], cxx: str | None = None) -> tuple[str, str]:
    """A CPU case: build the one-op extension now with these flags (each in its own directory, so the variants build
    side by side) and compiler (default: torch's choice, $CXX or c++), then call its failing check."""
    use_cxx = f"import os; os.environ['CXX'] = {cxx!r}\n" if cxx else ""
    return ("cpu", (use_cxx + "import tempfile\n"
                    "from torch.utils.cpp_extension import load_inline\n"
                    "try:\n"
                    f"    load_inline('pyfast_minimal', {MINIMAL_OP!r}, extra_cflags={cflags!r},\n"
                    f"                extra_ldflags={ldflags!r}, build_directory=tempfile.mkdtemp(),\n"
                    "                is_python_module=False)\n"
                    "except RuntimeError as build_error:\n"
                    f"    print('not built:', str(build_error).splitlines()[0][:100])\n"
                    f"    raise SystemExit({NOT_BUILT})\n"
                    "torch.ops.pyfast_minimal.check_only(torch.zeros(2))"))


# The variants bisect a crash of the first one: the C++ standard (torch builds itself as C++17; setup.py asks for
# C++20), OpenMP (setup.py links the compiler's libgomp; torch's wheel carries its own), or none of setup.py's flags.
CXX_FLAGS, LINK_FLAGS = setup_flags("CXX_FLAGS"), setup_flags("LINK_FLAGS")
MINIMAL_VARIANTS = {
    "setup.py's flags": (CXX_FLAGS, LINK_FLAGS),
    "setup.py's flags with -std=c++17": ([f if f != "-std=c++20" else "-std=c++17" for f in CXX_FLAGS], LINK_FLAGS),
    "setup.py's flags without OpenMP": ([f for f in CXX_FLAGS if f != "-fopenmp"], []),
    "torch's default flags only": ([], []),
}
for variant, (cflags, ldflags) in MINIMAL_VARIANTS.items():
    MINIMAL_CASES.append(f"a one-op extension built now, {variant} (CPU kernel)")
    CASES[MINIMAL_CASES[-1]] = minimal_op_case(cflags, ldflags)


def default_compiler() -> str:
    """The C++ compiler torch's extension builds use: $CXX, else c++ on the PATH."""
    return os.environ.get("CXX") or shutil.which("c++") or "c++"


# The GPU machines build with /opt/gcc/bin/g++ (ahead on their PATH); the system's g++, where it is another
# compiler, tells whether that compiler is the cause.
SYSTEM_CXX = "/usr/bin/g++"
if os.path.exists(SYSTEM_CXX) and os.path.realpath(SYSTEM_CXX) != os.path.realpath(shutil.which(default_compiler())
                                                                                     or default_compiler()):
    MINIMAL_CASES.append(f"a one-op extension built now, setup.py's flags, compiled by {SYSTEM_CXX} (CPU kernel)")
    CASES[MINIMAL_CASES[-1]] = minimal_op_case(CXX_FLAGS, LINK_FLAGS, SYSTEM_CXX)

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
    cxx = default_compiler()
    version = subprocess.run([cxx, "--version"], check=False, capture_output=True, text=True).stdout.splitlines()
    print("C++ compiler", cxx, ":", version[0] if version else "?")
    so = getattr(_extension._C, "__file__", None)
    if so and shutil.which("ldd"):
        libs = subprocess.run(["ldd", so], check=False, capture_output=True, text=True).stdout.splitlines()
        print("_C links:", *[line.strip() for line in libs if any(n in line for n in ("stdc++", "gcc_s", "gomp"))],
              sep="\n  ")


def main() -> int:
    import torch

    runnable = {name: body for name, (device, body) in CASES.items() if device == "cpu" or torch.cuda.is_available()}
    # Every case in its own interpreter, all at once (the one-op builds take tens of seconds each).
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(runnable)) as pool:
        results = {name: pool.submit(run_case, body) for name, body in runnable.items()}
    failed = 0
    for name in CASES:
        if name not in results:
            print(f"{name}: not run (no CUDA device)")
            continue
        rc, what = results[name].result()
        if rc == NOT_BUILT:
            print(f"{name}: not run ({what})")
            continue
        ok = rc == 0
        failed += not ok
        print(f"{name}: {'raised' if ok else 'FAILED'} (rc {rc}) {what}")
    toolchain()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
