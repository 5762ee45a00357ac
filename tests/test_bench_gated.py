"""pyfast/bench/gated.py (python -m pyfast.bench.gated): a --quick CPU run prints the tables and writes a complete CSV; HAG on a CNN trains."""

from __future__ import annotations

import os
import sys

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from pyfast import _extension
from pyfast.bench import gated as bench_gated
from pyfast.bench import harness


def test_bench_gated_quick_cpu_csv(tmp_path):
    csv_path = tmp_path / "gated.csv"
    res = bench_gated.main(["--quick", "--min-run-time", "0.01", "--threads", "1", "--csv", str(csv_path)])
    rows = harness.read_csv(str(csv_path))
    providers = {r["provider"] for r in rows if r["op"] == "gated_cattn"}
    assert {"reference", "reference+compile", "sdpa", "sdpa+gates", "sdpa+gates+compile"} <= providers
    if _extension.has_cpp():
        assert "cpp" in providers
    assert all(float(r["median_ms"]) > 0 for r in rows)
    assert not [r.note for r in res["rows"] if r.note]  # every provider agrees with the reference


def test_hag_gates_on_a_resnet_train_with_routing():
    from pyfast.methods.gated import add_hard_attention_gates, gate_parameters
    from pyfast.models import resnet18
    from pyfast.nn import GradientRouting

    torch.manual_seed(0)
    model = add_hard_attention_gates(resnet18(10, width=0.125))
    gates = gate_parameters(model)
    assert len(gates) == 8
    main = [p for p in model.parameters() if all(p is not g for g in gates)]
    before = [g.detach().clone() for g in gates]
    gr = GradientRouting(model, torch.optim.Adam(gates, lr=0.01), torch.optim.SGD(main, lr=0.01))
    loss, logits = gr.step(torch.nn.functional.cross_entropy, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert logits.shape == (4, 10) and torch.isfinite(loss)
    assert all(not torch.equal(g, b) for g, b in zip(gates, before))
