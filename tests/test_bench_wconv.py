"""bench/bench_wconv.py: a --quick CPU run prints both tables and writes a complete, sane CSV."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from bench import bench_wconv, harness
from pyfast import _extension


def test_layer_lists_are_the_cifar_networks():
    # VGG-16 has 13 conv layers, ResNet-18 17 3x3 ones (stem + 16 in the blocks); every one padded to keep H x W
    # unless strided.
    assert sum(bench_wconv.VGG16.values()) == 13
    assert sum(bench_wconv.RESNET18.values()) == 17
    assert bench_wconv.layer_name((64, 128, 32, 32, 2)) == "64x128@32x32/s2"


def test_bench_wconv_quick_cpu_csv(tmp_path):
    csv_path = tmp_path / "wconv.csv"
    cmd = [sys.executable, os.path.join(REPO_ROOT, "bench", "bench_wconv.py"), "--quick", "--device", "cpu",
           "--batch", "2", "--layers", "64x128@32x32/s2", "--min-run-time", "0.01", "--csv", str(csv_path),
           "--op-shapes", "16x8x3x3", "--op-providers", "reference", "cpp", "cuda", "triton", "--threads", "1"]
    proc = subprocess.run(cmd, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "time / nn.Conv2d time" in proc.stdout and "skip cuda:" in proc.stdout and "skip triton:" in proc.stdout
    rows = harness.read_csv(str(csv_path))
    assert rows and list(rows[0]) == harness.COLUMNS
    layer = {(r["provider"], r["mode"]) for r in rows if r["op"] == "wconv-layer"}
    assert layer == {(p, m) for p in bench_wconv.LAYER_PROVIDERS for m in ("fwd", "fwd+bwd")}
    op = {(r["provider"], r["mode"]) for r in rows if r["op"] == "wconv-weight"}
    want = ["reference"] + (["cpp"] if _extension.has_cpp() else [])
    assert op == {(p, m) for p in want for m in ("fwd", "fwd+bwd")}
    for r in rows:
        assert float(r["median_ms"]) > 0 and r["device"] == "cpu" and r["torch_version"] == torch.__version__
        assert float(r["ratio_vs_reference"]) > 0
