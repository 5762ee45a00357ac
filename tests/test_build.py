"""Build checks that need no GPU: the CMake/LibTorch build, the CUDA code inside pyfast._C, the package layout."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE_PACKAGES = os.path.dirname(os.path.dirname(torch.__file__))
MIN_CMAKE = (3, 26)


def _cmake() -> str:
    """The cmake binary (pip's `cmake` package first, as the test extra installs it); fails if none is >= 3.26."""
    candidates = []
    try:
        import cmake

        candidates.append(os.path.join(cmake.CMAKE_BIN_DIR, "cmake"))
    except ImportError:
        pass
    candidates += [shutil.which("cmake") or ""]
    found = []
    for exe in filter(os.path.isfile, candidates):
        out = subprocess.run([exe, "--version"], check=False, capture_output=True, text=True).stdout
        version = tuple(int(v) for v in re.search(r"version (\d+)\.(\d+)", out).groups())
        if version >= MIN_CMAKE:
            return exe
        found.append(f"{exe} ({'.'.join(map(str, version))})")
    pytest.fail(
        f"cmake >= {'.'.join(map(str, MIN_CMAKE))} is needed (the CUDA20 dialect); found: {found or 'none'}. "
        "Install the test extra: pip install -e .[test]"
    )


def _ninja() -> str | None:
    try:
        import ninja

        return os.path.join(ninja.BIN_DIR, "ninja")
    except ImportError:
        return shutil.which("ninja")


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    for path in [os.path.join(home, "bin", "nvcc") if home else "", "/usr/local/cuda/bin/nvcc"]:
        if os.path.isfile(path):
            return path
    return shutil.which("nvcc")


def _cuda_toolkit_args() -> list[str]:
    """find_package(Torch) of a CUDA build of torch looks for the CUDA toolkit even for a CPU-only library."""
    if torch.version.cuda is None:
        return []
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("torch is a CUDA build, whose find_package(Torch) needs a CUDA toolkit (nvcc); none found")
    nvcc = os.path.realpath(nvcc)  # /usr/local/bin/nvcc may be a wrapper script: use the toolkit's own
    args = [f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCUDA_TOOLKIT_ROOT_DIR={os.path.dirname(os.path.dirname(nvcc))}"]
    nvrtc = sorted(glob.glob(os.path.join(SITE_PACKAGES, "nvidia", "cu*", "lib", "libnvrtc.so.*")))
    return args + [f"-DCUDA_nvrtc_LIBRARY={nvrtc[0]}"] if nvrtc else args


# Runs in a fresh interpreter that never imports pyfast: pyfast._C registers TORCH_LIBRARY(pyfast) too, and two
# registrations of one library in a process clash.
_LOAD_AND_RUN = textwrap.dedent("""
    import ctypes, json, sys
    import torch
    lib = sys.argv[1]
    torch.ops.load_library(lib)
    x = torch.tensor([[2.5, 1.0], [0.5, 1.0], [2.0, 1.0]])
    spikes, h_seq, v_last = torch.ops.pyfast.lif_fwd(
        x, None, torch.tensor([0.5]), torch.tensor([1.0]), 0.0, True, "sigmoid", 4.0, False, True)
    print(json.dumps(dict(
        spikes=spikes.tolist(), h_seq=h_seq.tolist(), v_last=v_last.tolist(),
        has_bwd=hasattr(torch.ops.pyfast, "lif_bwd"), pyfast_imported="pyfast" in sys.modules,
        has_pyinit=hasattr(ctypes.CDLL(lib), "PyInit__C"),
    )))
""")


@pytest.mark.slow
def test_cmake_build_loads_with_torch_ops_load_library(tmp_path):
    build = tmp_path / "build"
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST="8.0;9.0")
    ninja = _ninja()
    configure = [
        _cmake(),
        "-S",
        ROOT,
        "-B",
        str(build),
        "-DCMAKE_BUILD_TYPE=Release",
        "-DPYFAST_WITH_CUDA=OFF",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        *_cuda_toolkit_args(),
    ]
    if ninja:
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    for cmd in (configure, [configure[0], "--build", str(build), "-j2"]):
        proc = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    lib = build / "libpyfast_ops.so"
    assert lib.is_file(), f"the build made no {lib.name}: {sorted(p.name for p in build.iterdir())}"

    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_RUN, str(lib)],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    # By hand, k = 0.5, V_th = 1, hard reset to 0, decay_input: H_t = V_{t-1} + 0.5 (X_t - V_{t-1}).
    #   neuron 0: H = 1.25 (fire, V=0), 0.25, 0.25 + 0.5 (2 - 0.25) = 1.125 (fire, V=0)
    #   neuron 1: H = 0.5, 0.75, 0.875: never fires, V_last = 0.875.   (All exact in binary floating point.)
    assert out["spikes"] == [[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]
    assert out["h_seq"] == [[1.25, 0.5], [0.25, 0.75], [1.125, 0.875]]
    assert out["v_last"] == [0.0, 0.875]
    assert out["has_bwd"]
    assert not out["pyfast_imported"]
    assert not out["has_pyinit"], "python_module.cpp (the PyInit__C stub) belongs to the setup.py build only"


def _cuobjdump() -> str | None:
    candidates = [
        shutil.which("cuobjdump") or "",
        os.path.join(SITE_PACKAGES, "triton", "backends", "nvidia", "bin", "cuobjdump"),
    ]
    nvcc = _nvcc()
    if nvcc:
        candidates.append(os.path.join(os.path.dirname(os.path.realpath(nvcc)), "cuobjdump"))
    return next((c for c in candidates if os.path.isfile(c)), None)


def test_extension_holds_sm80_and_sm90_cubins():
    if _nvcc() is None:
        pytest.skip("no CUDA toolkit (nvcc) on this machine, so _C is built without CUDA kernels")
    from pyfast import _extension

    info = _extension.build_info()
    assert info.get("WITH_CUDA"), (
        f"nvcc is present ({_nvcc()}) but pyfast._C was built without CUDA kernels (build info: {info}); CI builds "
        "with CUDA whenever a toolkit is found. Rebuild with PYFAST_BUILD_CUDA=1 pip install --no-build-isolation -e . "
        "to see why the CUDA build failed."
    )
    so = importlib.util.find_spec("pyfast._C").origin
    cuobjdump = _cuobjdump()
    assert cuobjdump, "no cuobjdump found: install triton (pip install -e .[triton]), which ships one"
    proc = subprocess.run([cuobjdump, "--list-elf", so], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    archs = set(re.findall(r"\bsm_(\d+)\b", proc.stdout))
    assert {"80", "90"} <= archs, f"expected sm_80 and sm_90 cubins in {so}, got:\n{proc.stdout}"


def test_lif_cuda_kernels_store_each_pack_in_one_instruction(tmp_path):
    # A thread's neurons of one step (a pack: 16 bytes in the vector forward, 2 halves in the 16-bit backward) must
    # leave in one st.global of the pack's width; nvcc 13.0 split struct stores into 4- and 2-byte pieces.
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("no CUDA toolkit (nvcc) on this machine")
    ptx = tmp_path / "lif_kernel.ptx"
    subprocess.run([nvcc, "-I", os.path.join(ROOT, "csrc"), "-O3", "-std=c++20", "--expt-relaxed-constexpr",
                    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-arch=compute_90", "-ptx", "-o", str(ptx),
                    os.path.join(ROOT, "csrc", "lif", "lif_kernel.cu")], check=True, timeout=300)
    kernels = re.split(r"\.entry ", ptx.read_text())[1:]
    widths = {}  # (fwd | bwd, storage type, V) -> set of st.global suffixes, f32 partial-sum stores excluded
    for body in kernels:
        m = re.match(r"\w*lif_(fwd|bwd)_kernelI(\w+?)Li(\d+)E", body)
        if m:
            stores = set(re.findall(r"st\.global\.(?:wb\.)?([a-z0-9.]+)\s", body)) - {"f32"}
            widths.setdefault((m[1], m[2], int(m[3])), set()).update(stores)
    assert widths[("fwd", "6__half", 8)] == {"v4.u32"}, widths
    assert widths[("fwd", "f", 4)] == {"v4.u32"}, widths
    assert widths[("fwd", "d", 2)] == {"v4.u32"}, widths
    assert widths[("bwd", "6__half", 2)] == {"u32"}, widths
    assert widths[("bwd", "13__nv_bfloat16", 2)] == {"u32"}, widths


def test_kernel_sweep_builds_and_rejects_bad_arguments(tmp_path):
    # bench/kernel_sweep.cu (gpu_check.sh's kernel_sweep stage) links the shipped launchers of lif_kernel.cu and
    # karat_kernel.cu with the sweep-only LIF backward variants; a GPU session must not lose its minutes to a build
    # error. Without a GPU only its argument checks can run.
    if _nvcc() is None:
        pytest.skip("no CUDA toolkit (nvcc) on this machine")
    binary = tmp_path / "kernel_sweep"
    subprocess.run(["bash", os.path.join(ROOT, "bench", "kernel_sweep.sh"), str(binary), "sm_90"], check=True,
                   timeout=600, env={**os.environ, "CUDA_HOME": os.path.dirname(os.path.dirname(_nvcc()))})
    for args, message in [(["--rounds", "0"], "--rounds >= 1"), (["--lif-neurons", "12"], "multiple of 8"),
                          (["--karat-tokens"], "--karat-tokens >= 1"), (["--bogus"], "unknown argument --bogus")]:
        proc = subprocess.run([str(binary), *args], check=False, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)


def test_triton_kernels_install_as_pyfast_triton_not_top_level_kernels(tmp_path):
    script = textwrap.dedent("""
        import importlib.util, json
        print(json.dumps(dict(
            pyfast_triton=importlib.util.find_spec("pyfast._triton") is not None,
            kernels=importlib.util.find_spec("kernels") is not None,
        )))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, check=False, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    assert out["pyfast_triton"], "pyfast._triton (the kernels/ directory) is not importable"
    assert not out["kernels"], "`kernels` is importable as a top-level package; it must install as pyfast._triton"


def test_source_checkout_without_install_maps_kernels_to_pyfast_triton(tmp_path):
    # After `setup.py build_ext --inplace` (no pip install), kernels/ must still import as pyfast._triton: the GPU check
    # script builds that way. Simulated by a copy of the sources and an interpreter with the editable finder removed.
    import shutil

    root = Path(__file__).resolve().parents[1]
    for name in ("pyfast", "kernels"):
        shutil.copytree(root / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    code = (
        "import sys\n"
        "is_editable = lambda o: getattr(o, '__module__', '').startswith('__editable__')\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not is_editable(f)]\n"
        "sys.path_hooks[:] = [h for h in sys.path_hooks if not is_editable(h)]\n"
        "sys.path_importer_cache.clear()\n"
        "import pyfast._triton.lif as k\n"
        "print(k.__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) == tmp_path / "kernels" / "lif.py"


def test_the_cpu_extension_is_built_so_no_cpp_test_is_skipped():
    """The op tests skip their C++ cases when pyfast._C is missing; `make test` always builds it, so its absence here
    is a broken build to report, not a reason to skip half the suite quietly."""
    from pyfast import _extension

    assert _extension.has_cpp(), f"pyfast._C did not load: {_extension.cpp_reason()}"
