"""pyfast/bench/layers.py (python -m pyfast.bench.layers): a --quick CPU run prints the tables and writes a complete, sane CSV."""

from __future__ import annotations

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from pyfast import _extension
from pyfast.bench import layers as bench_layers


def test_bench_layers_quick_cpu_csv(run_bench_quick):
    out, rows = run_bench_quick("layers", "--min-run-time", "0.01", "--threads", "1", "--no-memory")
    assert "skip cuda:" in out and "skip triton:" in out
    assert "vs reference + torch.compile" in out
    want_providers = {"reference", "reference+compile", "peer"} | ({"cpp"} if _extension.has_cpp() else set())
    for op, cases in bench_layers.QUICK_CASES.items():
        got = {(r["provider"], r["mode"]) for r in rows if r["op"] == op}
        assert got == {(p, m) for p in want_providers for m in ("fwd", "fwd+bwd")}, op
        assert sum(r["op"] == op for r in rows) == len(cases) * len(want_providers) * 2
    assert all(float(r["median_ms"]) > 0 for r in rows)
    assert all(float(r["ratio_vs_reference"]) > 0 for r in rows)
