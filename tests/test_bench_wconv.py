"""pyfast/bench/wconv.py (python -m pyfast.bench.wconv): a --quick CPU run prints both tables and writes a complete, sane CSV."""

from __future__ import annotations

import os
import sys

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from pyfast import _extension
from pyfast.bench import wconv as bench_wconv


def test_layer_lists_are_the_cifar_networks():
    # VGG-16 has 13 conv layers, ResNet-18 17 3x3 ones (stem + 16 in the blocks); every one padded to keep H x W
    # unless strided.
    assert sum(bench_wconv.VGG16.values()) == 13
    assert sum(bench_wconv.RESNET18.values()) == 17
    assert bench_wconv.layer_name((64, 128, 32, 32, 2)) == "64x128@32x32/s2"


def test_bench_wconv_quick_cpu_csv(run_bench_quick):
    out, rows = run_bench_quick("wconv", "--batch", "2", "--layers", "64x128@32x32/s2", "--min-run-time", "0.01",
                                "--op-shapes", "16x8x3x3", "--op-providers", "reference", "cpp", "cuda", "triton",
                                "--threads", "1", timeout=300)
    assert "time / nn.Conv2d time" in out and "skip cuda:" in out and "skip triton:" in out
    layer = {(r["provider"], r["mode"]) for r in rows if r["op"] == "wconv-layer"}
    assert layer == {(p, m) for p in bench_wconv.LAYER_PROVIDERS for m in ("fwd", "fwd+bwd")}
    op = {(r["provider"], r["mode"]) for r in rows if r["op"] == "wconv-weight"}
    want = ["reference"] + (["cpp"] if _extension.has_cpp() else [])
    assert op == {(p, m) for p in want for m in ("fwd", "fwd+bwd")}
    for r in rows:
        assert float(r["median_ms"]) > 0 and r["device"] == "cpu" and r["torch_version"] == torch.__version__
        assert float(r["ratio_vs_reference"]) > 0
