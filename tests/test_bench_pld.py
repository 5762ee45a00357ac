"""pyfast/bench/pld.py (python -m pyfast.bench.pld): a --quick CPU run prints the tables and writes a complete, sane CSV."""

from __future__ import annotations

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from pyfast import _extension
from pyfast.bench import pld as bench_pld


def test_bench_pld_quick_cpu_csv(run_bench_quick):
    out, rows = run_bench_quick("pld", "--min-run-time", "0.01", "--threads", "1", "--no-memory")
    assert "skip cuda:" in out and "skip triton:" in out
    assert "vs reference + torch.compile" in out
    want = {"reference", "reference+compile", "peer"} | ({"cpp"} if _extension.has_cpp() else set())
    assert {(r["provider"], r["mode"]) for r in rows} == {(p, m) for p in want for m in ("fwd", "fwd+bwd")}
    assert len(rows) == len(bench_pld.QUICK_CASES) * len(want) * 2
    assert {r["shape"] for r in rows} == {f"B{b}xC{c}" for b, c in bench_pld.QUICK_CASES}
    assert all(float(r["median_ms"]) > 0 and float(r["ratio_vs_reference"]) > 0 for r in rows)
