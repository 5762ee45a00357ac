"""Run by tests/test_wheel.py against a pyfast installed from its wheel, from a directory outside the checkout:
one call of every op family through the ``reference`` and ``cpp`` backends, compared; ``pyfast info`` and one quick
benchmark through the ``pyfast`` command. Prints one line per family and exits non-zero on the first failure."""

from __future__ import annotations

import os
import sys

import torch

import pyfast
from pyfast import cli, ops
from pyfast._extension import build_info, cpp_reason, has_cpp

here = os.path.dirname(os.path.abspath(pyfast.__file__))
assert here.startswith(os.environ["PYFAST_WHEEL_TARGET"]), f"pyfast imported from {here}, not the installed wheel"
assert not any(os.path.isfile(os.path.join(p or ".", "setup.py")) for p in sys.path), f"a checkout is on {sys.path}"
assert has_cpp(), cpp_reason()
assert build_info(), "the wheel lacks pyfast/_build_info.py"


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float64)


torch.manual_seed(0)
C = 8
gate, wq, wk, wv, wp = torch.sigmoid(randn(C)), *(randn(C, C) / C ** 0.5 for _ in range(4))
bq, bv, bp = randn(C), randn(C), randn(C)
x_lif, x_gated, x_crrelu, x_bn, h, w3 = randn(4, 3, 5), randn(2, 4, C), randn(2, 3, 4), randn(6, 3, 2), randn(5, 4), randn(4, 2, 3, 3)
q, k, v = randn(2, 3, 7, 8), randn(2, 3, 7, 8), randn(2, 3, 7, 8)
a, b, W = randn(3, 4, 7, 4), randn(3, 4, 7, 4), randn(3, 7, 4)
student, teacher, labels = randn(4, 6), randn(4, 6), torch.tensor([0, 5, 2, 3])
x_mesa = randn(3, 16).float()
mesa_state = (torch.ones(2), torch.zeros(2), torch.zeros((), dtype=torch.bool), torch.tensor([7]))

FAMILIES = {
    "lif": lambda be: ops.lif(x_lif, backend=be),
    "mesa": lambda be: ops.mesa_dequantize(ops.mesa_quantize(x_mesa, *mesa_state, backend=be)[0],
                                           *ops.mesa_quantize(x_mesa, *mesa_state, backend=be)[1:], backend=be),
    "wconv": lambda be: ops.wconv_weight(w3, [0.7], backend=be),
    "gated": lambda be: ops.gated_class_attention(x_gated, gate, wq, bq, wk, wv, bv, wp, bp, 2, backend=be),
    "karat": lambda be: ops.karat_attention(q, k, v, a, b, W, backend=be),
    "crrelu": lambda be: ops.crrelu(x_crrelu, torch.full((1,), 0.3, dtype=torch.float64), backend=be),
    "ghost_bn": lambda be: ops.ghost_batch_norm(x_bn, None, None, None, None, True, 0.1, 1e-5, 2, backend=be),
    "msdrop": lambda be: ops.multi_sample_dropout_loss(h, w3.new_ones(3, 4), None, torch.tensor([0, 1, 2, 0, 1]), 2,
                                                       0.3, seed=torch.tensor([7]), backend=be)[0],
    "pld": lambda be: ops.pld_rows(student, teacher, labels, 1.0, backend=be),
}

for family, call in FAMILIES.items():
    ref, cpp = call("reference"), call("cpp")
    torch.testing.assert_close(cpp, ref, atol=1e-5, rtol=1e-5, msg=lambda m, f=family: f"{f}: cpp != reference: {m}")
    print(f"{family}: cpp == reference, output {tuple(ref.shape)}")

assert cli.main(["info"]) == 0
assert cli.main(["bench", "--op", "pld", "--quick", "--device", "cpu", "--out", "bench-results", "--threads", "1",
                 "--min-run-time", "0.01", "--no-memory"]) == 0
assert os.path.isfile(os.path.join("bench-results", "pld.csv"))
print("installed wheel OK")
