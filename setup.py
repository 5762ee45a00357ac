"""Build of record for pyfast's compiled kernels: one extension, ``pyfast._C``.

Environment:
  PYFAST_BUILD_CUDA=auto|0|1   auto (default): build the CUDA kernels when a CUDA toolkit is found (CUDA_HOME, else
                               /usr/local/cuda), whether or not a GPU is visible; if that build fails, warn loudly
                               and build the CPU kernels alone. 1: CUDA is required, a failure fails the install.
                               0: CPU kernels only.
  TORCH_CUDA_ARCH_LIST         defaults to "8.0;9.0" (Ampere and Hopper cubins) when unset.
  PYFAST_SKIP_EXTENSION=1      install the Python package alone; the Makefile uses it and then builds _C once, in
                               place and incrementally (`setup.py build_ext --inplace`), instead of twice.

Install with ``pip install --no-build-isolation -e .`` so _C is compiled against the torch that will load it.
"""

import glob
import os
import sys
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_CUDA = os.environ.get("PYFAST_BUILD_CUDA", "auto").lower()
if BUILD_CUDA not in ("auto", "0", "1"):
    sys.exit(f"PYFAST_BUILD_CUDA must be auto, 0 or 1, got {BUILD_CUDA!r}")
if not os.environ.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
    # torch would otherwise guess a prefix from `which nvcc` or /usr/local, and may miss libcudart.
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # after the environment is set: cpp_extension reads CUDA_HOME at import
from torch.utils import cpp_extension

# -fno-trapping-math: no FP traps, which lets gcc vectorise selects. -ffp-contract=off: no fused multiply-adds, so
# the baseline and AVX2+FMA builds of the CPU loops (and the float32 reference) round alike: bit-identical results.
# -fopenmp (compile and link): at::parallel_for is a header template whose parallel region is an `omp parallel`
# pragma, compiled in only when _OPENMP is defined; without the flag every CPU kernel silently runs on one thread.
# The link adds libgomp.so.1, the soname of the OpenMP runtime torch already loaded, so both share one thread pool.
CXX_FLAGS = ["-O3", "-std=c++20", "-fno-trapping-math", "-ffp-contract=off", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "-std=c++20", "-lineinfo"]


def _sources(pattern):
    return sorted(glob.glob(os.path.join("csrc", pattern), recursive=True))


def _cuda_include_dirs():
    # torch 2.14's CUDA headers include cusparse.h & co, which live in the nvidia-* pip wheels, not in the toolkit.
    purelib = sysconfig.get_paths()["purelib"]
    return [d for d in glob.glob(os.path.join(purelib, "nvidia", "cu*", "include")) if os.path.isdir(d)]


def _cuda_wanted():
    if BUILD_CUDA == "0":
        return False
    found = cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
    if BUILD_CUDA == "1" and not found:
        sys.exit(
            "PYFAST_BUILD_CUDA=1 but no CUDA build is possible: "
            f"CUDA_HOME={cpp_extension.CUDA_HOME!r}, torch.version.cuda={torch.version.cuda!r}"
        )
    return found


def _write_build_info(with_cuda, package_dirs):
    """pyfast/_build_info.py in each of ``package_dirs`` (the source tree, and the build tree a wheel is made from)."""
    text = ("# Written by setup.py at build time; do not edit.\n"
            f"TORCH_VERSION = {torch.__version__!r}\n"
            f"WITH_CUDA = {with_cuda!r}\n"
            f"CUDA_ARCH_LIST = {os.environ.get('TORCH_CUDA_ARCH_LIST') if with_cuda else None!r}\n")
    for package_dir in package_dirs:
        os.makedirs(package_dir, exist_ok=True)
        with open(os.path.join(package_dir, "_build_info.py"), "w") as f:
            f.write(text)


def _extension(with_cuda):
    common = dict(
        name="pyfast._C",
        include_dirs=[os.path.join(ROOT, "csrc")] + (_cuda_include_dirs() if with_cuda else []),
        py_limited_api=False,
    )
    cpu_sources = [s for s in _sources("**/*.cpp") if not s.endswith("_cuda.cpp")]
    if with_cuda:
        sources = cpu_sources + _sources("**/*_cuda.cpp") + _sources("**/*.cu")
        return cpp_extension.CUDAExtension(
            sources=sources,
            extra_compile_args={"cxx": CXX_FLAGS + ["-DPYFAST_WITH_CUDA"], "nvcc": NVCC_FLAGS},
            extra_link_args=LINK_FLAGS,
            **common,
        )
    return cpp_extension.CppExtension(sources=cpu_sources, extra_compile_args={"cxx": CXX_FLAGS},
                                      extra_link_args=LINK_FLAGS, **common)


class BuildExt(cpp_extension.BuildExtension):
    """Builds _C; in auto mode a failed CUDA build falls back to the CPU kernels with a loud warning."""

    def build_extension(self, ext):
        with_cuda = any(s.endswith(".cu") for s in ext.sources)
        # build_py copied the package before _C was built: a wheel gets its build facts from the build tree.
        info_dirs = [os.path.join(ROOT, "pyfast")] + ([] if self.inplace else [os.path.join(self.build_lib, "pyfast")])
        try:
            super().build_extension(ext)
            _write_build_info(with_cuda, info_dirs)
        except Exception as err:  # re-raised unless the auto fallback applies
            if not with_cuda or BUILD_CUDA == "1":
                raise
            bar = "!" * 78
            print(f"\n{bar}\npyfast: the CUDA build failed ({err}); building the CPU kernels only.\n"
                  f"Set PYFAST_BUILD_CUDA=1 to make this an error.\n{bar}\n", file=sys.stderr)
            cpu = _extension(False)
            ext.sources, ext.extra_compile_args = cpu.sources, cpu.extra_compile_args
            ext.include_dirs, ext.libraries, ext.library_dirs = cpu.include_dirs, cpu.libraries, cpu.library_dirs
            super().build_extension(ext)
            _write_build_info(False, info_dirs)


setup(
    # Triton kernels live in top-level kernels/ and install as pyfast._triton (never as a top-level `kernels`).
    packages=find_packages(include=["pyfast", "pyfast.*"]) + ["pyfast._triton"],
    package_dir={"pyfast._triton": "kernels"},
    ext_modules=[] if os.environ.get("PYFAST_SKIP_EXTENSION") == "1" else [_extension(_cuda_wanted())],
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)},
)
