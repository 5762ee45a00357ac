"""pyfast.info: the backend x op availability table and the `python -m pyfast.info` report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyfast import _extension
from pyfast.info import OPS, availability_table


def test_python_m_pyfast_info_prints_versions_and_table():
    proc = subprocess.run(
        [sys.executable, "-m", "pyfast.info"], check=False, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert torch.__version__ in out
    rows = {tuple(line.split()[:3]): line.split(maxsplit=3)[3] for line in out.splitlines() if line.startswith("lif ")}
    assert _extension.has_cpp(), _extension.cpp_reason()
    assert rows[("lif", "cpp", "cpu")] == "yes"
    assert rows[("lif", "reference", "cpu")] == "yes"


def test_table_covers_every_op_and_backend():
    rows = availability_table()
    assert {r["op"] for r in rows} == set(OPS)
    for op in OPS:
        assert {r["backend"] for r in rows if r["op"] == op} == {"cpp", "cuda", "triton", "reference"}
    for r in rows:
        assert r["available"] == (r["reason"] == ""), r


def test_cuda_rows_follow_the_visible_device():
    rows = {(r["backend"], r["device"]): r for r in availability_table() if r["op"] == "lif"}
    if torch.cuda.is_available():
        assert rows[("reference", "cuda")]["available"]
    else:
        cuda = [r for (_, device), r in rows.items() if device == "cuda"]
        assert cuda and not any(r["available"] for r in cuda)
        assert "CUDA" in rows[("cuda", "cuda")]["reason"], rows[("cuda", "cuda")]


def test_families_name_every_registered_op_and_every_name_exists():
    import importlib

    import pyfast
    from pyfast.bench import harness  # noqa: F401  (pyfast.bench importable)
    from pyfast.families import DATASET_REINFORCEMENT, FAMILIES, family_of_op
    from pyfast.registry import METHODS

    assert _extension.has_cpp(), _extension.cpp_reason()
    registered = {n.split("::")[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
                  if n.startswith("pyfast::")}
    for op in registered:
        family_of_op(op)  # raises for an op no family lists
    root = Path(pyfast.__file__).parent
    for f in FAMILIES:
        assert set(f.ops) <= registered, f
        assert all(op.startswith(f.name) for op in f.ops), f  # an op name starts with its family's
        for fn in f.functions:
            assert callable(getattr(pyfast.ops, fn)), fn
        for dotted in (*f.modules, DATASET_REINFORCEMENT["loss"]):
            obj = pyfast
            for part in dotted.split("."):
                obj = getattr(obj, part)
        assert all(m in METHODS for m in f.methods), f.methods
        importlib.import_module(f"pyfast.bench.{f.bench}")
        for path in (root / "reference" / f"{f.name}.py", root / "ops" / f"{f.name}.py"):
            assert path.is_file(), path
    assert DATASET_REINFORCEMENT["method"] in METHODS
    importlib.import_module(f"pyfast.{DATASET_REINFORCEMENT['module']}")
    with pytest.raises(KeyError, match="no family"):
        family_of_op("not_an_op")
