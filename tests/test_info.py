"""pyfast.info: the backend x op availability table and the `python -m pyfast.info` report."""

from __future__ import annotations

import subprocess
import sys

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
