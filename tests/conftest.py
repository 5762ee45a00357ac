"""Shared test setup. Without a CUDA device, Triton kernels run in Triton's CPU interpreter; TRITON_INTERPRET is read
when a kernel is decorated, so it is set here, before any test module imports pyfast._triton."""

import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run_bench_quick(tmp_path):
    """``run(op, *args, timeout=600) -> (stdout, csv rows)``: runs ``python -m pyfast.bench.<op> --quick --device cpu
    --csv <tmp file> *args`` in a subprocess (as a user would) and checks that it exited 0 and wrote a CSV with the harness
    columns."""
    from pyfast.bench import harness

    def run(op: str, *args: str, timeout: float = 600):
        csv_path = tmp_path / f"{op}.csv"
        cmd = [sys.executable, "-m", f"pyfast.bench.{op}", "--quick", "--device", "cpu", "--csv", str(csv_path), *args]
        proc = subprocess.run(cmd, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = harness.read_csv(str(csv_path))
        assert rows and list(rows[0]) == harness.COLUMNS
        return proc.stdout, rows

    return run
