"""pyfast/bench/karat.py (python -m pyfast.bench.karat): a --quick CPU run prints the tables and writes a complete, sane CSV."""

from __future__ import annotations

import math
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from pyfast import _extension
from pyfast.bench import harness
from pyfast.bench import karat as bench_karat


@pytest.mark.skipif(not _extension.has_cpp(), reason="needs pyfast._C")
def test_bench_karat_quick_cpu_csv(tmp_path, capsys):
    csv_path = tmp_path / "karat.csv"
    rows = bench_karat.main(["--quick", "--providers", "reference", "cpp", "sdpa", "--min-run-time", "0.01",
                             "--threads", "1", "--csv", str(csv_path)])
    out = capsys.readouterr().out
    assert "saved-for-backward MB" in out and "saved MB (ref -> fused)" in out and "peak MB" in out
    got = harness.read_csv(str(csv_path))
    assert {(r["provider"], r["mode"]) for r in got} == {(p, m) for p in ("reference", "cpp", "sdpa")
                                                         for m in ("fwd", "fwd+bwd")}
    for r in rows:
        assert r.median_ms > 0 and r.ratio_vs_reference > 0 and "error" not in r.note
        if r.mode == "fwd+bwd":
            assert r.peak_mem_MB > 0 and "saved_MB=" in r.note
    saved = {r.provider: float(r.note.split("saved_MB=")[1].split(";")[0]) for r in rows if r.mode == "fwd+bwd"}
    assert saved["cpp"] < saved["reference"] and not math.isnan(saved["sdpa"])


def test_bench_karat_rejects_unknown_provider():
    with pytest.raises(SystemExit):
        bench_karat.main(["--quick", "--providers", "flash"])
