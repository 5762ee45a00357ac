"""The package a user installs: a wheel built from the repository works on its own, outside the checkout.

The wheel is built in-tree (``pip wheel --no-build-isolation``), so the extension's objects that ``make build`` left
under build/temp.* are reused and only linked again; the staging folders build/lib.* and build/bdist.* are emptied
first, since setuptools copies into them without removing what an earlier build left there (a wheel would then hold
files the source tree no longer has). It is installed into a fresh ``--target`` directory and imported by a
Python started with ``-S`` (no site-packages processing, so no editable finder of the development install) whose path
holds that directory and the environment's site-packages (torch), run from a directory outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    for staging in [*REPO.glob("build/lib.*"), *REPO.glob("build/bdist.*")]:
        shutil.rmtree(staging)
    env = {**os.environ, "CUDA_HOME": os.environ.get("CUDA_HOME", "/usr/local/cuda"), "MAX_JOBS": "2"}
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", str(REPO),
                           "-w", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("pyfast-*.whl")
    return path


def test_wheel_holds_every_python_package_of_the_source_tree(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    folders = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "pyfast").rglob("*.py")}
    for folder in sorted(folders):
        assert f"{folder}/__init__.py" in names, f"the wheel lacks {folder}/ (no __init__.py there?)"
    assert "pyfast/_triton/__init__.py" in names and "pyfast/_triton/lif.py" in names  # kernels/ as pyfast._triton
    assert any(n.startswith("pyfast/_C.") and n.endswith(".so") for n in names)
    assert "pyfast/_build_info.py" in names


def test_installed_wheel_runs_every_op_family_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "tests" / "installed_smoke.py", work)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(PYTHONPATH=os.pathsep.join([str(target), *site.getsitepackages()]), PYFAST_WHEEL_TARGET=str(target),
               TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-S", "installed_smoke.py"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for family in ("lif", "mesa", "wconv", "gated", "karat", "crrelu", "ghost_bn", "msdrop", "pld"):
        assert f"{family}: cpp == reference" in proc.stdout
    assert "installed wheel OK" in proc.stdout
